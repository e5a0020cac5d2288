//! `freight library ...`: offline commands on a content library directory.
//!
//! The verbs that only read (`verify`, `stats`, `materialize`, `diff`) never take the library's
//! lock: they read a consistent view beside whoever writes it (a running `freightd`, an ingest,
//! a gc; see [`freight_core::view`]). The verbs that change it (`ingest`, `remove`, `gc`,
//! `repair`) take it exclusively, so a second writer is refused while one runs.

use crate::cli::error::CliError;
use crate::cli::output::print_json;
use crate::cli::progress_bar::Bar;
use clap::{Args, Subcommand};
use freight_core::ingest::{IngestOptions, ingest};
use freight_core::library::Access;
use freight_core::units::{human, parse_size};
use freight_core::{IoMode, Library, LibraryConfig, PackageId, Progress};
use std::path::PathBuf;
use std::sync::Arc;

/// Arguments of `freight library`.
#[derive(Args)]
pub struct LibraryArgs {
    /// The library directory.
    #[arg(long, short = 'l', env = "FREIGHT_LIBRARY", global = true)]
    library: Option<PathBuf>,
    #[command(subcommand)]
    cmd: LibCmd,
}

#[derive(Subcommand)]
enum LibCmd {
    /// Create an empty library.
    Init {
        /// Storage root for pack files (repeat for several; default: LIBRARY/store).
        #[arg(long = "root")]
        roots: Vec<PathBuf>,
        /// Free space never used on any root, e.g. 1GiB.
        #[arg(long, value_parser = parse_size)]
        reserve: Option<u64>,
        /// zstd level for new chunks.
        #[arg(long, allow_hyphen_values = true)]
        level: Option<i32>,
        /// Pack files are sealed at this size, e.g. 256MiB.
        #[arg(long, value_parser = parse_size)]
        pack_size: Option<u64>,
    },
    /// Snapshot a source folder as a package version.
    Ingest {
        /// Package ID (site code + 5 hex digits), e.g. CAS00001.
        #[arg(long, short)]
        package: String,
        /// Version number (default: one past the newest stored).
        #[arg(long, short)]
        version: Option<u32>,
        /// Take files whose size and modification time are unchanged from the newest stored
        /// version without reading them (rsync's quick check).
        #[arg(long)]
        quick: bool,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
        /// The source folder.
        source: PathBuf,
    },
    /// Restore a package version into a new or empty folder.
    Materialize {
        /// Package ID.
        #[arg(long, short)]
        package: String,
        /// Version (default: newest).
        #[arg(long, short)]
        version: Option<u32>,
        /// Destination folder.
        dest: PathBuf,
    },
    /// Re-hash every chunk packages use and report bad ones.
    Verify {
        /// Only this package.
        #[arg(long, short)]
        package: Option<String>,
        /// Only this version (with --package).
        #[arg(long, short, requires = "package")]
        version: Option<u32>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove one package version (its content stays until gc).
    Remove {
        /// Package ID.
        #[arg(long, short)]
        package: String,
        /// Version.
        #[arg(long, short)]
        version: u32,
    },
    /// Delete chunks no package version uses and reclaim their space.
    Gc {
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Rebuild damaged packs from their data, set aside what cannot be read, and list the
    /// package versions that lost data (to redistribute or ingest again).
    Repair {
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show what the library holds.
    Stats {
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List what changed between two versions of a package.
    Diff {
        /// Package ID.
        #[arg(long, short)]
        package: String,
        /// Older version.
        from: u32,
        /// Newer version.
        to: u32,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn pkg(s: &str) -> Result<PackageId, CliError> {
    Ok(PackageId::parse(s)?)
}

/// Runs one `freight library` command.
pub fn run(a: LibraryArgs, io: Option<IoMode>, quiet: bool) -> Result<(), CliError> {
    let dir = a.library.ok_or_else(|| {
        CliError::Usage("no library given; pass --library DIR or set FREIGHT_LIBRARY".into())
    })?;
    let progress = Arc::new(Progress::default());
    match a.cmd {
        LibCmd::Init {
            roots,
            reserve,
            level,
            pack_size,
        } => {
            let mut cfg = LibraryConfig::default();
            if !roots.is_empty() {
                cfg.roots = roots;
            }
            if let Some(r) = reserve {
                cfg.reserve_bytes = r;
            }
            if let Some(l) = level {
                cfg.compression_level = l;
            }
            if let Some(p) = pack_size {
                cfg.pack_size = p;
            }
            if let Some(m) = io {
                cfg.io = m;
            }
            Library::init(&dir, &cfg)?;
            println!("initialised library {}", dir.display());
        }
        LibCmd::Ingest {
            package,
            version,
            quick,
            json,
            source,
        } => {
            let mut lib = Library::open_or_init(&dir, io)?;
            let package = pkg(&package)?;
            // The CLI's quick check compares with the newest stored version: whoever runs it
            // on a library of their own vouches for what it holds.
            let quick_check = if quick { lib.latest(&package)? } else { None };
            let opts = IngestOptions {
                package,
                version,
                quick_check,
                skip_if_unchanged_from: None,
            };
            let started = std::time::Instant::now();
            let r = {
                let _bar = Bar::start(progress.clone(), quiet);
                ingest(&mut lib, &source, &opts, &progress)?
            };
            let secs = started.elapsed().as_secs_f64();
            if json {
                print_json(&r)?;
            } else {
                println!(
                    "{} v{} {}: {} files, {} in {} chunks ({} new, {} stored) in {:.2}s ({:.0} MB/s){}",
                    r.package,
                    r.version,
                    &r.hash[..16],
                    r.files,
                    human(r.bytes),
                    r.chunks,
                    r.new_chunks,
                    human(r.stored_bytes),
                    secs,
                    r.bytes as f64 / secs.max(1e-9) / 1e6,
                    if r.created { "" } else { " (already stored)" }
                );
            }
        }
        LibCmd::Materialize {
            package,
            version,
            dest,
        } => {
            let p = pkg(&package)?;
            // Streamed from the stored file: memory does not grow with the package.
            let (lib, m) = freight_core::view::open_stored_version(&dir, &p, version, io)?;
            let v = m.version();
            let r = {
                let _bar = Bar::start(progress.clone(), quiet);
                freight_core::materialize::materialize_from(&lib, &m, &dest, &progress)?
            };
            println!(
                "{p} v{v} -> {}: {} files, {} dirs, {} symlinks, {}",
                dest.display(),
                r.files,
                r.dirs,
                r.symlinks,
                human(r.bytes)
            );
        }
        LibCmd::Verify {
            package,
            version,
            json,
        } => {
            let p = package.as_deref().map(pkg).transpose()?;
            let freight_core::view::Verified { report: r, damage } = {
                let _bar = Bar::start(progress.clone(), quiet);
                freight_core::view::verify(&dir, p.as_ref().map(|p| (p, version)), io, &progress)?
            };
            let damaged = damage.len();
            if json {
                print_json(&r)?;
            } else {
                for d in &damage {
                    println!(
                        "DAMAGED {}: {} (left out; run `freight library repair`)",
                        d.path.display(),
                        d.reason
                    );
                }
                for s in &r.skipped {
                    println!("skipped {s}: removed while it was being verified");
                }
                for b in &r.bad {
                    println!(
                        "BAD chunk {} ({}): used by {}",
                        b.id,
                        b.reason,
                        b.files.join(", ")
                    );
                }
                println!(
                    "verified {} version(s), {} chunks, {}: {}",
                    r.versions,
                    r.chunks,
                    human(r.bytes),
                    if r.is_clean() {
                        "clean".to_string()
                    } else {
                        format!("{} bad", r.bad.len())
                    }
                );
            }
            if damaged > 0 {
                return Err(CliError::Failed(format!(
                    "{}: {damaged} damaged pack(s) left out ({} bad chunk(s) in what was read); run `freight library repair`",
                    dir.display(),
                    r.bad.len()
                )));
            }
            if !r.is_clean() {
                return Err(CliError::VerifyFailed(r.bad.len()));
            }
        }
        LibCmd::Remove { package, version } => {
            let mut lib = Library::open(&dir, Access::Write, io)?;
            let p = pkg(&package)?;
            lib.remove_version(&p, version)?;
            println!("removed {p} v{version}; run `freight library gc` to reclaim its space");
        }
        LibCmd::Gc { json } => {
            let mut lib = Library::open(&dir, Access::Write, io)?;
            let r = {
                let _bar = Bar::start(progress.clone(), quiet);
                freight_core::gc::gc(&mut lib, &progress)?
            };
            if json {
                print_json(&r)?;
            } else {
                println!(
                    "removed {} chunks, deleted {} packs, compacted {} (moved {}), freed {}",
                    r.chunks_removed,
                    r.packs_deleted,
                    r.packs_compacted,
                    human(r.bytes_moved),
                    human(r.bytes_freed)
                );
            }
        }
        LibCmd::Repair { json } => {
            let mut lib = Library::open(&dir, Access::Repair, io)?;
            let r = {
                let _bar = Bar::start(progress.clone(), quiet);
                freight_core::repair::repair(&mut lib, &progress)?
            };
            if json {
                print_json(&r)?;
            } else {
                for d in &r.damaged {
                    println!("damaged {d}");
                }
                for q in &r.quarantined {
                    println!("set aside {}", q.display());
                }
                for l in &r.lost {
                    println!(
                        "LOST {} v{}: {} chunk(s) missing; redistribute or ingest it again",
                        l.package, l.version, l.missing_chunks
                    );
                }
                if r.is_clean() {
                    println!("library {} is healthy; nothing to repair", dir.display());
                } else {
                    println!(
                        "repaired {} damaged pack(s): {} chunks recovered, {} unreadable; {} version(s) lost data",
                        r.damaged.len(),
                        r.chunks_recovered,
                        r.chunks_unreadable,
                        r.lost.len()
                    );
                }
            }
        }
        LibCmd::Stats { json } => {
            let lib = Library::open_read_only(&dir, io)?;
            let s = freight_core::stats::stats(&lib)?;
            if json {
                print_json(&s)?;
            } else {
                println!("library {} (io: {})", dir.display(), s.io);
                for p in &s.packages {
                    let vs: Vec<String> = p.versions.iter().map(|v| v.to_string()).collect();
                    println!("  package {} versions {}", p.package, vs.join(","));
                }
                println!(
                    "  {} chunks, {} stored ({} uncompressed), {} referenced, {} garbage",
                    s.chunks,
                    human(s.stored_bytes),
                    human(s.logical_bytes),
                    s.referenced_chunks,
                    human(s.garbage_bytes)
                );
                for r in &s.roots {
                    println!(
                        "  root {}: {} packs, {}, {} usable",
                        r.path,
                        r.packs,
                        human(r.pack_bytes),
                        human(r.usable_bytes)
                    );
                }
            }
        }
        LibCmd::Diff {
            package,
            from,
            to,
            json,
        } => {
            let md = freight_core::ManifestDir::open(&dir)?;
            let p = pkg(&package)?;
            // A merge join of the two stored manifests, streamed one entry at a time.
            let d = freight_core::manifest::diff_entries(
                md.open_manifest(&p, from)?.reader()?,
                md.open_manifest(&p, to)?.reader()?,
            )?;
            if json {
                let v = serde_json::json!({
                    "added": d.added, "removed": d.removed, "changed": d.changed,
                    "metadata": d.metadata, "new_chunks": d.new_chunks.len(), "new_bytes": d.new_bytes,
                });
                print_json(&v)?;
            } else {
                for (tag, list) in [
                    ("A", &d.added),
                    ("D", &d.removed),
                    ("M", &d.changed),
                    ("m", &d.metadata),
                ] {
                    for path in list {
                        println!("{tag} {path}");
                    }
                }
                println!(
                    "{p} v{from} -> v{to}: {} added, {} removed, {} changed, {} metadata only; {} new chunks ({})",
                    d.added.len(),
                    d.removed.len(),
                    d.changed.len(),
                    d.metadata.len(),
                    d.new_chunks.len(),
                    human(d.new_bytes)
                );
            }
        }
    }
    Ok(())
}
