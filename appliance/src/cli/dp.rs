//! `freight dp`: the distribution points of this site (add, list, show, remove, schedule).

use crate::admin::client::segment;
use crate::api::{AddDp, SetSchedule};
use crate::cli::call::{Call, Conn};
use crate::cli::error::CliError;
use crate::cli::render::Show;
use clap::{Args, Subcommand};
use freight_core::site::PublicIdentity;
use hyper::Method;
use std::path::{Path, PathBuf};

/// Arguments of `freight dp`.
#[derive(Args)]
pub struct DpArgs {
    #[command(flatten)]
    pub(crate) conn: Conn,
    #[command(subcommand)]
    pub(crate) cmd: DpCmd,
}

#[derive(Subcommand, Debug)]
pub(crate) enum DpCmd {
    /// Add a DP and trust its key.
    Add {
        /// The DP's name (unique at the site).
        name: String,
        /// The DP's QUIC address.
        #[arg(long, value_name = "HOST:PORT")]
        address: String,
        /// The DP's identity file (`freight site identity export` on the DP).
        #[arg(long, value_name = "FILE")]
        identity: PathBuf,
        /// The DP's HTTP content address, shown to users.
        #[arg(long, value_name = "HOST:PORT")]
        http: Option<String>,
        /// A pull DP: it fetches content from its source DPs itself.
        #[arg(long)]
        pull: bool,
        /// Pull DP: a source DP, best first (repeat, or separate with commas).
        #[arg(
            long = "source",
            value_name = "DP",
            requires = "pull",
            value_delimiter = ','
        )]
        sources: Vec<String>,
        /// Bandwidth windows in the compact form, e.g.
        /// `link 100Mbit/s; Mon-Fri 08:00-18:00 high 2MiB/s` (default: unlimited, always open).
        #[arg(long, value_name = "TEXT")]
        throttle: Option<String>,
    },
    /// List the DPs.
    List,
    /// A DP and the status of every package targeted at it.
    Show {
        /// DP name.
        name: String,
    },
    /// Remove a DP (refused while it holds packages).
    Remove {
        /// DP name.
        name: String,
    },
    /// Set a DP's bandwidth windows.
    Schedule {
        /// DP name.
        name: String,
        /// Bandwidth windows in the compact form.
        #[arg(long, value_name = "TEXT")]
        throttle: String,
    },
}

/// `dp ...` → its call; `read_identity` reads and checks `--identity`.
pub(crate) fn dp_call(
    cmd: DpCmd,
    read_identity: impl FnOnce(&Path) -> Result<String, CliError>,
) -> Result<Call, CliError> {
    Ok(match cmd {
        DpCmd::Add {
            name,
            address,
            identity,
            http,
            pull,
            sources,
            throttle,
        } => {
            if pull && sources.is_empty() {
                return Err(CliError::Usage(format!(
                    "pull DP {name} needs a source; pass --source DP (best first)"
                )));
            }
            let body = AddDp {
                name,
                kind: if pull { "pull" } else { "standard" }.into(),
                address,
                http,
                identity: read_identity(&identity)?,
                sources,
                throttle,
            };
            Call::new(Method::POST, "/dps".into(), Show::DpAdded).body(&body)?
        }
        DpCmd::List => Call::new(Method::GET, "/dps".into(), Show::Dps),
        DpCmd::Show { name } => Call::new(Method::GET, dp_path(&name), Show::DpDetail),
        DpCmd::Remove { name } => Call::new(Method::DELETE, dp_path(&name), Show::Done),
        DpCmd::Schedule { name, throttle } => Call::new(
            Method::PUT,
            format!("{}/schedule", dp_path(&name)),
            Show::DpScheduled,
        )
        .body(&SetSchedule { throttle })?,
    })
}

fn dp_path(name: &str) -> String {
    format!("/dps/{}", segment(name))
}

/// Reads a DP's identity file and checks it before it is sent.
pub(crate) fn read_identity(file: &Path) -> Result<String, CliError> {
    let f = file.display();
    let text = std::fs::read_to_string(file).map_err(|e| {
        CliError::Usage(format!(
            "{f}: cannot read the DP's identity ({e}); write it on the DP with \
             `freight site identity export --out FILE`"
        ))
    })?;
    PublicIdentity::from_text(&text).map_err(|e| CliError::Usage(format!("{f}: {e}")))?;
    Ok(text)
}
