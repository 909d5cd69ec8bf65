//! A fixed-length set of piece indices in BEP 3 bit order: piece 0 is the high bit of byte 0.
//!
//! Invariants: `bytes.len() == len.div_ceil(8)` and the spare bits of the last byte are always
//! zero, so two bitfields of the same length are equal exactly when their bytes are, and
//! [`Bitfield::as_bytes`] can go on the wire unchanged. Indices past the end read as unset and
//! are ignored by the setters (they come from peers; nothing here panics on them).

/// Why bytes from a peer (or a resume file) are not a bitfield of the expected length.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BitfieldError {
    /// The byte count does not match the piece count.
    #[error("a bitfield of {len} pieces takes {expected} bytes, got {got}")]
    WrongLength {
        /// Pieces the bitfield must describe.
        len: u32,
        /// Bytes needed for `len` bits.
        expected: usize,
        /// Bytes received.
        got: usize,
    },
    /// A bit past the last piece is set.
    #[error("spare bits set past piece {len} in the last byte ({last:#04x})")]
    SpareBitsSet {
        /// Pieces the bitfield must describe.
        len: u32,
        /// The offending last byte.
        last: u8,
    },
}

/// A set of piece indices `0..len` (see the module docs for the bit order).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Bitfield {
    bytes: Vec<u8>,
    len: u32,
}

impl Bitfield {
    /// An empty bitfield of `len` pieces.
    pub fn new(len: u32) -> Bitfield {
        Bitfield {
            bytes: vec![0; byte_len(len)],
            len,
        }
    }

    /// A bitfield with all `len` pieces set.
    pub fn full(len: u32) -> Bitfield {
        let mut bytes = vec![0xff; byte_len(len)];
        if let Some(last) = bytes.last_mut() {
            *last &= last_byte_mask(len);
        }
        Bitfield { bytes, len }
    }

    /// Parses `bytes` as a bitfield of `len` pieces; refuses a wrong byte count or set spare
    /// bits.
    pub fn from_bytes(bytes: &[u8], len: u32) -> Result<Bitfield, BitfieldError> {
        let expected = byte_len(len);
        if bytes.len() != expected {
            return Err(BitfieldError::WrongLength {
                len,
                expected,
                got: bytes.len(),
            });
        }
        if let Some(&last) = bytes.last()
            && last & !last_byte_mask(len) != 0
        {
            return Err(BitfieldError::SpareBitsSet { len, last });
        }
        Ok(Bitfield {
            bytes: bytes.to_vec(),
            len,
        })
    }

    /// The wire form: `len.div_ceil(8)` bytes, spare bits zero.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// How many pieces the bitfield describes.
    pub fn len(&self) -> u32 {
        self.len
    }

    /// Whether it describes no pieces at all.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether piece `index` is set (`false` past the end).
    pub fn get(&self, index: u32) -> bool {
        if index >= self.len {
            return false;
        }
        let (byte, mask) = locate(index);
        self.bytes[byte] & mask != 0
    }

    /// Sets piece `index`; returns whether it was newly set (`false` past the end).
    pub fn set(&mut self, index: u32) -> bool {
        if index >= self.len {
            return false;
        }
        let (byte, mask) = locate(index);
        let was = self.bytes[byte] & mask != 0;
        self.bytes[byte] |= mask;
        !was
    }

    /// Clears piece `index`; returns whether it was set before (`false` past the end).
    pub fn clear(&mut self, index: u32) -> bool {
        if index >= self.len {
            return false;
        }
        let (byte, mask) = locate(index);
        let was = self.bytes[byte] & mask != 0;
        self.bytes[byte] &= !mask;
        was
    }

    /// How many pieces are set.
    pub fn count_ones(&self) -> u32 {
        self.bytes.iter().map(|b| b.count_ones()).sum()
    }

    /// Whether every piece is set (true for a zero-length bitfield).
    pub fn is_full(&self) -> bool {
        self.count_ones() == self.len
    }

    /// The set piece indices, ascending.
    pub fn iter_ones(&self) -> impl Iterator<Item = u32> + '_ {
        self.bytes
            .iter()
            .enumerate()
            .filter(|(_, b)| **b != 0)
            .flat_map(|(i, &b)| {
                (0..8u32).filter_map(move |bit| {
                    let index = u32::try_from(i).ok()?.checked_mul(8)?.checked_add(bit)?;
                    (b & (0x80 >> bit) != 0).then_some(index)
                })
            })
    }

    /// The unset piece indices, ascending.
    pub fn iter_zeros(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.len).filter(|&i| !self.get(i))
    }
}

impl std::fmt::Debug for Bitfield {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bitfield({}/{} ", self.count_ones(), self.len)?;
        for i in 0..self.len.min(64) {
            f.write_str(if self.get(i) { "1" } else { "0" })?;
        }
        if self.len > 64 {
            f.write_str("…")?;
        }
        f.write_str(")")
    }
}

fn byte_len(len: u32) -> usize {
    // u32 → usize cannot truncate on the 32/64-bit targets we build for.
    len.div_ceil(8) as usize
}

fn locate(index: u32) -> (usize, u8) {
    ((index / 8) as usize, 0x80 >> (index % 8))
}

/// The bits of the last byte that belong to pieces.
fn last_byte_mask(len: u32) -> u8 {
    match len % 8 {
        0 => 0xff,
        r => !(0xffu8 >> r),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn piece_zero_is_the_high_bit_of_byte_zero() {
        let mut b = Bitfield::new(10);
        assert!(b.set(0));
        assert!(!b.set(0));
        assert!(b.set(9));
        assert_eq!(b.as_bytes(), &[0x80, 0x40]);
        assert_eq!(b.iter_ones().collect::<Vec<_>>(), vec![0, 9]);
        assert_eq!(b.count_ones(), 2);
        assert!(b.clear(0));
        assert!(!b.clear(0));
        assert_eq!(b.as_bytes(), &[0x00, 0x40]);
    }

    #[test]
    fn full_leaves_spare_bits_clear() {
        let b = Bitfield::full(10);
        assert_eq!(b.as_bytes(), &[0xff, 0xc0]);
        assert!(b.is_full());
        assert_eq!(b.iter_zeros().count(), 0);
        assert!(Bitfield::full(0).is_full());
        assert_eq!(Bitfield::full(16).as_bytes(), &[0xff, 0xff]);
    }

    #[test]
    fn from_bytes_refuses_wrong_length_and_spare_bits() {
        assert!(matches!(
            Bitfield::from_bytes(&[0xff], 10),
            Err(BitfieldError::WrongLength { expected: 2, .. })
        ));
        assert!(matches!(
            Bitfield::from_bytes(&[0xff, 0xe0], 10),
            Err(BitfieldError::SpareBitsSet { .. })
        ));
        let b = Bitfield::from_bytes(&[0xff, 0xc0], 10).unwrap();
        assert_eq!(b, Bitfield::full(10));
    }

    #[test]
    fn out_of_range_indices_are_ignored() {
        let mut b = Bitfield::new(3);
        assert!(!b.set(3));
        assert!(!b.get(u32::MAX));
        assert!(!b.clear(100));
        assert_eq!(b.as_bytes(), &[0]);
    }
}
