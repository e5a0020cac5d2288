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
    /// Writing output failed.
    #[error("output: {0}")]
    Output(#[from] std::io::Error),
}
