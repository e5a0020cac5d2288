//! A distribution point's HTTP content server: package files straight from the content library.
//!
//! Routes (see [`router`]):
//! ```text
//! GET       /packages                              [{"package": "PS100001", "versions": [1, 2]}]
//! GET       /packages/{PKG}[/]                     {"package", "versions"}
//! GET       /packages/{PKG}/{VER}[/]               listing: {"package", "version", "hash", "files": [...]}
//! GET|HEAD  /packages/{PKG}/{VER}/files/{PATH}     the file's bytes
//! ```
//! `{VER}` is a version number or `latest`. Files are streamed chunk by chunk: each chunk is
//! read, decompressed and verified on the blocking pool (one chunk ahead of the client at most),
//! so memory stays bounded by a couple of chunks per transfer and async workers never block.
//! Responses carry `Content-Length`, `Last-Modified`, a strong `ETag` derived from the file's
//! chunk list ([`etag`]: identical content gives the same tag in any package or version, and
//! nothing is re-hashed), honour `If-None-Match` (304), single byte ranges (206/416, see
//! [`parse_range`]) and `If-Range`. A file path is looked up exactly in the manifest
//! ([`resolve`]), following symlinks inside the package for at most [`MAX_HOPS`] hops, so no
//! request can read anything but the package's own content.
//!
//! A chunk that fails verification is never sent: before the first byte the answer is 500, after
//! it the body ends with an error (the client sees a truncated transfer) and a warning names the
//! chunk. Every error body is one line of plain text naming the object and the remedy.

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use freight_core::manifest::{ChunkRef, check_path};
use freight_core::{ChunkId, Entry, EntryKind, Library, Manifest, PackageId};
use freight_transport::store::SharedLibrary;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};
use serde::Serialize;
use std::collections::VecDeque;
use std::time::{Duration, SystemTime};
use tokio::task::JoinHandle;

/// Symlinks followed at most when resolving one file path.
pub const MAX_HOPS: usize = 8;

/// Routes of a DP's content server, reading from `lib`.
pub fn router(lib: SharedLibrary) -> Router {
    Router::new()
        .route("/packages", get(list_packages))
        .route("/packages/", get(list_packages))
        .route("/packages/{pkg}", get(package_versions))
        .route("/packages/{pkg}/", get(package_versions))
        .route("/packages/{pkg}/{ver}", get(listing))
        .route("/packages/{pkg}/{ver}/", get(listing))
        .route("/packages/{pkg}/{ver}/files", get(files_root))
        .route("/packages/{pkg}/{ver}/files/", get(files_root))
        .route("/packages/{pkg}/{ver}/files/{*path}", get(file))
        .fallback(unknown_route)
        .with_state(lib)
}

// ---------------------------------------------------------------------------------------------
// Pure parts: ETags, conditional headers, ranges, chunk plans, path resolution.

/// The strong ETag of a file of `size` bytes made of `chunks`: quoted hex of BLAKE3 over the
/// size and the ordered chunk IDs and lengths. Chunk IDs already hash the content, so nothing is
/// re-read, and equal content has the same tag wherever it appears.
pub fn etag(size: u64, chunks: &[ChunkRef]) -> String {
    let mut h = blake3::Hasher::new();
    h.update(b"freight-etag-1\0");
    h.update(&size.to_le_bytes());
    for c in chunks {
        h.update(&c.id.0);
        h.update(&c.len.to_le_bytes());
    }
    format!("\"{}\"", &h.finalize().to_hex()[..32])
}

/// Whether an `If-None-Match` value matches `etag` (weak comparison, `*` matches anything).
pub fn if_none_match(header: &str, etag: &str) -> bool {
    header
        .split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
}

/// Whether an `If-Range` value lets a range through: only a strongly equal ETag does (a date,
/// a weak tag or another tag means "send the whole file").
pub fn if_range(header: &str, etag: &str) -> bool {
    header.trim() == etag
}

/// What a `Range` header asks of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeReq {
    /// The whole file (no header, several ranges, another unit or a malformed value).
    Whole,
    /// Bytes `start..=end`, within the file.
    Part {
        /// First byte.
        start: u64,
        /// Last byte (inclusive).
        end: u64,
    },
    /// A single valid range that selects nothing of the file (416).
    Unsatisfiable,
}

fn digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Parses a `Range` header for a file of `size` bytes. Only a single `bytes` range is served
/// (`a-b`, `a-`, `-n`); several ranges or a malformed value fall back to the whole file, as
/// RFC 9110 allows.
pub fn parse_range(header: &str, size: u64) -> RangeReq {
    let Some((unit, spec)) = header.split_once('=') else {
        return RangeReq::Whole;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") || spec.contains(',') {
        return RangeReq::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeReq::Whole;
    };
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        let Some(n) = digits(last) else {
            return RangeReq::Whole;
        };
        if n == 0 || size == 0 {
            return RangeReq::Unsatisfiable;
        }
        return RangeReq::Part {
            start: size.saturating_sub(n),
            end: size - 1,
        };
    }
    let Some(start) = digits(first) else {
        return RangeReq::Whole;
    };
    let end = if last.is_empty() {
        None
    } else {
        match digits(last) {
            Some(end) if end >= start => Some(end),
            _ => return RangeReq::Whole,
        }
    };
    if start >= size {
        return RangeReq::Unsatisfiable;
    }
    RangeReq::Part {
        start,
        end: end.map_or(size - 1, |e| e.min(size - 1)),
    }
}

/// A slice of one chunk to send: bytes `skip..skip + take` of chunk `id`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    /// The chunk.
    pub id: ChunkId,
    /// Bytes of the chunk skipped before the slice.
    pub skip: u32,
    /// Bytes of the slice.
    pub take: u32,
}

/// The chunk slices that make up bytes `start..=end` of a file made of `chunks`. Chunks wholly
/// before or after the range are not named, so they are never read.
pub fn plan(chunks: &[ChunkRef], start: u64, end: u64) -> Vec<Piece> {
    let mut out = Vec::new();
    let mut offset = 0u64;
    for c in chunks {
        let c_end = offset + u64::from(c.len);
        if c_end > start {
            if offset > end {
                break;
            }
            let skip = start.saturating_sub(offset);
            let stop = c_end.min(end + 1) - offset;
            out.push(Piece {
                id: c.id,
                skip: skip as u32,
                take: (stop - skip) as u32,
            });
        }
        offset = c_end;
    }
    out
}

/// Why a path does not name a file or directory of a manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LookupError {
    /// Nothing at that path (or a symlink on the way leads nowhere).
    NotFound,
    /// More than [`MAX_HOPS`] symlinks on the way (or a loop).
    TooManyLinks,
}

fn find<'m>(m: &'m Manifest, path: &[u8]) -> Option<&'m Entry> {
    m.entries
        .binary_search_by(|e| e.path.as_slice().cmp(path))
        .ok()
        .map(|i| &m.entries[i])
}

/// The file or directory entry `path` (already checked by [`check_path`]) names in `m`, with
/// symlinks followed like the file system would (relative to the link's folder, at most
/// [`MAX_HOPS`] of them). Resolution never leaves the package: `..` above the root and missing
/// components are [`LookupError::NotFound`].
pub fn resolve<'m>(m: &'m Manifest, path: &[u8]) -> Result<&'m Entry, LookupError> {
    let mut pending: VecDeque<Vec<u8>> = path.split(|&c| c == b'/').map(<[u8]>::to_vec).collect();
    let mut done: Vec<u8> = Vec::new();
    let mut hops = 0;
    let join = |base: &[u8], name: &[u8]| {
        let mut p = base.to_vec();
        if !p.is_empty() {
            p.push(b'/');
        }
        p.extend_from_slice(name);
        p
    };
    while let Some(comp) = pending.pop_front() {
        match comp.as_slice() {
            b"" | b"." => continue,
            b".." => {
                if done.is_empty() {
                    return Err(LookupError::NotFound);
                }
                let parent = freight_core::manifest::parent_of(&done).len();
                done.truncate(parent);
                continue;
            }
            _ => {}
        }
        let here = join(&done, &comp);
        let entry = find(m, &here).ok_or(LookupError::NotFound)?;
        match &entry.kind {
            EntryKind::Dir => done = here,
            EntryKind::File { .. } if pending.is_empty() => done = here,
            EntryKind::File { .. } => return Err(LookupError::NotFound),
            EntryKind::Symlink { target } => {
                hops += 1;
                if hops > MAX_HOPS {
                    return Err(LookupError::TooManyLinks);
                }
                for c in target.split(|&c| c == b'/').rev() {
                    pending.push_front(c.to_vec());
                }
            }
        }
    }
    find(m, &done).ok_or(LookupError::NotFound)
}

/// Decodes `%XX` escapes of a raw URL path segment into bytes; `None` for a bad escape.
pub fn percent_decode(raw: &str) -> Option<Vec<u8>> {
    let b = raw.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            if !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

/// What [`percent_encode`] escapes: everything but unreserved characters and `/` (bytes
/// outside ASCII always are).
const PATH: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/');

/// Percent-encodes path bytes for a URL (keeps unreserved characters and `/`; `%XX` in
/// upper case).
pub fn percent_encode(path: &[u8]) -> String {
    percent_encoding::percent_encode(path, PATH).to_string()
}

/// `Last-Modified` text for an mtime (none before the epoch).
fn http_date(sec: i64) -> Option<String> {
    let sec = u64::try_from(sec).ok()?;
    let t = SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(sec))?;
    // httpdate formats years up to 9999 only.
    (sec < 253_402_300_800).then(|| httpdate::fmt_http_date(t))
}

// ---------------------------------------------------------------------------------------------
// Errors.

/// An error answer: status and one line of text.
#[derive(Debug)]
struct Fail(StatusCode, String);

impl IntoResponse for Fail {
    fn into_response(self) -> Response {
        (
            self.0,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("{}\n", self.1),
        )
            .into_response()
    }
}

fn not_found(msg: String) -> Fail {
    Fail(StatusCode::NOT_FOUND, msg)
}

fn bad_request(msg: String) -> Fail {
    Fail(StatusCode::BAD_REQUEST, msg)
}

fn internal(msg: String) -> Fail {
    Fail(StatusCode::INTERNAL_SERVER_ERROR, msg)
}

fn show(path: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(path))
}

async fn unknown_route(uri: Uri) -> Fail {
    not_found(format!(
        "nothing at {:?}; this DP serves /packages, /packages/PKG/VER/ (a listing) and /packages/PKG/VER/files/PATH",
        uri.path()
    ))
}

// ---------------------------------------------------------------------------------------------
// Library access (always on the blocking pool: manifests and chunks are read from disk).

async fn blocking<T: Send + 'static>(
    lib: &SharedLibrary,
    f: impl FnOnce(&Library) -> Result<T, Fail> + Send + 'static,
) -> Result<T, Fail> {
    let lib = lib.clone();
    tokio::task::spawn_blocking(move || f(&lib.read()))
        .await
        .map_err(|e| {
            internal(format!(
                "the library reader failed ({e}); retry the request"
            ))
        })?
}

fn parse_package(s: &str) -> Result<PackageId, Fail> {
    PackageId::parse(s).map_err(|_| {
        bad_request(format!(
            "{s:?} is not a package ID (site code + 5 hex digits, e.g. PS100001)"
        ))
    })
}

/// A version as asked for in a URL.
#[derive(Clone, Copy, Debug)]
enum VersionSel {
    Latest,
    Number(u32),
}

fn parse_version(s: &str) -> Result<VersionSel, Fail> {
    if s == "latest" {
        return Ok(VersionSel::Latest);
    }
    digits(s)
        .and_then(|v| u32::try_from(v).ok())
        .map(VersionSel::Number)
        .ok_or_else(|| bad_request(format!("{s:?} is not a version (a number or \"latest\")")))
}

fn library_error(what: &str, e: freight_core::Error) -> Fail {
    internal(format!(
        "cannot read {what} from this DP's library: {e}; run `freight library verify` and distribute the package here again"
    ))
}

fn package_absent(pkg: &PackageId) -> Fail {
    not_found(format!(
        "package {pkg} is not on this DP; distribute it here first"
    ))
}

fn versions_of(lib: &Library, pkg: &PackageId) -> Result<Vec<u32>, Fail> {
    let vs = lib
        .versions_of(pkg)
        .map_err(|e| library_error("the package list", e))?;
    if vs.is_empty() {
        return Err(package_absent(pkg));
    }
    Ok(vs)
}

fn load_manifest(lib: &Library, pkg: &PackageId, ver: VersionSel) -> Result<Manifest, Fail> {
    let versions = versions_of(lib, pkg)?;
    let v = match ver {
        VersionSel::Latest => *versions.last().expect("non-empty"),
        VersionSel::Number(v) if versions.contains(&v) => v,
        VersionSel::Number(v) => {
            let held: Vec<String> = versions.iter().map(|v| format!("v{v}")).collect();
            return Err(not_found(format!(
                "{pkg} v{v} is not on this DP (it holds {}); distribute that version here first or ask for one of those",
                held.join(", ")
            )));
        }
    };
    match lib.manifest(pkg, v) {
        Ok(m) => Ok(m),
        Err(freight_core::Error::NoSuchVersion { .. }) => Err(not_found(format!(
            "{pkg} v{v} is not on this DP (it was just removed); distribute it here first"
        ))),
        Err(e) => Err(library_error(&format!("the manifest of {pkg} v{v}"), e)),
    }
}

/// The manifest a URL's `{PKG}` and `{VER}` name.
async fn manifest_at(lib: &SharedLibrary, pkg: &str, ver: &str) -> Result<Manifest, Fail> {
    let pkg = parse_package(pkg)?;
    let ver = parse_version(ver)?;
    blocking(lib, move |lib| load_manifest(lib, &pkg, ver)).await
}

// ---------------------------------------------------------------------------------------------
// Listings.

#[derive(Serialize)]
struct PackageVersions {
    package: String,
    versions: Vec<u32>,
}

async fn list_packages(
    State(lib): State<SharedLibrary>,
) -> Result<axum::Json<Vec<PackageVersions>>, Fail> {
    let all = blocking(&lib, |lib| {
        lib.versions()
            .map_err(|e| library_error("the package list", e))
    })
    .await?;
    Ok(axum::Json(
        all.into_iter()
            .map(|(p, versions)| PackageVersions {
                package: p.to_string(),
                versions,
            })
            .collect(),
    ))
}

async fn package_versions(
    State(lib): State<SharedLibrary>,
    Path(pkg): Path<String>,
) -> Result<axum::Json<PackageVersions>, Fail> {
    let pkg = parse_package(&pkg)?;
    let p = pkg.clone();
    let versions = blocking(&lib, move |lib| versions_of(lib, &p)).await?;
    Ok(axum::Json(PackageVersions {
        package: pkg.to_string(),
        versions,
    }))
}

#[derive(Serialize)]
struct Listing {
    package: String,
    version: u32,
    hash: String,
    files: Vec<ListedFile>,
}

#[derive(Serialize)]
struct ListedFile {
    path: String,
    /// URL of the file, relative to the listing (percent-encoded path).
    href: String,
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    size: Option<u64>,
    mode: u32,
    mtime: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    etag: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<String>,
}

fn listing_of(m: &Manifest) -> Listing {
    let files = m
        .entries
        .iter()
        .filter(|e| !e.path.is_empty())
        .map(|e| {
            let (kind, size, tag, target) = match &e.kind {
                EntryKind::Dir => ("dir", None, None, None),
                EntryKind::File { size, chunks } => {
                    ("file", Some(*size), Some(etag(*size, chunks)), None)
                }
                EntryKind::Symlink { target } => (
                    "symlink",
                    None,
                    None,
                    Some(String::from_utf8_lossy(target).into_owned()),
                ),
            };
            ListedFile {
                path: String::from_utf8_lossy(&e.path).into_owned(),
                href: format!("files/{}", percent_encode(&e.path)),
                kind,
                size,
                mode: e.mode,
                mtime: e.mtime_sec,
                etag: tag,
                target,
            }
        })
        .collect();
    Listing {
        package: m.package.to_string(),
        version: m.version,
        hash: m.hash().to_hex().to_string(),
        files,
    }
}

async fn listing(
    State(lib): State<SharedLibrary>,
    Path((pkg, ver)): Path<(String, String)>,
) -> Result<axum::Json<Listing>, Fail> {
    let m = manifest_at(&lib, &pkg, &ver).await?;
    Ok(axum::Json(listing_of(&m)))
}

/// `.../files/` names the root directory: always a 404 pointing at the listing (once the
/// package and version are known to exist).
async fn files_root(
    State(lib): State<SharedLibrary>,
    Path((pkg, ver)): Path<(String, String)>,
) -> Fail {
    match manifest_at(&lib, &pkg, &ver).await {
        Ok(m) => is_directory(&m, b""),
        Err(f) => f,
    }
}

fn listing_url(m: &Manifest) -> String {
    format!("/packages/{}/{}/", m.package, m.version)
}

fn is_directory(m: &Manifest, path: &[u8]) -> Fail {
    let what = if path.is_empty() {
        "the root".to_string()
    } else {
        show(path)
    };
    not_found(format!(
        "{what} in {} v{} is a directory, not a file; list the version at {} to see its files",
        m.package,
        m.version,
        listing_url(m)
    ))
}

// ---------------------------------------------------------------------------------------------
// Files.

/// What a file request needs of the manifest.
struct FileInfo {
    package: PackageId,
    version: u32,
    path: Vec<u8>,
    size: u64,
    chunks: Vec<ChunkRef>,
    mtime_sec: i64,
}

fn find_file(m: &Manifest, path: &[u8]) -> Result<FileInfo, Fail> {
    let no_file = |extra: &str| {
        not_found(format!(
            "{} v{} has no file {}{extra}; list the version at {}",
            m.package,
            m.version,
            show(path),
            listing_url(m)
        ))
    };
    let entry = match resolve(m, path) {
        Ok(e) => e,
        Err(LookupError::NotFound) => return Err(no_file("")),
        Err(LookupError::TooManyLinks) => {
            return Err(no_file(&format!(
                " (it is a symlink that does not reach a file within {MAX_HOPS} hops)"
            )));
        }
    };
    match &entry.kind {
        EntryKind::File { size, chunks } => Ok(FileInfo {
            package: m.package.clone(),
            version: m.version,
            path: path.to_vec(),
            size: *size,
            chunks: chunks.clone(),
            mtime_sec: entry.mtime_sec,
        }),
        _ => Err(is_directory(m, path)),
    }
}

/// Splits `/packages/{pkg}/{ver}/files/{rest}` into its raw (still percent-encoded) parts.
fn file_url_parts(path: &str) -> Option<(&str, &str, &str)> {
    let mut it = path.splitn(6, '/');
    let (_, _, pkg, ver, _, rest) = (
        it.next()?,
        it.next()?,
        it.next()?,
        it.next()?,
        it.next()?,
        it.next()?,
    );
    Some((pkg, ver, rest))
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

async fn file(
    State(lib): State<SharedLibrary>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, Fail> {
    // The raw URL path, so that any byte of a file name can be asked for.
    let (pkg, ver, raw) =
        file_url_parts(uri.path()).ok_or_else(|| internal("unexpected file URL".into()))?;
    let decode = |s: &str| {
        percent_decode(s)
            .ok_or_else(|| bad_request(format!("{s:?} has a bad percent escape; fix the URL")))
    };
    let pkg = parse_package(&String::from_utf8_lossy(&decode(pkg)?))?;
    let ver = parse_version(&String::from_utf8_lossy(&decode(ver)?))?;
    let path = decode(raw)?;
    if let Err(reason) = check_path(&path) {
        return Err(bad_request(format!(
            "{} is not a path inside a package ({reason}); list the version at /packages/{pkg}/{}/",
            show(&path),
            match ver {
                VersionSel::Latest => "latest".to_string(),
                VersionSel::Number(v) => v.to_string(),
            }
        )));
    }
    let info = blocking(&lib, move |lib| {
        let m = load_manifest(lib, &pkg, ver)?;
        find_file(&m, &path)
    })
    .await?;

    let tag = etag(info.size, &info.chunks);
    let mut common = HeaderMap::new();
    common.insert(header::ETAG, HeaderValue::from_str(&tag).expect("hex"));
    if let Some(date) = http_date(info.mtime_sec) {
        common.insert(
            header::LAST_MODIFIED,
            HeaderValue::from_str(&date).expect("ascii"),
        );
    }
    common.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));

    if header_str(&headers, header::IF_NONE_MATCH).is_some_and(|h| if_none_match(h, &tag)) {
        return Ok((StatusCode::NOT_MODIFIED, common).into_response());
    }

    let mut range = match header_str(&headers, header::RANGE) {
        Some(h) => parse_range(h, info.size),
        None => RangeReq::Whole,
    };
    if headers.contains_key(header::IF_RANGE)
        && !header_str(&headers, header::IF_RANGE).is_some_and(|h| if_range(h, &tag))
    {
        range = RangeReq::Whole;
    }
    let (status, start, end) = match range {
        RangeReq::Unsatisfiable => {
            common.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{}", info.size)).expect("ascii"),
            );
            let f = Fail(
                StatusCode::RANGE_NOT_SATISFIABLE,
                format!(
                    "the range asked for is outside {} in {} v{} ({} bytes); ask for bytes 0 to {}",
                    show(&info.path),
                    info.package,
                    info.version,
                    info.size,
                    info.size.saturating_sub(1)
                ),
            );
            return Ok((common, f).into_response());
        }
        RangeReq::Part { start, end } => {
            common.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes {start}-{end}/{}", info.size))
                    .expect("ascii"),
            );
            (StatusCode::PARTIAL_CONTENT, start, end)
        }
        // An empty file has no bytes to plan (`end` is never used then).
        RangeReq::Whole => (StatusCode::OK, 0, info.size.saturating_sub(1)),
    };
    let length = if info.size == 0 { 0 } else { end - start + 1 };
    common.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    common.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if method == Method::HEAD || length == 0 {
        return Ok((status, common, Body::empty()).into_response());
    }

    let mut pieces: VecDeque<Piece> = plan(&info.chunks, start, end).into();
    let ctx = format!("{} in {} v{}", show(&info.path), info.package, info.version);
    let first = pieces.pop_front().expect("a non-empty range has a chunk");
    // The first chunk is read before answering, so a damaged one still gets a proper 500.
    let first = match read_piece(lib.clone(), first).await {
        Ok(b) => b,
        Err(msg) => {
            tracing::warn!(chunk = %first.id, file = %ctx, "damaged chunk, not served: {msg}");
            // The client learns which chunk, not the library's paths (those are in the log).
            return Err(internal(format!(
                "{ctx} cannot be served: chunk {} is damaged or unreadable in this DP's library; run `freight library verify --package {} --version {}` on the DP and distribute the package here again",
                first.id, info.package, info.version
            )));
        }
    };
    let next = pieces.pop_front().map(|p| (p.id, spawn_read(&lib, p)));
    let stream = ChunkStream {
        lib,
        ctx,
        ready: Some(first),
        next,
        pieces,
    };
    let body = Body::from_stream(futures_util::stream::unfold(stream, ChunkStream::step));
    Ok((status, common, body).into_response())
}

type ReadResult = Result<Bytes, String>;

/// Reads, decompresses and verifies one chunk and slices the piece out of it (blocking).
fn read_piece_blocking(lib: &SharedLibrary, p: Piece) -> ReadResult {
    let data = lib.read().read_chunk(&p.id).map_err(|e| e.to_string())?;
    let (skip, take) = (p.skip as usize, p.take as usize);
    if data.len() < skip + take {
        return Err(format!(
            "chunk {} holds {} bytes, fewer than the manifest says",
            p.id,
            data.len()
        ));
    }
    Ok(Bytes::from(data).slice(skip..skip + take))
}

fn spawn_read(lib: &SharedLibrary, p: Piece) -> JoinHandle<ReadResult> {
    let lib = lib.clone();
    tokio::task::spawn_blocking(move || read_piece_blocking(&lib, p))
}

async fn read_piece(lib: SharedLibrary, p: Piece) -> ReadResult {
    spawn_read(&lib, p)
        .await
        .unwrap_or_else(|e| Err(format!("chunk reader failed: {e}")))
}

/// The body of a file response: the chunk already read, then one chunk read ahead at a time.
struct ChunkStream {
    lib: SharedLibrary,
    ctx: String,
    ready: Option<Bytes>,
    next: Option<(ChunkId, JoinHandle<ReadResult>)>,
    pieces: VecDeque<Piece>,
}

impl ChunkStream {
    async fn step(mut self) -> Option<(std::io::Result<Bytes>, ChunkStream)> {
        if let Some(b) = self.ready.take() {
            return Some((Ok(b), self));
        }
        let (id, handle) = self.next.take()?;
        let r = handle
            .await
            .unwrap_or_else(|e| Err(format!("chunk reader failed: {e}")));
        match r {
            Ok(b) => {
                self.next = self
                    .pieces
                    .pop_front()
                    .map(|p| (p.id, spawn_read(&self.lib, p)));
                Some((Ok(b), self))
            }
            Err(msg) => {
                tracing::warn!(
                    chunk = %id,
                    file = %self.ctx,
                    "damaged chunk, transfer aborted: {msg}"
                );
                self.pieces.clear();
                Some((Err(std::io::Error::other(msg)), self))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cref(n: u8, len: u32) -> ChunkRef {
        ChunkRef {
            id: ChunkId([n; 32]),
            len,
        }
    }

    #[test]
    fn ranges() {
        use RangeReq::*;
        let p = |start, end| Part { start, end };
        assert_eq!(parse_range("bytes=0-9", 100), p(0, 9));
        assert_eq!(parse_range("bytes=10-", 100), p(10, 99));
        assert_eq!(parse_range("bytes=-10", 100), p(90, 99));
        assert_eq!(parse_range("bytes=-1000", 100), p(0, 99));
        assert_eq!(parse_range("bytes=90-1000", 100), p(90, 99));
        assert_eq!(parse_range("BYTES = 5-5", 100), p(5, 5));
        assert_eq!(parse_range("bytes=99-99", 100), p(99, 99));
        assert_eq!(parse_range("bytes=100-", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=100-200", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-", 0), Unsatisfiable);
        assert_eq!(parse_range("bytes=-5", 0), Unsatisfiable);
        // Several ranges, malformed values and other units: the whole file.
        for h in [
            "bytes=0-1,5-6",
            "bytes=0-1, 5-6",
            "bytes=5-4",
            "bytes=-",
            "bytes=a-b",
            "bytes=+1-2",
            "bytes=1-+2",
            "bytes= - 5 5",
            "bytes 0-5",
            "items=0-5",
            "bytes=0x1-2",
            "bytes=99999999999999999999999-",
            "",
        ] {
            assert_eq!(parse_range(h, 100), Whole, "{h}");
        }
    }

    #[test]
    fn plans_skip_chunks_outside_the_range() {
        let chunks = [cref(1, 10), cref(2, 10), cref(3, 10)];
        let piece = |i: usize, skip, take| Piece {
            id: chunks[i].id,
            skip,
            take,
        };
        let whole = plan(&chunks, 0, 29);
        assert_eq!(whole.len(), 3);
        assert!(whole.iter().all(|p| p.skip == 0 && p.take == 10));
        // Inside one chunk.
        assert_eq!(plan(&chunks, 12, 15), vec![piece(1, 2, 4)]);
        // Across a boundary.
        assert_eq!(plan(&chunks, 9, 10), vec![piece(0, 9, 1), piece(1, 0, 1)]);
        // Exactly a chunk, and the last byte.
        assert_eq!(plan(&chunks, 10, 19), vec![piece(1, 0, 10)]);
        assert_eq!(plan(&chunks, 29, 29), vec![piece(2, 9, 1)]);
        // Lengths always add up to the range.
        for start in 0..30u64 {
            for end in start..30u64 {
                let ps = plan(&chunks, start, end);
                let total: u64 = ps.iter().map(|p| u64::from(p.take)).sum();
                assert_eq!(total, end - start + 1);
            }
        }
    }

    #[test]
    fn etags_depend_on_content_only() {
        let a = etag(20, &[cref(1, 10), cref(2, 10)]);
        assert_eq!(a, etag(20, &[cref(1, 10), cref(2, 10)]));
        assert_ne!(a, etag(20, &[cref(2, 10), cref(1, 10)]));
        assert_ne!(a, etag(10, &[cref(1, 10)]));
        assert_ne!(etag(0, &[]), a);
        assert!(a.starts_with('"') && a.ends_with('"') && a.len() == 34);
        assert!(if_none_match(&a, &a));
        assert!(if_none_match(&format!("\"x\", W/{a}"), &a));
        assert!(if_none_match("*", &a));
        assert!(!if_none_match("\"x\"", &a));
        assert!(if_range(&a, &a));
        assert!(!if_range(&format!("W/{a}"), &a));
        assert!(!if_range("Wed, 21 Oct 2015 07:28:00 GMT", &a));
    }

    fn entry(path: &str, kind: EntryKind) -> Entry {
        Entry {
            path: path.as_bytes().to_vec(),
            mode: 0o644,
            mtime_sec: 0,
            mtime_nsec: 0,
            kind,
        }
    }

    fn file(path: &str) -> Entry {
        entry(
            path,
            EntryKind::File {
                size: 1,
                chunks: vec![cref(path.len() as u8, 1)],
            },
        )
    }

    fn link(path: &str, target: &str) -> Entry {
        entry(
            path,
            EntryKind::Symlink {
                target: target.as_bytes().to_vec(),
            },
        )
    }

    fn manifest() -> Manifest {
        let mut entries = vec![
            entry("", EntryKind::Dir),
            entry("a", EntryKind::Dir),
            entry("a/b", EntryKind::Dir),
            file("a/b/f.txt"),
            link("a/b/up", "../g.txt"),
            file("a/g.txt"),
            link("a/loop1", "loop2"),
            link("a/loop2", "loop1"),
            link("a/tob", "b"),
            link("dangling", "nothing"),
            link("deep", "a/tob/up"),
            link("top", "a/b/f.txt"),
        ];
        entries.sort_by(|x, y| x.path.cmp(&y.path));
        Manifest {
            package: PackageId::parse("PS100001").unwrap(),
            version: 1,
            entries,
        }
    }

    #[test]
    fn resolution_follows_links_inside_the_package() {
        let m = manifest();
        let path = |p: &str| resolve(&m, p.as_bytes()).map(|e| e.display_path());
        assert_eq!(path("a/b/f.txt"), Ok("a/b/f.txt".into()));
        assert_eq!(path("top"), Ok("a/b/f.txt".into()));
        assert_eq!(path("a/b/up"), Ok("a/g.txt".into()));
        // Through a link to a directory, then a link climbing out of it.
        assert_eq!(path("a/tob/f.txt"), Ok("a/b/f.txt".into()));
        assert_eq!(path("deep"), Ok("a/g.txt".into()));
        assert_eq!(path("a/tob"), Ok("a/b".into()));
        assert_eq!(path("a"), Ok("a".into()));
        assert_eq!(path("dangling"), Err(LookupError::NotFound));
        assert_eq!(path("a/loop1"), Err(LookupError::TooManyLinks));
        assert_eq!(path("missing"), Err(LookupError::NotFound));
        assert_eq!(path("a/g.txt/x"), Err(LookupError::NotFound));
        assert_eq!(path("a/b/f.txt/"), Err(LookupError::NotFound));
        assert_eq!(path("A/b/f.txt"), Err(LookupError::NotFound));
    }

    #[test]
    fn resolution_stays_in_the_package() {
        // A hand-made manifest whose link climbs above the root (a decoded manifest never has
        // one) still resolves to nothing outside.
        let mut m = manifest();
        m.entries.push(link("zz", "../../etc/passwd"));
        assert_eq!(resolve(&m, b"zz"), Err(LookupError::NotFound));
        // Chains longer than MAX_HOPS are refused even without a loop.
        let mut m = manifest();
        for i in 0..=MAX_HOPS {
            m.entries
                .push(link(&format!("l{i}"), &format!("l{}", i + 1)));
        }
        m.entries.push(file(&format!("l{}", MAX_HOPS + 1)));
        m.entries.sort_by(|x, y| x.path.cmp(&y.path));
        assert_eq!(
            resolve(&m, b"l1").map(|e| e.display_path()),
            Ok("l9".into())
        );
        assert_eq!(resolve(&m, b"l0"), Err(LookupError::TooManyLinks));
    }

    #[test]
    fn percent_coding() {
        assert_eq!(percent_decode("a%2e%2E/b").unwrap(), b"a../b");
        assert_eq!(percent_decode("%00").unwrap(), b"\0");
        assert_eq!(percent_decode("%ff%20x").unwrap(), b"\xff x");
        assert_eq!(percent_decode("%"), None);
        assert_eq!(percent_decode("%2"), None);
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%+1"), None);
        let raw = b"dir/a b%\xff~.txt";
        assert_eq!(percent_decode(&percent_encode(raw)).unwrap(), raw);
        assert_eq!(percent_encode(b"d/x y"), "d/x%20y");
    }

    #[test]
    fn dates() {
        assert_eq!(
            http_date(1_600_000_000).as_deref(),
            Some("Sun, 13 Sep 2020 12:26:40 GMT")
        );
        assert_eq!(http_date(-1), None);
        assert_eq!(http_date(i64::MAX), None);
    }

    #[test]
    fn file_urls() {
        assert_eq!(
            file_url_parts("/packages/PS100001/1/files/a/b%20c"),
            Some(("PS100001", "1", "a/b%20c"))
        );
        assert_eq!(
            file_url_parts("/packages/P/latest/files//etc"),
            Some(("P", "latest", "/etc"))
        );
    }
}
