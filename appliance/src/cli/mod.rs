//! `freight`: the command-line tool of the Freight appliance, one module per noun.
//!
//! It works offline on a content library ([`library`]), a site's identity ([`site`]),
//! courier parcels ([`parcel`]) and bare QUIC transfers ([`transfer`]); drives a site server
//! through `freightd`'s admin socket ([`call`]: `dp`, `dpgroup`, `package`, `distribute`,
//! `status`, `watch`, ...); and runs the demonstrations ([`demo`]).

pub mod address;
pub mod call;
pub mod courier;
pub mod demo;
pub mod distribution;
pub mod dp;
pub mod dpgroup;
pub mod error;
pub mod library;
pub mod output;
pub mod package;
pub mod parcel;
pub mod progress_bar;
pub mod render;
pub mod site;
pub mod status;
mod table;
pub mod transfer;
pub mod watch;
pub mod week;

use clap::{Parser, Subcommand};
use error::CliError;
use freight_core::IoMode;

/// Freight: content distribution for a hierarchy of sites.
#[derive(Parser)]
#[command(name = "freight", version)]
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
    Library(library::LibraryArgs),
    /// This site's identity and the sites it trusts; its parent and children.
    Site(site::SiteArgs),
    /// Courier parcels: create, inspect, import.
    Parcel(parcel::ParcelArgs),
    /// Send a package version to another site's library over QUIC, or receive them.
    Transfer(transfer::TransferArgs),
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
    Admin(call::AdminCmd),
}

/// Parses the command line and runs the command; exits 1 with one line on error.
pub fn main() {
    crate::logging::init();
    // Materialising and ingesting keep many files open at once: use the hard limit.
    crate::daemon::raise_fd_limit();
    let cli = Cli::parse();
    let res: Result<(), CliError> = match cli.cmd {
        Cmd::Library(a) => library::run(a, cli.io, cli.quiet),
        Cmd::Demo(a) => demo::run(a, cli.io, cli.quiet),
        Cmd::Site(a) => site::run(a),
        Cmd::Parcel(a) => parcel::run(a, cli.io, cli.quiet),
        Cmd::Transfer(a) => transfer::run(a, cli.io, cli.quiet),
        Cmd::Admin(a) => call::run(a, cli.quiet),
        Cmd::Daemon { config } => crate::daemon::run(&config, cli.io).map_err(CliError::from),
    };
    if let Err(e) = res {
        eprintln!("freight: {e}");
        std::process::exit(1);
    }
}
