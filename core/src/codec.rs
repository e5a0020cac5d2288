//! Little-endian decoding of the canonical formats (manifests, instructions), with every
//! length checked against what is left before anything is allocated.

use crate::error::{Error, Result};

/// A cursor over canonical bytes; `err` turns (offset, reason) into the format's own error.
pub(crate) struct Decoder<'a, F: Fn(usize, &str) -> Error> {
    buf: &'a [u8],
    /// Offset of the next unread byte.
    pub pos: usize,
    err: F,
}

impl<'a, F: Fn(usize, &str) -> Error> Decoder<'a, F> {
    /// A decoder at the start of `buf`.
    pub fn new(buf: &'a [u8], err: F) -> Self {
        Decoder { buf, pos: 0, err }
    }
    /// The format's error for `offset`.
    pub fn err(&self, offset: usize, reason: &str) -> Error {
        (self.err)(offset, reason)
    }
    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.remaining() < n {
            return Err(self.err(self.pos, "truncated"));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    /// A byte.
    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    /// A little-endian u16.
    pub fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2")))
    }
    /// A little-endian u32.
    pub fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    /// A little-endian u64.
    pub fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    /// A little-endian i64.
    pub fn i64(&mut self) -> Result<i64> {
        Ok(i64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    /// A u32-length-prefixed byte string of at most `max` bytes, limit checked first.
    pub fn bytes(&mut self, max: usize) -> Result<&'a [u8]> {
        let at = self.pos;
        let n = self.u32()? as usize;
        if n > max {
            return Err(self.err(at, &format!("length {n} exceeds the limit of {max}")));
        }
        self.take(n)
    }
}
