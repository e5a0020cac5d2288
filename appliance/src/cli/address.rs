//! `freight address`: how this site sends to its child sites (add, list, show, schedule,
//! remove). `show` and `schedule` draw the week as a grid ([`crate::cli::week`]).

use crate::admin::client::segment;
use crate::api::{AddAddress, AddressSchedule, SenderKind};
use crate::cli::call::{Call, Conn};
use crate::cli::error::CliError;
use crate::cli::render::Show;
use crate::site_server::hierarchy::MAX_SCHEDULE;
use clap::{Args, Subcommand};
use hyper::Method;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Arguments of `freight address`.
#[derive(Args)]
pub struct AddressArgs {
    #[command(flatten)]
    pub(crate) conn: Conn,
    #[command(subcommand)]
    pub(crate) cmd: AddressCmd,
}

/// Where an address's schedule comes from: the compact text or a TOML file.
#[derive(Args, Debug)]
#[group(multiple = false)]
pub(crate) struct ScheduleArgs {
    /// Bandwidth windows in the compact form, e.g.
    /// `link 100Mbit/s; Mon-Fri 08:00-18:00 high 50%; Sat-Sun closed`.
    #[arg(long, value_name = "TEXT")]
    throttle: Option<String>,
    /// Bandwidth windows in the TOML form (`[[window]]` tables), from this file.
    #[arg(long, value_name = "FILE")]
    file: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub(crate) enum AddressCmd {
    /// Add an address to a child site (`freight site add-child` first).
    Add {
        /// The child site's code.
        site: String,
        /// The sender: standard (QUIC to --endpoint) or courier (parcels on media).
        #[arg(long, default_value = "standard", value_parser = |s: &str| s.parse::<SenderKind>())]
        kind: SenderKind,
        /// The child's QUIC endpoint (standard addresses).
        #[arg(long, value_name = "HOST:PORT")]
        endpoint: Option<String>,
        #[command(flatten)]
        schedule: ScheduleArgs,
        /// Retries of a failed send (default: the site's `sender_retries`, 2).
        #[arg(long)]
        retries: Option<u32>,
        /// Wait between retries, e.g. `1m` (default: the site's `sender_retry_delay`).
        #[arg(long, value_name = "DURATION")]
        retry_delay: Option<String>,
        /// Sends at once to this site (default: the site's `sender_sends_per_site`, 3).
        #[arg(long)]
        max_sends: Option<u32>,
    },
    /// List the addresses.
    List,
    /// An address and its week as a 7×24 grid (who may send and at what rate, per hour).
    Show {
        /// The child site's code.
        site: String,
        /// Which address, when the site has both.
        #[arg(long, value_parser = |s: &str| s.parse::<SenderKind>())]
        kind: Option<SenderKind>,
    },
    /// Set an address's bandwidth windows (the text form or a TOML file).
    Schedule {
        /// The child site's code.
        site: String,
        /// Which address, when the site has both.
        #[arg(long, value_parser = |s: &str| s.parse::<SenderKind>())]
        kind: Option<SenderKind>,
        #[command(flatten)]
        schedule: ScheduleArgs,
    },
    /// Remove an address.
    Remove {
        /// The child site's code.
        site: String,
        /// Which address, when the site has both.
        #[arg(long, value_parser = |s: &str| s.parse::<SenderKind>())]
        kind: Option<SenderKind>,
    },
}

/// `address ...` → its call; `read_file` reads a `--file` schedule.
pub(crate) fn address_call(
    cmd: AddressCmd,
    read_file: impl FnOnce(&Path) -> Result<String, CliError>,
) -> Result<Call, CliError> {
    Ok(match cmd {
        AddressCmd::Add {
            site,
            kind,
            endpoint,
            schedule,
            retries,
            retry_delay,
            max_sends,
        } => {
            let body = AddAddress {
                site,
                kind,
                endpoint,
                schedule: schedule.read(read_file)?,
                retries,
                retry_delay,
                max_sends,
            };
            Call::new(Method::POST, "/addresses".into(), Show::AddressAdded).body(&body)?
        }
        AddressCmd::List => Call::new(Method::GET, "/addresses".into(), Show::Addresses),
        AddressCmd::Show { site, kind } => Call::new(
            Method::GET,
            address_path(&site, "", kind),
            Show::AddressDetail,
        ),
        AddressCmd::Schedule {
            site,
            kind,
            schedule,
        } => {
            let schedule = schedule.read(read_file)?;
            if schedule.text.is_none() && schedule.toml.is_none() {
                return Err(CliError::Usage(format!(
                    "address to {site}: give the schedule: --throttle TEXT or --file FILE (TOML)"
                )));
            }
            Call::new(
                Method::PUT,
                address_path(&site, "/schedule", kind),
                Show::AddressDetail,
            )
            .body(&schedule)?
        }
        AddressCmd::Remove { site, kind } => {
            Call::new(Method::DELETE, address_path(&site, "", kind), Show::Done)
        }
    })
}

impl ScheduleArgs {
    fn read(
        self,
        read_file: impl FnOnce(&Path) -> Result<String, CliError>,
    ) -> Result<AddressSchedule, CliError> {
        Ok(AddressSchedule {
            text: self.throttle,
            toml: self.file.as_deref().map(read_file).transpose()?,
        })
    }
}

fn address_path(site: &str, rest: &str, kind: Option<SenderKind>) -> String {
    let query = kind.map_or(String::new(), |k| format!("?kind={k}"));
    format!("/addresses/{}{rest}{query}", segment(site))
}

/// Reads a TOML schedule file, refusing one longer than any schedule can be before it is
/// read whole.
pub(crate) fn read_schedule_file(file: &Path) -> Result<String, CliError> {
    let f = file.display();
    let bad = |e: std::io::Error| CliError::Usage(format!("{f}: cannot read the schedule ({e})"));
    let mut text = String::new();
    std::fs::File::open(file)
        .map_err(bad)?
        .take(MAX_SCHEDULE as u64 + 1)
        .read_to_string(&mut text)
        .map_err(bad)?;
    if text.len() > MAX_SCHEDULE {
        return Err(CliError::Usage(format!(
            "{f}: a schedule is at most {MAX_SCHEDULE} bytes; a week has 168 hours, write it with day and hour ranges"
        )));
    }
    Ok(text)
}
