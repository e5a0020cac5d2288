//! `freightd`: the Freight appliance daemon (site server and/or distribution point).

use clap::Parser;
use freight_core::IoMode;
use std::path::PathBuf;

/// Freight's daemon: runs the site server and/or DP roles of its config file.
#[derive(Parser)]
#[command(name = "freightd", version)]
struct Args {
    /// The config file (TOML; see the `config` module's documentation for its keys).
    #[arg(
        long,
        short,
        env = "FREIGHTD_CONFIG",
        default_value = "/etc/freight/freightd.toml"
    )]
    config: PathBuf,
    /// I/O path: auto, uring or fallback.
    #[arg(long, env = "FREIGHT_IO")]
    io: Option<IoMode>,
}

fn main() {
    freight_appliance::logging::init();
    let args = Args::parse();
    if let Err(e) = freight_appliance::daemon::run(&args.config, args.io) {
        eprintln!("freightd: {e}");
        // 78 for a refused start (nothing a restart changes), 1 after readiness.
        std::process::exit(freight_appliance::daemon::exit_status());
    }
}
