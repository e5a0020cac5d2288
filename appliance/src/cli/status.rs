//! `freight status`, `messages` and `watch`: what the site's DPs hold, what happened, and
//! copies in progress.

use crate::admin::client::{AdminClient, with_query};
use crate::api::{PackageInfo, PackageStatus, StatusMessage};
use crate::cli::call::Conn;
use crate::cli::error::CliError;
use crate::cli::output::print_json;
use crate::cli::render;
use crate::cli::transfer::parse_secs;
use clap::Args;
use jiff::tz::TimeZone;
use serde_json::Value;
use std::time::Duration;

/// Arguments of `freight status`.
#[derive(Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub(crate) conn: Conn,
    /// Only this package.
    pub(crate) id: Option<String>,
}

/// Arguments of `freight messages`.
#[derive(Args)]
pub struct MessagesArgs {
    #[command(flatten)]
    pub(crate) conn: Conn,
    /// Only messages about this package.
    #[arg(long, value_name = "ID")]
    package: Option<String>,
    /// Only messages after this sequence number (the first column).
    #[arg(long, value_name = "N")]
    since: Option<i64>,
    /// The audit trail instead: every admin request (who, what, answer) and every peer
    /// request the authorization table refused.
    #[arg(long)]
    audit: bool,
}

/// Arguments of `freight watch`.
#[derive(Args)]
pub struct WatchArgs {
    #[command(flatten)]
    pub(crate) conn: Conn,
    /// Only this package.
    pub(crate) id: Option<String>,
    /// Exit once no copy is queued, running or retrying and print the final status; exit
    /// status 1 if a DP failed.
    #[arg(long)]
    pub(crate) until_settled: bool,
    /// Seconds between polls.
    #[arg(long, value_name = "SECS", default_value = "0.5", value_parser = parse_secs)]
    pub(crate) interval: Duration,
    /// With --until-settled: give up (exit status 1) after this many seconds.
    #[arg(long, value_name = "SECS", value_parser = parse_secs, requires = "until_settled")]
    pub(crate) timeout: Option<Duration>,
}

pub(crate) async fn status(a: StatusArgs) -> Result<(), CliError> {
    let client = AdminClient::new(a.conn.admin);
    let answer: Value = client
        .get(&with_query("/status", &[("package", a.id.clone())]))
        .await?;
    if a.conn.json {
        return print_json(&answer);
    }
    let rows: Vec<PackageStatus> = render::typed(answer)?;
    let tz = TimeZone::system();
    match &a.id {
        Some(id) if rows.is_empty() => println!(
            "package {id} is not targeted at any DP; target it with `freight distribute {id} --dp DP`"
        ),
        Some(_) => print!("{}", render::status_table(&rows, &tz)),
        None => {
            let pkgs: Vec<PackageInfo> = client.get("/packages").await?;
            print!("{}", render::status_and_summary(&rows, &pkgs, &tz));
        }
    }
    Ok(())
}

pub(crate) async fn messages(a: MessagesArgs) -> Result<(), CliError> {
    let client = AdminClient::new(a.conn.admin);
    let path = with_query(
        "/messages",
        &[
            ("package", a.package),
            ("since", a.since.map(|s| s.to_string())),
            ("audit", a.audit.then(|| "true".to_string())),
        ],
    );
    let answer: Value = client.get(&path).await?;
    if a.conn.json {
        return print_json(&answer);
    }
    let msgs: Vec<StatusMessage> = render::typed(answer)?;
    let tz = TimeZone::system();
    for m in &msgs {
        println!("{}", render::message_line(m, &tz));
    }
    Ok(())
}
