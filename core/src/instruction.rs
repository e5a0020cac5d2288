//! Instructions between sites (SPEC §4, §8): typed, versioned, signed by the sending site and
//! verified by the receiving one before anything runs.
//!
//! # Canonical encoding, format 1
//! All integers little-endian. `bytes` = u32 length + that many bytes.
//! ```text
//! magic          8   "FRINSTR\0"
//! format         u16 = 1
//! kind           u8  (0 package, 1 delta, 2 remove, 3 status)
//! origin         3   site code, ASCII
//! destination    3   site code, ASCII
//! package        bytes, ASCII package ID (at most 8 bytes)
//! version        u32
//! has_base       u8  (0 or 1)
//! base_version   u32, present only when has_base = 1
//! manifest_hash  32  BLAKE3 of the package version's manifest
//! created_unix   i64 seconds since the epoch
//! sequence       u64
//! notes          bytes, UTF-8, at most 4096 bytes
//! ```
//! A delta carries a base version lower than its version; every other kind carries none.
//! Decoding accepts exactly what encoding produces: nothing trails, every limit is checked
//! before anything is allocated.
//!
//! # Signed instruction
//! ```text
//! body_len   u32 (at most the largest format-1 instruction)
//! body       body_len bytes, the canonical encoding above
//! signature  64  Ed25519 signature of body by the origin site's key
//! ```
//! The body starts with its own magic, which keeps these signatures apart from anything else a
//! site key signs.

use crate::codec::Reader;
use crate::error::{Error, Result};
use crate::id::PackageId;
use crate::site::{SiteCode, SiteKey, TrustStore};

const MAGIC: &[u8; 8] = b"FRINSTR\0";
/// The instruction format this code writes and reads.
pub const FORMAT: u16 = 1;
/// Longest `notes` text, in bytes.
pub const MAX_NOTES: usize = 4096;
const MAX_PACKAGE: usize = 8;
/// Longest canonical encoding of a format-1 instruction.
pub const MAX_ENCODED: usize =
    8 + 2 + 1 + 3 + 3 + 4 + MAX_PACKAGE + 4 + 1 + 4 + 32 + 8 + 8 + 4 + MAX_NOTES;
const SIGNATURE_LEN: usize = 64;

/// What an instruction asks the receiving site to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InstructionKind {
    /// Store a whole package version (first version, or a full resend).
    Package,
    /// Apply a delta from `base_version` to `version`.
    Delta,
    /// Drop the package.
    Remove,
    /// A status report about the package.
    Status,
}

impl InstructionKind {
    /// The kind's code on the wire.
    pub fn code(self) -> u8 {
        match self {
            InstructionKind::Package => 0,
            InstructionKind::Delta => 1,
            InstructionKind::Remove => 2,
            InstructionKind::Status => 3,
        }
    }

    /// The kind with wire code `code`, if there is one.
    pub fn from_code(code: u8) -> Option<InstructionKind> {
        Some(match code {
            0 => InstructionKind::Package,
            1 => InstructionKind::Delta,
            2 => InstructionKind::Remove,
            3 => InstructionKind::Status,
            _ => return None,
        })
    }
}

/// One instruction from a site to another, as signed and verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instruction {
    /// What to do.
    pub kind: InstructionKind,
    /// The sending site; its key signs the instruction.
    pub origin: SiteCode,
    /// The site that is to carry it out.
    pub destination: SiteCode,
    /// The package concerned.
    pub package: PackageId,
    /// The package version concerned.
    pub version: u32,
    /// For a delta, the version it applies to (lower than `version`); `None` otherwise.
    pub base_version: Option<u32>,
    /// BLAKE3 of the package version's manifest.
    pub manifest_hash: [u8; 32],
    /// When the instruction was created, seconds since the epoch.
    pub created_unix: i64,
    /// The origin's sequence number for this instruction.
    pub sequence: u64,
    /// Free text for tracking (at most 4 KiB of UTF-8).
    pub notes: String,
}

impl Instruction {
    /// Encodes to canonical bytes. The result decodes only if the instruction follows the
    /// rules ([`Instruction::sign`] checks them).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(96 + self.notes.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT.to_le_bytes());
        out.push(self.kind.code());
        out.extend_from_slice(self.origin.as_bytes());
        out.extend_from_slice(self.destination.as_bytes());
        put_bytes(&mut out, self.package.as_str().as_bytes());
        out.extend_from_slice(&self.version.to_le_bytes());
        match self.base_version {
            None => out.push(0),
            Some(b) => {
                out.push(1);
                out.extend_from_slice(&b.to_le_bytes());
            }
        }
        out.extend_from_slice(&self.manifest_hash);
        out.extend_from_slice(&self.created_unix.to_le_bytes());
        out.extend_from_slice(&self.sequence.to_le_bytes());
        put_bytes(&mut out, self.notes.as_bytes());
        out
    }

    /// Decodes and validates canonical bytes.
    pub fn decode(bytes: &[u8]) -> Result<Instruction> {
        let mut r = Reader::new(bytes, |o, reason: &str| err(o, reason));
        if bytes.len() > MAX_ENCODED {
            return Err(err(MAX_ENCODED, "longer than any instruction"));
        }
        if r.take(8)? != MAGIC {
            return Err(err(0, "not a Freight instruction (bad magic)"));
        }
        let format = r.u16()?;
        if format != FORMAT {
            return Err(err(
                8,
                &format!("format {format} is not supported (this build reads {FORMAT})"),
            ));
        }
        let at = r.pos();
        let kind = InstructionKind::from_code(r.u8()?)
            .ok_or_else(|| err(at, &format!("unknown instruction kind {}", bytes[at])))?;
        let at = r.pos();
        let origin =
            SiteCode::from_bytes(r.take(3)?).ok_or_else(|| err(at, "bad origin site code"))?;
        let at = r.pos();
        let destination =
            SiteCode::from_bytes(r.take(3)?).ok_or_else(|| err(at, "bad destination site code"))?;
        let at = r.pos();
        let package = std::str::from_utf8(r.bytes(MAX_PACKAGE)?)
            .ok()
            .and_then(|p| PackageId::parse(p).ok())
            .ok_or_else(|| err(at, "bad package ID"))?;
        let at = r.pos();
        let version = r.u32()?;
        let base_version = match r.u8()? {
            0 => None,
            1 => Some(r.u32()?),
            f => return Err(err(at + 4, &format!("base version flag {f} is not 0 or 1"))),
        };
        match (kind, base_version) {
            (InstructionKind::Delta, Some(b)) if b < version => {}
            (InstructionKind::Delta, Some(_)) => {
                return Err(err(at, "delta base version is not lower than its version"));
            }
            (InstructionKind::Delta, None) => {
                return Err(err(at, "delta without a base version"));
            }
            (_, Some(_)) => return Err(err(at, "only a delta carries a base version")),
            (_, None) => {}
        }
        let manifest_hash: [u8; 32] = r.array()?;
        let created_unix = r.i64()?;
        let sequence = r.u64()?;
        let at = r.pos();
        let notes = std::str::from_utf8(r.bytes(MAX_NOTES)?)
            .map_err(|_| err(at, "notes are not UTF-8"))?
            .to_string();
        if r.pos() != bytes.len() {
            return Err(err(r.pos(), "trailing bytes after the notes"));
        }
        Ok(Instruction {
            kind,
            origin,
            destination,
            package,
            version,
            base_version,
            manifest_hash,
            created_unix,
            sequence,
            notes,
        })
    }

    /// Signs the instruction with `key`, which must be the key of the origin site.
    /// Refuses an instruction that breaks the encoding rules.
    pub fn sign(&self, key: &SiteKey) -> Result<SignedInstruction> {
        if key.code() != self.origin {
            return Err(Error::WrongSigningKey {
                origin: self.origin.to_string(),
                key_site: key.code().to_string(),
            });
        }
        let body = self.encode();
        Instruction::decode(&body)?;
        let signature = key.sign(&body);
        Ok(SignedInstruction { body, signature })
    }
}

/// An instruction's canonical bytes with its origin's signature over them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedInstruction {
    /// The canonical encoding of the instruction.
    pub body: Vec<u8>,
    /// Ed25519 signature of `body` by the origin site's key.
    pub signature: [u8; 64],
}

impl SignedInstruction {
    /// Encodes as body length, body, signature.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + self.body.len() + SIGNATURE_LEN);
        put_bytes(&mut out, &self.body);
        out.extend_from_slice(&self.signature);
        out
    }

    /// Decodes the framing strictly (length limit, exact size). The body itself is decoded and
    /// checked by [`SignedInstruction::verify`].
    pub fn decode(bytes: &[u8]) -> Result<SignedInstruction> {
        let mut r = Reader::new(bytes, |o, reason: &str| err(o, reason));
        let body = r.bytes(MAX_ENCODED)?.to_vec();
        let signature: [u8; SIGNATURE_LEN] = r.array()?;
        if r.pos() != bytes.len() {
            return Err(err(r.pos(), "trailing bytes after the signature"));
        }
        Ok(SignedInstruction { body, signature })
    }

    /// Checks the instruction before anything runs and returns it.
    ///
    /// In order: the body decodes; its origin is trusted ([`Error::UnknownSite`]) and not revoked
    /// ([`Error::RevokedKey`], also when the signature is by a revoked key of the origin); the
    /// signature is valid ([`Error::BadSignature`]); it is addressed to `this_site`
    /// ([`Error::WrongDestination`]); and it does not offer an older version than
    /// `stored_version`, the version of the package this site holds ([`Error::OlderVersion`];
    /// the same version is a re-delivery and passes). Pass `None` when no version is stored or
    /// the version rule does not apply.
    pub fn verify(
        &self,
        trust: &TrustStore,
        this_site: &SiteCode,
        stored_version: Option<u32>,
    ) -> Result<Instruction> {
        let ins = Instruction::decode(&self.body)?;
        let id = trust.lookup(ins.origin)?;
        if !id.verify(&self.body, &self.signature) {
            if let Some(old) = trust
                .revoked_keys(ins.origin)?
                .into_iter()
                .find(|old| old.verify(&self.body, &self.signature))
            {
                return Err(Error::RevokedKey {
                    site: ins.origin.to_string(),
                    fingerprint: old.fingerprint(),
                });
            }
            return Err(Error::BadSignature {
                origin: ins.origin.to_string(),
                fingerprint: id.fingerprint(),
            });
        }
        if ins.destination != *this_site {
            return Err(Error::WrongDestination {
                destination: ins.destination.to_string(),
                this_site: this_site.to_string(),
            });
        }
        if let Some(stored) = stored_version
            && ins.version < stored
        {
            return Err(Error::OlderVersion {
                package: ins.package.to_string(),
                offered: ins.version,
                stored,
            });
        }
        Ok(ins)
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

fn err(offset: usize, reason: &str) -> Error {
    Error::BadInstruction {
        offset,
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn kind_strategy() -> impl Strategy<Value = InstructionKind> {
        prop_oneof![
            Just(InstructionKind::Package),
            Just(InstructionKind::Delta),
            Just(InstructionKind::Remove),
            Just(InstructionKind::Status),
        ]
    }

    /// Any instruction that follows the rules.
    pub(crate) fn instruction_strategy() -> impl Strategy<Value = Instruction> {
        (
            kind_strategy(),
            "[A-Z0-9]{3}",
            "[A-Z0-9]{3}",
            "[A-Z0-9]{3}[0-9A-F]{5}",
            1u32..,
            any::<u32>(),
            any::<[u8; 32]>(),
            any::<i64>(),
            any::<u64>(),
            prop_oneof![
                ".{0,40}",
                proptest::collection::vec(any::<char>(), 0..1024)
                    .prop_map(|v| v.into_iter().collect::<String>())
                    .prop_filter("fits", |s| s.len() <= MAX_NOTES)
            ],
        )
            .prop_map(
                |(kind, o, d, p, version, base, manifest_hash, created_unix, sequence, notes)| {
                    Instruction {
                        kind,
                        origin: SiteCode::parse(&o).unwrap(),
                        destination: SiteCode::parse(&d).unwrap(),
                        package: PackageId::parse(&p).unwrap(),
                        version,
                        base_version: (kind == InstructionKind::Delta).then_some(base % version),
                        manifest_hash,
                        created_unix,
                        sequence,
                        notes,
                    }
                },
            )
    }

    fn sample() -> Instruction {
        Instruction {
            kind: InstructionKind::Delta,
            origin: SiteCode::parse("CAS").unwrap(),
            destination: SiteCode::parse("PS1").unwrap(),
            package: PackageId::parse("CAS00001").unwrap(),
            version: 3,
            base_version: Some(2),
            manifest_hash: [7; 32],
            created_unix: 1_700_000_000,
            sequence: 42,
            notes: "parcel 7, truck B".into(),
        }
    }

    #[test]
    fn layout_matches_the_documentation() {
        let ins = sample();
        let b = ins.encode();
        assert_eq!(&b[..8], MAGIC);
        assert_eq!(u16::from_le_bytes([b[8], b[9]]), FORMAT);
        assert_eq!(b[10], 1);
        assert_eq!(&b[11..14], b"CAS");
        assert_eq!(&b[14..17], b"PS1");
        assert_eq!(u32::from_le_bytes(b[17..21].try_into().unwrap()), 8);
        assert_eq!(&b[21..29], b"CAS00001");
        assert_eq!(u32::from_le_bytes(b[29..33].try_into().unwrap()), 3);
        assert_eq!(b[33], 1);
        assert_eq!(u32::from_le_bytes(b[34..38].try_into().unwrap()), 2);
        assert_eq!(&b[38..70], &[7; 32]);
        assert_eq!(
            i64::from_le_bytes(b[70..78].try_into().unwrap()),
            1_700_000_000
        );
        assert_eq!(u64::from_le_bytes(b[78..86].try_into().unwrap()), 42);
        assert_eq!(
            u32::from_le_bytes(b[86..90].try_into().unwrap()) as usize,
            ins.notes.len()
        );
        assert_eq!(&b[90..], ins.notes.as_bytes());
    }

    #[test]
    fn kind_and_version_rules() {
        let mut bad = Vec::new();
        let mut i = sample();
        i.base_version = None;
        bad.push(i);
        let mut i = sample();
        i.base_version = Some(3);
        bad.push(i);
        let mut i = sample();
        i.base_version = Some(4);
        bad.push(i);
        for kind in [
            InstructionKind::Package,
            InstructionKind::Remove,
            InstructionKind::Status,
        ] {
            let mut i = sample();
            i.kind = kind;
            bad.push(i.clone());
            i.base_version = None;
            assert_eq!(Instruction::decode(&i.encode()).unwrap(), i);
        }
        let mut i = sample();
        i.notes = "x".repeat(MAX_NOTES + 1);
        bad.push(i);
        for i in bad {
            assert!(
                matches!(
                    Instruction::decode(&i.encode()),
                    Err(Error::BadInstruction { .. })
                ),
                "{i:?}"
            );
        }
        let mut i = sample();
        i.notes = "é".repeat(MAX_NOTES / 2);
        assert_eq!(Instruction::decode(&i.encode()).unwrap(), i);
    }

    #[test]
    fn strict_framing() {
        let b = sample().encode();
        for cut in 0..b.len() {
            assert!(Instruction::decode(&b[..cut]).is_err(), "cut {cut}");
        }
        let mut long = b.clone();
        long.push(0);
        assert!(Instruction::decode(&long).is_err());
        let mut v2 = b.clone();
        v2[8] = 2;
        let e = Instruction::decode(&v2).unwrap_err().to_string();
        assert!(e.contains("format 2"), "{e}");
        // A huge notes length is refused before anything is allocated.
        let mut huge = b.clone();
        huge[86..90].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Instruction::decode(&huge).is_err());

        let s = SignedInstruction {
            body: b,
            signature: [5; 64],
        };
        let e = s.encode();
        assert_eq!(SignedInstruction::decode(&e).unwrap(), s);
        for cut in 0..e.len() {
            assert!(SignedInstruction::decode(&e[..cut]).is_err(), "cut {cut}");
        }
        let mut long = e.clone();
        long.push(0);
        assert!(SignedInstruction::decode(&long).is_err());
        let mut huge = e.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(SignedInstruction::decode(&huge).is_err());
    }

    proptest! {
        #[test]
        fn instruction_round_trips(ins in instruction_strategy()) {
            let bytes = ins.encode();
            prop_assert!(bytes.len() <= MAX_ENCODED);
            prop_assert_eq!(Instruction::decode(&bytes).unwrap(), ins);
        }

        #[test]
        fn signed_round_trips(ins in instruction_strategy(), sig in proptest::collection::vec(any::<u8>(), 64)) {
            let s = SignedInstruction { body: ins.encode(), signature: sig.try_into().unwrap() };
            prop_assert_eq!(SignedInstruction::decode(&s.encode()).unwrap(), s);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Instruction::decode(&bytes);
            let _ = SignedInstruction::decode(&bytes);
        }

        #[test]
        fn byte_flips_never_panic_and_never_round_trip_to_the_same(
            ins in instruction_strategy(),
            pos in any::<prop::sample::Index>(),
            mask in 1u8..,
        ) {
            let mut bytes = ins.encode();
            let i = pos.index(bytes.len());
            bytes[i] ^= mask;
            if let Ok(other) = Instruction::decode(&bytes) {
                prop_assert_ne!(&other, &ins);
            }
            let mut signed = SignedInstruction { body: ins.encode(), signature: [1; 64] }.encode();
            let i = pos.index(signed.len());
            signed[i] ^= mask;
            let _ = SignedInstruction::decode(&signed);
        }
    }
}
