//! `freight demo --library`: the content library's whole life cycle on a generated sample
//! package: it snapshots a sample tree, updates it, shows the delta, verifies, sends it to
//! other sites as courier parcels and over QUIC (the update under a bandwidth window),
//! restores and checks the copy, removes the old version and collects garbage, with progress
//! bars and a status line per step.

use super::sample::{change_sample, sample, step};
use crate::cli::error::CliError;
use crate::cli::progress_bar::Bar;
use crate::home::Home;
use freight_core::ingest::{IngestOptions, ingest};
use freight_core::instruction::SignedInstruction;
use freight_core::site::{Role, SiteCode};
use freight_core::units::human;
use freight_core::{IoMode, Library, PackageId, Progress};
use freight_transport::quic::{Node, NodeConfig};
use freight_transport::session::{self, PushOptions, Resume};
use freight_transport::store::SharedLibrary;
use freight_transport::tls::SiteTls;
use freight_transport::{Priority, RouteLimiter, RouteThrottle, SystemClock};
use std::sync::Arc;

/// Runs the walkthrough in `work` with a sample of `size` bytes.
pub fn run(
    work: &std::path::Path,
    size: u64,
    io: Option<IoMode>,
    quiet: bool,
) -> Result<(), CliError> {
    let src = work.join("source");
    let lib_dir = work.join("library");
    let pkg = PackageId::parse("CAS00001")?;
    let progress = Arc::new(Progress::default());

    step(&format!(
        "generate a sample package of {} in {}",
        human(size),
        src.display()
    ));
    sample(&src, size)?;

    step("snapshot version 1 into the content library");
    let mut lib = Library::open_or_init(&lib_dir, io)?;
    let opts = |v| IngestOptions {
        package: pkg.clone(),
        version: Some(v),
        quick_check: None,
        skip_if_unchanged_from: None,
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
    let md = lib.manifest_dir();
    let d = freight_core::manifest::diff_entries(
        md.open_manifest(&pkg, 1)?.reader()?,
        md.open_manifest(&pkg, 2)?.reader()?,
    )?;
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
    let cas = Home::init(&work.join("site-CAS"), SiteCode::parse("CAS")?)?;
    let ps1 = Home::init(&work.join("site-PS1"), SiteCode::parse("PS1")?)?;
    let id = cas.key.identity();
    ps1.trust.import(&id, Role::Parent)?;
    println!("PS1 trusts CAS, key fingerprint {}", id.fingerprint());
    let mut ps1_lib = Library::open_or_init(&work.join("library-PS1"), io)?;
    for (v, base) in [(1, None), (2, Some(1))] {
        let md = lib.manifest_dir();
        let m = md.open_manifest(&pkg, v)?;
        let bm = base.map(|b| md.open_manifest(&pkg, b)).transpose()?;
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
    let ps2 = Home::init(&work.join("site-PS2"), SiteCode::parse("PS2")?)?;
    ps2.trust.import(&cas.key.identity(), Role::Parent)?;
    cas.trust.import(&ps2.key.identity(), Role::Child)?;
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
    let m2 = lib.manifest_dir().open_manifest(&pkg, 2)?;
    {
        let _b = Bar::start(progress.clone(), quiet);
        freight_core::materialize::materialize_from(&lib, &m2, &out, &progress)?;
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
    cas: &Home,
    ps2: &Home,
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
            session::push_resuming(
                &sender,
                to,
                ps2.code,
                &lib,
                session::Offer::Stored(pkg, v),
                &opts,
                &Resume::default(),
            )
            .await
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
