//! Issue 11, item 1: a package update of a 65,696-file tree never reached its DP because its
//! 8.9 MB manifest did not fit one protocol frame. On real `freightd` processes: a package of
//! 110,000 small files (a manifest of some 10 MB) is created, distributed and updated, and
//! both versions end Installed with the DP holding the site's manifest byte for byte.

use freight_tests::hosts::*;
use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};

const FILES: usize = 110_000;
const SETTLE: Duration = Duration::from_secs(300);

/// `FILES` small files in 110 folders; their contents repeat every 997 files, so the
/// package has few chunks and a manifest far above one frame.
fn many_files(dir: &Path, salt: &str) {
    for d in 0..FILES / 1000 {
        let sub = dir.join(format!("folder-{d:03}"));
        std::fs::create_dir_all(&sub).unwrap();
        for f in 0..1000 {
            let n = d * 1000 + f;
            std::fs::write(
                sub.join(format!("file-{n:06}.txt")),
                format!("{salt} content {}\n", n % 997),
            )
            .unwrap();
        }
    }
}

/// The stored manifest of `version` of `id` in the library at `lib`.
fn manifest_file(lib: &Path, id: &str, version: u32) -> Vec<u8> {
    std::fs::read(
        lib.join("manifests")
            .join(id)
            .join(format!("{version:010}.fmf")),
    )
    .unwrap()
}

/// Heavy tier: writing 220,000 files (two trees of 110,000) and ingesting and installing
/// both versions takes about 25 s on an idle 2-core machine, most of it creating the files,
/// and more than 30 s on a loaded one. The fast tier covers the protocol over real QUIC
/// (`transport/tests/large_manifest.rs`).
#[test]
fn heavy_a_package_with_a_manifest_above_one_frame_distributes_and_updates() {
    let net = Net::new();
    let (site, dp) = net.site_and_dp("");
    let src = net.p("src");
    many_files(&src, "first");
    let started = Instant::now();
    let id = site.create("big", &src);
    let m1 = manifest_file(&site.library, &id, 1);
    assert!(m1.len() > 9 << 20, "manifest of {} bytes", m1.len());
    site.act(&id, "distribute", json!({"dps": ["dp1"]}));
    site.settle(SETTLE);
    assert_eq!(
        site.status(&id),
        [("dp1".to_string(), "Installed".to_string(), Some(1))]
    );
    assert!(
        manifest_file(&dp.library, &id, 1) == m1,
        "v1 differs on the DP"
    );
    eprintln!(
        "v1: manifest {} bytes, created and installed in {:.1} s",
        m1.len(),
        started.elapsed().as_secs_f64()
    );

    // The update: every file's content changes (new chunks), the tree's shape stays.
    std::fs::remove_dir_all(&src).unwrap();
    many_files(&src, "second");
    let started = Instant::now();
    let v2 = site.act(&id, "update", json!({}));
    assert_eq!(v2["version"], 2);
    site.settle(SETTLE);
    assert_eq!(
        site.status(&id),
        [("dp1".to_string(), "Installed".to_string(), Some(2))]
    );
    let m2 = manifest_file(&site.library, &id, 2);
    assert!(m2.len() > 9 << 20 && m2 != m1);
    assert!(
        manifest_file(&dp.library, &id, 2) == m2,
        "v2 differs on the DP"
    );
    eprintln!(
        "v2: manifest {} bytes, updated and installed in {:.1} s",
        m2.len(),
        started.elapsed().as_secs_f64()
    );
}
