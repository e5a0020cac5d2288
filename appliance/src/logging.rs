//! Logs of both binaries: `tracing` to standard error, filtered by `FREIGHT_LOG` (default
//! `warn`), coloured only on a terminal.

/// Installs the subscriber; call once at start.
pub fn init() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FREIGHT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
