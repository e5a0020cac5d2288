//! Identifiers: chunk IDs (BLAKE3 of uncompressed bytes) and package IDs (site code + 5 hex).

use crate::error::{Error, Result};
use std::fmt;

/// A chunk's identity: the BLAKE3 hash of its uncompressed bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    /// Hashes `data` to its chunk ID.
    pub fn of(data: &[u8]) -> Self {
        ChunkId(*blake3::hash(data).as_bytes())
    }

    /// Lower-case hex form (64 characters).
    pub fn to_hex(&self) -> String {
        blake3::Hash::from_bytes(self.0).to_hex().to_string()
    }

    /// Short form for messages (first 16 hex digits).
    pub fn short(&self) -> String {
        self.to_hex()[..16].to_string()
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({})", self.short())
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// A package ID: a 3-character upper-case alphanumeric site code followed by 5 hex digits,
/// e.g. `CAS00001` (SPEC §1).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct PackageId(String);

impl PackageId {
    /// Validates and wraps a package ID.
    pub fn parse(s: &str) -> Result<Self> {
        let b = s.as_bytes();
        let ok = b.len() == 8
            && b[..3]
                .iter()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
            && b[3..]
                .iter()
                .all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(c));
        if ok {
            Ok(PackageId(s.to_string()))
        } else {
            Err(Error::BadPackageId(s.to_string()))
        }
    }

    /// The ID as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PackageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_ids() {
        assert!(PackageId::parse("CAS00001").is_ok());
        assert!(PackageId::parse("PS1ABCDE").is_ok());
        for bad in [
            "cas00001",
            "CAS0001",
            "CAS000001",
            "CA$00001",
            "CAS0000g",
            "",
        ] {
            assert!(PackageId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn chunk_id_hex() {
        let id = ChunkId::of(b"abc");
        assert_eq!(id.to_hex().len(), 64);
        assert_eq!(id.to_hex(), blake3::hash(b"abc").to_hex().as_str());
    }
}
