//! `freight package`: create from a source folder, update, list, show, remove.

use crate::admin::client::{segment, with_query};
use crate::api::{CreatePackage, Priority};
use crate::cli::call::{Call, Conn};
use crate::cli::error::CliError;
use crate::cli::render::Show;
use clap::{Args, Subcommand};
use hyper::Method;
use std::path::PathBuf;

/// Arguments of `freight package`.
#[derive(Args)]
pub struct PackageArgs {
    #[command(flatten)]
    pub(crate) conn: Conn,
    #[command(subcommand)]
    pub(crate) cmd: PackageCmd,
}

#[derive(Subcommand, Debug)]
pub(crate) enum PackageCmd {
    /// Create a package: snapshot a source folder into the site's library.
    Create {
        /// Display name.
        #[arg(long)]
        name: String,
        /// Source folder, as the site server sees it.
        #[arg(long, value_name = "DIR")]
        source: PathBuf,
        /// Priority for bandwidth windows: low, medium (default) or high.
        #[arg(long, value_parser = |s: &str| s.parse::<Priority>())]
        priority: Option<Priority>,
    },
    /// Snapshot the package's source again as a new version; DPs holding it get the changes.
    Update {
        /// Package ID.
        id: String,
    },
    /// List the packages with their DP counts.
    List,
    /// A package, its versions and its status per DP.
    Show {
        /// Package ID.
        id: String,
    },
    /// Remove a package from one DP, or from every DP and the site.
    Remove {
        /// Package ID.
        id: String,
        /// Only from this DP.
        #[arg(long, value_name = "DP")]
        dp: Option<String>,
    },
}

pub(crate) fn package_path(id: &str) -> String {
    format!("/packages/{}", segment(id))
}

pub(crate) fn package_call(cmd: PackageCmd) -> Result<Call, CliError> {
    Ok(match cmd {
        PackageCmd::Create {
            name,
            source,
            priority,
        } => {
            // freightd resolves paths from its own working directory, not ours.
            let abs = std::path::absolute(&source).map_err(|e| {
                CliError::Usage(format!(
                    "{}: cannot make the path absolute ({e})",
                    source.display()
                ))
            })?;
            let source = abs.to_str().map(str::to_string).ok_or_else(|| {
                CliError::Usage(format!(
                    "{}: the source path is not UTF-8; rename the folder",
                    abs.display()
                ))
            })?;
            Call::new(Method::POST, "/packages".into(), Show::Package("created")).body(
                &CreatePackage {
                    name,
                    source,
                    priority,
                },
            )?
        }
        PackageCmd::Update { id } => Call::new(
            Method::POST,
            format!("{}/update", package_path(&id)),
            Show::Package("updated"),
        ),
        PackageCmd::List => Call::new(Method::GET, "/packages".into(), Show::Packages),
        PackageCmd::Show { id } => Call::new(Method::GET, package_path(&id), Show::PackageDetail),
        PackageCmd::Remove { id, dp } => Call::new(
            Method::DELETE,
            with_query(&package_path(&id), &[("dp", dp)]),
            Show::Done,
        ),
    })
}
