//! The `freight` command's error: every failure it reports, as one line.

/// Errors the `freight` CLI reports, each as one line.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// An error from the data plane (already names the object and the remedy).
    #[error(transparent)]
    Core(#[from] freight_core::Error),
    /// An error of the transport (already names the peer or object and the remedy).
    #[error(transparent)]
    Transport(#[from] freight_transport::Error),
    /// A command-line value that cannot be used.
    #[error("{0}")]
    Usage(String),
    /// Verification found problems (already printed).
    #[error("verification found {0} bad chunk(s); re-ingest or redistribute the affected packages")]
    VerifyFailed(usize),
    /// A home folder cannot be used (names the file and the fix).
    #[error(transparent)]
    Home(#[from] crate::home::HomeError),
    /// An admin request failed: refused by `freightd` (its line), or the socket could not be
    /// used (names the socket and the fix).
    #[error(transparent)]
    Admin(#[from] crate::admin::client::ClientError),
    /// The daemon of `freight daemon` failed (names the object and the fix).
    #[error(transparent)]
    Daemon(#[from] crate::daemon::DaemonError),
    /// What was watched ended in failure (names what failed and the fix).
    #[error("{0}")]
    Failed(String),
    /// Writing output failed.
    #[error("output: {0}")]
    Output(#[from] std::io::Error),
}
