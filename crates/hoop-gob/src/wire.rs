//! Byte-level gob primitives: message framing, unsigned/signed integers and
//! length-prefixed byte strings, for reading ([`Reader`]) and writing (the
//! `put_*` functions).
//!
//! It deliberately knows nothing about types, structs or interfaces (see
//! `types.rs` and `decode.rs`). Every read is bounded by the current message
//! and the input, so no read can index out of range or overflow.

use crate::GobError;

/// Gob never encodes an unsigned integer in more than 8 bytes.
const MAX_UINT_BYTES: usize = 8;

/// A cursor over a gob stream that reads one message at a time.
///
/// Values are read inside the current message; only [`Reader::next_message`]
/// moves to the next one (Go's decoder does the same: a value continues in the
/// next message only where an interface's type sequence pulls it in).
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    msg_end: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Self {
            data,
            pos: 0,
            msg_end: 0,
        }
    }

    /// True when the current message has been read completely.
    pub(crate) fn at_message_end(&self) -> bool {
        self.pos >= self.msg_end
    }

    /// Bytes left in the whole stream. Every gob value occupies at least one
    /// byte, so an element count larger than this cannot be genuine.
    pub(crate) fn remaining(&self) -> usize {
        self.data.len().saturating_sub(self.pos)
    }

    /// The error for a read that would go past `limit`: true truncation when
    /// the limit is the end of the input, corruption when it is the end of a
    /// message that is followed by more input.
    fn overrun(&self, limit: usize) -> GobError {
        if limit >= self.data.len() {
            GobError::Truncated
        } else {
            GobError::Corrupt("value overruns its message")
        }
    }

    fn take_limited(&mut self, n: usize, limit: usize) -> Result<&'a [u8], GobError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|end| *end <= limit)
            .ok_or_else(|| self.overrun(limit))?;
        let bytes = self
            .data
            .get(self.pos..end)
            .ok_or_else(|| self.overrun(limit))?;
        self.pos = end;
        Ok(bytes)
    }

    fn read_uint_limited(&mut self, limit: usize) -> Result<u64, GobError> {
        let first = *self
            .take_limited(1, limit)?
            .first()
            .ok_or(GobError::Truncated)?;
        if first < 0x80 {
            return Ok(u64::from(first));
        }
        // A byte >= 0x80 is the negated count of big-endian bytes that follow.
        let n = usize::from(first.wrapping_neg());
        if n > MAX_UINT_BYTES {
            return Err(GobError::Corrupt("invalid unsigned integer encoding"));
        }
        let bytes = self.take_limited(n, limit)?;
        Ok(bytes.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
    }

    /// Starts the next message. Must be called at the end of the current one.
    pub(crate) fn next_message(&mut self) -> Result<(), GobError> {
        if self.pos >= self.data.len() {
            return Err(GobError::Truncated);
        }
        let len = self.read_uint_limited(self.data.len())?;
        if len == 0 {
            return Err(GobError::Corrupt("empty message"));
        }
        let end = usize::try_from(len)
            .ok()
            .and_then(|len| self.pos.checked_add(len))
            .filter(|end| *end <= self.data.len())
            .ok_or(GobError::Truncated)?;
        self.msg_end = end;
        Ok(())
    }

    /// Takes `n` raw bytes from the current message.
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], GobError> {
        self.take_limited(n, self.msg_end)
    }

    pub(crate) fn read_uint(&mut self) -> Result<u64, GobError> {
        self.read_uint_limited(self.msg_end)
    }

    /// A signed integer: bit 0 is the sign, the rest the magnitude (complemented when negative).
    pub(crate) fn read_int(&mut self) -> Result<i64, GobError> {
        let u = self.read_uint()?;
        let magnitude =
            i64::try_from(u >> 1).map_err(|_| GobError::Corrupt("invalid integer encoding"))?;
        Ok(if u & 1 == 1 { !magnitude } else { magnitude })
    }

    /// An unsigned integer used as a length or count.
    pub(crate) fn read_len(&mut self) -> Result<usize, GobError> {
        let n = self.read_uint()?;
        usize::try_from(n).map_err(|_| self.overrun(self.msg_end))
    }

    /// A length-prefixed byte string (gob `string` and `[]byte`).
    pub(crate) fn read_bytes(&mut self) -> Result<&'a [u8], GobError> {
        let n = self.read_len()?;
        self.take(n)
    }

    /// An element count (slice, array, map, struct field list), checked
    /// against the input that is left.
    pub(crate) fn read_count(&mut self) -> Result<usize, GobError> {
        let n = self.read_len()?;
        if n > self.remaining() {
            return Err(GobError::CountTooLarge(n));
        }
        Ok(n)
    }
}

pub(crate) fn put_uint(out: &mut Vec<u8>, v: u64) {
    if let Ok(small) = u8::try_from(v)
        && small < 0x80
    {
        out.push(small);
        return;
    }
    let bytes = v.to_be_bytes();
    let skip = usize::try_from(v.leading_zeros() / 8).unwrap_or(0);
    if let Some(significant) = bytes.get(skip..) {
        let n = u8::try_from(significant.len()).unwrap_or(0);
        out.push(n.wrapping_neg());
        out.extend_from_slice(significant);
    }
}

pub(crate) fn put_int(out: &mut Vec<u8>, v: i64) {
    let u = if v < 0 {
        ((!v).cast_unsigned() << 1) | 1
    } else {
        v.cast_unsigned() << 1
    };
    put_uint(out, u);
}

pub(crate) fn put_len(out: &mut Vec<u8>, len: usize) {
    put_uint(out, u64::try_from(len).unwrap_or(u64::MAX));
}

pub(crate) fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_len(out, b.len());
    out.extend_from_slice(b);
}

/// Appends `body` as one length-prefixed message.
pub(crate) fn put_message(out: &mut Vec<u8>, body: &[u8]) {
    put_bytes(out, body);
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn uint_encoding_matches_gob_spec() {
        let cases: [(u64, &[u8]); 5] = [
            (0, &[0x00]),
            (7, &[0x07]),
            (256, &[0xfe, 0x01, 0x00]),
            (130, &[0xff, 0x82]),
            (
                u64::MAX,
                &[0xf8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
            ),
        ];
        for (v, want) in cases {
            let mut out = Vec::new();
            put_uint(&mut out, v);
            assert_eq!(out, want, "encode {v}");
            let mut msg = Vec::new();
            put_message(&mut msg, &out);
            let mut r = Reader::new(&msg);
            r.next_message().unwrap();
            assert_eq!(r.read_uint().unwrap(), v);
            assert!(r.at_message_end());
        }
    }

    #[test]
    fn int_encoding_matches_gob_spec() {
        for (v, want) in [
            (-65i64, vec![0xff, 0x81]),
            (65, vec![0xff, 0x82]),
            (-1, vec![0x01]),
        ] {
            let mut out = Vec::new();
            put_int(&mut out, v);
            assert_eq!(out, want, "encode {v}");
        }
        for v in [i64::MIN, i64::MAX, 0, -1, 1] {
            let mut body = Vec::new();
            put_int(&mut body, v);
            let mut msg = Vec::new();
            put_message(&mut msg, &body);
            let mut r = Reader::new(&msg);
            r.next_message().unwrap();
            assert_eq!(r.read_int().unwrap(), v);
        }
    }

    #[test]
    fn oversized_uint_is_rejected() {
        let msg = [0x02, 0x80, 0x00];
        let mut r = Reader::new(&msg);
        r.next_message().unwrap();
        assert!(matches!(r.read_uint(), Err(GobError::Corrupt(_))));
    }
}
