//! `freight parcel ...`: courier parcels (create, inspect, import).

use crate::cli::error::CliError;
use crate::cli::output::print_json;
use crate::cli::progress_bar::Bar;
use crate::cli::site::site_dir;
use crate::home::Home;
use clap::{Args, Subcommand};
use freight_core::instruction::{Instruction, SignedInstruction};
use freight_core::parcel;
use freight_core::site::{Role, SiteCode};
use freight_core::units::human;
use freight_core::{Error, IoMode, Library, PackageId, Progress};
use std::path::PathBuf;
use std::sync::Arc;

/// Arguments of `freight parcel`.
#[derive(Args)]
pub struct ParcelArgs {
    /// The site folder (code, key, trust store).
    #[arg(long, env = "FREIGHT_SITE", global = true)]
    site: Option<PathBuf>,
    /// The library directory.
    #[arg(long, short = 'l', env = "FREIGHT_LIBRARY", global = true)]
    library: Option<PathBuf>,
    #[command(subcommand)]
    cmd: ParcelCmd,
}

#[derive(Subcommand)]
enum ParcelCmd {
    /// Write a package version (or a delta) and a signed instruction into one file.
    Create {
        /// Package ID.
        #[arg(long, short)]
        package: String,
        /// Version (default: newest).
        #[arg(long, short)]
        version: Option<u32>,
        /// Destination site code.
        #[arg(long)]
        to: String,
        /// Make a delta against this version, which the destination holds.
        #[arg(long)]
        base: Option<u32>,
        /// Tracking notes carried in the instruction.
        #[arg(long, default_value = "")]
        notes: String,
        /// The parcel file to write.
        #[arg(long)]
        out: PathBuf,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show what a parcel holds and whether its signature checks out, without importing it.
    Inspect {
        /// The parcel file.
        file: PathBuf,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Verify a parcel completely and store its package version in the library.
    Import {
        /// The parcel file.
        file: PathBuf,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn library_dir(l: Option<PathBuf>) -> Result<PathBuf, CliError> {
    l.ok_or_else(|| {
        CliError::Usage("no library given; pass --library DIR or set FREIGHT_LIBRARY".into())
    })
}

/// Runs one `freight parcel` command.
pub fn run(a: ParcelArgs, io: Option<IoMode>, quiet: bool) -> Result<(), CliError> {
    let progress = Arc::new(Progress::default());
    match a.cmd {
        ParcelCmd::Create {
            package,
            version,
            to,
            base,
            notes,
            out,
            json,
        } => {
            let home = Home::open(&site_dir(a.site)?)?;
            let lib = Library::open_read_only(&library_dir(a.library)?, io)?;
            let p = PackageId::parse(&package)?;
            let v = match version {
                Some(v) => v,
                None => lib
                    .latest(&p)?
                    .ok_or_else(|| Error::NoSuchPackage(p.to_string()))?,
            };
            // Streamed from their files (held open), never decoded whole.
            let md = lib.manifest_dir();
            let m = md.open_manifest(&p, v)?;
            let bm = base.map(|b| md.open_manifest(&p, b)).transpose()?;
            let signed = home.sign_parcel(SiteCode::parse(&to)?, &m, base, notes)?;
            let r = {
                let _bar = Bar::start(progress.clone(), quiet);
                parcel::create(&lib, &m, bm.as_ref(), &signed, &out, &progress)?
            };
            if json {
                print_json(&r)?;
            } else {
                println!(
                    "{} {p} v{v}{} for site {to}: {} chunks, {} -> {}",
                    if r.delta { "delta" } else { "parcel" },
                    base.map(|b| format!(" (against v{b})")).unwrap_or_default(),
                    r.chunks,
                    human(r.bytes),
                    out.display()
                );
            }
        }
        ParcelCmd::Inspect { file, json } => {
            let info = {
                let _bar = Bar::start(progress.clone(), quiet);
                parcel::inspect(&file)?
            };
            let signed = SignedInstruction::decode(&info.header.instruction)?;
            let instr = Instruction::decode(&signed.body)?;
            // Signature status only: checked against the trust store as if addressed here.
            let status = match a.site.as_deref().map(Home::open).transpose()? {
                None => "not checked (no --site)".to_string(),
                Some(home) => match signed.verify(&home.trust, &instr.destination, None) {
                    Ok(i) => match parcel::check_instruction(&file, &i, &info.header) {
                        Ok(()) => format!("valid, signed by {}", i.origin),
                        Err(e) => format!("INVALID: {e}"),
                    },
                    Err(e) => format!("INVALID: {e}"),
                },
            };
            if json {
                let v = serde_json::json!({
                    "origin": instr.origin.to_string(), "destination": instr.destination.to_string(),
                    "package": instr.package.to_string(), "version": instr.version,
                    "base_version": instr.base_version, "kind": format!("{:?}", instr.kind),
                    "sequence": instr.sequence, "created_unix": instr.created_unix, "notes": instr.notes,
                    "bytes": info.bytes, "chunks": info.chunks, "signature": status,
                });
                print_json(&v)?;
            } else {
                println!("parcel       {}", file.display());
                println!("origin       {}", instr.origin);
                println!("destination  {}", instr.destination);
                println!(
                    "package      {} v{}{}",
                    instr.package,
                    instr.version,
                    instr
                        .base_version
                        .map(|b| format!(" (delta against v{b})"))
                        .unwrap_or_default()
                );
                println!(
                    "size         {} ({} chunks)",
                    human(info.bytes),
                    info.chunks
                );
                println!("sequence     {}", instr.sequence);
                println!("notes        {}", instr.notes);
                println!("signature    {status}");
            }
        }
        ParcelCmd::Import { file, json } => {
            let home = Home::open(&site_dir(a.site)?)?;
            let mut lib = Library::open_or_init(&library_dir(a.library)?, io)?;
            let stored: std::collections::BTreeMap<PackageId, Vec<u32>> = lib.versions()?;
            let r = {
                let _bar = Bar::start(progress.clone(), quiet);
                parcel::import(
                    &mut lib,
                    &file,
                    |h| {
                        let signed = SignedInstruction::decode(&h.instruction)
                            .map_err(|e| parcel::instruction_mismatch(&file, e.to_string()))?;
                        let newest = stored.get(&h.package).and_then(|v| v.last().copied());
                        let i = signed.verify(&home.trust, &home.code, newest)?;
                        // Packages come down from the parent only: a parcel signed by any
                        // other trusted site (a child, a DP) is refused before anything is
                        // stored.
                        let roles = home.trust.roles(i.origin)?;
                        if !roles.contains(Role::Parent) {
                            return Err(Error::NotFromParent {
                                site: i.origin.to_string(),
                                roles: roles.to_string(),
                            });
                        }
                        parcel::check_instruction(&file, &i, h)
                    },
                    &progress,
                )?
            };
            if json {
                print_json(&r)?;
            } else {
                println!(
                    "imported {} v{}: {} chunks, {} new{}",
                    r.package,
                    r.version,
                    r.chunks,
                    r.new_chunks,
                    if r.created { "" } else { " (already stored)" }
                );
            }
        }
    }
    Ok(())
}
