//! `freight`: the command-line tool of the Freight appliance.
//!
//! Today it works offline on a content library (`freight library ...`) and runs a small
//! demonstration (`freight demo`); the site commands arrive with the appliance daemon.

mod demo;
mod error;
mod library_cmd;
mod output;
mod parcel_cmd;
mod progress_bar;
mod site_cmd;
mod site_home;
mod transfer_cmd;

use clap::{Parser, Subcommand};
use error::CliError;
use freight_core::IoMode;

/// Freight: content distribution for a hierarchy of sites.
#[derive(Parser)]
#[command(name = "freight", version, about)]
struct Cli {
    /// I/O path: auto, uring or fallback (positioned reads/writes).
    #[arg(long, global = true, env = "FREIGHT_IO")]
    io: Option<IoMode>,
    /// Hide progress bars.
    #[arg(long, short, global = true)]
    quiet: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Work on a content library directly (offline).
    Library(library_cmd::LibraryArgs),
    /// This site's identity and the sites it trusts.
    Site(site_cmd::SiteArgs),
    /// Courier parcels: create, inspect, import.
    Parcel(parcel_cmd::ParcelArgs),
    /// Send a package version to another site's library over QUIC, or receive them.
    Transfer(transfer_cmd::TransferArgs),
    /// Snapshot a sample tree, update it, verify, restore and collect garbage, printing each step.
    Demo(demo::DemoArgs),
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FREIGHT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    raise_fd_limit();
    let cli = Cli::parse();
    let res: Result<(), CliError> = match cli.cmd {
        Cmd::Library(a) => library_cmd::run(a, cli.io, cli.quiet),
        Cmd::Demo(a) => demo::run(a, cli.io, cli.quiet),
        Cmd::Site(a) => site_cmd::run(a),
        Cmd::Parcel(a) => parcel_cmd::run(a, cli.io, cli.quiet),
        Cmd::Transfer(a) => transfer_cmd::run(a, cli.io, cli.quiet),
    };
    if let Err(e) = res {
        eprintln!("freight: {e}");
        std::process::exit(1);
    }
}

/// Materialising and ingesting keep many files open at once; use the hard limit.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}
