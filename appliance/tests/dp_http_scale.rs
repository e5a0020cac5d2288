//! The DP content server on a large package (200,000 files in 200 folders, written straight
//! into a library as a manifest naming chunks it holds): files looked up by path through the
//! router in process (HEAD, so the rate is the lookup's, and GET for the bytes), `latest`, a
//! missing file, and the whole listing streamed; the rates and the process's peak memory
//! growth are printed, the memory is held to a bound that a decoded manifest per request or a
//! whole listing in memory would break.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use freight_appliance::dp::http::router;
use freight_appliance::dp::http_server::Limits;
use freight_core::manifest::{Entry, EntryKind};
use freight_core::{Library, PackageId};
use freight_test_support::ingest_version;
use freight_transport::store::SharedLibrary;
use http_body_util::BodyExt;
use std::time::Instant;
use tower_service::Service;

const PKG: &str = "PS100001";
const DIRS: usize = 200;
const PER_DIR: usize = 1000;

/// This process's peak resident set (VmHWM) in bytes.
fn peak_rss() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib << 10
}

fn file_path(d: usize, f: usize) -> String {
    format!("folder-{d:04}/some-longer-file-name-{f:06}.dat")
}

/// A library holding v1 (one small file, ingested) and v2 (`DIRS` × `PER_DIR` files, each
/// one chunk of v1's file, written entry by entry).
fn library(dir: &std::path::Path) -> (Library, Vec<u8>) {
    let src = dir.join("src");
    std::fs::create_dir_all(&src).unwrap();
    let bytes = b"the one chunk every file of v2 is made of\n".to_vec();
    std::fs::write(src.join("one.txt"), &bytes).unwrap();
    let mut lib = Library::open_or_init(&dir.join("lib"), None).unwrap();
    ingest_version(&mut lib, &src, PKG, 1).unwrap();
    let p = PackageId::parse(PKG).unwrap();
    let one = lib.manifest_dir().open_manifest(&p, 1).unwrap();
    let chunks = one
        .reader()
        .unwrap()
        .find_map(|e| match e.unwrap().kind {
            EntryKind::File { chunks, .. } => Some(chunks),
            _ => None,
        })
        .unwrap();
    let entry = |path: String, kind| Entry {
        path: path.into_bytes(),
        mode: 0o755,
        mtime_sec: 1_600_000_000,
        mtime_nsec: 0,
        kind,
    };
    let mut w = lib.manifest_writer(&p, 2).unwrap();
    w.push(&entry(String::new(), EntryKind::Dir)).unwrap();
    for d in 0..DIRS {
        w.push(&entry(format!("folder-{d:04}"), EntryKind::Dir))
            .unwrap();
        for f in 0..PER_DIR {
            let kind = EntryKind::File {
                size: bytes.len() as u64,
                chunks: chunks.clone(),
            };
            w.push(&entry(file_path(d, f), kind)).unwrap();
        }
    }
    let finished = w.finish().unwrap();
    lib.commit_manifest(finished).unwrap();
    (lib, bytes)
}

async fn request(app: &mut axum::Router, method: Method, uri: &str) -> (StatusCode, Vec<u8>) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::empty())
        .unwrap();
    let resp = app.call(req).await.unwrap();
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    (status, body)
}

#[test]
fn lookups_and_listings_of_a_large_package_are_fast_and_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let (lib, bytes) = library(dir.path());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut app = router(SharedLibrary::new(lib), &Limits::default());
    let before = peak_rss();
    rt.block_on(async {
        // The first request reads the manifest; the rates are of the requests after it.
        let (s, _) = request(&mut app, Method::HEAD, &format!("/packages/{PKG}/2/files/{}", file_path(0, 0))).await;
        assert_eq!(s, StatusCode::OK);
        let n = 20_000;
        let t = Instant::now();
        // Spread over the whole package (a prime stride visits folders in no order).
        for i in 0..n {
            let k = (i * 7919) % (DIRS * PER_DIR);
            let uri = format!("/packages/{PKG}/2/files/{}", file_path(k / PER_DIR, k % PER_DIR));
            let (s, body) = request(&mut app, Method::HEAD, &uri).await;
            assert_eq!(s, StatusCode::OK, "{uri}");
            assert!(body.is_empty());
        }
        let head_rate = n as f64 / t.elapsed().as_secs_f64();
        let n = 5_000;
        let t = Instant::now();
        for i in 0..n {
            let k = (i * 104_729) % (DIRS * PER_DIR);
            let uri = format!("/packages/{PKG}/latest/files/{}", file_path(k / PER_DIR, k % PER_DIR));
            let (s, body) = request(&mut app, Method::GET, &uri).await;
            assert_eq!((s, &body[..]), (StatusCode::OK, &bytes[..]), "{uri}");
        }
        let get_rate = n as f64 / t.elapsed().as_secs_f64();
        let (s, _) = request(&mut app, Method::GET, &format!("/packages/{PKG}/2/files/folder-0007/missing.dat")).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let (s, _) = request(&mut app, Method::GET, &format!("/packages/{PKG}/2/files/folder-0007")).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let lookups_grew = peak_rss().saturating_sub(before);
        // The listing is read as the client gets it, piece by piece (the test holds none of
        // it): the entries counted, the head and the end checked.
        let t = Instant::now();
        let req = Request::builder()
            .uri(format!("/packages/{PKG}/2/"))
            .body(Body::empty())
            .unwrap();
        let resp = app.call(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let mut body = resp.into_body();
        let (mut listed, mut size, mut tail, mut head) = (0usize, 0usize, Vec::new(), Vec::new());
        let needle = b"\"kind\":";
        while let Some(frame) = body.frame().await {
            let data = frame.unwrap().into_data().unwrap();
            if head.len() < 256 {
                head.extend_from_slice(&data[..data.len().min(256)]);
            }
            size += data.len();
            // A needle may straddle two pieces: the previous piece's last bytes go first.
            let mut window = std::mem::take(&mut tail);
            window.extend_from_slice(&data);
            listed += window.windows(needle.len()).filter(|w| w == needle).count();
            tail = window[window.len().saturating_sub(needle.len() - 1)..].to_vec();
        }
        let listing_time = t.elapsed();
        assert!(head.starts_with(format!("{{\"package\":\"{PKG}\",\"version\":2,").as_bytes()));
        assert!(tail.ends_with(b"]}"), "{tail:?}");
        assert_eq!(listed, DIRS * (PER_DIR + 1));
        let listing_mib = size >> 20;
        eprintln!(
            "peak RSS grew by {} MiB over the lookups",
            lookups_grew >> 20
        );
        eprintln!(
            "{} files: {head_rate:.0} lookups/s (HEAD), {get_rate:.0} files/s (GET latest), listing {listing_mib} MiB in {listing_time:.2?}",
            DIRS * PER_DIR
        );
    });
    // Neither a decoded manifest (about 60 MiB here) nor a listing (41 MiB) is ever held.
    let grown = peak_rss().saturating_sub(before);
    eprintln!("peak RSS grew by {} MiB while serving", grown >> 20);
    assert!(grown < 24 << 20, "peak RSS grew by {} MiB", grown >> 20);
}
