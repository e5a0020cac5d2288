//! The DP content server (`freight_appliance::dp::http`) on loopback, checked with the real
//! `curl`: every file byte-identical to its source, listings, ranges, ETags and conditional
//! requests, `latest`, the one-line errors, hostile paths, and a damaged library that must
//! never deliver wrong bytes as a success; the listener's limits (half requests timed out, idle
//! and slow-reading clients cut, connections above the per-address cap refused) over raw
//! sockets.

use freight_appliance::dp::http::{percent_encode, router};
use freight_appliance::dp::http_server::{self, Limits};
use freight_core::{EntryKind, Library, PackageId};
use freight_test_support::{DatasetSpec, generate, ingest_version, noise};
use freight_transport::store::SharedLibrary;
use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const PKG: &str = "PS100001";
const BIG: usize = 5 << 20;

/// A library serving over HTTP on loopback, with its runtime.
struct Server {
    _rt: tokio::runtime::Runtime,
    base: String,
}

fn serve(lib: Library) -> Server {
    serve_with(lib, Limits::default())
}

/// Serves `lib` through the DP's own listener with `limits`.
fn serve_with(lib: Library, limits: Limits) -> Server {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // Bound before the server task starts: connections wait in the backlog, no sleep needed.
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = router(SharedLibrary::new(lib), &limits);
    rt.spawn(http_server::serve(listener, app, limits, 1 << 20));
    Server { _rt: rt, base }
}

/// The shared tree: a generated mixed dataset plus hand-made edge cases, as PS100001 v1 and v2.
struct Fixture {
    _dir: tempfile::TempDir,
    src: PathBuf,
    server: Server,
    /// Chunk lengths of `big.bin`.
    big_chunks: Vec<u32>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        generate(&src.join("gen"), &DatasetSpec::mixed(3 << 20, 11)).unwrap();
        std::fs::write(src.join("empty"), b"").unwrap();
        std::fs::write(src.join("big.bin"), noise("big", BIG)).unwrap();
        std::fs::create_dir_all(src.join("copy")).unwrap();
        std::fs::write(src.join("copy/big-copy.bin"), noise("big", BIG)).unwrap();
        std::fs::create_dir_all(src.join("nested/deeper/deepest")).unwrap();
        std::fs::write(src.join("nested/deeper/deepest/n.txt"), b"deep\n").unwrap();
        std::fs::write(src.join("a b.txt"), b"spaced out\n").unwrap();
        std::fs::write(
            src.join(std::ffi::OsStr::from_bytes(b"caf\xe9.bin")),
            b"latin-1 name",
        )
        .unwrap();
        std::os::unix::fs::symlink("big.bin", src.join("link-to-big")).unwrap();
        std::os::unix::fs::symlink("../../a b.txt", src.join("nested/deeper/up")).unwrap();
        std::os::unix::fs::symlink("nested/deeper", src.join("to-deeper")).unwrap();

        let mut lib = Library::open_or_init(&dir.path().join("lib"), None).unwrap();
        ingest_version(&mut lib, &src, PKG, 1).unwrap();
        // v2 holds one more file; the rest is identical.
        let src2 = dir.path().join("src2");
        std::fs::create_dir(&src2).unwrap();
        std::fs::write(src2.join("v2-only.txt"), b"new in 2\n").unwrap();
        std::fs::write(src2.join("big.bin"), noise("big", BIG)).unwrap();
        ingest_version(&mut lib, &src2, PKG, 2).unwrap();

        let m = lib.manifest(&PackageId::parse(PKG).unwrap(), 1).unwrap();
        let big = m.entries.iter().find(|e| e.path == b"big.bin").unwrap();
        let EntryKind::File { chunks, .. } = &big.kind else {
            panic!("big.bin is not a file")
        };
        let big_chunks: Vec<u32> = chunks.iter().map(|c| c.len).collect();
        assert!(
            big_chunks.len() >= 3,
            "big.bin has {} chunks",
            big_chunks.len()
        );
        Fixture {
            server: serve(lib),
            _dir: dir,
            src,
            big_chunks,
        }
    })
}

/// One curl answer.
#[derive(Debug)]
struct Got {
    exit: i32,
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    stderr: String,
}

impl Got {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// `curl -sS -i --path-as-is EXTRA... URL` (URL relative to the server).
fn curl(server: &Server, path: &str, extra: &[&str]) -> Got {
    let out = Command::new("curl")
        .args(["-sS", "-i", "--path-as-is", "--max-time", "20"])
        .args(extra)
        .arg(format!("{}{path}", server.base))
        .output()
        .expect("run curl");
    let exit = out.status.code().unwrap_or(-1);
    let stdout = out.stdout;
    let split = stdout
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(stdout.len());
    let head = String::from_utf8_lossy(&stdout[..split]).into_owned();
    let body = stdout.get(split + 4..).unwrap_or_default().to_vec();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    Got {
        exit,
        status,
        headers,
        body,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn file_url(version: &str, path: &[u8]) -> String {
    format!("/packages/{PKG}/{version}/files/{}", percent_encode(path))
}

fn json(got: &Got) -> serde_json::Value {
    assert_eq!(got.status, 200, "{got:?}");
    assert_eq!(got.header("content-type"), Some("application/json"));
    serde_json::from_slice(&got.body).unwrap()
}

/// Every regular file and symlink under `root`, by relative path bytes.
fn walk(root: &Path) -> BTreeMap<Vec<u8>, PathBuf> {
    fn go(root: &Path, dir: &Path, out: &mut BTreeMap<Vec<u8>, PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let t = std::fs::symlink_metadata(&p).unwrap().file_type();
            if t.is_dir() {
                go(root, &p, out);
            } else {
                let rel = p
                    .strip_prefix(root)
                    .unwrap()
                    .as_os_str()
                    .as_bytes()
                    .to_vec();
                out.insert(rel, p);
            }
        }
    }
    let mut out = BTreeMap::new();
    go(root, root, &mut out);
    out
}

#[test]
fn every_file_is_listed_and_served_byte_identical() {
    let f = fixture();
    let files = walk(&f.src);
    assert!(files.len() > 30, "{} files", files.len());

    // The listing names every file with its kind and size.
    let listing = json(&curl(&f.server, &format!("/packages/{PKG}/1/"), &[]));
    assert_eq!(listing["package"], PKG);
    assert_eq!(listing["version"], 1);
    assert_eq!(listing["hash"].as_str().unwrap().len(), 64);
    let listed: BTreeMap<String, &serde_json::Value> = listing["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["path"].as_str().unwrap().to_string(), e))
        .collect();
    for (rel, p) in &files {
        let e = listed
            .get(&*String::from_utf8_lossy(rel))
            .unwrap_or_else(|| panic!("{p:?} not listed"));
        let meta = std::fs::symlink_metadata(p).unwrap();
        if meta.file_type().is_symlink() {
            assert_eq!(e["kind"], "symlink", "{p:?}");
            let target = std::fs::read_link(p).unwrap();
            assert_eq!(e["target"].as_str().unwrap(), target.to_str().unwrap());
        } else {
            assert_eq!(e["kind"], "file", "{p:?}");
            assert_eq!(e["size"].as_u64(), Some(meta.len()), "{p:?}");
            assert_eq!(e["mode"].as_u64(), Some(u64::from(meta.mode() & 0o7777)));
            assert_eq!(e["mtime"].as_i64(), Some(meta.mtime()));
            assert_eq!(e["etag"].as_str().unwrap().len(), 34);
        }
        assert_eq!(
            e["href"].as_str().unwrap(),
            format!("files/{}", percent_encode(rel))
        );
    }
    assert_eq!(listed["nested/deeper"]["kind"], "dir");
    // Dirs, files and links only: the root itself is not listed.
    assert!(!listed.contains_key(""));

    // One curl run fetches every file and symlink (followed) to its own output file.
    let out = tempfile::tempdir().unwrap();
    let mut config = String::new();
    let mut expected = Vec::new();
    let fetched: Vec<_> = files
        .iter()
        .filter(|(_, p)| std::fs::metadata(p).unwrap().is_file())
        .collect();
    assert_eq!(
        fetched.len(),
        files.len() - 1,
        "only to-deeper links to a directory"
    );
    for (i, (rel, p)) in fetched.iter().enumerate() {
        let dest = out.path().join(i.to_string());
        config.push_str(&format!(
            "url = \"{}{}\"\noutput = \"{}\"\n",
            f.server.base,
            file_url("1", rel),
            dest.display()
        ));
        expected.push((p, dest));
    }
    let cfg = out.path().join("curl.cfg");
    std::fs::write(&cfg, config).unwrap();
    let o = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "60",
            "-w",
            "%{http_code} %{url_effective}\n",
            "-K",
        ])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let codes = String::from_utf8(o.stdout).unwrap();
    let bad: Vec<&str> = codes.lines().filter(|c| !c.starts_with("200 ")).collect();
    assert!(bad.is_empty(), "{bad:?}");
    assert_eq!(codes.lines().count(), fetched.len());
    for (src, dest) in expected {
        // `fs::read` follows symlinks, as the server does.
        assert!(
            std::fs::read(src).unwrap() == std::fs::read(&dest).unwrap(),
            "{src:?} differs"
        );
    }
}

#[test]
fn a_fetch_has_the_right_headers_and_head_has_no_body() {
    let f = fixture();
    let got = curl(&f.server, &file_url("1", b"big.bin"), &[]);
    assert_eq!(got.status, 200);
    assert_eq!(got.body, noise("big", BIG));
    assert_eq!(got.header("content-length"), Some(&*BIG.to_string()));
    assert_eq!(got.header("content-type"), Some("application/octet-stream"));
    assert_eq!(got.header("accept-ranges"), Some("bytes"));
    let mtime = std::fs::metadata(f.src.join("big.bin")).unwrap().mtime();
    let date = httpdate::fmt_http_date(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime as u64),
    );
    assert_eq!(got.header("last-modified"), Some(date.as_str()));

    // An empty file is a 200 with no bytes.
    let empty = curl(&f.server, &file_url("1", b"empty"), &[]);
    assert_eq!((empty.status, empty.exit), (200, 0));
    assert_eq!(empty.header("content-length"), Some("0"));
    assert!(empty.body.is_empty());

    // HEAD over a raw socket: headers with the full length, and not one byte of body.
    let addr = f.server.base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "HEAD {} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        file_url("1", b"big.bin")
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains(&format!("content-length: {BIG}")), "{head}");
    assert!(head.contains("etag: \""), "{head}");
    assert_eq!(raw.len(), split + 4, "HEAD sent a body");
}

#[test]
fn ranges_return_exactly_the_bytes_asked_for() {
    let f = fixture();
    let data = noise("big", BIG);
    let size = data.len();
    let url = file_url("1", b"big.bin");
    let b1 = f.big_chunks[0] as usize;
    let b2 = b1 + f.big_chunks[1] as usize;
    let cases = [
        ("bytes=0-99".to_string(), 0, 99),
        (format!("bytes={}-{}", b1 - 10, b1 + 9), b1 - 10, b1 + 9),
        (format!("bytes={}-{}", b1 - 1, b2), b1 - 1, b2),
        (format!("bytes={b1}-{}", b2 - 1), b1, b2 - 1),
        ("bytes=-1000".to_string(), size - 1000, size - 1),
        ("bytes=3000000-".to_string(), 3_000_000, size - 1),
        (format!("bytes={}-", size - 1), size - 1, size - 1),
        (format!("bytes=10-{}", size + 1000), 10, size - 1),
        (format!("bytes=-{}", size * 2), 0, size - 1),
    ];
    for (range, a, b) in cases {
        let got = curl(&f.server, &url, &["-H", &format!("Range: {range}")]);
        assert_eq!(got.status, 206, "{range}: {got:?}");
        assert_eq!(
            got.header("content-range"),
            Some(&*format!("bytes {a}-{b}/{size}")),
            "{range}"
        );
        assert_eq!(
            got.header("content-length"),
            Some(&*(b - a + 1).to_string())
        );
        assert!(got.body == data[a..=b], "{range}: wrong bytes");
    }

    // Unsatisfiable ranges: 416 naming the size.
    for (path, range, len) in [
        (&url, format!("bytes={size}-"), size),
        (&url, "bytes=-0".to_string(), size),
        (&file_url("1", b"empty"), "bytes=0-".to_string(), 0),
    ] {
        let got = curl(&f.server, path, &["-H", &format!("Range: {range}")]);
        assert_eq!(got.status, 416, "{range}: {got:?}");
        assert_eq!(
            got.header("content-range"),
            Some(&*format!("bytes */{len}"))
        );
        assert!(got.text().contains("ask for bytes 0"), "{}", got.text());
    }

    // Several ranges or a malformed one: the whole file.
    for range in ["bytes=0-1,5-6", "bytes=5-1", "bytes=x-", "lines=1-2"] {
        let got = curl(&f.server, &url, &["-H", &format!("Range: {range}")]);
        assert_eq!(got.status, 200, "{range}");
        assert!(got.header("content-range").is_none());
        assert!(got.body == data, "{range}");
    }

    // If-Range: the current ETag honours the range, anything else sends the whole file.
    let tag = curl(&f.server, &url, &["-I"])
        .header("etag")
        .unwrap()
        .to_string();
    let got = curl(
        &f.server,
        &url,
        &["-H", "Range: bytes=5-9", "-H", &format!("If-Range: {tag}")],
    );
    assert_eq!((got.status, &got.body[..]), (206, &data[5..=9]));
    for other in [
        "\"0000\"",
        &format!("W/{tag}"),
        "Sun, 13 Sep 2020 12:26:40 GMT",
    ] {
        let got = curl(
            &f.server,
            &url,
            &[
                "-H",
                "Range: bytes=5-9",
                "-H",
                &format!("If-Range: {other}"),
            ],
        );
        assert_eq!(got.status, 200, "{other}");
        assert!(got.body == data);
    }
}

#[test]
fn etags_follow_content_and_answer_conditional_requests() {
    let f = fixture();
    let etag_of = |version: &str, path: &[u8]| {
        let got = curl(&f.server, &file_url(version, path), &["-I"]);
        assert_eq!(got.status, 200, "{got:?}");
        got.header("etag").unwrap().to_string()
    };
    let big = etag_of("1", b"big.bin");
    assert!(big.starts_with('"') && big.ends_with('"'), "{big}");
    assert_eq!(etag_of("1", b"big.bin"), big, "stable across requests");
    assert_eq!(
        etag_of("1", b"copy/big-copy.bin"),
        big,
        "same content, same tag"
    );
    assert_eq!(
        etag_of("2", b"big.bin"),
        big,
        "same content in another version"
    );
    assert_eq!(
        etag_of("1", b"link-to-big"),
        big,
        "a symlink serves its target"
    );
    assert_ne!(etag_of("1", b"empty"), big);
    assert_ne!(
        etag_of("1", b"a b.txt"),
        etag_of("1", b"nested/deeper/deepest/n.txt")
    );
    // The listing shows the same tag.
    let listing = json(&curl(&f.server, &format!("/packages/{PKG}/1"), &[]));
    let e = listing["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == "big.bin")
        .unwrap();
    assert_eq!(e["etag"].as_str(), Some(big.as_str()));

    let url = file_url("1", b"big.bin");
    for inm in [big.clone(), "*".into(), format!("\"nope\", W/{big}")] {
        let got = curl(&f.server, &url, &["-H", &format!("If-None-Match: {inm}")]);
        assert_eq!(got.status, 304, "{inm}");
        assert!(got.body.is_empty());
        assert_eq!(got.header("etag"), Some(big.as_str()));
    }
    let got = curl(&f.server, &url, &["-H", "If-None-Match: \"nope\""]);
    assert_eq!(got.status, 200);
    assert_eq!(got.body.len(), BIG);
}

#[test]
fn symlinks_are_followed_inside_the_package() {
    let f = fixture();
    let got = curl(&f.server, &file_url("1", b"nested/deeper/up"), &[]);
    assert_eq!((got.status, &got.body[..]), (200, &b"spaced out\n"[..]));
    // Through a link to a directory.
    let got = curl(&f.server, &file_url("1", b"to-deeper/deepest/n.txt"), &[]);
    assert_eq!((got.status, &got.body[..]), (200, &b"deep\n"[..]));
    let got = curl(&f.server, &file_url("1", b"to-deeper/up"), &[]);
    assert_eq!((got.status, &got.body[..]), (200, &b"spaced out\n"[..]));
    // A link to a directory is a directory.
    let got = curl(&f.server, &file_url("1", b"to-deeper"), &[]);
    assert_eq!(got.status, 404);
    assert!(got.text().contains("is a directory"), "{}", got.text());
}

#[test]
fn versions_latest_and_one_line_errors() {
    let f = fixture();
    let s = &f.server;
    let all = json(&curl(s, "/packages", &[]));
    assert_eq!(
        all,
        serde_json::json!([{"package": PKG, "versions": [1, 2]}])
    );
    let one = json(&curl(s, &format!("/packages/{PKG}"), &[]));
    assert_eq!(one, serde_json::json!({"package": PKG, "versions": [1, 2]}));

    let latest = json(&curl(s, &format!("/packages/{PKG}/latest/"), &[]));
    assert_eq!(latest["version"], 2);
    assert_eq!(latest["files"].as_array().unwrap().len(), 2);
    let v2 = json(&curl(s, &format!("/packages/{PKG}/2"), &[]));
    assert_eq!(latest["hash"], v2["hash"]);
    assert_ne!(
        latest["hash"],
        json(&curl(s, &format!("/packages/{PKG}/1"), &[]))["hash"]
    );
    let got = curl(s, &file_url("latest", b"v2-only.txt"), &[]);
    assert_eq!((got.status, &got.body[..]), (200, &b"new in 2\n"[..]));

    let expect = |path: &str, status: u16, line: &str| {
        let got = curl(s, path, &[]);
        assert_eq!(got.status, status, "{path}: {got:?}");
        assert_eq!(got.text(), format!("{line}\n"), "{path}");
        assert!(
            got.header("content-type")
                .unwrap()
                .starts_with("text/plain"),
            "{path}"
        );
    };
    expect(
        "/packages/PS100009/1/files/big.bin",
        404,
        "package PS100009 is not on this DP; distribute it here first",
    );
    expect(
        "/packages/PS100009/",
        404,
        "package PS100009 is not on this DP; distribute it here first",
    );
    expect(
        &format!("/packages/{PKG}/7/"),
        404,
        "PS100001 v7 is not on this DP (it holds v1, v2); distribute that version here first or ask for one of those",
    );
    expect(
        &file_url("1", b"v2-only.txt"),
        404,
        "PS100001 v1 has no file \"v2-only.txt\"; list the version at /packages/PS100001/1/",
    );
    expect(
        &file_url("latest", b"a/b.txt"),
        404,
        "PS100001 v2 has no file \"a/b.txt\"; list the version at /packages/PS100001/2/",
    );
    expect(
        "/packages/xx/1/",
        400,
        "\"xx\" is not a package ID (site code + 5 hex digits, e.g. PS100001)",
    );
    expect(
        "/packages/ps100001/1/files/big.bin",
        400,
        "\"ps100001\" is not a package ID (site code + 5 hex digits, e.g. PS100001)",
    );
    expect(
        &format!("/packages/{PKG}/newest/"),
        400,
        "\"newest\" is not a version (a number or \"latest\")",
    );
    expect(
        &file_url("1", b"nested/deeper"),
        404,
        "\"nested/deeper\" in PS100001 v1 is a directory, not a file; list the version at /packages/PS100001/1/ to see its files",
    );
    expect(
        &format!("/packages/{PKG}/1/files/"),
        404,
        "the root in PS100001 v1 is a directory, not a file; list the version at /packages/PS100001/1/ to see its files",
    );
    let got = curl(s, "/nothing/here", &[]);
    assert_eq!(got.status, 404);
    assert!(
        got.text().starts_with("nothing at \"/nothing/here\""),
        "{}",
        got.text()
    );
}

#[test]
fn hostile_paths_never_read_anything() {
    let f = fixture();
    let base = format!("/packages/{PKG}/1/files/");
    for (path, status) in [
        ("../../../../../../etc/passwd", 400),
        ("nested/../big.bin", 400),
        ("./big.bin", 400),
        ("%2e%2e/%2e%2e/%2e%2e/etc/passwd", 400),
        ("..%2f..%2f..%2fetc%2fpasswd", 400),
        ("nested/%2E%2E/big.bin", 400),
        ("/etc/passwd", 400),
        ("%2fetc%2fpasswd", 400),
        ("nested//deeper/deepest/n.txt", 400),
        ("big.bin/", 400),
        ("big.bin%00", 400),
        ("%00", 400),
        ("big%zz", 400),
        ("etc/passwd", 404),
        ("nested/deeper/up/../../../etc/passwd", 400),
    ] {
        let got = curl(&f.server, &format!("{base}{path}"), &[]);
        assert_eq!(got.status, status, "{path}: {}", got.text());
        assert!(!got.text().contains("root:"), "{path}");
        assert_eq!(got.text().lines().count(), 1, "{path}: {}", got.text());
    }
    // Climbing out of the route itself lands on no file either.
    for path in [
        format!("/packages/{PKG}/1/files/../../../../etc/passwd"),
        "/packages/..%2f..%2fetc/1/files/passwd".to_string(),
        format!("/packages/{PKG}/..%2f..%2f/files/big.bin"),
    ] {
        let got = curl(&f.server, &path, &[]);
        assert!(got.status == 400 || got.status == 404, "{path}: {got:?}");
        assert!(!got.text().contains("root:"), "{path}");
    }
}

/// Where to damage `id`: its pack data file (under LIB/packs/) and a byte in the middle of its
/// stored bytes.
fn spot(lib: &Library, id: &freight_core::ChunkId) -> (PathBuf, u64) {
    let loc = lib.locate(id).unwrap();
    let pack = lib.pack_path(loc.pack);
    assert!(pack.starts_with(lib.dir()), "{pack:?}");
    assert_eq!(pack.parent().unwrap().file_name().unwrap(), "packs");
    (pack, loc.offset + u64::from(loc.clen) / 2)
}

/// Flips one bit of the byte at `at` in `file`.
fn flip((file, at): &(PathBuf, u64)) {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(file)
        .unwrap();
    let mut b = [0u8];
    f.seek(SeekFrom::Start(*at)).unwrap();
    f.read_exact(&mut b).unwrap();
    f.seek(SeekFrom::Start(*at)).unwrap();
    f.write_all(&[b[0] ^ 0x40]).unwrap();
    f.sync_all().unwrap();
}

#[test]
fn a_damaged_chunk_is_never_served_as_success() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let data = noise("damaged", BIG);
    std::fs::write(src.join("big.bin"), &data).unwrap();
    std::fs::write(src.join("small.txt"), b"fine\n").unwrap();
    let mut lib = Library::open_or_init(&dir.path().join("lib"), None).unwrap();
    ingest_version(&mut lib, &src, PKG, 1).unwrap();
    let m = lib.manifest(&PackageId::parse(PKG).unwrap(), 1).unwrap();
    let big = m.entries.iter().find(|e| e.path == b"big.bin").unwrap();
    let EntryKind::File { chunks, .. } = big.kind.clone() else {
        panic!()
    };
    assert!(chunks.len() >= 3);
    let first_len = chunks[0].len as usize;
    let last_start = BIG - chunks.last().unwrap().len as usize;
    // Damage the last chunk now, the first one below.
    let first_spot = spot(&lib, &chunks[0].id);
    flip(&spot(&lib, &chunks.last().unwrap().id));
    let server = serve(lib);
    let url = file_url("1", b"big.bin");

    // Mid-stream: the transfer breaks off; what arrived is a true prefix, never wrong bytes.
    let got = curl(&server, &url, &[]);
    assert_eq!(got.status, 200, "{got:?}");
    assert_ne!(got.exit, 0, "curl reported success for a damaged file");
    assert!(
        !got.stderr.is_empty(),
        "curl said nothing of the broken transfer"
    );
    assert!(got.body.len() < BIG, "all {} bytes arrived", got.body.len());
    assert!(got.body == data[..got.body.len()], "wrong bytes delivered");

    // A range in the damaged chunk only: 500 before any byte, naming the remedy.
    let got = curl(
        &server,
        &url,
        &["-H", &format!("Range: bytes={last_start}-")],
    );
    assert_eq!(got.status, 500, "{got:?}");
    assert_eq!(got.text().lines().count(), 1);
    assert!(
        got.text()
            .contains("freight library verify --package PS100001 --version 1"),
        "{}",
        got.text()
    );
    assert!(
        got.text().contains(&chunks.last().unwrap().id.to_hex()),
        "{}",
        got.text()
    );
    assert!(
        !got.text().contains("packs"),
        "the library's paths stay in the log"
    );

    // Undamaged chunks and files still serve.
    let got = curl(
        &server,
        &url,
        &["-H", &format!("Range: bytes=0-{}", first_len - 1)],
    );
    assert_eq!((got.status, got.exit), (206, 0));
    assert!(got.body == data[..first_len]);
    let got = curl(&server, &file_url("1", b"small.txt"), &[]);
    assert_eq!((got.status, &got.body[..]), (200, &b"fine\n"[..]));

    // The first chunk damaged too: the whole file is a 500, but a range after it is served
    // without reading it (whole chunks before the start are skipped by their lengths).
    flip(&first_spot);
    let got = curl(&server, &url, &[]);
    assert_eq!(got.status, 500, "{got:?}");
    assert!(got.text().contains("cannot be served"), "{}", got.text());
    let got = curl(
        &server,
        &url,
        &[
            "-H",
            &format!("Range: bytes={first_len}-{}", last_start - 1),
        ],
    );
    assert_eq!((got.status, got.exit), (206, 0), "{got:?}");
    assert!(got.body == data[first_len..last_start]);
}

#[test]
fn conditional_requests_head_and_huge_ranges_follow_rfc_9110() {
    let f = fixture();
    let s = &f.server;
    let url = file_url("1", b"big.bin");
    let head = curl(s, &url, &["-I"]);
    let tag = head.header("etag").unwrap().to_string();
    let modified = head.header("last-modified").unwrap().to_string();

    // If-Match: the current tag or `*` passes, anything else is 412 with one line.
    for ok in [tag.as_str(), "*", &format!("\"x\", {tag}")] {
        let got = curl(s, &url, &["-H", &format!("If-Match: {ok}")]);
        assert_eq!(got.status, 200, "{ok}");
        assert_eq!(got.body.len(), BIG);
    }
    for bad in ["\"x\"", &format!("W/{tag}")] {
        let got = curl(s, &url, &["-H", &format!("If-Match: {bad}")]);
        assert_eq!(got.status, 412, "{bad}: {got:?}");
        assert_eq!(got.text().lines().count(), 1, "{}", got.text());
        assert!(got.text().contains("fetch it again"), "{}", got.text());
        assert_eq!(got.header("etag"), Some(tag.as_str()));
    }
    // If-None-Match on HEAD, If-Modified-Since with the file's own date: 304, no body.
    let got = curl(s, &url, &["-I", "-H", &format!("If-None-Match: {tag}")]);
    assert_eq!(got.status, 304, "{got:?}");
    let got = curl(s, &url, &["-H", &format!("If-Modified-Since: {modified}")]);
    assert_eq!((got.status, got.body.len()), (304, 0), "{got:?}");
    let got = curl(
        s,
        &url,
        &["-H", "If-Modified-Since: Thu, 01 Jan 1970 00:00:01 GMT"],
    );
    assert_eq!(got.status, 200);
    let got = curl(
        s,
        &url,
        &["-H", "If-Unmodified-Since: Thu, 01 Jan 1970 00:00:01 GMT"],
    );
    assert_eq!(got.status, 412, "{got:?}");

    // Numbers past u64: a start is unsatisfiable (416), an end means the file's end (206).
    let huge = "99999999999999999999999";
    let got = curl(s, &url, &["-H", &format!("Range: bytes={huge}-")]);
    assert_eq!(got.status, 416, "{got:?}");
    assert_eq!(
        got.header("content-range"),
        Some(&*format!("bytes */{BIG}"))
    );
    let got = curl(s, &url, &["-H", &format!("Range: bytes=10-{huge}")]);
    assert_eq!(got.status, 206, "{got:?}");
    assert_eq!(
        got.header("content-range"),
        Some(&*format!("bytes 10-{}/{BIG}", BIG - 1))
    );

    // HEAD everywhere GET is: the same status and headers, never a body.
    for path in [
        "/packages".to_string(),
        format!("/packages/{PKG}"),
        format!("/packages/{PKG}/1/"),
        format!("/packages/{PKG}/9/"),
        "/nothing".to_string(),
        url.clone(),
    ] {
        let get = curl(s, &path, &[]);
        let head = curl(s, &path, &["-I"]);
        assert_eq!(head.status, get.status, "{path}");
        assert_eq!(
            head.header("content-type"),
            get.header("content-type"),
            "{path}"
        );
        assert!(head.body.is_empty(), "{path}");
    }
    // Other methods are refused with the allowed ones named.
    let got = curl(s, &url, &["-X", "POST"]);
    assert_eq!(got.status, 405, "{got:?}");
    assert!(got.header("allow").unwrap().contains("HEAD"), "{got:?}");

    // A listing has its own strong tag (the manifest's hash): a client that has it gets 304.
    let listing = format!("/packages/{PKG}/1/");
    let got = curl(s, &listing, &[]);
    let ltag = got.header("etag").unwrap().to_string();
    assert!(ltag.starts_with("\"l1-"), "{ltag}");
    assert_eq!(
        curl(s, &format!("/packages/{PKG}/1"), &["-I"]).header("etag"),
        Some(ltag.as_str())
    );
    let got = curl(s, &listing, &["-H", &format!("If-None-Match: {ltag}")]);
    assert_eq!((got.status, got.body.len()), (304, 0));
    let got = curl(s, &listing, &["-H", "If-Match: \"l1-0\""]);
    assert_eq!(got.status, 412, "{got:?}");
    assert_ne!(
        curl(s, &format!("/packages/{PKG}/2/"), &["-I"]).header("etag"),
        Some(ltag.as_str())
    );
}

/// A small library: `big.bin` (BIG bytes of noise) and `small.txt`, as PS100001 v1.
fn small_library(dir: &Path) -> Library {
    let src = dir.join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("big.bin"), noise("limits", BIG)).unwrap();
    std::fs::write(src.join("small.txt"), b"fine\n").unwrap();
    let mut lib = Library::open_or_init(&dir.join("lib"), None).unwrap();
    ingest_version(&mut lib, &src, PKG, 1).unwrap();
    lib
}

/// A TCP connection to `to` from the loopback address `from` (127.x.y.z: every one of them is
/// this machine, so tests can be several clients).
fn connect_from(from: &str, to: &str) -> std::net::TcpStream {
    use std::os::fd::FromRawFd;
    let from: std::net::Ipv4Addr = from.parse().unwrap();
    let to: std::net::SocketAddrV4 = to.parse().unwrap();
    let sa = |ip: std::net::Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: a fresh socket, bound and connected with valid sockaddr_in values; ownership of
    // the descriptor moves into the TcpStream.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let local = sa(from, 0);
        let r = libc::bind(fd, &local as *const _ as *const libc::sockaddr, len);
        assert_eq!(r, 0, "bind {from}: {}", std::io::Error::last_os_error());
        let remote = sa(*to.ip(), to.port());
        let r = libc::connect(fd, &remote as *const _ as *const libc::sockaddr, len);
        assert_eq!(r, 0, "connect {to}: {}", std::io::Error::last_os_error());
        std::net::TcpStream::from_raw_fd(fd)
    }
}

/// Reads until the server closes (EOF, reset or `within` passing): what arrived, and whether
/// the connection ended (false: still open after `within`).
fn read_until_closed(s: &mut std::net::TcpStream, within: Duration) -> (Vec<u8>, bool) {
    s.set_read_timeout(Some(within)).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return (out, false);
            }
            Err(_) => return (out, true),
        }
    }
}

/// Reads one response with a Content-Length from a kept-alive connection: (status, body).
fn read_response(s: &mut std::net::TcpStream) -> (u16, Vec<u8>) {
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut raw = Vec::new();
    let mut byte = [0u8];
    while !raw.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        raw.push(byte[0]);
    }
    let head = String::from_utf8(raw).unwrap().to_ascii_lowercase();
    let status = head[9..12].parse().unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let mut body = vec![0; len];
    s.read_exact(&mut body).unwrap();
    (status, body)
}

fn addr_of(server: &Server) -> &str {
    server.base.trim_start_matches("http://")
}

#[test]
fn half_requests_and_idle_connections_are_closed_on_time() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        header_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(3),
        ..Limits::default()
    };
    let server = serve_with(small_library(dir.path()), limits);
    let addr = addr_of(&server);

    // Half a request, then nothing: closed after the header timeout, without an answer.
    let t = Instant::now();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /packages HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let (got, closed) = read_until_closed(&mut s, Duration::from_secs(20));
    let took = t.elapsed();
    assert!(
        closed && got.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "closed after {took:?}"
    );
    // Nothing at all: the same.
    let t = Instant::now();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    assert!(read_until_closed(&mut s, Duration::from_secs(20)).1);
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    // Trickling the head a byte at a time does not extend the timeout.
    let t = Instant::now();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    for b in b"GET /packages HTTP/1.1\r\nHost: x\r\n".iter() {
        if s.write_all(&[*b]).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        if t.elapsed() > Duration::from_secs(5) {
            break;
        }
    }
    let (_, closed) = read_until_closed(&mut s, Duration::from_secs(10));
    assert!(closed);
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());

    // A kept-alive connection outlives the header timeout between requests and is closed
    // after the idle timeout.
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: x\r\n\r\n",
        file_url("1", b"small.txt")
    );
    s.write_all(request.as_bytes()).unwrap();
    assert_eq!(read_response(&mut s), (200, b"fine\n".to_vec()));
    std::thread::sleep(Duration::from_secs(2));
    s.write_all(request.as_bytes()).unwrap();
    assert_eq!(read_response(&mut s), (200, b"fine\n".to_vec()));
    let t = Instant::now();
    let (got, closed) = read_until_closed(&mut s, Duration::from_secs(20));
    assert!(closed && got.is_empty());
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(2500) && took < Duration::from_secs(10),
        "idle connection closed after {took:?}"
    );
}

#[test]
fn a_client_that_stops_reading_is_cut_after_the_send_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        send_timeout: Duration::from_secs(1),
        ..Limits::default()
    };
    let server = serve_with(small_library(dir.path()), limits);
    // Ten pipelined requests for the whole big file (far more than the sockets buffer), and
    // nothing read for a while.
    let mut s = std::net::TcpStream::connect(addr_of(&server)).unwrap();
    let one = format!(
        "GET {} HTTP/1.1\r\nHost: x\r\n\r\n",
        file_url("1", b"big.bin")
    );
    s.write_all(one.repeat(10).as_bytes()).unwrap();
    std::thread::sleep(Duration::from_secs(4));
    let t = Instant::now();
    let (got, closed) = read_until_closed(&mut s, Duration::from_secs(10));
    assert!(closed, "still open after {:?}", t.elapsed());
    assert!(
        got.len() < 10 * BIG,
        "all {} bytes arrived; the writer never stalled",
        got.len()
    );
    // The server is fine.
    let got = curl(&server, &file_url("1", b"small.txt"), &[]);
    assert_eq!((got.status, &got.body[..]), (200, &b"fine\n"[..]));
}

#[test]
fn connections_above_an_address_cap_are_refused_at_once_and_idle_ones_make_room() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        max_per_address: 3,
        max_connections: 5,
        ..Limits::default()
    };
    let server = serve_with(small_library(dir.path()), limits);
    let addr = addr_of(&server).to_string();
    let refused_text = |from: &str| {
        let t = Instant::now();
        let mut s = connect_from(from, &addr);
        let (got, closed) = read_until_closed(&mut s, Duration::from_secs(5));
        assert!(
            closed,
            "a connection above the cap from {from} stayed open ({:?} arrived)",
            String::from_utf8_lossy(&got)
        );
        assert!(
            t.elapsed() < Duration::from_millis(900),
            "refused only after {:?}",
            t.elapsed()
        );
        let text = String::from_utf8_lossy(&got).into_owned();
        assert!(text.starts_with("HTTP/1.1 503 "), "{text}");
        text
    };
    let curl_from = |from: &str| {
        let out = Command::new("curl")
            .args([
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "5",
            ])
            .args(["--interface", from])
            .arg(format!("http://{addr}/packages"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };

    // Three idle connections from one address fill its share: the fourth is refused at once
    // (long before any timeout), with one line saying why.
    let held: Vec<_> = (0..3).map(|_| connect_from("127.0.0.1", &addr)).collect();
    let text = refused_text("127.0.0.1");
    assert!(text.contains("from your address"), "{text}");
    // Another address is still served.
    assert_eq!(curl_from("127.0.0.2"), "200");
    // Two more from a second address fill the total. A third address is still answered: its
    // connection takes the place of the one that waited longest without a request (the first
    // of 127.0.0.1's), which is closed without an answer; the others stay. (With every
    // connection being answered, a newcomer is refused instead: the gate's unit tests.)
    let mut held = held;
    let held2: Vec<_> = (0..2).map(|_| connect_from("127.0.0.2", &addr)).collect();
    assert_eq!(curl_from("127.0.0.3"), "200");
    let (got, closed) = read_until_closed(&mut held[0], Duration::from_secs(2));
    assert!(
        closed && got.is_empty(),
        "the oldest idle connection was not evicted: {got:?}"
    );
    let (got, closed) = read_until_closed(&mut held[1], Duration::from_millis(200));
    assert!(
        !closed && got.is_empty(),
        "a newer idle connection was cut too"
    );
    // Closing connections frees their places.
    drop(held);
    let end = Instant::now() + Duration::from_secs(5);
    while curl_from("127.0.0.1") != "200" {
        assert!(Instant::now() < end, "places were not freed");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(held2);
}
