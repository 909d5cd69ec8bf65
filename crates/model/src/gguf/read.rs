//! The GGUF parser and [`GgufFile`].
//!
//! Invariants of a [`GgufFile`] once opened: metadata keys and tensor names are unique,
//! the alignment is a power of two, and every tensor's `[data_offset, data_offset + size)` lies
//! inside the file. Tensor bytes are read with positional reads on demand.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::Content;

use super::parse::{Parsed, parse};

use super::{ALIGNMENT_KEY, Array, DEFAULT_ALIGNMENT, GgmlType, GgufError, Value, align_up};

/// One tensor as described by the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Tensor name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Dimensions in ggml order (`ne[0]` first: the contiguous one).
    pub dims: Vec<u64>,
    /// Element type.
    pub ggml_type: GgmlType,
    /// Offset relative to the start of the data section, as stored.
    pub offset: u64,
    /// Absolute file offset of the first byte.
    pub data_offset: u64,
    /// Size in bytes.
    pub size: u64,
}

/// Where the bytes come from.
#[derive(Debug)]
enum Backing {
    File(File),
    Memory(Vec<u8>),
}

impl Backing {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        match self {
            Backing::File(f) => read_exact_at(f, buf, offset),
            Backing::Memory(m) => {
                let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
                let src = start
                    .checked_add(buf.len())
                    .and_then(|end| m.get(start..end))
                    .ok_or(io::ErrorKind::UnexpectedEof)?;
                buf.copy_from_slice(src);
                Ok(())
            }
        }
    }
}

#[cfg(unix)]
fn read_exact_at(f: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(f, buf, offset)
}

#[cfg(windows)]
fn read_exact_at(f: &File, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
    while !buf.is_empty() {
        match std::os::windows::fs::FileExt::seek_read(f, buf, offset)? {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
        }
    }
    Ok(())
}

/// An opened, validated GGUF file.
#[derive(Debug)]
pub struct GgufFile {
    backing: Backing,
    path: Option<PathBuf>,
    version: u32,
    metadata: Vec<(String, Value)>,
    keys: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    names: HashMap<String, usize>,
    alignment: u64,
    data_offset: u64,
    file_len: u64,
}

impl GgufFile {
    /// Opens and validates a GGUF file (reads only the header, metadata and tensor infos).
    pub fn open(path: &Path) -> Result<Self, GgufError> {
        let file = File::open(path)
            .map_err(|e| GgufError::io(format!("opening {}", path.display()), e))?;
        let len = file
            .metadata()
            .map_err(|e| GgufError::io(format!("reading size of {}", path.display()), e))?
            .len();
        let reader = BufReader::with_capacity(1 << 16, &file);
        let parsed = parse(reader, len)?;
        let mut g = Self::assemble(Backing::File(file), parsed, len)?;
        g.path = Some(path.to_path_buf());
        Ok(g)
    }

    /// Parses a GGUF held in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, GgufError> {
        let len = bytes.len() as u64;
        let parsed = parse(bytes.as_slice(), len)?;
        Self::assemble(Backing::Memory(bytes), parsed, len)
    }

    fn assemble(backing: Backing, p: Parsed, file_len: u64) -> Result<Self, GgufError> {
        let mut keys = HashMap::with_capacity(p.metadata.len());
        for (i, (k, _)) in p.metadata.iter().enumerate() {
            if keys.insert(k.clone(), i).is_some() {
                return Err(GgufError::DuplicateKey { key: k.clone() });
            }
        }
        let alignment = match p
            .metadata
            .get(keys.get(ALIGNMENT_KEY).copied().unwrap_or(usize::MAX))
        {
            None => DEFAULT_ALIGNMENT,
            Some((_, Value::U32(a))) if *a != 0 && a.is_power_of_two() => u64::from(*a),
            Some((_, v)) => {
                return Err(GgufError::BadAlignment {
                    reason: format!("{v:?}"),
                });
            }
        };
        let data_offset =
            align_up(p.end_of_infos, alignment).ok_or_else(|| GgufError::BadAlignment {
                reason: "data section offset overflows".into(),
            })?;
        let mut names = HashMap::with_capacity(p.tensors.len());
        let mut tensors = Vec::with_capacity(p.tensors.len());
        for (i, raw) in p.tensors.into_iter().enumerate() {
            let bad = |reason: String| GgufError::BadTensor {
                name: raw.name.clone(),
                reason,
            };
            let ggml_type =
                GgmlType::from_u32(raw.type_id).ok_or_else(|| GgufError::UnsupportedType {
                    tensor: raw.name.clone(),
                    type_id: raw.type_id,
                })?;
            let size = ggml_type
                .tensor_bytes(&raw.dims)
                .ok_or_else(|| bad(format!("dims {:?} do not fit type {ggml_type}", raw.dims)))?;
            if raw.offset % alignment != 0 {
                return Err(bad(format!(
                    "offset {} is not a multiple of {alignment}",
                    raw.offset
                )));
            }
            let start = data_offset.checked_add(raw.offset);
            let end = start.and_then(|s| s.checked_add(size));
            match (start, end) {
                (Some(start), Some(end)) if end <= file_len => {
                    if names.insert(raw.name.clone(), i).is_some() {
                        return Err(GgufError::DuplicateTensor { name: raw.name });
                    }
                    tensors.push(TensorInfo {
                        name: raw.name,
                        dims: raw.dims,
                        ggml_type,
                        offset: raw.offset,
                        data_offset: start,
                        size,
                    });
                }
                _ => {
                    return Err(GgufError::TensorOutOfBounds {
                        start: start.unwrap_or(u64::MAX),
                        end: end.unwrap_or(u64::MAX),
                        name: raw.name,
                        file_len,
                    });
                }
            }
        }
        Ok(Self {
            backing,
            path: None,
            version: p.version,
            metadata: p.metadata,
            keys,
            tensors,
            names,
            alignment,
            data_offset,
            file_len,
        })
    }

    /// The GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The path given to [`GgufFile::open`], if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// All metadata, in file order.
    pub fn metadata(&self) -> &[(String, Value)] {
        &self.metadata
    }

    /// One metadata value.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.keys.get(key).map(|&i| &self.metadata[i].1)
    }

    fn require(&self, key: &str) -> Result<&Value, GgufError> {
        self.get(key)
            .ok_or_else(|| GgufError::MissingKey { key: key.into() })
    }

    /// An integer value that fits `u64` (any integer type, non-negative).
    pub fn get_u64(&self, key: &str) -> Result<u64, GgufError> {
        let v = self.require(key)?;
        v.as_u64().ok_or(GgufError::WrongType {
            key: key.into(),
            expected: "a non-negative integer",
            found: v.value_type(),
        })
    }

    /// An integer value that fits `u32` (any integer type).
    pub fn get_u32(&self, key: &str) -> Result<u32, GgufError> {
        let v = self.require(key)?;
        v.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or(GgufError::WrongType {
                key: key.into(),
                expected: "an integer in u32 range",
                found: v.value_type(),
            })
    }

    /// A float value (`f32` or `f64`) as `f64`.
    pub fn get_f64(&self, key: &str) -> Result<f64, GgufError> {
        let v = self.require(key)?;
        v.as_f64().ok_or(GgufError::WrongType {
            key: key.into(),
            expected: "a float",
            found: v.value_type(),
        })
    }

    /// A UTF-8 string value.
    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        let v = self.require(key)?;
        v.as_str().ok_or(GgufError::WrongType {
            key: key.into(),
            expected: "a UTF-8 string",
            found: v.value_type(),
        })
    }

    /// An array value.
    pub fn get_array(&self, key: &str) -> Result<&Array, GgufError> {
        let v = self.require(key)?;
        v.as_array().ok_or(GgufError::WrongType {
            key: key.into(),
            expected: "an array",
            found: v.value_type(),
        })
    }

    /// All tensor infos, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The tensor with this name.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.names.get(name).map(|&i| &self.tensors[i])
    }

    /// Tensor data alignment (from `general.alignment`, default 32).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute offset of the data section.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// File size in bytes.
    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// Reads `buf.len()` bytes at absolute `offset`.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), GgufError> {
        self.backing
            .read_exact_at(buf, offset)
            .map_err(|e| GgufError::io(self.context(offset), e))
    }

    fn context(&self, offset: u64) -> String {
        match &self.path {
            Some(p) => format!("reading {} at byte {offset}", p.display()),
            None => format!("reading GGUF bytes at {offset}"),
        }
    }

    /// Reads one tensor's bytes into memory.
    pub fn read_tensor(&self, info: &TensorInfo) -> Result<Vec<u8>, GgufError> {
        let len = usize::try_from(info.size).map_err(|_| GgufError::BadTensor {
            name: info.name.clone(),
            reason: "too large for memory".into(),
        })?;
        let mut buf = vec![0u8; len];
        self.read_at(&mut buf, info.data_offset)?;
        Ok(buf)
    }

    /// Streams one tensor's bytes into `out` through a bounded buffer; returns the byte count.
    pub fn copy_tensor(&self, info: &TensorInfo, out: &mut dyn Write) -> Result<u64, GgufError> {
        const CHUNK: u64 = 1 << 20;
        let mut buf = vec![0u8; CHUNK.min(info.size) as usize];
        let mut done = 0u64;
        while done < info.size {
            let n = CHUNK.min(info.size - done) as usize;
            self.read_at(&mut buf[..n], info.data_offset + done)?;
            out.write_all(&buf[..n])
                .map_err(|e| GgufError::io(format!("writing tensor {}", info.name), e))?;
            done += n as u64;
        }
        Ok(done)
    }
}

/// Reads candle's view of a GGUF header from `reader` (at the start of a file) once our bounded
/// parser has accepted the same bytes; the reader is left where candle's reader leaves it.
///
/// candle's `Content::read` trusts fields it should not: it divides by `general.alignment` (0
/// panics) and multiplies tensor dims unchecked when a tensor is read (overflow panics, or wraps
/// in release builds). Every file that comes from elsewhere — a downloaded shard, a model given
/// on the command line — goes through here instead of `Content::read`.
pub fn read_content<R: Read + Seek>(reader: &mut R) -> candle_core::Result<Content> {
    let len = reader.seek(SeekFrom::End(0))?;
    reader.seek(SeekFrom::Start(0))?;
    let parsed = parse(&mut *reader, len).map_err(candle_core::Error::wrap)?;
    GgufFile::assemble(Backing::Memory(Vec::new()), parsed, len)
        .map_err(candle_core::Error::wrap)?;
    reader.seek(SeekFrom::Start(0))?;
    Content::read(reader)
}
