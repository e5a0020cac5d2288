//! `freight demo`: by default a site with its DPs on loopback ([`crate::site_demo`]); with
//! `--library`, the content library's whole life cycle on a generated sample package: it
//! snapshots a sample tree, updates it, shows the delta, verifies, sends it to other sites as
//! courier parcels and over QUIC (the update under a bandwidth window), restores and checks the
//! copy, removes the old version and collects garbage, with progress bars and a status line
//! per step.

use crate::error::CliError;
use crate::progress_bar::Bar;
use crate::site_home::SiteHome;
use clap::Args;
use freight_core::ingest::{IngestOptions, ingest};
use freight_core::instruction::SignedInstruction;
use freight_core::site::SiteCode;
use freight_core::units::human;
use freight_core::{IoMode, Library, PackageId, Progress};
use freight_transport::quic::{Node, NodeConfig};
use freight_transport::session::{self, PushOptions, Resume};
use freight_transport::store::SharedLibrary;
use freight_transport::tls::SiteTls;
use freight_transport::{Priority, RouteLimiter, RouteThrottle, SystemClock};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Arguments of `freight demo`.
#[derive(Args)]
pub struct DemoArgs {
    /// Work folder (default: a new temporary folder, removed afterwards).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Size of the sample package, e.g. 256MiB.
    #[arg(long, default_value = "96MiB", value_parser = freight_core::units::parse_size)]
    size: u64,
    /// Show the content library, parcels and a bare QUIC push instead of a site.
    #[arg(long)]
    library: bool,
}

/// Deterministic bytes: BLAKE3 in XOF mode keyed by a label.
fn noise(label: &str, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    blake3::Hasher::new()
        .update(label.as_bytes())
        .finalize_xof()
        .fill(&mut out);
    out
}

/// Deterministic lines of words, keyed by a label.
fn text(label: &str, len: usize) -> Vec<u8> {
    const WORDS: [&str; 16] = [
        "package",
        "site",
        "version",
        "distribution",
        "point",
        "chunk",
        "status",
        "sender",
        "install",
        "pending",
        "retry",
        "schedule",
        "window",
        "content",
        "library",
        "parcel",
    ];
    let seed = noise(label, 4096);
    let mut out = Vec::with_capacity(len + 64);
    let mut i = 0usize;
    while out.len() < len {
        let w = WORDS[(seed[i % seed.len()] as usize) % WORDS.len()];
        out.extend_from_slice(w.as_bytes());
        out.push(if i % 11 == 10 { b'\n' } else { b' ' });
        i += 1;
    }
    out.truncate(len);
    out
}

fn write(path: &Path, data: &[u8]) -> Result<(), CliError> {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p)?;
    }
    std::fs::File::create(path)?.write_all(data)?;
    Ok(())
}

/// Builds the sample tree: text, binaries, nested folders, an empty folder, a symlink.
pub(crate) fn sample(root: &Path, size: u64) -> Result<(), CliError> {
    let big = (size / 2) as usize;
    write(&root.join("bin/installer.bin"), &noise("installer", big))?;
    let small = ((size as usize - big) / 64).max(1);
    for i in 0..48 {
        write(
            &root.join(format!("docs/part{}/readme-{i}.txt", i % 4)),
            &text(&format!("t{i}"), small),
        )?;
    }
    for i in 0..16 {
        write(
            &root.join(format!("lib/module-{i}.so")),
            &noise(&format!("m{i}"), small),
        )?;
    }
    std::fs::create_dir_all(root.join("logs/empty"))?;
    write(&root.join("config/empty.cfg"), b"")?;
    std::os::unix::fs::symlink("../bin/installer.bin", root.join("docs/installer"))?;
    Ok(())
}

/// The demos' update of the sample tree: 1 MiB of new bytes in the middle of the installer, a
/// new file, a dropped file.
pub(crate) fn change_sample(src: &Path) -> Result<(), CliError> {
    let inst = src.join("bin/installer.bin");
    let mut data = std::fs::read(&inst)?;
    let mid = data.len() / 2;
    let patch = noise("patch", (1 << 20).min(data.len() / 4));
    data[mid..mid + patch.len()].copy_from_slice(&patch);
    std::fs::write(&inst, &data)?;
    write(&src.join("docs/CHANGES.txt"), &text("changes", 10_000))?;
    std::fs::remove_file(src.join("lib/module-3.so"))?;
    Ok(())
}

pub(crate) fn step(title: &str) {
    println!("\n== {title}");
}

/// Runs the demonstration.
pub fn run(a: DemoArgs, io: Option<IoMode>, quiet: bool) -> Result<(), CliError> {
    let tmp;
    let work = match a.dir {
        Some(d) => d,
        None => {
            tmp = TempDir::new()?;
            tmp.0.clone()
        }
    };
    if !a.library {
        return crate::site_demo::run(&work, a.size, quiet);
    }
    let src = work.join("source");
    let lib_dir = work.join("library");
    let pkg = PackageId::parse("CAS00001")?;
    let progress = Arc::new(Progress::default());

    step(&format!(
        "generate a sample package of {} in {}",
        human(a.size),
        src.display()
    ));
    sample(&src, a.size)?;

    step("snapshot version 1 into the content library");
    let mut lib = Library::open_or_init(&lib_dir, io)?;
    let opts = |v| IngestOptions {
        package: pkg.clone(),
        version: Some(v),
        quick_check: false,
    };
    let r1 = {
        let _b = Bar::start(progress.clone(), quiet);
        ingest(&mut lib, &src, &opts(1), &progress)?
    };
    println!(
        "{} v1: {} files, {} -> {} stored in {} chunks (io: {:?})",
        pkg,
        r1.files,
        human(r1.bytes),
        human(r1.stored_bytes),
        r1.chunks,
        lib.engine().kind()
    );

    step("update: change 1 MiB in the middle of the installer, add a file, drop a file");
    change_sample(&src)?;
    let r2 = {
        let _b = Bar::start(progress.clone(), quiet);
        ingest(&mut lib, &src, &opts(2), &progress)?
    };
    println!(
        "{} v2: {} new chunks, {} stored for this version",
        pkg,
        r2.new_chunks,
        human(r2.stored_bytes)
    );
    let d = lib.manifest(&pkg, 1)?.diff(&lib.manifest(&pkg, 2)?);
    println!(
        "delta v1 -> v2: added {:?}, removed {:?}, changed {:?}; {} new chunks, {}",
        d.added,
        d.removed,
        d.changed,
        d.new_chunks.len(),
        human(d.new_bytes)
    );

    step("verify every chunk of every version");
    let v = {
        let _b = Bar::start(progress.clone(), quiet);
        freight_core::verify::verify(&lib, None, &progress)?
    };
    println!(
        "{} versions, {} chunks, {}: {}",
        v.versions,
        v.chunks,
        human(v.bytes),
        if v.is_clean() { "clean" } else { "BAD" }
    );
    if !v.is_clean() {
        return Err(CliError::VerifyFailed(v.bad.len()));
    }

    step("courier: site CAS sends v1, then the v1 -> v2 delta, to site PS1 as parcels");
    let cas = SiteHome::init(&work.join("site-CAS"), SiteCode::parse("CAS")?)?;
    let ps1 = SiteHome::init(&work.join("site-PS1"), SiteCode::parse("PS1")?)?;
    let id = cas.key.identity();
    ps1.trust.import(&id)?;
    println!("PS1 trusts CAS, key fingerprint {}", id.fingerprint());
    let mut ps1_lib = Library::open_or_init(&work.join("library-PS1"), io)?;
    for (v, base) in [(1, None), (2, Some(1))] {
        let m = lib.manifest(&pkg, v)?;
        let bm = base.map(|b| lib.manifest(&pkg, b)).transpose()?;
        let signed = cas.sign_parcel(ps1.code, &m, base, format!("demo parcel {v}"))?;
        let file = work.join(format!("CAS00001-v{v}.parcel"));
        let c = {
            let _b = Bar::start(progress.clone(), quiet);
            freight_core::parcel::create(&lib, &m, bm.as_ref(), &signed, &file, &progress)?
        };
        let r = {
            let _b = Bar::start(progress.clone(), quiet);
            freight_core::parcel::import(
                &mut ps1_lib,
                &file,
                |h| {
                    let s = SignedInstruction::decode(&h.instruction)?;
                    s.verify(&ps1.trust, &ps1.code, None).map(|_| ())
                },
                &progress,
            )?
        };
        println!(
            "{} v{v}: {} ({} chunks) -> PS1 imported {} new chunks, signature checked",
            if c.delta { "delta" } else { "parcel" },
            human(c.bytes),
            c.chunks,
            r.new_chunks
        );
    }

    step("network: CAS pushes v1, then v2 under a bandwidth window, to site PS2 over QUIC");
    let ps2 = SiteHome::init(&work.join("site-PS2"), SiteCode::parse("PS2")?)?;
    ps2.trust.import(&cas.key.identity())?;
    cas.trust.import(&ps2.key.identity())?;
    println!("CAS and PS2 trust each other's keys; each pins the other's at the QUIC handshake");
    let ps2_lib = Library::open_or_init(&work.join("library-PS2"), io)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    lib = rt.block_on(network_step(
        lib, ps2_lib, &cas, &ps2, &pkg, &progress, quiet,
    ))?;

    step("materialise v2 and compare with the source");
    let out = work.join("restored");
    let m2 = lib.manifest(&pkg, 2)?;
    {
        let _b = Bar::start(progress.clone(), quiet);
        freight_core::materialize::materialize(&lib, &m2, &out, &progress)?;
    }
    let same = std::fs::read(out.join("bin/installer.bin"))?
        == std::fs::read(src.join("bin/installer.bin"))?;
    println!(
        "restored to {}: installer identical = {same}",
        out.display()
    );

    step("remove v1 and collect garbage");
    lib.remove_version(&pkg, 1)?;
    let g = freight_core::gc::gc(&mut lib, &progress)?;
    println!(
        "removed {} chunks, freed {}, moved {}",
        g.chunks_removed,
        human(g.bytes_freed),
        human(g.bytes_moved)
    );
    let s = freight_core::stats::stats(&lib)?;
    println!(
        "library now: {} chunks, {} stored for {} uncompressed",
        s.chunks,
        human(s.stored_bytes),
        human(s.logical_bytes)
    );
    if !same {
        return Err(CliError::Usage(
            "restored copy differs from the source".into(),
        ));
    }
    println!("\ndemo complete");
    Ok(())
}

/// Pushes v1 and then v2 (under a bandwidth window) from `lib` at CAS to `ps2_lib` at PS2 over
/// loopback QUIC; gives CAS's library back.
async fn network_step(
    lib: Library,
    ps2_lib: Library,
    cas: &SiteHome,
    ps2: &SiteHome,
    pkg: &PackageId,
    progress: &Arc<Progress>,
    quiet: bool,
) -> Result<Library, CliError> {
    let any = "127.0.0.1:0".parse().expect("address");
    let receiver = Node::bind(
        any,
        SiteTls::new(&ps2.key, &ps2.trust_dir())?,
        NodeConfig::default(),
    )?;
    let to = receiver.local_addr()?;
    let ps2_lib = SharedLibrary::new(ps2_lib);
    tokio::spawn(session::serve(
        receiver.clone(),
        ps2_lib.clone(),
        None,
        None,
    ));
    let sender = Node::bind(
        any,
        SiteTls::new(&cas.key, &cas.trust_dir())?,
        NodeConfig::default(),
    )?;
    let lib = SharedLibrary::new(lib);
    let window = "link 1Gbit/s; daily 10%";
    for (v, throttle) in [(1, None), (2, Some(window))] {
        let m = lib.read().manifest(pkg, v)?;
        let opts = PushOptions {
            progress: Some(progress.clone()),
            limiter: throttle
                .map(|t| {
                    RouteThrottle::parse(t).map(|t| RouteLimiter::new(t, Arc::new(SystemClock)))
                })
                .transpose()?,
            priority: Priority::Medium,
        };
        let started = std::time::Instant::now();
        let (reports, res) = {
            let _b = Bar::start(progress.clone(), quiet);
            session::push_resuming(&sender, to, ps2.code, &lib, &m, &opts, &Resume::default()).await
        };
        res?;
        let sent: u64 = reports.iter().map(|r| r.bytes_sent).sum();
        let secs = started.elapsed().as_secs_f64();
        println!(
            "{pkg} v{v} -> PS2 at {to}: PS2 lacked {} chunks, {} sent in {secs:.2} s ({}/s){}",
            reports.iter().map(|r| r.chunks_needed).sum::<u64>(),
            human(sent),
            human((sent as f64 / secs.max(1e-9)) as u64),
            throttle.map_or(String::new(), |t| format!(", window \"{t}\""))
        );
    }
    sender.close();
    receiver.close();
    ps2_lib.flush().await?;
    Ok(lib.close().await?)
}

/// A temporary folder removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> std::io::Result<TempDir> {
        let base = std::env::temp_dir().join(format!("freight-demo-{}", std::process::id()));
        std::fs::create_dir_all(&base)?;
        Ok(TempDir(base))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
