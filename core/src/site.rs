//! Site identity and trust (SPEC §8): each site's Ed25519 key pair, the identity text people
//! mail between sites, and the trust store of other sites' public keys.
//!
//! # Key file
//! A site's secret key lives in one file, created once with mode `0600` and never rewritten:
//! ```text
//! freight-site-key v1
//! site: CAS
//! secret: <64 hex digits, the Ed25519 seed>
//! key: <64 hex digits, the public key>
//! ```
//! Loading refuses a file group or other users may access, a symlink, or one whose `key` line
//! does not match its secret. The secret never appears in `Debug` output or messages. The file
//! is put in place with a hard link from a fsynced temporary, so racing creators agree on one
//! key; a crash mid-creation can leave a `.<name>.<pid>-<n>.tmp` (mode `0600`) that is never
//! used and may be deleted.
//!
//! # Identity text
//! What one site gives another so that it can check its signatures:
//! ```text
//! freight-site-identity v1
//! site: CAS
//! key: <64 hex digits>
//! fingerprint: 3F2A-91C0-....   (10 groups of 4 upper-case hex digits)
//! ```
//! The fingerprint is the first 20 bytes of BLAKE3 of the key, for administrators to compare by
//! voice; parsing refuses a fingerprint line that does not match the key. Lines may end in
//! `\r\n` (mail clients), nothing else is tolerated.
//!
//! # Trust store layout
//! ```text
//! DIR/.lock                     flock: held exclusively by import and revoke
//! DIR/<CODE>.identity           the trusted key of site CODE (identity text)
//! DIR/<CODE>.roles              what that key was trusted for: `roles: dp pull-dp` (absent in
//!                               stores written before roles existed: no role, nothing allowed)
//! DIR/revoked/<CODE>.<n>.identity   keys of CODE revoked so far, n = 1, 2, ...
//! ```
//! Every file is written atomically (temporary file, fsync, rename, directory fsync). Revoking
//! writes the revocation before removing the trusted file, and a key present in both places
//! counts as revoked, so a crash in between never brings a revoked key back.

use crate::error::{Error, IoContext, Result};
use crate::text::hex;
use crate::writer::sync_dir;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use zeroize::Zeroizing;

const KEY_HEADER: &str = "freight-site-key v1";
const KEY_HEADER_PREFIX: &str = "freight-site-key ";
const IDENTITY_HEADER: &str = "freight-site-identity v1";
const IDENTITY_HEADER_PREFIX: &str = "freight-site-identity ";
/// Longest key or identity file read; real ones are under 200 bytes.
const MAX_TEXT: u64 = 4096;
const IDENTITY_EXT: &str = "identity";
const REVOKED_DIR: &str = "revoked";

/// A site code: 3 upper-case ASCII letters or digits, e.g. `CAS` or `PS1` (SPEC §1).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SiteCode([u8; 3]);

impl SiteCode {
    /// Validates and wraps a site code.
    pub fn parse(s: &str) -> Result<SiteCode> {
        Self::from_bytes(s.as_bytes()).ok_or_else(|| Error::BadSiteCode(s.to_string()))
    }

    /// Wraps 3 bytes if they form a valid site code.
    pub(crate) fn from_bytes(b: &[u8]) -> Option<SiteCode> {
        let ok = b.len() == 3
            && b.iter()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit());
        ok.then(|| SiteCode([b[0], b[1], b[2]]))
    }

    /// The code as text.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("site codes are ASCII")
    }

    /// The code's 3 bytes.
    pub fn as_bytes(&self) -> &[u8; 3] {
        &self.0
    }
}

impl fmt::Display for SiteCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for SiteCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SiteCode({})", self.as_str())
    }
}

impl FromStr for SiteCode {
    type Err = Error;
    fn from_str(s: &str) -> Result<SiteCode> {
        SiteCode::parse(s)
    }
}

/// The public half of a site's key pair, as other sites trust it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicIdentity {
    /// The site the key belongs to.
    pub code: SiteCode,
    /// The Ed25519 public key.
    pub key: [u8; 32],
}

impl PublicIdentity {
    /// The key's fingerprint for humans: the first 20 bytes of BLAKE3 of the key as upper-case
    /// hex in 10 groups of 4, joined by `-`.
    pub fn fingerprint(&self) -> String {
        fingerprint_of(&self.key)
    }

    /// True when `sig` is a valid (strict Ed25519) signature of `msg` by this key.
    pub fn verify(&self, msg: &[u8], sig: &[u8; 64]) -> bool {
        let Ok(vk) = VerifyingKey::from_bytes(&self.key) else {
            return false;
        };
        vk.verify_strict(msg, &Signature::from_bytes(sig)).is_ok()
    }

    /// The identity text (see the module documentation), ending in a newline.
    pub fn to_text(&self) -> String {
        format!(
            "{IDENTITY_HEADER}\nsite: {}\nkey: {}\nfingerprint: {}\n",
            self.code,
            hex(&self.key),
            self.fingerprint()
        )
    }

    /// Parses identity text strictly; the fingerprint line must match the key.
    pub fn from_text(text: &str) -> Result<PublicIdentity> {
        Self::parse_text(text, "identity text")
    }

    fn parse_text(text: &str, what: &str) -> Result<PublicIdentity> {
        let bad = |reason: &str| Error::BadIdentity {
            what: what.to_string(),
            reason: reason.to_string(),
        };
        let lines = text_lines(text).ok_or_else(|| bad("stray carriage return"))?;
        match lines.first() {
            Some(&IDENTITY_HEADER) => {}
            Some(l) if l.starts_with(IDENTITY_HEADER_PREFIX) => {
                return Err(bad(&format!(
                    "version {:?} is not supported (this build reads v1)",
                    &l[IDENTITY_HEADER_PREFIX.len()..]
                )));
            }
            _ => return Err(bad("first line is not `freight-site-identity v1`")),
        }
        if lines.len() != 4 {
            return Err(bad("expected exactly the lines site, key and fingerprint"));
        }
        let site = field(lines[1], "site").ok_or_else(|| bad("second line is not `site: …`"))?;
        let code = SiteCode::parse(site).map_err(|_| bad("site is not a site code"))?;
        let key = field(lines[2], "key").ok_or_else(|| bad("third line is not `key: …`"))?;
        let key = unhex32(key).ok_or_else(|| bad("key is not 64 hex digits"))?;
        let stated = field(lines[3], "fingerprint")
            .ok_or_else(|| bad("fourth line is not `fingerprint: …`"))?;
        match VerifyingKey::from_bytes(&key) {
            Ok(vk) if !vk.is_weak() => {}
            _ => return Err(bad("key is not a valid Ed25519 public key")),
        }
        let id = PublicIdentity { code, key };
        let actual = id.fingerprint();
        if !stated.eq_ignore_ascii_case(&actual) {
            return Err(Error::FingerprintMismatch {
                what: what.to_string(),
                site: code.to_string(),
                stated: stated.to_string(),
                actual,
            });
        }
        Ok(id)
    }
}

impl fmt::Debug for PublicIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicIdentity({} {})", self.code, self.fingerprint())
    }
}

/// The Ed25519 signing key of one site. Its secret never leaves the value: `Debug` shows the
/// site code and fingerprint only, and the key material is zeroed on drop.
pub struct SiteKey {
    code: SiteCode,
    key: SigningKey,
}

impl SiteKey {
    /// Loads the site key at `path`, creating it (mode `0600`, atomically) if there is none.
    ///
    /// Refuses a key file that group or other users may access, that is malformed, or that
    /// belongs to another site than `code`. Two processes racing to create the key end up with
    /// the same one: the file is put in place without replacing an existing one.
    pub fn load_or_create(path: &Path, code: SiteCode) -> Result<SiteKey> {
        match Self::load(path, code) {
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
            other => return other,
        }
        let mut seed = Zeroizing::new([0u8; 32]);
        getrandom::fill(&mut seed[..]).map_err(|e| {
            Error::io(
                path,
                "generate site key",
                std::io::Error::other(e.to_string()),
            )
        })?;
        let key = SiteKey {
            code,
            key: SigningKey::from_bytes(&seed),
        };
        let text = Zeroizing::new(format!(
            "{KEY_HEADER}\nsite: {code}\nsecret: {}\nkey: {}\n",
            hex(&seed[..]),
            hex(key.key.verifying_key().as_bytes())
        ));
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            create_dirs(dir)?;
        }
        if write_atomic(path, text.as_bytes(), 0o600, false)? {
            tracing::info!(site = %code, fingerprint = %key.identity().fingerprint(), path = %path.display(), "created site key");
            Ok(key)
        } else {
            // Another process created it first: use theirs.
            Self::load(path, code)
        }
    }

    fn load(path: &Path, code: SiteCode) -> Result<SiteKey> {
        let bad = |reason: &str| Error::BadKeyFile {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        };
        let f = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(|e| {
                if e.raw_os_error() == Some(libc::ELOOP) {
                    bad("it is a symlink; keep the key file itself in place")
                } else {
                    Error::io(path, "open", e)
                }
            })?;
        let meta = f.metadata().ctx(path, "stat")?;
        if !meta.is_file() {
            return Err(bad("not a regular file"));
        }
        let mode = meta.mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(Error::KeyFileMode {
                path: path.to_path_buf(),
                mode,
            });
        }
        let mut buf = Zeroizing::new(Vec::with_capacity(256));
        (&f).take(MAX_TEXT + 1)
            .read_to_end(&mut buf)
            .ctx(path, "read")?;
        if buf.len() as u64 > MAX_TEXT {
            return Err(bad("file is too large"));
        }
        let text = std::str::from_utf8(&buf).map_err(|_| bad("not text"))?;
        let lines = text_lines(text).ok_or_else(|| bad("stray carriage return"))?;
        match lines.first() {
            Some(&KEY_HEADER) => {}
            Some(l) if l.starts_with(KEY_HEADER_PREFIX) => {
                return Err(bad(&format!(
                    "version {:?} is not supported (this build reads v1)",
                    &l[KEY_HEADER_PREFIX.len()..]
                )));
            }
            _ => return Err(bad("first line is not `freight-site-key v1`")),
        }
        if lines.len() != 4 {
            return Err(bad("expected exactly the lines site, secret and key"));
        }
        let site = field(lines[1], "site").ok_or_else(|| bad("second line is not `site: …`"))?;
        let file_code = SiteCode::parse(site).map_err(|_| bad("site is not a site code"))?;
        if file_code != code {
            return Err(bad(&format!(
                "it is the key of site {file_code}, not of site {code}"
            )));
        }
        let secret =
            field(lines[2], "secret").ok_or_else(|| bad("third line is not `secret: …`"))?;
        let seed =
            Zeroizing::new(unhex32(secret).ok_or_else(|| bad("secret is not 64 hex digits"))?);
        let public = field(lines[3], "key").ok_or_else(|| bad("fourth line is not `key: …`"))?;
        let public = unhex32(public).ok_or_else(|| bad("key is not 64 hex digits"))?;
        let key = SigningKey::from_bytes(&seed);
        if key.verifying_key().as_bytes() != &public {
            return Err(bad("public key does not match the secret (file damaged)"));
        }
        Ok(SiteKey { code, key })
    }

    /// The site this key belongs to.
    pub fn code(&self) -> SiteCode {
        self.code
    }

    /// Signs `msg` (Ed25519).
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.key.sign(msg).to_bytes()
    }

    /// The secret key as PKCS#8 v1 DER (RFC 8410), for TLS: a site's QUIC certificate is
    /// made with, and its handshakes are signed by, the site key itself.
    pub fn pkcs8_der(&self) -> Zeroizing<Vec<u8>> {
        // SEQUENCE { INTEGER 0, SEQUENCE { OID 1.3.101.112 }, OCTET STRING { OCTET STRING seed } }
        const PREFIX: [u8; 16] = [
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        let mut der = Zeroizing::new(Vec::with_capacity(48));
        der.extend_from_slice(&PREFIX);
        der.extend_from_slice(self.key.as_bytes());
        der
    }

    /// The public identity to hand to other sites.
    pub fn identity(&self) -> PublicIdentity {
        PublicIdentity {
            code: self.code,
            key: self.key.verifying_key().to_bytes(),
        }
    }
}

impl fmt::Debug for SiteKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SiteKey")
            .field("site", &self.code)
            .field("fingerprint", &self.identity().fingerprint())
            .finish_non_exhaustive()
    }
}

/// What a trusted key was trusted for, seen from this host: the relationship decides what the
/// peer may do (the authorization table is in the transport's `authz` module).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// This site's site server (on a DP: the host that commands it and pushes to it).
    SiteServer,
    /// A DP of this site (on the site server: a DP it commands; on a pull DP: a source).
    Dp,
    /// A pull DP that may read packages from this DP.
    PullDp,
    /// This site's parent site.
    Parent,
    /// A child site of this site.
    Child,
    /// A client agent of this site.
    Agent,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 6] = [
        Role::SiteServer,
        Role::Dp,
        Role::PullDp,
        Role::Parent,
        Role::Child,
        Role::Agent,
    ];

    /// The role's word: `site-server`, `dp`, `pull-dp`, `parent`, `child`, `agent`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::SiteServer => "site-server",
            Role::Dp => "dp",
            Role::PullDp => "pull-dp",
            Role::Parent => "parent",
            Role::Child => "child",
            Role::Agent => "agent",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Role, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "{s:?} is not a role; use one of: {}",
                    Role::ALL.map(Role::as_str).join(", ")
                )
            })
    }
}

/// A set of [`Role`]s.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Roles(u8);

impl Roles {
    /// No role: the key is known but may do nothing.
    pub const NONE: Roles = Roles(0);

    /// The set holding `role` alone.
    pub fn of(role: Role) -> Roles {
        Roles(role.bit())
    }

    /// Whether `role` is in the set.
    pub fn contains(self, role: Role) -> bool {
        self.0 & role.bit() != 0
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The set with `role` added.
    pub fn with(self, role: Role) -> Roles {
        Roles(self.0 | role.bit())
    }

    /// The set with `role` removed.
    pub fn without(self, role: Role) -> Roles {
        Roles(self.0 & !role.bit())
    }

    /// The roles in the set, in [`Role::ALL`] order.
    pub fn iter(self) -> impl Iterator<Item = Role> {
        Role::ALL.into_iter().filter(move |r| self.contains(*r))
    }
}

impl fmt::Display for Roles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("none");
        }
        let words: Vec<&str> = self.iter().map(Role::as_str).collect();
        f.write_str(&words.join(", "))
    }
}

impl fmt::Debug for Roles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Roles({self})")
    }
}

/// One identity in the trust store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustEntry {
    /// The site and its public key.
    pub identity: PublicIdentity,
    /// True when the key has been revoked and is refused.
    pub revoked: bool,
    /// What the key was trusted for (none for revoked keys and for entries written before
    /// roles existed).
    pub roles: Roles,
}

/// The public keys of other sites this site accepts instructions from, and the revoked ones it
/// refuses (layout in the module documentation).
#[derive(Debug)]
pub struct TrustStore {
    dir: PathBuf,
}

impl TrustStore {
    /// Opens the trust store in `dir`, creating the directory if needed.
    pub fn open(dir: &Path) -> Result<TrustStore> {
        create_dirs(&dir.join(REVOKED_DIR))?;
        Ok(TrustStore {
            dir: dir.to_path_buf(),
        })
    }

    /// Trusts `identity` for its site code, in `role` (added to the roles it already has).
    ///
    /// Re-importing the trusted key only adds the role. Refused: a key that has been revoked
    /// (for any site), and a different key for a site already trusted (revoke the old one
    /// first).
    pub fn import(&self, identity: &PublicIdentity, role: Role) -> Result<()> {
        let _lock = self.lock()?;
        if let Some((code, _)) = self
            .revoked_all()?
            .into_iter()
            .find(|(_, id)| id.key == identity.key)
        {
            return Err(Error::RevokedKey {
                site: code.to_string(),
                fingerprint: identity.fingerprint(),
            });
        }
        if let Some(old) = self.active(identity.code)? {
            if old.key == identity.key {
                let roles = self.roles(identity.code)?;
                if !roles.contains(role) {
                    self.write_roles(identity.code, roles.with(role))?;
                    tracing::info!(site = %identity.code, role = %role, "trusted site key for another role");
                }
                return Ok(());
            }
            return Err(Error::KeyConflict {
                site: identity.code.to_string(),
                trusted: old.fingerprint(),
                offered: identity.fingerprint(),
            });
        }
        // Roles first: a crash in between leaves roles without an identity, which trusts
        // nothing; the other order would leave a trusted key with no role written yet.
        self.write_roles(identity.code, Roles::of(role))?;
        write_atomic(
            &self.active_path(identity.code),
            identity.to_text().as_bytes(),
            0o644,
            true,
        )?;
        tracing::info!(site = %identity.code, fingerprint = %identity.fingerprint(), role = %role, "trusted site key");
        Ok(())
    }

    /// What the trusted key of `code` was trusted for (none if it is not trusted, or was
    /// trusted before roles existed).
    pub fn roles(&self, code: SiteCode) -> Result<Roles> {
        let path = self.roles_path(code);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Roles::NONE),
            Err(e) => return Err(Error::io(&path, "read", e)),
        };
        let bad = |reason: String| Error::BadTrustStore {
            path: path.clone(),
            reason,
        };
        let line = text_lines(&text)
            .and_then(|l| (l.len() == 1).then(|| l[0]))
            .and_then(|l| field(l, "roles"))
            .ok_or_else(|| bad("not a `roles: ...` line".into()))?;
        line.split_whitespace()
            .try_fold(Roles::NONE, |acc, w| Ok(acc.with(w.parse().map_err(bad)?)))
    }

    /// Adds `role` to the trusted key of `code`.
    pub fn add_role(&self, code: SiteCode, role: Role) -> Result<Roles> {
        let _lock = self.lock()?;
        self.lookup(code)?;
        let roles = self.roles(code)?.with(role);
        self.write_roles(code, roles)?;
        Ok(roles)
    }

    /// Takes `role` from the trusted key of `code`; a key left with no role is no longer
    /// trusted (its files are removed; unlike a revocation, it may be imported again).
    /// Returns the roles left.
    pub fn remove_role(&self, code: SiteCode, role: Role) -> Result<Roles> {
        let _lock = self.lock()?;
        let roles = self.roles(code)?.without(role);
        if roles.is_empty() {
            let path = self.active_path(code);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(&path, "remove", e)),
            }
            let _ = std::fs::remove_file(self.roles_path(code));
            sync_dir(&self.dir)?;
            tracing::info!(site = %code, "site key no longer trusted (no role left)");
        } else {
            self.write_roles(code, roles)?;
        }
        Ok(roles)
    }

    fn write_roles(&self, code: SiteCode, roles: Roles) -> Result<()> {
        let words: Vec<&str> = roles.iter().map(Role::as_str).collect();
        write_atomic(
            &self.roles_path(code),
            format!("roles: {}\n", words.join(" ")).as_bytes(),
            0o644,
            true,
        )?;
        Ok(())
    }

    fn roles_path(&self, code: SiteCode) -> PathBuf {
        self.dir.join(format!("{code}.roles"))
    }

    /// Every identity in the store, trusted and revoked, sorted by site code (trusted first,
    /// then revoked in the order they were revoked).
    pub fn list(&self) -> Result<Vec<TrustEntry>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir).ctx(&self.dir, "list")? {
            let entry = entry.ctx(&self.dir, "list")?;
            let name = entry.file_name();
            let Some(code) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".identity"))
                .and_then(|c| SiteCode::parse(c).ok())
            else {
                continue;
            };
            if let Some(identity) = self.active(code)? {
                out.push((code, 0, identity));
            }
        }
        for (n, (code, identity)) in self.revoked_all()?.into_iter().enumerate() {
            out.push((code, n + 1, identity));
        }
        out.sort_by_key(|(code, n, _)| (*code, *n));
        let revoked: Vec<[u8; 32]> = out
            .iter()
            .filter(|(_, n, _)| *n > 0)
            .map(|(_, _, id)| id.key)
            .collect();
        out.into_iter()
            .filter(|(_, n, id)| *n > 0 || !revoked.contains(&id.key))
            .map(|(_, n, identity)| {
                Ok(TrustEntry {
                    roles: if n > 0 {
                        Roles::NONE
                    } else {
                        self.roles(identity.code)?
                    },
                    identity,
                    revoked: n > 0,
                })
            })
            .collect::<Result<_>>()
    }

    /// Revokes the trusted key of site `code`: it stays in the store, marked revoked, so that
    /// instructions signed with it are refused as revoked. Revoking again is a no-op.
    pub fn revoke(&self, code: SiteCode) -> Result<()> {
        let _lock = self.lock()?;
        let revoked = self.revoked_of(code)?;
        let Some(active) = self.active(code)? else {
            return if revoked.is_empty() {
                Err(Error::UnknownSite(code.to_string()))
            } else {
                Ok(())
            };
        };
        if !revoked.iter().any(|(_, id)| id.key == active.key) {
            let n = revoked.iter().map(|(n, _)| *n).max().unwrap_or(0) + 1;
            let path = self
                .dir
                .join(REVOKED_DIR)
                .join(format!("{code}.{n}.{IDENTITY_EXT}"));
            write_atomic(&path, active.to_text().as_bytes(), 0o644, true)?;
        }
        let path = self.active_path(code);
        std::fs::remove_file(&path).ctx(&path, "remove")?;
        let _ = std::fs::remove_file(self.roles_path(code));
        sync_dir(&self.dir)?;
        tracing::warn!(site = %code, fingerprint = %active.fingerprint(), "revoked site key");
        Ok(())
    }

    /// The trusted key of site `code`.
    ///
    /// Fails with [`Error::UnknownSite`] when the site was never imported, and with
    /// [`Error::RevokedKey`] when its key was revoked and no new one imported.
    pub fn lookup(&self, code: SiteCode) -> Result<PublicIdentity> {
        let revoked = self.revoked_of(code)?;
        match self.active(code)? {
            Some(id) if revoked.iter().any(|(_, r)| r.key == id.key) => Err(Error::RevokedKey {
                site: code.to_string(),
                fingerprint: id.fingerprint(),
            }),
            Some(id) => Ok(id),
            None => match revoked.last() {
                Some((_, r)) => Err(Error::RevokedKey {
                    site: code.to_string(),
                    fingerprint: r.fingerprint(),
                }),
                None => Err(Error::UnknownSite(code.to_string())),
            },
        }
    }

    /// Checks that `key` is the trusted key of site `code` (a peer authenticating itself).
    ///
    /// Fails with [`Error::UnknownSite`] when the site is not trusted at all,
    /// [`Error::RevokedKey`] (naming `key`'s fingerprint) when `key` is a revoked key of the
    /// site or the site's key was revoked, and [`Error::WrongKey`] when the site is trusted
    /// with another key.
    pub fn authenticate(&self, code: SiteCode, key: &[u8; 32]) -> Result<PublicIdentity> {
        let presented = PublicIdentity { code, key: *key };
        let revoked = |fingerprint| Error::RevokedKey {
            site: code.to_string(),
            fingerprint,
        };
        if self.revoked_keys(code)?.iter().any(|r| r.key == *key) {
            return Err(revoked(presented.fingerprint()));
        }
        match self.lookup(code) {
            Ok(id) if id.key == *key => Ok(id),
            Ok(id) => Err(Error::WrongKey {
                site: code.to_string(),
                presented: presented.fingerprint(),
                trusted: id.fingerprint(),
            }),
            Err(Error::RevokedKey { .. }) => Err(revoked(presented.fingerprint())),
            Err(e) => Err(e),
        }
    }

    /// The revoked keys of site `code`, oldest revocation first.
    pub(crate) fn revoked_keys(&self, code: SiteCode) -> Result<Vec<PublicIdentity>> {
        Ok(self
            .revoked_of(code)?
            .into_iter()
            .map(|(_, id)| id)
            .collect())
    }

    fn lock(&self) -> Result<File> {
        let path = self.dir.join(".lock");
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .ctx(&path, "open")?;
        f.lock().ctx(&path, "lock")?;
        Ok(f)
    }

    fn active_path(&self, code: SiteCode) -> PathBuf {
        self.dir.join(format!("{code}.{IDENTITY_EXT}"))
    }

    fn active(&self, code: SiteCode) -> Result<Option<PublicIdentity>> {
        read_identity(&self.active_path(code), code)
    }

    /// Revoked keys of one site with their sequence numbers, in revocation order.
    fn revoked_of(&self, code: SiteCode) -> Result<Vec<(u64, PublicIdentity)>> {
        Ok(self
            .revoked_scan()?
            .into_iter()
            .filter(|(c, _, _)| *c == code)
            .map(|(_, n, id)| (n, id))
            .collect())
    }

    /// Every revoked key, sorted by site code then revocation order.
    fn revoked_all(&self) -> Result<Vec<(SiteCode, PublicIdentity)>> {
        Ok(self
            .revoked_scan()?
            .into_iter()
            .map(|(c, _, id)| (c, id))
            .collect())
    }

    fn revoked_scan(&self) -> Result<Vec<(SiteCode, u64, PublicIdentity)>> {
        let dir = self.dir.join(REVOKED_DIR);
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&dir).ctx(&dir, "list")? {
            let entry = entry.ctx(&dir, "list")?;
            let name = entry.file_name();
            let Some(stem) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".identity"))
                .filter(|n| !n.starts_with('.'))
            else {
                continue;
            };
            let path = entry.path();
            let bad = |reason: &str| Error::BadTrustStore {
                path: path.clone(),
                reason: reason.to_string(),
            };
            let (code, n) = stem
                .split_once('.')
                .and_then(|(c, n)| Some((SiteCode::parse(c).ok()?, n.parse::<u64>().ok()?)))
                .ok_or_else(|| bad("name is not <SITE>.<number>.identity"))?;
            let id = read_identity(&path, code)?.ok_or_else(|| bad("vanished while listing"))?;
            out.push((code, n, id));
        }
        out.sort_by_key(|(c, n, _)| (*c, *n));
        Ok(out)
    }
}

/// Reads an identity file that must name site `code`; `None` when it does not exist.
fn read_identity(path: &Path, code: SiteCode) -> Result<Option<PublicIdentity>> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(path, "open", e)),
    };
    let mut buf = Vec::new();
    f.take(MAX_TEXT + 1)
        .read_to_end(&mut buf)
        .ctx(path, "read")?;
    let bad = |reason: &str| Error::BadTrustStore {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    if buf.len() as u64 > MAX_TEXT {
        return Err(bad("file is too large"));
    }
    let text = std::str::from_utf8(&buf).map_err(|_| bad("not text"))?;
    let id = PublicIdentity::parse_text(text, &path.display().to_string())?;
    if id.code != code {
        return Err(bad(&format!(
            "holds the identity of site {}, not {code}",
            id.code
        )));
    }
    Ok(Some(id))
}

/// Creates `dir` and any missing parents, fsyncing each new directory's parent so that the
/// directories survive a crash.
fn create_dirs(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dirs(parent)?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => return Ok(()),
        Err(e) => return Err(Error::io(dir, "create directory", e)),
    }
    match dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(parent) => sync_dir(parent),
        None => sync_dir(Path::new(".")),
    }
}

/// Writes `bytes` to `path` atomically with permission bits `mode`: a temporary file in the same
/// directory, fsync, then rename (`replace`) or link without replacing (`!replace`), then a
/// directory fsync. Returns false when `!replace` and `path` already existed.
fn write_atomic(path: &Path, bytes: &[u8], mode: u32, replace: bool) -> Result<bool> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().expect("file name").to_string_lossy();
    // Unique per process and call, so that concurrent writers never share a temporary file.
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.{}-{n}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let res = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .ctx(&tmp, "create")?;
        // The umask may have removed bits; the mode is exactly what was asked for.
        f.set_permissions(std::fs::Permissions::from_mode(mode))
            .ctx(&tmp, "chmod")?;
        f.write_all(bytes).ctx(&tmp, "write")?;
        f.sync_all().ctx(&tmp, "fsync")?;
        drop(f);
        if replace {
            std::fs::rename(&tmp, path).ctx(path, "rename into place")?;
        } else {
            match std::fs::hard_link(&tmp, path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
                Err(e) => return Err(Error::io(path, "link into place", e)),
            }
        }
        Ok(true)
    })();
    let _ = std::fs::remove_file(&tmp);
    let written = res?;
    sync_dir(dir)?;
    Ok(written)
}

/// Splits text into lines, accepting `\n` or `\r\n` endings and ignoring trailing empty lines;
/// `None` if a carriage return appears anywhere else.
fn text_lines(text: &str) -> Option<Vec<&str>> {
    let mut lines: Vec<&str> = text
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .collect();
    while lines.last() == Some(&"") {
        lines.pop();
    }
    if lines.iter().any(|l| l.contains('\r')) {
        return None;
    }
    Some(lines)
}

/// The value of a `name: value` line.
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    line.strip_prefix(name)?.strip_prefix(": ")
}

/// The fingerprint of an Ed25519 public key (see [`PublicIdentity::fingerprint`]).
pub fn fingerprint_of(key: &[u8; 32]) -> String {
    let h = blake3::hash(key);
    let hexed = hex(&h.as_bytes()[..20]).to_ascii_uppercase();
    hexed
        .as_bytes()
        .chunks(4)
        .map(|c| std::str::from_utf8(c).expect("hex"))
        .collect::<Vec<_>>()
        .join("-")
}

/// Parses exactly 64 hex digits (either case).
fn unhex32(s: &str) -> Option<[u8; 32]> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in b.chunks(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn some_identity(seed: u8, code: &str) -> PublicIdentity {
        let sk = SigningKey::from_bytes(&[seed; 32]);
        PublicIdentity {
            code: SiteCode::parse(code).unwrap(),
            key: sk.verifying_key().to_bytes(),
        }
    }

    #[test]
    fn site_codes() {
        for good in ["CAS", "PS1", "000", "Z9Z"] {
            assert_eq!(SiteCode::parse(good).unwrap().to_string(), good);
        }
        for bad in ["cas", "CA", "CASX", "C$S", "", "ÄBC", "CA "] {
            assert!(
                matches!(SiteCode::parse(bad), Err(Error::BadSiteCode(s)) if s == bad),
                "{bad}"
            );
        }
    }

    #[test]
    fn fingerprint_shape_and_value() {
        let id = some_identity(7, "CAS");
        let fp = id.fingerprint();
        let groups: Vec<&str> = fp.split('-').collect();
        assert_eq!(groups.len(), 10);
        assert!(groups.iter().all(|g| {
            g.len() == 4
                && g.bytes()
                    .all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(&c))
        }));
        let expect = blake3::hash(&id.key).to_hex()[..40].to_ascii_uppercase();
        assert_eq!(fp.replace('-', ""), expect);
        assert_ne!(fp, some_identity(8, "CAS").fingerprint());
    }

    #[test]
    fn identity_text_round_trip_and_crlf() {
        let id = some_identity(3, "PS1");
        let text = id.to_text();
        assert_eq!(PublicIdentity::from_text(&text).unwrap(), id);
        let crlf = text.replace('\n', "\r\n");
        assert_eq!(PublicIdentity::from_text(&crlf).unwrap(), id);
    }

    #[test]
    fn identity_text_refusals() {
        let id = some_identity(3, "PS1");
        let text = id.to_text();
        let other = some_identity(4, "PS1");
        // Key swapped, fingerprint kept: mismatch names both fingerprints.
        let swapped = text.replace(&hex(&id.key), &hex(&other.key));
        match PublicIdentity::from_text(&swapped) {
            Err(Error::FingerprintMismatch { stated, actual, .. }) => {
                assert_eq!(stated, id.fingerprint());
                assert_eq!(actual, other.fingerprint());
            }
            r => panic!("{r:?}"),
        }
        let bad_version = text.replace("identity v1", "identity v2");
        let e = PublicIdentity::from_text(&bad_version).unwrap_err();
        assert!(e.to_string().contains("\"v2\""), "{e}");
        for broken in [
            String::new(),
            text.replace("site: ", "site:"),
            text.replace("PS1", "ps1"),
            format!("{text}extra: 1\n"),
            text.replace("key: ", "key: 00"),
            text.replace('\n', "\n\r"),
            text.lines().take(3).collect::<Vec<_>>().join("\n"),
            // A valid hex string that is not a usable public key (small order point).
            text.replace(&hex(&id.key), &hex(&[0u8; 32])),
        ] {
            assert!(
                matches!(
                    PublicIdentity::from_text(&broken),
                    Err(Error::BadIdentity { .. } | Error::FingerprintMismatch { .. })
                ),
                "{broken:?}"
            );
        }
    }

    #[test]
    fn verify_uses_the_key() {
        let sk = SigningKey::from_bytes(&[9; 32]);
        let id = PublicIdentity {
            code: SiteCode::parse("CAS").unwrap(),
            key: sk.verifying_key().to_bytes(),
        };
        let sig = sk.sign(b"hello").to_bytes();
        assert!(id.verify(b"hello", &sig));
        assert!(!id.verify(b"hellp", &sig));
        assert!(!some_identity(1, "CAS").verify(b"hello", &sig));
    }

    proptest! {
        #[test]
        fn identity_parse_never_panics(s in ".{0,300}") {
            let _ = PublicIdentity::from_text(&s);
        }

        #[test]
        fn identity_text_round_trips(seed in any::<[u8; 32]>(), code in "[A-Z0-9]{3}") {
            let sk = SigningKey::from_bytes(&seed);
            let id = PublicIdentity { code: SiteCode::parse(&code).unwrap(), key: sk.verifying_key().to_bytes() };
            prop_assert_eq!(PublicIdentity::from_text(&id.to_text()).unwrap(), id);
        }
    }
}
