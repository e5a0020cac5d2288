//! The one error type of the appliance crate.

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
    /// The site database failed (names the file and the fix).
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
    /// `freightd` refused a request; its one-line reason names the object and the fix.
    #[error("{0}")]
    Api(String),
    /// The admin socket could not be used (names the socket and the fix).
    #[error("{0}")]
    Admin(String),
    /// Writing output failed.
    #[error("output: {0}")]
    Output(#[from] std::io::Error),
}
