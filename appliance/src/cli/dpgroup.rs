//! `freight dpgroup`: named sets of DPs, to target many at once.

use crate::admin::client::segment;
use crate::api::{AddGroup, Members};
use crate::cli::call::{Call, Conn};
use crate::cli::error::CliError;
use crate::cli::render::Show;
use clap::{Args, Subcommand};
use hyper::Method;

/// Arguments of `freight dpgroup`.
#[derive(Args)]
pub struct GroupArgs {
    #[command(flatten)]
    pub(crate) conn: Conn,
    #[command(subcommand)]
    pub(crate) cmd: GroupCmd,
}

#[derive(Subcommand, Debug)]
pub(crate) enum GroupCmd {
    /// Create a DP group.
    Create {
        /// Group name.
        name: String,
        /// An initial member (repeat, or separate with commas).
        #[arg(long = "dp", value_name = "DP", value_delimiter = ',')]
        dps: Vec<String>,
    },
    /// Add DPs to a group.
    Add {
        /// Group name.
        name: String,
        /// DP names.
        #[arg(required = true, value_name = "DP")]
        dps: Vec<String>,
    },
    /// Remove one DP from a group.
    Remove {
        /// Group name.
        name: String,
        /// DP name.
        dp: String,
    },
    /// Delete a group (its DPs stay).
    Delete {
        /// Group name.
        name: String,
    },
    /// List the groups and their members.
    List,
}

pub(crate) fn group_call(cmd: GroupCmd) -> Result<Call, CliError> {
    let path = |name: &str| format!("/dpgroups/{}", segment(name));
    Ok(match cmd {
        GroupCmd::Create { name, dps } => Call::new(Method::POST, "/dpgroups".into(), Show::Group)
            .body(&AddGroup { name, members: dps })?,
        GroupCmd::Add { name, dps } => Call::new(
            Method::POST,
            format!("{}/members", path(&name)),
            Show::Group,
        )
        .body(&Members { dps })?,
        GroupCmd::Remove { name, dp } => Call::new(
            Method::DELETE,
            format!("{}/members/{}", path(&name), segment(&dp)),
            Show::Group,
        ),
        GroupCmd::Delete { name } => Call::new(Method::DELETE, path(&name), Show::Done),
        GroupCmd::List => Call::new(Method::GET, "/dpgroups".into(), Show::Groups),
    })
}
