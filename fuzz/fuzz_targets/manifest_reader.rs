//! Any bytes given to the streaming manifest reader, one byte at a time from its source (so
//! every buffer boundary is crossed): it accepts exactly what the whole-input decoder accepts,
//! with the same entries, and reads under a wrong length are refused.
#![no_main]
use freight_core::Manifest;
use freight_core::manifest::{Entry, Reader};
use libfuzzer_sys::fuzz_target;

/// Hands out one byte per read.
struct Trickle<'a>(&'a [u8]);

impl std::io::Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match (self.0.split_first(), buf.first_mut()) {
            (Some((b, rest)), Some(slot)) => {
                *slot = *b;
                self.0 = rest;
                Ok(1)
            }
            _ => Ok(0),
        }
    }
}

fn read_all(data: &[u8], len: u64) -> Option<Vec<Entry>> {
    let mut r = Reader::new(Trickle(data), len, "fuzz").ok()?;
    let mut out = Vec::new();
    loop {
        match r.next_entry() {
            Ok(Some(e)) => out.push(e),
            Ok(None) => return Some(out),
            Err(_) => return None,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let whole = Manifest::decode(data, "fuzz").ok();
    let streamed = read_all(data, data.len() as u64);
    assert_eq!(whole.as_ref().map(|m| &m.entries), streamed.as_ref());
    if let Some(m) = whole {
        assert_eq!(m.encode(), data, "accepted a non-canonical encoding");
        // A length that lies either way is refused.
        assert!(read_all(data, data.len() as u64 - 1).is_none());
        assert!(read_all(data, data.len() as u64 + 1).is_none());
    }
});
