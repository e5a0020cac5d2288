//! The one error type of `freight-core`.
//!
//! Every variant renders as a single line that names the object (a path, a chunk, a package)
//! and, where there is one, what the user can do about it.

use std::path::PathBuf;

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the data plane.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O operation on a named path failed.
    #[error("{path}: {op} failed: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// What was being done (e.g. "read", "create").
        op: &'static str,
        /// The underlying OS error.
        #[source]
        source: std::io::Error,
    },
    /// The source folder of an ingest does not exist.
    #[error("{0}: source folder does not exist; check the path")]
    SourceMissing(PathBuf),
    /// A file in the source cannot be read.
    #[error(
        "{path}: cannot read source file ({source}); fix its permissions or remove it from the package"
    )]
    Unreadable {
        /// The unreadable file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A source file or folder changed while the snapshot read it: replaced (by a symlink,
    /// another file or folder), removed, or written to on every read.
    #[error(
        "{path}: changed while the snapshot read it ({how}); snapshot again when the source is quiet"
    )]
    SourceChanged {
        /// The file or folder that changed.
        path: PathBuf,
        /// What was noticed, e.g. "now a symlink", "grew from 10 to 12 bytes".
        how: String,
    },
    /// The source contains a file type packages cannot carry.
    #[error("{path}: {kind} cannot be part of a package; remove it from the source folder")]
    SpecialFile {
        /// The offending entry.
        path: PathBuf,
        /// "fifo", "socket", "character device", "block device".
        kind: &'static str,
    },
    /// A symlink in the source points outside the package tree.
    #[error(
        "{path}: symlink points outside the package ({target}); replace it with a copy or a link inside the tree"
    )]
    SymlinkEscapes {
        /// The symlink.
        path: PathBuf,
        /// Its target as read.
        target: String,
    },
    /// A name that cannot be represented in a manifest.
    #[error("{path}: unsupported file name ({reason}); rename it")]
    BadName {
        /// The entry.
        path: PathBuf,
        /// Why it was refused.
        reason: &'static str,
    },
    /// No storage root has room for new content.
    #[error(
        "{path}: storage root is full (needs {needed} more bytes beyond the {reserve}-byte reserve); free space, add a storage root, or lower the reserve"
    )]
    StorageFull {
        /// The root (or roots, joined) that is full.
        path: PathBuf,
        /// Bytes that did not fit.
        needed: u64,
        /// Configured reserve.
        reserve: u64,
    },
    /// Another process holds the library lock.
    #[error("{0}: library is locked by another freight process; wait for it to finish")]
    Locked(PathBuf),
    /// A manifest's bytes are not a valid manifest.
    #[error("manifest {what}: malformed at byte {offset}: {reason}")]
    BadManifest {
        /// Which manifest (file name or package/version).
        what: String,
        /// Byte offset where decoding failed.
        offset: usize,
        /// What was wrong.
        reason: String,
    },
    /// A package ID that does not follow the site code + 5 hex digits rule.
    #[error("{0:?}: not a package ID; use a 3-character site code and 5 hex digits, e.g. CAS00001")]
    BadPackageId(String),
    /// A package version the library does not hold.
    #[error(
        "package {package} version {version}: not in this library; `freight library stats` lists what it holds"
    )]
    NoSuchVersion {
        /// Package ID.
        package: String,
        /// Version asked for.
        version: u32,
    },
    /// A package the library does not hold at all.
    #[error("package {0}: not in this library; `freight library stats` lists what it holds")]
    NoSuchPackage(String),
    /// The version already exists with different content.
    #[error(
        "package {package} version {version}: already stored with different content; ingest as a new version"
    )]
    VersionExists {
        /// Package ID.
        package: String,
        /// Version.
        version: u32,
    },
    /// A chunk a manifest names is not in the library.
    #[error(
        "chunk {id}: missing from the library (needed by {package} v{version}); re-ingest or redistribute the package"
    )]
    MissingChunk {
        /// Chunk ID (hex).
        id: String,
        /// Package needing it.
        package: String,
        /// Version needing it.
        version: u32,
    },
    /// Stored chunk bytes do not hash to their ID.
    #[error(
        "chunk {id} in {pack}: content is corrupt ({reason}); run `freight library verify` and re-ingest or redistribute"
    )]
    CorruptChunk {
        /// Chunk ID (hex).
        id: String,
        /// Pack file holding it.
        pack: PathBuf,
        /// What check failed.
        reason: String,
    },
    /// Materialise refused a file because a chunk was corrupt.
    #[error(
        "{path}: not written, chunk {id} is corrupt in the library; run `freight library verify` and re-ingest or redistribute"
    )]
    RefusedFile {
        /// The file that was not written.
        path: PathBuf,
        /// The bad chunk.
        id: String,
    },
    /// The destination of a materialise is not empty.
    #[error("{0}: destination exists and is not empty; choose a new or empty folder")]
    DestinationNotEmpty(PathBuf),
    /// The library's configuration or layout is unusable.
    #[error("{path}: {reason}")]
    BadLibrary {
        /// The offending file.
        path: PathBuf,
        /// What is wrong and what to do.
        reason: String,
    },
    /// A library file is damaged in a way a crash cannot leave (a bad index header or entry,
    /// a missing index or data file, a newer format). Nothing was changed.
    #[error(
        "{path}: {reason}; nothing was changed, run `freight library repair` to rebuild what the data still holds and set the rest aside"
    )]
    NeedsRepair {
        /// The damaged file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A file of the library's global chunk index (`LIB/index/`) is damaged or does not match
    /// the pack files. The index is derived from the pack indexes, so nothing is lost: it is
    /// rebuilt from them (at once, or at the next open).
    #[error(
        "{path}: chunk index is damaged ({reason}); it is rebuilt from the pack indexes at the next open, or remove the `index` folder to force that"
    )]
    BadIndex {
        /// The damaged index file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A storage root's folder is missing: an unmounted disk, or a root added by hand.
    #[error(
        "{0}: storage root is missing (an unmounted disk?); mount it, or create this folder if it is a new root"
    )]
    RootMissing(PathBuf),
    /// A parcel file is malformed, truncated or tampered with.
    #[error(
        "parcel {path}: {part} at byte {offset}: {reason}; the parcel is damaged, create it again at the sending site"
    )]
    BadParcel {
        /// The parcel file.
        path: PathBuf,
        /// Which part failed (header, instruction, manifest, chunk N, index, trailer, checksum).
        part: String,
        /// Byte offset of the failing part.
        offset: u64,
        /// What was wrong.
        reason: String,
    },
    /// Content or an instruction from a site this site trusts, but not as its parent: only
    /// the parent sends packages down (issue 13, authorization by route).
    #[error(
        "site {site}: trusted here as {roles}, not as this site's parent; packages are accepted only from the parent (if {site} is it: `freight site set-parent {site}` at the site server, or `freight site identity role {site} --add parent` on a site folder without one)"
    )]
    NotFromParent {
        /// The sending site.
        site: String,
        /// What its key is trusted for here.
        roles: String,
    },
    /// A delta needs a base version this library does not hold.
    #[error(
        "package {package}: delta needs base version {version}, which this library does not hold; import a full parcel or the base version first"
    )]
    MissingBase {
        /// Package ID.
        package: String,
        /// Missing base version.
        version: u32,
    },
    /// io_uring was demanded but cannot be used.
    #[error("io_uring unavailable ({0}); set io = \"auto\" or \"fallback\"")]
    UringUnavailable(std::io::Error),
    /// A site code that is not 3 upper-case ASCII letters or digits.
    #[error("{0:?}: not a site code; use 3 upper-case letters or digits, e.g. CAS")]
    BadSiteCode(String),
    /// A site key file that group or other users may access.
    #[error(
        "{path}: site key file has mode {mode:04o}, readable by other users; run `chmod 600` on it (and replace the key if others may have read it)"
    )]
    KeyFileMode {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A site key file that cannot be used.
    #[error("{path}: not a usable site key ({reason}); restore it from backup")]
    BadKeyFile {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A site identity (public key export) that cannot be parsed.
    #[error("{what}: not a usable site identity ({reason}); ask the site to export it again")]
    BadIdentity {
        /// The file or text it came from.
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A site identity whose fingerprint line does not match its key.
    #[error(
        "{what}: fingerprint line {stated} does not match the key of site {site} (whose fingerprint is {actual}); the identity was altered or damaged, get it again from the site"
    )]
    FingerprintMismatch {
        /// The file or text it came from.
        what: String,
        /// The site the identity names.
        site: String,
        /// The fingerprint the text states.
        stated: String,
        /// The fingerprint of the key it carries.
        actual: String,
    },
    /// An import would replace the trusted key of a site with another one.
    #[error(
        "site {site}: already trusted with key {trusted}, refusing key {offered}; revoke the old key first if the site really has a new one"
    )]
    KeyConflict {
        /// The site code.
        site: String,
        /// Fingerprint of the key already trusted.
        trusted: String,
        /// Fingerprint of the key offered.
        offered: String,
    },
    /// A peer presented a key other than the one trusted for its site.
    #[error(
        "site {site}: presented key {presented}, but the trust store holds {trusted} for {site}; refusing it (if {site} really has a new key, revoke the old one and import its new identity)"
    )]
    WrongKey {
        /// The site code the peer claims.
        site: String,
        /// Fingerprint of the key presented.
        presented: String,
        /// Fingerprint of the key trusted for the site.
        trusted: String,
    },
    /// A site whose identity is not in the trust store.
    #[error("site {0}: not in the trust store; import its identity first")]
    UnknownSite(String),
    /// A site key that has been revoked.
    #[error(
        "site {site}: key {fingerprint} is revoked; refusing it, import the site's new identity"
    )]
    RevokedKey {
        /// The site code.
        site: String,
        /// Fingerprint of the revoked key.
        fingerprint: String,
    },
    /// The trust store directory holds something unusable.
    #[error(
        "{path}: trust store is damaged ({reason}); remove the file and import the identity again"
    )]
    BadTrustStore {
        /// The offending file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// An instruction's bytes are not a valid instruction.
    #[error(
        "instruction malformed at byte {offset}: {reason}; ask the sending site to send it again"
    )]
    BadInstruction {
        /// Byte offset where decoding failed.
        offset: usize,
        /// What was wrong.
        reason: String,
    },
    /// An instruction was to be signed with the key of another site.
    #[error(
        "instruction from site {origin} cannot be signed with the key of site {key_site}; sign it at site {origin}"
    )]
    WrongSigningKey {
        /// The instruction's origin.
        origin: String,
        /// The site of the key offered.
        key_site: String,
    },
    /// An instruction's signature does not verify against its origin's trusted key.
    #[error(
        "instruction from site {origin}: signature does not match its trusted key {fingerprint}; refused, check the site's identity and ask it to send again"
    )]
    BadSignature {
        /// The site the instruction claims to come from.
        origin: String,
        /// Fingerprint of the trusted key it was checked against.
        fingerprint: String,
    },
    /// An instruction addressed to another site.
    #[error(
        "instruction for site {destination} arrived at site {this_site}; refused, forward it to site {destination}"
    )]
    WrongDestination {
        /// The site it is addressed to.
        destination: String,
        /// The site that received it.
        this_site: String,
    },
    /// An instruction offering an older version than the one stored.
    #[error(
        "package {package}: version {offered} offered but version {stored} is already here; nothing to do, a newer version is stored"
    )]
    OlderVersion {
        /// Package ID.
        package: String,
        /// Version the instruction carries.
        offered: u32,
        /// Version already stored.
        stored: u32,
    },
}

impl Error {
    /// Wraps an I/O error with the path and operation it concerns.
    pub fn io(path: impl Into<PathBuf>, op: &'static str, source: std::io::Error) -> Self {
        // A full disk is a storage problem the user must act on, whatever the operation was.
        Error::Io {
            path: path.into(),
            op,
            source,
        }
    }

    /// True when the error is the disk running out of space.
    pub fn is_no_space(&self) -> bool {
        match self {
            Error::StorageFull { .. } => true,
            Error::Io { source, .. } => source.raw_os_error() == Some(libc::ENOSPC),
            _ => false,
        }
    }
}

/// Adds path context to `std::io::Result`s.
pub trait IoContext<T> {
    /// Attaches `path` and `op` to an I/O error.
    fn ctx(self, path: impl Into<PathBuf>, op: &'static str) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, path: impl Into<PathBuf>, op: &'static str) -> Result<T> {
        self.map_err(|e| Error::io(path, op, e))
    }
}
