//! `freight courier`: send requests to children reached by courier (list), a request written
//! as a parcel (create-outgoing), and a parcel from the parent received (receive).

use crate::api::ParcelPath;
use crate::cli::call::{Call, Conn};
use crate::cli::error::CliError;
use crate::cli::render::Show;
use clap::{Args, Subcommand};
use hyper::Method;
use std::path::{Path, PathBuf};

/// Arguments of `freight courier`.
#[derive(Args)]
pub struct CourierArgs {
    #[command(flatten)]
    pub(crate) conn: Conn,
    #[command(subcommand)]
    pub(crate) cmd: CourierCmd,
}

#[derive(Subcommand, Debug)]
pub(crate) enum CourierCmd {
    /// Send requests to child sites reached by courier, with their state (queued, pending
    /// once the parcel is written, confirmed once the child reports it received it).
    List,
    /// Write a queued send request as a parcel file to carry to the child.
    CreateOutgoing {
        /// The send request's ID (`freight courier list`).
        id: i64,
        /// The parcel file to write.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Receive a parcel from this site's parent: verify it, store it, hand it to the
    /// Despooler like a network send.
    Receive {
        /// The parcel file.
        file: PathBuf,
    },
}

/// `courier ...` → its call; paths are made absolute here, since the daemon has its own
/// working folder.
pub(crate) fn courier_call(cmd: CourierCmd) -> Result<Call, CliError> {
    Ok(match cmd {
        CourierCmd::List => Call::new(Method::GET, "/courier".into(), Show::Sends),
        CourierCmd::CreateOutgoing { id, out } => {
            Call::new(Method::POST, format!("/courier/{id}/outgoing"), Show::Done).body(
                &ParcelPath {
                    path: absolute(&out)?,
                },
            )?
        }
        CourierCmd::Receive { file } => {
            Call::new(Method::POST, "/courier/incoming".into(), Show::Done).body(&ParcelPath {
                path: absolute(&file)?,
            })?
        }
    })
}

fn absolute(p: &Path) -> Result<String, CliError> {
    let abs =
        std::path::absolute(p).map_err(|e| CliError::Usage(format!("{}: {e}", p.display())))?;
    abs.to_str()
        .map(str::to_string)
        .ok_or_else(|| CliError::Usage(format!("{}: the path is not UTF-8", p.display())))
}
