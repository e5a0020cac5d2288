//! The DP role's errors: each becomes the one-line `Error` reply its site server records.

use crate::content::{ContentError, FailureKind, chain_kind};

/// Why a DP command failed.
#[derive(Debug, thiserror::Error)]
pub enum DpError {
    /// The authorization table refuses the peer this request (names the peer and the fix).
    #[error(transparent)]
    Refused(#[from] freight_transport::authz::Refused),
    /// The request does not parse.
    #[error("request not understood ({0}); run the same Freight version on site server and DP")]
    BadRequest(#[source] serde_json::Error),
    /// A package ID or site code in the request is malformed.
    #[error(transparent)]
    BadValue(#[from] freight_core::Error),
    /// Hosting, dropping or sharing content failed.
    #[error(transparent)]
    Content(#[from] ContentError),
    /// The library's store thread or a session failed.
    #[error(transparent)]
    Transport(#[from] freight_transport::Error),
    /// A source was asked for a version it does not hold.
    #[error("this DP does not hold {package} v{version}: {reason}")]
    NotHeld {
        /// Package ID.
        package: String,
        /// Version.
        version: u32,
        /// The library's reason.
        reason: freight_core::Error,
    },
    /// A standard DP was asked to pull.
    #[error("this DP is a standard DP; it does not pull (set [dp] kind = \"pull\")")]
    NotPull,
    /// A source's address does not parse.
    #[error("{0:?} is not a QUIC address")]
    BadSourceAddress(String),
    /// A source answered with an error line, or with something that does not fit.
    #[error("{0}")]
    Source(String),
    /// This DP refused what a source offered as hostile or broken (a manifest that does not
    /// decode or is too large): the same bytes are refused from every source, every time.
    #[error(
        "the copy source {from} offered was refused: {reason}; check the package on the site server and redistribute it"
    )]
    Hostile {
        /// The source's site code.
        from: String,
        /// The receiving session's one-line reason.
        reason: String,
    },
    /// A blocking task died.
    #[error("{what} task failed: {reason}")]
    Task {
        /// What the task did.
        what: &'static str,
        /// The runtime's reason.
        reason: String,
    },
}

impl DpError {
    /// Whether the site server should retry (see [`FailureKind`]): a refused authorization, a
    /// request this DP cannot take and a content failure that can never succeed are
    /// permanent; the rest (stopping, sessions, sources) transient.
    pub fn kind(&self) -> FailureKind {
        match self {
            DpError::Refused(_)
            | DpError::BadRequest(_)
            | DpError::BadValue(_)
            | DpError::NotPull
            | DpError::BadSourceAddress(_)
            | DpError::Hostile { .. } => FailureKind::Permanent,
            DpError::Content(e) => e.kind(),
            DpError::NotHeld { reason, .. } => chain_kind(reason),
            DpError::Transport(_) | DpError::Source(_) | DpError::Task { .. } => {
                FailureKind::Transient
            }
        }
    }
}
