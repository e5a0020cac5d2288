//! The byte cursor every decoder of untrusted little-endian bytes uses: the canonical manifest
//! and instruction encodings here, and the transfer protocol's frames in `freight-transport`.
//!
//! One cursor, so that every format checks lengths the same way: nothing is read past the end,
//! and a length or count taken from the input is checked against the bytes that remain (or a
//! limit) before anything is allocated for it.

/// A cursor over bytes that came from outside (a file, a peer).
///
/// Every read checks what is left first and fails with the caller's own error: `err(offset,
/// reason)` turns the byte offset and a short reason into the format's error type, so a
/// manifest reports its `Error::BadManifest` and a frame its `ProtocolError::Malformed`.
///
/// ```
/// use freight_core::codec::Reader;
///
/// let mut r = Reader::new(&[7, 1, 0, 9][..], |at, why: &str| format!("offset {at}: {why}"));
/// assert_eq!(r.u8(), Ok(7));
/// assert_eq!(r.u16(), Ok(1));
/// assert_eq!(r.u32(), Err("offset 3: truncated (wants 4 bytes, 1 left)".to_string()));
/// ```
pub struct Reader<'a, F> {
    buf: &'a [u8],
    pos: usize,
    err: F,
}

impl<'a, E, F: Fn(usize, &str) -> E> Reader<'a, F> {
    /// A cursor at the start of `buf`; `err` makes the format's error for an offset and a reason.
    pub fn new(buf: &'a [u8], err: F) -> Self {
        Reader { buf, pos: 0, err }
    }

    /// Offset of the next unread byte.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// The format's error for `offset` (usually one saved with [`pos`](Self::pos) before the
    /// field that turned out bad).
    pub fn err(&self, offset: usize, reason: &str) -> E {
        (self.err)(offset, reason)
    }

    /// The format's error at the current offset.
    pub fn err_here(&self, reason: &str) -> E {
        self.err(self.pos, reason)
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The next `n` bytes, or a `truncated` error if fewer remain.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], E> {
        if self.remaining() < n {
            let reason = format!("truncated (wants {n} bytes, {} left)", self.remaining());
            return Err(self.err_here(&reason));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// Everything not yet read (for a field that runs to the end).
    pub fn rest(&mut self) -> &'a [u8] {
        let s = &self.buf[self.pos..];
        self.pos = self.buf.len();
        s
    }

    /// The next `N` bytes as an array (IDs, hashes).
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], E> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    /// A byte.
    pub fn u8(&mut self) -> Result<u8, E> {
        Ok(self.take(1)?[0])
    }

    /// A little-endian u16.
    pub fn u16(&mut self) -> Result<u16, E> {
        self.array().map(u16::from_le_bytes)
    }

    /// A little-endian u32.
    pub fn u32(&mut self) -> Result<u32, E> {
        self.array().map(u32::from_le_bytes)
    }

    /// A little-endian u64.
    pub fn u64(&mut self) -> Result<u64, E> {
        self.array().map(u64::from_le_bytes)
    }

    /// A little-endian i64.
    pub fn i64(&mut self) -> Result<i64, E> {
        self.array().map(i64::from_le_bytes)
    }

    /// A u32-length-prefixed byte string of at most `max` bytes; the limit is checked before
    /// the length is trusted, and the error points at the length field.
    pub fn bytes(&mut self, max: usize) -> Result<&'a [u8], E> {
        let at = self.pos;
        let n = self.u32()? as usize;
        if n > max {
            return Err(self.err(at, &format!("length {n} exceeds the limit of {max}")));
        }
        self.take(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Bad = (usize, String);

    fn reader(buf: &[u8]) -> Reader<'_, impl Fn(usize, &str) -> Bad> {
        Reader::new(buf, |at, why: &str| (at, why.to_string()))
    }

    #[test]
    fn reads_little_endian_fields_in_order() {
        let mut buf = vec![0xAB];
        buf.extend_from_slice(&0x1234u16.to_le_bytes());
        buf.extend_from_slice(&0xDEAD_BEEFu32.to_le_bytes());
        buf.extend_from_slice(&u64::MAX.to_le_bytes());
        buf.extend_from_slice(&(-5i64).to_le_bytes());
        buf.extend_from_slice(&[1, 2, 3]);
        let mut r = reader(&buf);
        assert_eq!(r.u8(), Ok(0xAB));
        assert_eq!(r.u16(), Ok(0x1234));
        assert_eq!(r.u32(), Ok(0xDEAD_BEEF));
        assert_eq!(r.u64(), Ok(u64::MAX));
        assert_eq!(r.i64(), Ok(-5));
        assert_eq!(r.pos(), 23);
        assert_eq!(r.array::<2>(), Ok([1, 2]));
        assert_eq!(r.remaining(), 1);
        assert_eq!(r.rest(), &[3]);
        assert_eq!(r.remaining(), 0);
        assert_eq!(r.rest(), &[] as &[u8]);
    }

    #[test]
    fn a_short_read_fails_where_it_starts_and_consumes_nothing() {
        let mut r = reader(&[1, 2, 3]);
        r.u8().unwrap();
        assert_eq!(
            r.u32(),
            Err((1, "truncated (wants 4 bytes, 2 left)".to_string()))
        );
        assert_eq!(r.pos(), 1);
        assert_eq!(r.take(2), Ok(&[2, 3][..]));
        assert!(r.u8().is_err());
        assert_eq!(r.err_here("why").0, 3);
    }

    #[test]
    fn a_declared_length_is_checked_before_it_is_trusted() {
        // A length of 4 GiB - 1 in five bytes: refused against the limit, pointing at the length.
        let mut buf = 7u32.to_le_bytes().to_vec();
        buf.extend_from_slice(&u32::MAX.to_le_bytes());
        buf.push(0);
        let mut r = reader(&buf);
        r.u32().unwrap();
        let (at, why) = r.bytes(1 << 20).unwrap_err();
        assert_eq!(at, 4);
        assert!(why.contains("exceeds the limit of 1048576"), "{why}");
        // Within the limit but beyond the input: truncated, nothing allocated.
        let mut r = reader(&buf[4..]);
        assert!(r.bytes(usize::MAX).unwrap_err().1.starts_with("truncated"));
        let mut ok = 2u32.to_le_bytes().to_vec();
        ok.extend_from_slice(b"hi!");
        let mut r = reader(&ok);
        assert_eq!(r.bytes(2), Ok(&b"hi"[..]));
        assert_eq!(r.remaining(), 1);
    }
}
