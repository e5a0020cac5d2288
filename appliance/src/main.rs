//! `freight`: the command-line tool of the Freight appliance.
//!
//! It works offline on a content library (`freight library ...`), runs a small demonstration
//! (`freight demo`), and drives a site server through `freightd`'s admin socket
//! (`freight dp|dpgroup|package|distribute|status|watch ...`).

mod admin_cmd;
mod demo;
mod library_cmd;
mod parcel_cmd;
mod site_cmd;
mod site_demo;
mod transfer_cmd;

use freight_appliance::{error, output, progress_bar, site_home};

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
    /// A site server, two standard DPs and a pull DP on loopback: create, distribute, update and
    /// redistribute a sample package with progress and status (`--library`: the content library).
    Demo(demo::DemoArgs),
    /// Run the daemon of a config file in the foreground (what `freightd` runs).
    #[command(hide = true)]
    Daemon {
        /// The config file.
        #[arg(long, short)]
        config: std::path::PathBuf,
    },
    #[command(flatten)]
    Admin(admin_cmd::AdminCmd),
}

fn main() {
    freight_appliance::logging::init();
    raise_fd_limit();
    let cli = Cli::parse();
    let res: Result<(), CliError> = match cli.cmd {
        Cmd::Library(a) => library_cmd::run(a, cli.io, cli.quiet),
        Cmd::Demo(a) => demo::run(a, cli.io, cli.quiet),
        Cmd::Site(a) => site_cmd::run(a),
        Cmd::Parcel(a) => parcel_cmd::run(a, cli.io, cli.quiet),
        Cmd::Transfer(a) => transfer_cmd::run(a, cli.io, cli.quiet),
        Cmd::Admin(a) => admin_cmd::run(a, cli.quiet),
        Cmd::Daemon { config } => freight_appliance::daemon::run(&config, cli.io),
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
