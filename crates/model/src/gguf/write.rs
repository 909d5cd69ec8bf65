//! [`GgufWriter`]: writes a GGUF v3 file.
//!
//! Layout: header, metadata in the order given, tensor infos in the order added, zero padding to
//! the alignment, then each tensor's bytes followed by zero padding to the alignment. Tensor
//! offsets are therefore consecutive and aligned, which is what llama.cpp's loader requires.
//! Tensor bytes are copied as-is, streamed from a source [`GgufFile`] when they come from one.

use std::collections::HashSet;
use std::io::{self, Write};

use super::value::encode_string;
use super::{
    ALIGNMENT_KEY, DEFAULT_ALIGNMENT, GgmlType, GgufError, GgufFile, MAGIC, TensorInfo, Value,
    align_up,
};

/// Where a tensor's bytes come from.
#[derive(Debug, Clone, Copy)]
pub enum TensorData<'a> {
    /// Bytes in memory.
    Bytes(&'a [u8]),
    /// A tensor of an opened file, streamed at write time.
    File(&'a GgufFile, &'a TensorInfo),
}

impl TensorData<'_> {
    fn len(&self) -> u64 {
        match self {
            TensorData::Bytes(b) => b.len() as u64,
            TensorData::File(_, info) => info.size,
        }
    }
}

#[derive(Debug)]
struct PendingTensor<'a> {
    name: String,
    dims: Vec<u64>,
    ggml_type: GgmlType,
    data: TensorData<'a>,
}

/// Builds a GGUF v3 file; nothing is written until [`GgufWriter::write`].
#[derive(Debug, Default)]
pub struct GgufWriter<'a> {
    metadata: Vec<(String, Value)>,
    tensors: Vec<PendingTensor<'a>>,
}

impl<'a> GgufWriter<'a> {
    /// An empty writer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a metadata entry (order is kept; duplicates are refused at write time).
    pub fn push_metadata(&mut self, key: impl Into<String>, value: Value) -> &mut Self {
        self.metadata.push((key.into(), value));
        self
    }

    /// Appends a tensor; its data must be exactly the size its type and dims imply.
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        ggml_type: GgmlType,
        dims: &[u64],
        data: TensorData<'a>,
    ) -> &mut Self {
        self.tensors.push(PendingTensor {
            name: name.into(),
            dims: dims.to_vec(),
            ggml_type,
            data,
        });
        self
    }

    /// Appends a tensor of `file` under `name`, same type and dims, bytes streamed at write time.
    pub fn copy_tensor(
        &mut self,
        name: impl Into<String>,
        file: &'a GgufFile,
        info: &'a TensorInfo,
    ) -> &mut Self {
        self.add_tensor(
            name,
            info.ggml_type,
            &info.dims,
            TensorData::File(file, info),
        )
    }

    fn alignment(&self) -> Result<u64, GgufError> {
        match self.metadata.iter().find(|(k, _)| k == ALIGNMENT_KEY) {
            None => Ok(DEFAULT_ALIGNMENT),
            Some((_, Value::U32(a))) if *a != 0 && a.is_power_of_two() => Ok(u64::from(*a)),
            Some((_, v)) => Err(GgufError::BadAlignment {
                reason: format!("{v:?}"),
            }),
        }
    }

    fn validate(&self) -> Result<(), GgufError> {
        let mut keys = HashSet::new();
        for (k, _) in &self.metadata {
            if !keys.insert(k.as_str()) {
                return Err(GgufError::DuplicateKey { key: k.clone() });
            }
        }
        let mut names = HashSet::new();
        for t in &self.tensors {
            let bad = |reason: String| GgufError::BadTensor {
                name: t.name.clone(),
                reason,
            };
            if !names.insert(t.name.as_str()) {
                return Err(GgufError::DuplicateTensor {
                    name: t.name.clone(),
                });
            }
            if t.dims.len() > super::limits::MAX_DIMS as usize {
                return Err(bad(format!("{} dimensions", t.dims.len())));
            }
            let size = t
                .ggml_type
                .tensor_bytes(&t.dims)
                .ok_or_else(|| bad(format!("dims {:?} do not fit {}", t.dims, t.ggml_type)))?;
            if size != t.data.len() {
                return Err(bad(format!(
                    "data is {} bytes, {} {:?} needs {size}",
                    t.data.len(),
                    t.ggml_type,
                    t.dims
                )));
            }
        }
        Ok(())
    }

    /// The exact number of bytes [`GgufWriter::write`] will produce.
    pub fn encoded_len(&self) -> Result<u64, GgufError> {
        self.validate()?;
        let mut counter = Counter {
            inner: io::sink(),
            written: 0,
        };
        self.write_header(&mut counter)
            .map_err(|e| GgufError::io("sizing header", e))?;
        let align = self.alignment()?;
        let overflow = || GgufError::BadAlignment {
            reason: "file size overflows".into(),
        };
        let mut pos = align_up(counter.written, align).ok_or_else(overflow)?;
        for t in &self.tensors {
            pos = pos
                .checked_add(t.data.len())
                .and_then(|p| align_up(p, align))
                .ok_or_else(overflow)?;
        }
        Ok(pos)
    }

    fn write_header(&self, w: &mut impl Write) -> io::Result<()> {
        let align = self.alignment().unwrap_or(DEFAULT_ALIGNMENT);
        w.write_all(&MAGIC)?;
        w.write_all(&3u32.to_le_bytes())?;
        w.write_all(&(self.tensors.len() as u64).to_le_bytes())?;
        w.write_all(&(self.metadata.len() as u64).to_le_bytes())?;
        for (k, v) in &self.metadata {
            encode_string(w, k.as_bytes())?;
            w.write_all(&v.value_type().to_u32().to_le_bytes())?;
            v.encode(w)?;
        }
        let mut offset = 0u64;
        for t in &self.tensors {
            encode_string(w, t.name.as_bytes())?;
            w.write_all(&(t.dims.len() as u32).to_le_bytes())?;
            for d in &t.dims {
                w.write_all(&d.to_le_bytes())?;
            }
            w.write_all(&t.ggml_type.to_u32().to_le_bytes())?;
            w.write_all(&offset.to_le_bytes())?;
            offset = align_up(offset + t.data.len(), align).unwrap_or(u64::MAX);
        }
        Ok(())
    }

    /// Writes the file to `out` (buffer it: many small writes are made); returns bytes written.
    pub fn write(&self, out: &mut dyn Write) -> Result<u64, GgufError> {
        self.validate()?;
        let align = self.alignment()?;
        let mut w = Counter {
            inner: out,
            written: 0,
        };
        let io_err = |what: &str| {
            let what = what.to_string();
            move |e| GgufError::io(format!("writing GGUF {what}"), e)
        };
        self.write_header(&mut w).map_err(io_err("header"))?;
        pad(&mut w, align).map_err(io_err("padding"))?;
        for t in &self.tensors {
            match t.data {
                TensorData::Bytes(b) => w.write_all(b).map_err(io_err(&t.name))?,
                TensorData::File(file, info) => {
                    file.copy_tensor(info, &mut w)?;
                }
            }
            pad(&mut w, align).map_err(io_err("padding"))?;
        }
        w.flush().map_err(io_err("flush"))?;
        Ok(w.written)
    }
}

fn pad<W: Write>(w: &mut Counter<W>, align: u64) -> io::Result<()> {
    let target = align_up(w.written, align).ok_or(io::ErrorKind::InvalidInput)?;
    let zeros = [0u8; 64];
    let mut left = target - w.written;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        w.write_all(&zeros[..n])?;
        left -= n as u64;
    }
    Ok(())
}

/// Counts bytes passing through.
struct Counter<W> {
    inner: W,
    written: u64,
}

impl<W: Write> Write for Counter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::Array;

    fn sample_writer(data: &[u8]) -> GgufWriter<'_> {
        let mut w = GgufWriter::new();
        w.push_metadata("general.architecture", Value::string("llama"))
            .push_metadata(
                "a.nested",
                Value::Array(Array::Array(vec![
                    Array::U8(vec![1, 2]),
                    Array::String(vec![b"x".to_vec()]),
                ])),
            )
            .push_metadata("a.bool", Value::Bool(true))
            .push_metadata("a.f64", Value::F64(0.5))
            .push_metadata("a.empty", Value::Array(Array::I64(vec![])));
        w.add_tensor(
            "t.f32",
            GgmlType::F32,
            &[3, 2],
            TensorData::Bytes(&data[..24]),
        );
        w.add_tensor(
            "t.q8",
            GgmlType::Q8_0,
            &[32],
            TensorData::Bytes(&data[24..58]),
        );
        w
    }

    #[test]
    fn written_file_reads_back_identically() {
        let data: Vec<u8> = (0..58u8).collect();
        let w = sample_writer(&data);
        let mut out = Vec::new();
        let n = w.write(&mut out).unwrap();
        assert_eq!(n, out.len() as u64);
        assert_eq!(w.encoded_len().unwrap(), n);
        let g = GgufFile::from_bytes(out).unwrap();
        assert_eq!(g.version(), 3);
        assert_eq!(g.metadata(), &w.metadata[..]);
        let names: Vec<_> = g.tensors().iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["t.f32", "t.q8"]);
        assert_eq!(g.read_tensor(&g.tensors()[0]).unwrap(), &data[..24]);
        assert_eq!(g.read_tensor(&g.tensors()[1]).unwrap(), &data[24..58]);
        assert_eq!(g.tensors()[1].offset % 32, 0);
    }

    #[test]
    fn refuses_wrong_data_size_and_duplicates() {
        let data = [0u8; 16];
        let mut w = GgufWriter::new();
        w.add_tensor("t", GgmlType::F32, &[3], TensorData::Bytes(&data));
        assert!(matches!(
            w.write(&mut Vec::new()),
            Err(GgufError::BadTensor { .. })
        ));
        let mut w = GgufWriter::new();
        w.push_metadata("k", Value::U8(1))
            .push_metadata("k", Value::U8(2));
        assert!(matches!(
            w.write(&mut Vec::new()),
            Err(GgufError::DuplicateKey { .. })
        ));
    }

    #[test]
    fn honours_custom_alignment() {
        let data = [7u8; 4];
        let mut w = GgufWriter::new();
        w.push_metadata(ALIGNMENT_KEY, Value::U32(64));
        w.add_tensor("a", GgmlType::F32, &[1], TensorData::Bytes(&data));
        w.add_tensor("b", GgmlType::F32, &[1], TensorData::Bytes(&data));
        let mut out = Vec::new();
        w.write(&mut out).unwrap();
        let g = GgufFile::from_bytes(out).unwrap();
        assert_eq!(g.alignment(), 64);
        assert_eq!(g.data_offset() % 64, 0);
        assert_eq!(g.tensors()[1].offset, 64);
    }
}
