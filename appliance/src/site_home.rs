//! A site's home folder: its code, signing key, trust store and instruction sequence.
//!
//! ```text
//! SITE/site.toml    code = "CAS"
//! SITE/site.key     Ed25519 signing key (mode 0600, created once)
//! SITE/trust/       identities of other sites (freight_core::site::TrustStore)
//! SITE/sequence     last instruction sequence number used
//! ```

use crate::error::CliError;
use freight_core::Manifest;
use freight_core::instruction::{Instruction, InstructionKind};
use freight_core::site::{SiteCode, SiteKey, TrustStore};
use std::path::{Path, PathBuf};

/// An opened site home.
pub struct SiteHome {
    dir: PathBuf,
    /// This site's code.
    pub code: SiteCode,
    /// This site's signing key.
    pub key: SiteKey,
    /// Other sites this one trusts.
    pub trust: TrustStore,
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SiteToml {
    code: String,
}

impl SiteHome {
    /// Creates a site home for `code` (the key is generated once).
    pub fn init(dir: &Path, code: SiteCode) -> Result<SiteHome, CliError> {
        let toml_path = dir.join("site.toml");
        if toml_path.exists() {
            return Err(CliError::Usage(format!(
                "{}: a site already exists here; use it or choose another folder",
                dir.display()
            )));
        }
        std::fs::create_dir_all(dir)?;
        let text = toml::to_string(&SiteToml {
            code: code.to_string(),
        })
        .map_err(|e| CliError::Usage(e.to_string()))?;
        freight_core::library::write_atomic(&toml_path, text.as_bytes())?;
        SiteHome::open(dir)
    }

    /// Opens the site home at `dir`.
    pub fn open(dir: &Path) -> Result<SiteHome, CliError> {
        let toml_path = dir.join("site.toml");
        let text = std::fs::read_to_string(&toml_path).map_err(|_| {
            CliError::Usage(format!(
                "{}: not a site folder; create it with `freight site --site {} init --code XXX`",
                dir.display(),
                dir.display()
            ))
        })?;
        let t: SiteToml = toml::from_str(&text)
            .map_err(|e| CliError::Usage(format!("{}: {}", toml_path.display(), e.message())))?;
        let code = SiteCode::parse(&t.code)?;
        let key = SiteKey::load_or_create(&dir.join("site.key"), code)?;
        let trust = TrustStore::open(&dir.join("trust"))?;
        Ok(SiteHome {
            dir: dir.to_path_buf(),
            code,
            key,
            trust,
        })
    }

    /// The trust store's folder.
    pub fn trust_dir(&self) -> PathBuf {
        self.dir.join("trust")
    }

    /// Takes the next instruction sequence number (persisted before it is used).
    pub fn next_sequence(&self) -> Result<u64, CliError> {
        let path = self.dir.join("sequence");
        let last: u64 = match std::fs::read_to_string(&path) {
            Ok(s) => s.trim().parse().map_err(|_| {
                CliError::Usage(format!(
                    "{}: corrupt sequence file; fix or remove it",
                    path.display()
                ))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e.into()),
        };
        let next = last + 1;
        freight_core::library::write_atomic(&path, next.to_string().as_bytes())?;
        Ok(next)
    }

    /// Signs the instruction that sends package version `m` (a delta when `base` is given) to
    /// site `to`, taking the next sequence number; returns its encoding for a parcel.
    pub fn sign_parcel(
        &self,
        to: SiteCode,
        m: &Manifest,
        base: Option<u32>,
        notes: String,
    ) -> Result<Vec<u8>, CliError> {
        let instr = Instruction {
            kind: if base.is_some() {
                InstructionKind::Delta
            } else {
                InstructionKind::Package
            },
            origin: self.code,
            destination: to,
            package: m.package.clone(),
            version: m.version,
            base_version: base,
            manifest_hash: *m.hash().as_bytes(),
            created_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64),
            sequence: self.next_sequence()?,
            notes,
        };
        Ok(instr.sign(&self.key)?.encode())
    }
}
