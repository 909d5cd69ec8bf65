//! GGUF (v2/v3) reading and writing, independent of candle.
//!
//! [`GgufFile`] parses the header, the metadata (kept in file order) and the tensor infos, and
//! reads tensor bytes on demand with positional reads — the file is never loaded whole.
//! [`GgufWriter`] writes a GGUF v3 file: metadata in the order given, tensor infos, and tensor
//! data packed at the file's alignment, streaming tensor bytes from a source file.
//!
//! Untrusted input: parsing never panics and allocates at most a small multiple of the file's
//! size. Strings, arrays, metadata and tensor counts are bounded both by fixed limits
//! ([`limits`]) and by the bytes left in the file; every tensor must lie inside the file at an
//! aligned offset with a size that is a whole number of its type's blocks.

mod parse;
mod read;
mod types;
mod value;
mod write;

pub use read::{GgufFile, TensorInfo, read_content};
pub use types::GgmlType;
pub use value::{Array, Value, ValueType};
pub use write::{GgufWriter, TensorData};

/// `GGUF` as it appears in the first four bytes.
pub const MAGIC: [u8; 4] = *b"GGUF";
/// Alignment of tensor data when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// The metadata key that sets the tensor data alignment.
pub const ALIGNMENT_KEY: &str = "general.alignment";

/// Fixed bounds applied while parsing (on top of "no more than the bytes left in the file").
pub mod limits {
    /// Longest metadata key.
    pub const MAX_KEY_LEN: u64 = 64 * 1024;
    /// Longest string value (a tokenizer JSON blob can be several MiB).
    pub const MAX_STRING_LEN: u64 = 256 * 1024 * 1024;
    /// Longest tensor name (ggml itself allows 63 bytes).
    pub const MAX_TENSOR_NAME_LEN: u64 = 1024;
    /// Most metadata entries.
    pub const MAX_METADATA_ENTRIES: u64 = 1 << 20;
    /// Most array elements in the whole metadata, all arrays together.
    pub const MAX_ARRAY_ELEMENTS_TOTAL: u64 = 1 << 24;
    /// Deepest nesting of arrays in arrays.
    pub const MAX_ARRAY_DEPTH: u32 = 4;
    /// Most tensors.
    pub const MAX_TENSORS: u64 = 1 << 20;
    /// Most dimensions of a tensor (ggml's `GGML_MAX_DIMS`).
    pub const MAX_DIMS: u32 = 4;
}

/// Why a GGUF file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// An I/O error other than running out of bytes.
    #[error("{context}")]
    Io {
        /// What was being done (includes the path when known).
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file does not start with `GGUF`.
    #[error("not a GGUF file (magic {found:02x?})")]
    BadMagic {
        /// The first bytes found.
        found: Vec<u8>,
    },
    /// A version other than 2 or 3 (v1 and big-endian files are not supported).
    #[error("unsupported GGUF version {version} (supported: 2, 3)")]
    UnsupportedVersion {
        /// The version field as read little-endian.
        version: u32,
    },
    /// The file ends before `what` is complete.
    #[error("file is truncated: {what} at byte {offset} runs past the end of the file")]
    Truncated {
        /// The item being read.
        what: String,
        /// File offset of the item.
        offset: u64,
    },
    /// A count or length exceeds a limit of [`limits`].
    #[error("{what} at byte {offset} is {value}, more than the limit {limit}")]
    TooLarge {
        /// The count or length.
        what: String,
        /// File offset of the field.
        offset: u64,
        /// The value found.
        value: u64,
        /// The limit.
        limit: u64,
    },
    /// A value is malformed (bad type tag, bool not 0/1, key not UTF-8, …).
    #[error("malformed {what} at byte {offset}: {reason}")]
    Malformed {
        /// The item being read.
        what: String,
        /// File offset of the item.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// Two metadata entries with the same key.
    #[error("duplicate metadata key {key:?}")]
    DuplicateKey {
        /// The key.
        key: String,
    },
    /// `general.alignment` is not a non-zero power of two `u32`.
    #[error("invalid general.alignment: {reason}")]
    BadAlignment {
        /// What is wrong.
        reason: String,
    },
    /// A tensor's ggml type id is unknown.
    #[error("tensor {tensor:?} has unsupported ggml type id {type_id}")]
    UnsupportedType {
        /// Tensor name.
        tensor: String,
        /// The type id.
        type_id: u32,
    },
    /// A tensor info is inconsistent (dims, block multiple, offset alignment, size mismatch).
    #[error("tensor {name:?}: {reason}")]
    BadTensor {
        /// Tensor name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// Two tensors with the same name.
    #[error("duplicate tensor name {name:?}")]
    DuplicateTensor {
        /// Tensor name.
        name: String,
    },
    /// A tensor's bytes extend past the end of the file.
    #[error(
        "tensor {name:?} spans bytes {start}..{end} but the file has {file_len} bytes (truncated or corrupt)"
    )]
    TensorOutOfBounds {
        /// Tensor name.
        name: String,
        /// Absolute start offset.
        start: u64,
        /// Absolute end offset (exclusive).
        end: u64,
        /// File size.
        file_len: u64,
    },
    /// A metadata key that is required is absent.
    #[error("metadata key {key:?} is missing")]
    MissingKey {
        /// The key.
        key: String,
    },
    /// A metadata value has an unexpected type or range.
    #[error("metadata key {key:?} should be {expected}, found {found:?}")]
    WrongType {
        /// The key.
        key: String,
        /// What was expected.
        expected: &'static str,
        /// The value type found.
        found: ValueType,
    },
}

impl GgufError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}

/// Rounds `pos` up to a multiple of `align` (a power of two); `None` on overflow.
pub(crate) fn align_up(pos: u64, align: u64) -> Option<u64> {
    Some(pos.checked_add(align - 1)? / align * align)
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;

    /// A one-tensor GGUF with `general.alignment = 32`, and the byte offsets of the alignment
    /// value and of the tensor's first dimension.
    fn tiny() -> (Vec<u8>, usize, usize) {
        let data = [0u8; 16];
        let mut w = GgufWriter::new();
        w.push_metadata(ALIGNMENT_KEY, Value::U32(32));
        w.add_tensor("t", GgmlType::F32, &[4], TensorData::Bytes(&data));
        let mut bytes = Vec::new();
        w.write(&mut bytes).expect("write");
        let find = |pat: &[u8]| {
            bytes
                .windows(pat.len())
                .position(|w| w == pat)
                .expect("pattern")
                + pat.len()
        };
        let align_at = find(&[ALIGNMENT_KEY.as_bytes(), &4u32.to_le_bytes()].concat());
        let dim_at = find(&[&1u64.to_le_bytes()[..], b"t", &1u32.to_le_bytes()].concat());
        (bytes, align_at, dim_at)
    }

    #[test]
    fn read_content_accepts_what_our_parser_accepts() {
        let (bytes, ..) = tiny();
        let content = read_content(&mut Cursor::new(bytes)).expect("valid file");
        assert!(content.tensor_infos.contains_key("t"));
    }

    #[test]
    fn read_content_refuses_zero_alignment_instead_of_dividing_by_it() {
        // candle's own reader panics here ("attempt to divide by zero").
        let (mut bytes, align_at, _) = tiny();
        bytes[align_at..align_at + 4].copy_from_slice(&0u32.to_le_bytes());
        let err = read_content(&mut Cursor::new(bytes)).expect_err("refused");
        assert!(err.to_string().contains("general.alignment"), "{err}");
    }

    #[test]
    fn read_content_refuses_dims_whose_size_overflows() {
        // candle multiplies these unchecked when the tensor is read (found by `gguf_load`).
        let (mut bytes, _, dim_at) = tiny();
        bytes[dim_at..dim_at + 8].copy_from_slice(&(1u64 << 62).to_le_bytes());
        let err = read_content(&mut Cursor::new(bytes)).expect_err("refused");
        assert!(err.to_string().contains("do not fit"), "{err}");
    }
}
