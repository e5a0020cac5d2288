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
