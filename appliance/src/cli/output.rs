//! Machine-readable output of the CLI.

use crate::cli::error::CliError;

/// Prints `v` as pretty JSON on standard output (the `--json` of every read command).
pub fn print_json<T: serde::Serialize>(v: &T) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(v).map_err(|e| CliError::Usage(e.to_string()))?;
    println!("{text}");
    Ok(())
}
