//! `freight demo`: by default a site with its DPs on loopback ([`sites`]); with `--library`,
//! the content library, courier parcels and a bare QUIC push ([`library`]).

pub mod library;
pub mod sample;
pub mod sites;

use crate::cli::error::CliError;
use clap::Args;
use freight_core::IoMode;
use std::path::PathBuf;

/// Arguments of `freight demo`.
#[derive(Args)]
pub struct DemoArgs {
    /// Work folder (default: a new temporary folder, removed afterwards).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Size of the sample package, e.g. 256MiB.
    #[arg(long, default_value = "96MiB", value_parser = freight_core::units::parse_size)]
    size: u64,
    /// Show the content library, parcels and a bare QUIC push instead of a site.
    #[arg(long)]
    library: bool,
}

/// Runs the demonstration.
pub fn run(a: DemoArgs, io: Option<IoMode>, quiet: bool) -> Result<(), CliError> {
    let tmp;
    let work = match a.dir {
        Some(d) => d,
        None => {
            tmp = TempDir::new()?;
            tmp.0.clone()
        }
    };
    if a.library {
        library::run(&work, a.size, io, quiet)
    } else {
        sites::run(&work, a.size, quiet)
    }
}

/// A temporary folder removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> std::io::Result<TempDir> {
        let base = std::env::temp_dir().join(format!("freight-demo-{}", std::process::id()));
        std::fs::create_dir_all(&base)?;
        Ok(TempDir(base))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
