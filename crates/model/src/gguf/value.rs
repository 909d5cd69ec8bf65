//! GGUF metadata values: the thirteen value types, typed arrays (possibly nested) and their
//! little-endian encoding.
//!
//! Strings are kept as raw bytes so that a file is re-written byte-for-byte even when a
//! converter stored something that is not UTF-8; [`Value::as_str`] gives the UTF-8 view.
//! Arrays are typed (`Vec<u32>`, `Vec<Vec<u8>>`, …) so that a large vocabulary costs a few
//! bytes per element, not a boxed enum each.

use std::io::{self, Write};

/// The type tag of a metadata value, as stored in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ValueType {
    /// `uint8`
    U8,
    /// `int8`
    I8,
    /// `uint16`
    U16,
    /// `int16`
    I16,
    /// `uint32`
    U32,
    /// `int32`
    I32,
    /// `float32`
    F32,
    /// `bool` (one byte, 0 or 1)
    Bool,
    /// length-prefixed string
    String,
    /// typed array
    Array,
    /// `uint64`
    U64,
    /// `int64`
    I64,
    /// `float64`
    F64,
}

impl ValueType {
    /// Decodes a type tag; `None` for an unknown tag.
    pub fn from_u32(tag: u32) -> Option<Self> {
        Some(match tag {
            0 => Self::U8,
            1 => Self::I8,
            2 => Self::U16,
            3 => Self::I16,
            4 => Self::U32,
            5 => Self::I32,
            6 => Self::F32,
            7 => Self::Bool,
            8 => Self::String,
            9 => Self::Array,
            10 => Self::U64,
            11 => Self::I64,
            12 => Self::F64,
            _ => return None,
        })
    }

    /// The type tag written to the file.
    pub fn to_u32(self) -> u32 {
        match self {
            Self::U8 => 0,
            Self::I8 => 1,
            Self::U16 => 2,
            Self::I16 => 3,
            Self::U32 => 4,
            Self::I32 => 5,
            Self::F32 => 6,
            Self::Bool => 7,
            Self::String => 8,
            Self::Array => 9,
            Self::U64 => 10,
            Self::I64 => 11,
            Self::F64 => 12,
        }
    }

    /// The smallest number of bytes one value of this type occupies in a file
    /// (used to bound array lengths by the bytes that are left).
    pub(crate) fn min_encoded_len(self) -> u64 {
        match self {
            Self::U8 | Self::I8 | Self::Bool => 1,
            Self::U16 | Self::I16 => 2,
            Self::U32 | Self::I32 | Self::F32 => 4,
            Self::U64 | Self::I64 | Self::F64 | Self::String => 8,
            Self::Array => 12,
        }
    }
}

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `uint8`
    U8(u8),
    /// `int8`
    I8(i8),
    /// `uint16`
    U16(u16),
    /// `int16`
    I16(i16),
    /// `uint32`
    U32(u32),
    /// `int32`
    I32(i32),
    /// `float32`
    F32(f32),
    /// `bool`
    Bool(bool),
    /// A string, as the raw bytes of the file (normally UTF-8).
    String(Vec<u8>),
    /// A typed array.
    Array(Array),
    /// `uint64`
    U64(u64),
    /// `int64`
    I64(i64),
    /// `float64`
    F64(f64),
}

/// A typed metadata array; `Array` nests arrays (each inner array has its own element type).
#[derive(Debug, Clone, PartialEq)]
pub enum Array {
    /// `uint8[]`
    U8(Vec<u8>),
    /// `int8[]`
    I8(Vec<i8>),
    /// `uint16[]`
    U16(Vec<u16>),
    /// `int16[]`
    I16(Vec<i16>),
    /// `uint32[]`
    U32(Vec<u32>),
    /// `int32[]`
    I32(Vec<i32>),
    /// `float32[]`
    F32(Vec<f32>),
    /// `bool[]`
    Bool(Vec<bool>),
    /// `string[]` (raw bytes per element)
    String(Vec<Vec<u8>>),
    /// `array[]`
    Array(Vec<Array>),
    /// `uint64[]`
    U64(Vec<u64>),
    /// `int64[]`
    I64(Vec<i64>),
    /// `float64[]`
    F64(Vec<f64>),
}

impl Value {
    /// A string value from UTF-8 text.
    pub fn string(s: impl Into<String>) -> Self {
        Self::String(s.into().into_bytes())
    }

    /// The type tag of this value.
    pub fn value_type(&self) -> ValueType {
        match self {
            Self::U8(_) => ValueType::U8,
            Self::I8(_) => ValueType::I8,
            Self::U16(_) => ValueType::U16,
            Self::I16(_) => ValueType::I16,
            Self::U32(_) => ValueType::U32,
            Self::I32(_) => ValueType::I32,
            Self::F32(_) => ValueType::F32,
            Self::Bool(_) => ValueType::Bool,
            Self::String(_) => ValueType::String,
            Self::Array(_) => ValueType::Array,
            Self::U64(_) => ValueType::U64,
            Self::I64(_) => ValueType::I64,
            Self::F64(_) => ValueType::F64,
        }
    }

    /// The string, when this is a UTF-8 string value.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    /// Any integer value that is non-negative and fits `u64` (GGUF writers differ in which
    /// integer type they use for counts).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::U8(v) => Some(v.into()),
            Self::U16(v) => Some(v.into()),
            Self::U32(v) => Some(v.into()),
            Self::U64(v) => Some(v),
            Self::I8(v) => u64::try_from(v).ok(),
            Self::I16(v) => u64::try_from(v).ok(),
            Self::I32(v) => u64::try_from(v).ok(),
            Self::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any float value as `f64`.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::F32(v) => Some(v.into()),
            Self::F64(v) => Some(v),
            _ => None,
        }
    }

    /// The array, when this is an array value.
    pub fn as_array(&self) -> Option<&Array> {
        match self {
            Self::Array(a) => Some(a),
            _ => None,
        }
    }

    /// Writes the value (without its type tag).
    pub(crate) fn encode(&self, w: &mut impl Write) -> io::Result<()> {
        match self {
            Self::U8(v) => w.write_all(&[*v]),
            Self::I8(v) => w.write_all(&v.to_le_bytes()),
            Self::U16(v) => w.write_all(&v.to_le_bytes()),
            Self::I16(v) => w.write_all(&v.to_le_bytes()),
            Self::U32(v) => w.write_all(&v.to_le_bytes()),
            Self::I32(v) => w.write_all(&v.to_le_bytes()),
            Self::F32(v) => w.write_all(&v.to_le_bytes()),
            Self::Bool(v) => w.write_all(&[u8::from(*v)]),
            Self::String(s) => encode_string(w, s),
            Self::Array(a) => a.encode(w),
            Self::U64(v) => w.write_all(&v.to_le_bytes()),
            Self::I64(v) => w.write_all(&v.to_le_bytes()),
            Self::F64(v) => w.write_all(&v.to_le_bytes()),
        }
    }
}

impl Array {
    /// The element type.
    pub fn elem_type(&self) -> ValueType {
        match self {
            Self::U8(_) => ValueType::U8,
            Self::I8(_) => ValueType::I8,
            Self::U16(_) => ValueType::U16,
            Self::I16(_) => ValueType::I16,
            Self::U32(_) => ValueType::U32,
            Self::I32(_) => ValueType::I32,
            Self::F32(_) => ValueType::F32,
            Self::Bool(_) => ValueType::Bool,
            Self::String(_) => ValueType::String,
            Self::Array(_) => ValueType::Array,
            Self::U64(_) => ValueType::U64,
            Self::I64(_) => ValueType::I64,
            Self::F64(_) => ValueType::F64,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Self::U8(v) => v.len(),
            Self::I8(v) => v.len(),
            Self::U16(v) => v.len(),
            Self::I16(v) => v.len(),
            Self::U32(v) => v.len(),
            Self::I32(v) => v.len(),
            Self::F32(v) => v.len(),
            Self::Bool(v) => v.len(),
            Self::String(v) => v.len(),
            Self::Array(v) => v.len(),
            Self::U64(v) => v.len(),
            Self::I64(v) => v.len(),
            Self::F64(v) => v.len(),
        }
    }

    /// True when the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes element type, length and elements.
    fn encode(&self, w: &mut impl Write) -> io::Result<()> {
        w.write_all(&self.elem_type().to_u32().to_le_bytes())?;
        w.write_all(&(self.len() as u64).to_le_bytes())?;
        macro_rules! each_le {
            ($v:expr) => {{
                for x in $v {
                    w.write_all(&x.to_le_bytes())?;
                }
                Ok(())
            }};
        }
        match self {
            Self::U8(v) => w.write_all(v),
            Self::I8(v) => each_le!(v),
            Self::U16(v) => each_le!(v),
            Self::I16(v) => each_le!(v),
            Self::U32(v) => each_le!(v),
            Self::I32(v) => each_le!(v),
            Self::F32(v) => each_le!(v),
            Self::Bool(v) => each_le!(v.iter().map(|b| u8::from(*b))),
            Self::String(v) => {
                for s in v {
                    encode_string(w, s)?;
                }
                Ok(())
            }
            Self::Array(v) => {
                for a in v {
                    a.encode(w)?;
                }
                Ok(())
            }
            Self::U64(v) => each_le!(v),
            Self::I64(v) => each_le!(v),
            Self::F64(v) => each_le!(v),
        }
    }
}

/// Writes a GGUF string: `u64` length, then the bytes.
pub(crate) fn encode_string(w: &mut impl Write, s: &[u8]) -> io::Result<()> {
    w.write_all(&(s.len() as u64).to_le_bytes())?;
    w.write_all(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_tags_round_trip() {
        for tag in 0..13 {
            let t = ValueType::from_u32(tag).unwrap();
            assert_eq!(t.to_u32(), tag);
        }
        assert_eq!(ValueType::from_u32(13), None);
    }

    #[test]
    fn array_encoding_has_type_length_and_elements() {
        let mut out = Vec::new();
        Value::Array(Array::U16(vec![1, 2]))
            .encode(&mut out)
            .unwrap();
        assert_eq!(out, [2, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 1, 0, 2, 0]);
    }

    #[test]
    fn integer_views_reject_negative_values() {
        assert_eq!(Value::I32(-1).as_u64(), None);
        assert_eq!(Value::I32(7).as_u64(), Some(7));
        assert_eq!(Value::string("x").as_u64(), None);
    }
}
