//! A host's home folder: the code of the site it belongs to, its signing key, its trust store
//! and its instruction sequence. Every `freightd` and every `freight` command that speaks for
//! a site opens one.
//!
//! ```text
//! SITE/site.toml    code = "CAS"
//! SITE/site.key     Ed25519 signing key (mode 0600, created once)
//! SITE/trust/       identities of other sites (freight_core::site::TrustStore)
//! SITE/sequence     last instruction sequence number used
//! ```

use freight_core::instruction::{Instruction, InstructionKind};
use freight_core::library::StoredManifest;
use freight_core::site::{SiteCode, SiteKey, TrustStore};
use std::path::{Path, PathBuf};

/// Why a home folder cannot be used: one line naming the file and the fix.
#[derive(Debug, thiserror::Error)]
pub enum HomeError {
    /// `init` on a folder that already holds a site.
    #[error("{}: a site already exists here; use it or choose another folder", .0.display())]
    Exists(PathBuf),
    /// The folder holds no `site.toml`.
    #[error("{}: not a site folder; create it with `freight site --site {} init --code XXX`", .0.display(), .0.display())]
    NotASite(PathBuf),
    /// `site.toml` or `sequence` cannot be read as written.
    #[error("{}: {reason}; fix or remove it", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Keys, the trust store or a file write failed (names the file and the fix).
    #[error(transparent)]
    Core(#[from] freight_core::Error),
    /// The folder cannot be created or read.
    #[error("{}: {reason}; check the folder and its permissions", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The file system's reason.
        reason: std::io::Error,
    },
}

/// An opened home folder.
pub struct Home {
    dir: PathBuf,
    /// This site's code.
    pub code: SiteCode,
    /// This site's signing key.
    pub key: SiteKey,
    /// Other sites this one trusts.
    pub trust: TrustStore,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SiteToml {
    code: String,
}

impl Home {
    /// Creates a site home for `code` (the key is generated once).
    pub fn init(dir: &Path, code: SiteCode) -> Result<Home, HomeError> {
        let toml_path = dir.join("site.toml");
        if toml_path.exists() {
            return Err(HomeError::Exists(dir.to_path_buf()));
        }
        std::fs::create_dir_all(dir).map_err(|reason| HomeError::Io {
            path: dir.to_path_buf(),
            reason,
        })?;
        let text = format!("code = \"{code}\"\n");
        freight_core::library::write_atomic(&toml_path, text.as_bytes())?;
        Home::open(dir)
    }

    /// Opens the site home at `dir`.
    pub fn open(dir: &Path) -> Result<Home, HomeError> {
        let toml_path = dir.join("site.toml");
        let text = std::fs::read_to_string(&toml_path)
            .map_err(|_| HomeError::NotASite(dir.to_path_buf()))?;
        let t: SiteToml = toml::from_str(&text).map_err(|e| HomeError::Corrupt {
            path: toml_path.clone(),
            reason: e.message().to_string(),
        })?;
        let code = SiteCode::parse(&t.code)?;
        let key = SiteKey::load_or_create(&dir.join("site.key"), code)?;
        let trust = TrustStore::open(&dir.join("trust"))?;
        Ok(Home {
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
    pub fn next_sequence(&self) -> Result<u64, HomeError> {
        let path = self.dir.join("sequence");
        let last: u64 = match std::fs::read_to_string(&path) {
            Ok(s) => s.trim().parse().map_err(|_| HomeError::Corrupt {
                path: path.clone(),
                reason: "not a sequence number".into(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(reason) => return Err(HomeError::Io { path, reason }),
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
        m: &StoredManifest,
        base: Option<u32>,
        notes: String,
    ) -> Result<Vec<u8>, HomeError> {
        // One checked pass over the stored file for its hash, nothing held.
        let manifest_hash = *m.hash()?.as_bytes();
        let instr = Instruction {
            kind: if base.is_some() {
                InstructionKind::Delta
            } else {
                InstructionKind::Package
            },
            origin: self.code,
            destination: to,
            package: m.package().clone(),
            version: m.version(),
            base_version: base,
            manifest_hash,
            created_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64),
            sequence: self.next_sequence()?,
            notes,
        };
        Ok(instr.sign(&self.key)?.encode())
    }
}
