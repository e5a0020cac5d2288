//! The site server's errors. Each is one line naming the object and the fix; the admin API
//! (and only it) maps them to HTTP status codes.

use super::store::StoreError;
use std::path::PathBuf;

/// Why a site server action failed.
#[derive(Debug, thiserror::Error)]
pub enum SiteError {
    /// No DP of that name.
    #[error("no DP named {0}; list them with `freight dp list` or add it with `freight dp add`")]
    NoDp(String),
    /// A pull DP names a source that is not a DP of this site.
    #[error("source DP {missing} of pull DP {dp} is not known; add it first (`freight dp add`)")]
    NoSourceDp {
        /// The missing source.
        missing: String,
        /// The pull DP being added.
        dp: String,
    },
    /// No site of that code is this site's parent or child.
    #[error(
        "no site {0} is this site's parent or child; list them with `freight site list`, add a child with `freight site add-child`"
    )]
    NoSite(String),
    /// The child has no address (of that kind).
    #[error("no {}address to site {site}; list them with `freight address list` or add one with `freight address add`", kind.map_or(String::new(), |k| format!("{k} ")))]
    NoAddress {
        /// The child site.
        site: String,
        /// The sender kind asked for, if any.
        kind: Option<crate::model::SenderKind>,
    },
    /// No DP group of that name.
    #[error("no DP group named {0}; list them with `freight dpgroup list`")]
    NoGroup(String),
    /// No package of that ID (or it was deleted).
    #[error("no package {0} at this site; list them with `freight package list`")]
    NoPackage(String),
    /// A package's source folder cannot be read.
    #[error(
        "source folder {} cannot be read ({reason}); check the path and that freightd may read it",
        path.display()
    )]
    SourceUnreadable {
        /// The folder.
        path: PathBuf,
        /// The file system's reason.
        reason: std::io::Error,
    },
    /// The request is malformed or names something unusable (the line says what).
    #[error("{0}")]
    Invalid(String),
    /// The request conflicts with the site's state (the line says what to do first).
    #[error("{0}")]
    Conflict(String),
    /// Snapshotting a package's source failed (names the file and the fix).
    #[error("package {package}: {source}")]
    Snapshot {
        /// Package ID.
        package: String,
        /// The content library's error.
        #[source]
        source: freight_core::Error,
    },
    /// The site database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The site's content library is not available (its store thread stopped).
    #[error("content library: {0}")]
    Library(#[from] freight_transport::Error),
}

/// Result of a site server action.
pub type SiteResult<T> = Result<T, SiteError>;
