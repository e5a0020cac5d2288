//! `freight distribute`, `redistribute` and `validate`: a package to DPs, DP groups and sites
//! below this one.

use crate::api::Targets;
use crate::cli::call::{Call, Conn};
use crate::cli::error::CliError;
use crate::cli::package::package_path;
use crate::cli::render::Show;
use clap::{ArgGroup, Args};
use hyper::Method;

/// Arguments of `freight distribute`.
#[derive(Args)]
#[command(group(ArgGroup::new("targets").required(true).multiple(true).args(["dps", "groups", "sites"])))]
pub struct DistributeArgs {
    #[command(flatten)]
    pub(crate) conn: Conn,
    /// Package ID.
    pub(crate) id: String,
    /// A DP (repeat, or separate with commas).
    #[arg(long = "dp", value_name = "DP", value_delimiter = ',')]
    pub(crate) dps: Vec<String>,
    /// A DP group (repeat, or separate with commas).
    #[arg(long = "group", value_name = "GROUP", value_delimiter = ',')]
    pub(crate) groups: Vec<String>,
    /// A site below this one (repeat, or separate with commas): the package travels there
    /// through the Sender and every DP of that site gets it.
    #[arg(long = "site", value_name = "SITE", value_delimiter = ',')]
    pub(crate) sites: Vec<String>,
}

/// Arguments of `freight redistribute`.
#[derive(Args)]
pub struct RedistributeArgs {
    #[command(flatten)]
    pub(crate) conn: Conn,
    /// Package ID.
    pub(crate) id: String,
    /// The DP to repair.
    #[arg(long, value_name = "DP")]
    pub(crate) dp: String,
}

/// Arguments of `freight validate`.
#[derive(Args)]
pub struct ValidateArgs {
    #[command(flatten)]
    pub(crate) conn: Conn,
    /// Package ID.
    pub(crate) id: String,
    /// A DP (repeat, or separate with commas; default: every DP holding the package).
    #[arg(long = "dp", value_name = "DP", value_delimiter = ',')]
    pub(crate) dps: Vec<String>,
}

/// `distribute`, `redistribute`, `validate`: `POST /packages/{id}/{verb}` with the targets.
pub(crate) fn targets_call(
    verb: &str,
    id: &str,
    dps: Vec<String>,
    groups: Vec<String>,
    sites: Vec<String>,
) -> Result<Call, CliError> {
    Call::new(
        Method::POST,
        format!("{}/{verb}", package_path(id)),
        Show::Done,
    )
    .body(&Targets { dps, groups, sites })
}
