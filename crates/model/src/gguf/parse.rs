//! The bounded GGUF header parser: every length and count is checked against the bytes left and
//! the limits before anything is allocated, so garbage, truncation and huge length fields get a
//! [`GgufError`], never a panic or an unbounded allocation.

use std::io::{self, Read};

use super::limits::*;
use super::{Array, GgufError, MAGIC, Value, ValueType};

/// A tensor info before validation against the data section.
pub(super) struct RawTensor {
    pub(super) name: String,
    pub(super) dims: Vec<u64>,
    pub(super) type_id: u32,
    pub(super) offset: u64,
}

pub(super) struct Parsed {
    pub(super) version: u32,
    pub(super) metadata: Vec<(String, Value)>,
    pub(super) tensors: Vec<RawTensor>,
    pub(super) end_of_infos: u64,
}

pub(super) fn parse(r: impl Read, len: u64) -> Result<Parsed, GgufError> {
    let mut p = Parser {
        r,
        pos: 0,
        len,
        elements_left: MAX_ARRAY_ELEMENTS_TOTAL,
    };
    let magic: [u8; 4] = p.fixed("magic")?;
    if magic != MAGIC {
        return Err(GgufError::BadMagic {
            found: magic.to_vec(),
        });
    }
    let version = p.u32("version")?;
    if !(2..=3).contains(&version) {
        return Err(GgufError::UnsupportedVersion { version });
    }
    let n_tensors = p.count("tensor count", MAX_TENSORS, 32)?;
    let n_kv = p.count("metadata count", MAX_METADATA_ENTRIES, 13)?;
    let mut metadata = Vec::with_capacity(n_kv);
    for _ in 0..n_kv {
        let key = p.utf8("metadata key", MAX_KEY_LEN)?;
        let offset = p.pos;
        let tag = p.u32("value type")?;
        let ty = ValueType::from_u32(tag)
            .ok_or_else(|| malformed(&key, offset, format!("unknown value type {tag}")))?;
        let value = p.value(ty, &key, 0)?;
        metadata.push((key, value));
    }
    let mut tensors = Vec::with_capacity(n_tensors);
    for _ in 0..n_tensors {
        let name = p.utf8("tensor name", MAX_TENSOR_NAME_LEN)?;
        let offset = p.pos;
        let n_dims = p.u32("tensor dimension count")?;
        if n_dims > MAX_DIMS {
            return Err(GgufError::TooLarge {
                what: format!("dimension count of {name}"),
                offset,
                value: n_dims.into(),
                limit: MAX_DIMS.into(),
            });
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(p.u64("tensor dimension")?);
        }
        let type_id = p.u32("tensor type")?;
        let offset = p.u64("tensor offset")?;
        tensors.push(RawTensor {
            name,
            dims,
            type_id,
            offset,
        });
    }
    Ok(Parsed {
        version,
        metadata,
        tensors,
        end_of_infos: p.pos,
    })
}

pub(super) fn malformed(what: &str, offset: u64, reason: String) -> GgufError {
    GgufError::Malformed {
        what: what.to_string(),
        offset,
        reason,
    }
}

/// A bounds-checked little-endian reader that knows the file length, so nothing is allocated
/// for bytes that are not there.
struct Parser<R> {
    r: R,
    pos: u64,
    len: u64,
    elements_left: u64,
}

impl<R: Read> Parser<R> {
    fn need(&self, n: u64, what: &str) -> Result<(), GgufError> {
        if self.len.saturating_sub(self.pos) < n {
            return Err(GgufError::Truncated {
                what: what.into(),
                offset: self.pos,
            });
        }
        Ok(())
    }

    fn fill(&mut self, buf: &mut [u8], what: &str) -> Result<(), GgufError> {
        self.need(buf.len() as u64, what)?;
        self.r.read_exact(buf).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => GgufError::Truncated {
                what: what.into(),
                offset: self.pos,
            },
            _ => GgufError::io(format!("reading {what} at byte {}", self.pos), e),
        })?;
        self.pos += buf.len() as u64;
        Ok(())
    }

    fn fixed<const N: usize>(&mut self, what: &str) -> Result<[u8; N], GgufError> {
        let mut b = [0u8; N];
        self.fill(&mut b, what)?;
        Ok(b)
    }

    fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.fixed(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.fixed(what)?))
    }

    /// A `u64` count bounded by `limit` and by the bytes left at `min_item` bytes per item.
    fn count(&mut self, what: &str, limit: u64, min_item: u64) -> Result<usize, GgufError> {
        let offset = self.pos;
        let n = self.u64(what)?;
        if n > limit {
            return Err(GgufError::TooLarge {
                what: what.into(),
                offset,
                value: n,
                limit,
            });
        }
        self.need(n.saturating_mul(min_item), what)?;
        usize::try_from(n).map_err(|_| GgufError::TooLarge {
            what: what.into(),
            offset,
            value: n,
            limit: usize::MAX as u64,
        })
    }

    fn bytes(&mut self, what: &str, limit: u64) -> Result<Vec<u8>, GgufError> {
        let len = self.count(what, limit, 1)?;
        let mut v = vec![0u8; len];
        self.fill(&mut v, what)?;
        Ok(v)
    }

    fn utf8(&mut self, what: &str, limit: u64) -> Result<String, GgufError> {
        let offset = self.pos;
        let b = self.bytes(what, limit)?;
        String::from_utf8(b).map_err(|e| malformed(what, offset, format!("not UTF-8: {e}")))
    }

    fn value(&mut self, ty: ValueType, key: &str, depth: u32) -> Result<Value, GgufError> {
        Ok(match ty {
            ValueType::U8 => Value::U8(u8::from_le_bytes(self.fixed(key)?)),
            ValueType::I8 => Value::I8(i8::from_le_bytes(self.fixed(key)?)),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.fixed(key)?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.fixed(key)?)),
            ValueType::U32 => Value::U32(u32::from_le_bytes(self.fixed(key)?)),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.fixed(key)?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.fixed(key)?)),
            ValueType::Bool => Value::Bool(self.bool(key)?),
            ValueType::String => Value::String(self.bytes(key, MAX_STRING_LEN)?),
            ValueType::Array => Value::Array(self.array(key, depth + 1)?),
            ValueType::U64 => Value::U64(u64::from_le_bytes(self.fixed(key)?)),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.fixed(key)?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.fixed(key)?)),
        })
    }

    fn bool(&mut self, key: &str) -> Result<bool, GgufError> {
        let offset = self.pos;
        match self.fixed::<1>(key)?[0] {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(malformed(key, offset, format!("bool byte {b}"))),
        }
    }

    fn array(&mut self, key: &str, depth: u32) -> Result<Array, GgufError> {
        let offset = self.pos;
        if depth > MAX_ARRAY_DEPTH {
            return Err(GgufError::TooLarge {
                what: format!("array nesting of {key}"),
                offset,
                value: depth.into(),
                limit: MAX_ARRAY_DEPTH.into(),
            });
        }
        let tag = self.u32(key)?;
        let ty = ValueType::from_u32(tag)
            .ok_or_else(|| malformed(key, offset, format!("unknown array element type {tag}")))?;
        let n = self.count(key, self.elements_left, ty.min_encoded_len())?;
        self.elements_left -= n as u64;
        macro_rules! prim {
            ($variant:ident, $t:ty) => {{
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(<$t>::from_le_bytes(self.fixed(key)?));
                }
                Array::$variant(v)
            }};
        }
        Ok(match ty {
            ValueType::U8 => {
                let mut v = vec![0u8; n];
                self.fill(&mut v, key)?;
                Array::U8(v)
            }
            ValueType::I8 => prim!(I8, i8),
            ValueType::U16 => prim!(U16, u16),
            ValueType::I16 => prim!(I16, i16),
            ValueType::U32 => prim!(U32, u32),
            ValueType::I32 => prim!(I32, i32),
            ValueType::F32 => prim!(F32, f32),
            ValueType::U64 => prim!(U64, u64),
            ValueType::I64 => prim!(I64, i64),
            ValueType::F64 => prim!(F64, f64),
            ValueType::Bool => {
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.bool(key)?);
                }
                Array::Bool(v)
            }
            ValueType::String => {
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.bytes(key, MAX_STRING_LEN)?);
                }
                Array::String(v)
            }
            ValueType::Array => {
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.array(key, depth + 1)?);
                }
                Array::Array(v)
            }
        })
    }
}
