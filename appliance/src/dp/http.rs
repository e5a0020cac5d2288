//! A distribution point's HTTP content server: package files straight from the content library.
//!
//! Routes (see [`router`]); every route answers HEAD as it answers GET, without the body:
//! ```text
//! GET|HEAD  /packages                              [{"package": "PS100001", "versions": [1, 2]}]
//! GET|HEAD  /packages/{PKG}[/]                     {"package", "versions"}
//! GET|HEAD  /packages/{PKG}/{VER}[/]               listing: {"package", "version", "hash", "files": [...]}
//! GET|HEAD  /packages/{PKG}/{VER}/files/{PATH}     the file's bytes
//! ```
//! `{VER}` is a version number or `latest`. Files are streamed chunk by chunk: each chunk is
//! read, decompressed and verified on the blocking pool (one chunk ahead of the client at most),
//! so memory stays bounded by a couple of chunks per transfer and async workers never block.
//! Responses carry `Content-Length`, `Last-Modified`, a strong `ETag` derived from the file's
//! chunk list ([`etag`]: identical content gives the same tag in any package or version, and
//! nothing is re-hashed). Conditional requests follow RFC 9110 §13 ([`preconditions`]:
//! `If-Match` and `If-Unmodified-Since` give 412, `If-None-Match` and `If-Modified-Since` give
//! 304 to GET and HEAD), single byte ranges give 206 or 416 ([`parse_range`]) and `If-Range`
//! lets a range through only for the current strong ETag ([`if_range_allows`]). The validators
//! are parsed by the `headers` crate; the `Range` header by [`parse_range`], because that
//! crate's range type drops a range whose numbers overflow instead of refusing it, reads the
//! unit case-sensitively and refuses a suffix longer than the file, all against RFC 9110 §14.
//!
//! No manifest is ever held whole. Each version asked for gets a sparse index of its stored
//! manifest file ([`PathIndex`]: every 32nd path and its offset, at most
//! [`freight_core::path_index::MAX_INDEX_BYTES`]), built in one checked pass and shared by
//! every request that needs it ([`Manifests`]: a cache bounded by the indexes' memory,
//! [`MANIFEST_CACHE_BYTES`], checked against the manifest file on every request, built by at
//! most [`MAX_DECODES`] requests at once). A listing is written as it is sent, a few hundred
//! entries at a time, read one by one from the held manifest file; at most
//! [`Limits::max_listings`] listings are sent at once. So a crowd of clients listing a large
//! package costs a read buffer each, not a decoded manifest or a JSON document each.
//!
//! A file path is looked up exactly in the manifest ([`resolve`]: through the index, a few
//! entries read from the nearest indexed one), following symlinks inside the package for at
//! most [`MAX_HOPS`] hops, so no request can read anything but the package's own content.
//!
//! A chunk that fails verification is never sent: before the first byte the answer is 500, after
//! it the body ends with an error (the client sees a truncated transfer) and a warning names the
//! chunk. Every error body is one line of plain text naming the object and the remedy.
//!
//! Connections, timeouts and descriptor limits are the listener's: [`super::http_server`].

use super::http_server::Limits;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use freight_core::library::{FileAt, StoredManifest};
use freight_core::manifest::{ChunkRef, Reader, check_path};
use freight_core::path_index::PathIndex;
use freight_core::{ChunkId, Entry, EntryKind, ManifestDir, PackageId};
use freight_transport::store::SharedLibrary;
use headers::IfUnmodifiedSince;
use headers::{ETag, HeaderMapExt, IfMatch, IfModifiedSince, IfNoneMatch, IfRange};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};
use serde::Serialize;
use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

/// Symlinks followed at most when resolving one file path.
pub const MAX_HOPS: usize = 8;

/// Manifest indexes built at once (each reads and checks a whole manifest file).
pub const MAX_DECODES: usize = 2;

/// Manifest indexes kept for the next requests, by the memory they hold (each at most
/// [`freight_core::path_index::MAX_INDEX_BYTES`], so at least eight are kept).
pub const MANIFEST_CACHE_BYTES: usize = 32 << 20;

/// How long a request waits for a listing slot or a manifest index before it gets 503. Well
/// below the listener's send timeout, which would otherwise cut the waiting connection.
pub const QUEUE_WAIT: Duration = Duration::from_secs(10);

/// How long a file request waits for the library (held by a maintenance job) before 503.
pub const LIBRARY_WAIT: Duration = Duration::from_millis(750);

/// Listing JSON is sent in pieces of about this many bytes.
const LISTING_PIECE: usize = 64 * 1024;

/// What the handlers share: the library (for chunks), its manifests as plain files (read
/// without waiting for the library: a maintenance job such as a redistribute's repair holds
/// it for seconds), the manifests' indexes and the listing slots.
#[derive(Clone)]
struct Content {
    lib: SharedLibrary,
    dir: Shown,
    manifests: Arc<Manifests>,
    listings: Arc<Semaphore>,
}

/// Which stored versions the content server shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Served {
    /// Every version the library holds (a library served for inspection, and tests).
    All,
    /// A DP: only versions up to the one whose install last succeeded here
    /// ([`crate::content::installed_version`]). A version pushed but not (yet) installed, or
    /// whose install failed or was refused, is never served; a package never installed is
    /// absent.
    Installed,
}

/// The manifests as the content server shows them: the library's manifest files, with the
/// versions filtered by [`Served`].
#[derive(Clone, Debug)]
struct Shown {
    dir: ManifestDir,
    /// The library's folder, where install records are (with [`Served::Installed`]).
    installed: Option<std::path::PathBuf>,
}

impl Shown {
    fn keep(&self, pkg: &PackageId, mut vs: Vec<u32>) -> Vec<u32> {
        if let Some(lib) = &self.installed {
            let up_to = crate::content::installed_version_at(lib, pkg);
            vs.retain(|v| up_to.is_some_and(|i| *v <= i));
        }
        vs
    }

    fn versions_of(&self, pkg: &PackageId) -> freight_core::Result<Vec<u32>> {
        Ok(self.keep(pkg, self.dir.versions_of(pkg)?))
    }

    fn versions(&self) -> freight_core::Result<std::collections::BTreeMap<PackageId, Vec<u32>>> {
        let mut all = self.dir.versions()?;
        for (p, vs) in all.iter_mut() {
            *vs = self.keep(p, std::mem::take(vs));
        }
        all.retain(|_, vs| !vs.is_empty());
        Ok(all)
    }

    fn path(&self, pkg: &PackageId, v: u32) -> std::path::PathBuf {
        self.dir.path(pkg, v)
    }

    fn open(&self, pkg: &PackageId, v: u32) -> freight_core::Result<StoredManifest> {
        self.dir.open_manifest(pkg, v)
    }
}

/// Routes of a DP's content server, reading from `lib`, within `limits` (listings at once),
/// showing every stored version ([`Served::All`]).
pub fn router(lib: SharedLibrary, limits: &Limits) -> Router {
    router_serving(lib, limits, Served::All)
}

/// Like [`router`], showing the versions `served` selects.
pub fn router_serving(lib: SharedLibrary, limits: &Limits, served: Served) -> Router {
    let (dir, root) = {
        let l = lib.read();
        (l.manifest_dir(), l.dir().to_path_buf())
    };
    let dir = Shown {
        dir,
        installed: (served == Served::Installed).then_some(root),
    };
    let content = Content {
        manifests: Arc::new(Manifests::new(dir.clone())),
        dir,
        lib,
        listings: Arc::new(Semaphore::new(limits.max_listings.max(1))),
    };
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
        .with_state(content)
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

/// The strong ETag of a version's listing: its manifest hash names its content exactly (the
/// `l1-` prefix is the listing format's version).
pub fn listing_etag(hash: &blake3::Hash) -> String {
    format!("\"l1-{}\"", &hash.to_hex()[..32])
}

/// What the preconditions of a request decide (RFC 9110 §13.2.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precondition {
    /// Answer normally.
    Proceed,
    /// 304: the client's copy is current (GET and HEAD only).
    NotModified,
    /// 412: `If-Match` or `If-Unmodified-Since` (or `If-None-Match` on another method) failed.
    Failed,
}

/// Whether no value of `name` has whitespace or a control byte inside quotes (RFC 9110
/// §8.8.3: an entity tag's `etagc` has neither). The `headers` crate debug-asserts this of what
/// it parses, so a client's `If-None-Match: "a b"` panicked a debug build (found by the
/// `http_conditions` fuzz target); such a value is malformed.
fn tags_well_formed(headers: &HeaderMap, name: header::HeaderName) -> bool {
    headers.get_all(name).iter().all(|v| {
        let mut quoted = false;
        v.as_bytes().iter().all(|&b| {
            if b == b'"' {
                quoted = !quoted;
                return true;
            }
            !quoted || (b > b' ' && b != 0x7f)
        })
    })
}

/// Evaluates `If-Match`, `If-Unmodified-Since`, `If-None-Match` and `If-Modified-Since`, in
/// RFC 9110's order, for a representation with the strong `etag` (quoted) and `modified`
/// (its `Last-Modified`, if it has one). An `If-Match` that cannot be read matches nothing
/// (412, the safe side); an unreadable `If-None-Match` or date is ignored, as the RFC says.
pub fn preconditions(
    method: &Method,
    headers: &HeaderMap,
    etag: &str,
    modified: Option<SystemTime>,
) -> Precondition {
    let tag: Option<ETag> = etag.parse().ok();
    let safe = method == Method::GET || method == Method::HEAD;
    if headers.contains_key(header::IF_MATCH) {
        let passes = match (headers.typed_get::<IfMatch>(), &tag) {
            (Some(m), Some(t)) if tags_well_formed(headers, header::IF_MATCH) => {
                m.precondition_passes(t)
            }
            _ => false,
        };
        if !passes {
            return Precondition::Failed;
        }
    } else if let (Some(since), Some(m)) = (headers.typed_get::<IfUnmodifiedSince>(), modified)
        && !since.precondition_passes(m)
    {
        return Precondition::Failed;
    }
    if headers.contains_key(header::IF_NONE_MATCH) {
        if tags_well_formed(headers, header::IF_NONE_MATCH)
            && let (Some(none), Some(t)) = (headers.typed_get::<IfNoneMatch>(), &tag)
            && !none.precondition_passes(t)
        {
            return if safe {
                Precondition::NotModified
            } else {
                Precondition::Failed
            };
        }
    } else if safe
        && let (Some(since), Some(m)) = (headers.typed_get::<IfModifiedSince>(), modified)
        && !since.is_modified(m)
    {
        return Precondition::NotModified;
    }
    Precondition::Proceed
}

/// Whether a `Range` may be honoured under `If-Range` (RFC 9110 §13.1.5): yes without the
/// header or with the strongly equal current ETag; a date, a weak or another tag, or an
/// unreadable value means "send the whole file" (a date is never a strong enough validator
/// here: files keep their source's mtimes).
pub fn if_range_allows(headers: &HeaderMap, etag: &str) -> bool {
    if !headers.contains_key(header::IF_RANGE) {
        return true;
    }
    if !tags_well_formed(headers, header::IF_RANGE) {
        return false;
    }
    match (headers.typed_get::<IfRange>(), etag.parse::<ETag>()) {
        (Some(r), Ok(tag)) => !r.is_modified(Some(&tag), None),
        _ => false,
    }
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

/// `1*DIGIT` without its leading zeros; `None` when `s` is not that.
fn digit_run(s: &str) -> Option<&str> {
    if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    Some(s.trim_start_matches('0'))
}

/// Compares two [`digit_run`]s as numbers, whatever their size.
fn cmp_digits(a: &str, b: &str) -> Ordering {
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

/// A [`digit_run`] as a number, or `None` past `u64::MAX`.
fn to_u64(run: &str) -> Option<u64> {
    if run.is_empty() {
        return Some(0);
    }
    run.parse().ok()
}

fn digits(s: &str) -> Option<u64> {
    to_u64(digit_run(s)?)
}

/// Parses a `Range` header for a file of `size` bytes (RFC 9110 §14.1.2). Only a single
/// `bytes` range is served (`a-b`, `a-`, `-n`; the unit in any case); several ranges or a
/// malformed value fall back to the whole file, as §14.2 allows. Numbers of any length are
/// read: a first byte past the file (even past `u64::MAX`) is unsatisfiable (416), a last
/// byte past it means the file's end, a suffix longer than the file means the whole file.
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
        let Some(n) = digit_run(last) else {
            return RangeReq::Whole;
        };
        if n.is_empty() || size == 0 {
            return RangeReq::Unsatisfiable;
        }
        let n = to_u64(n).unwrap_or(u64::MAX);
        return RangeReq::Part {
            start: size.saturating_sub(n),
            end: size - 1,
        };
    }
    let Some(first) = digit_run(first) else {
        return RangeReq::Whole;
    };
    let last = if last.is_empty() {
        None
    } else {
        match digit_run(last) {
            Some(l) if cmp_digits(l, first) != Ordering::Less => Some(l),
            _ => return RangeReq::Whole,
        }
    };
    let start = match to_u64(first) {
        Some(s) if s < size => s,
        _ => return RangeReq::Unsatisfiable,
    };
    let end = last.map_or(u64::MAX, |l| to_u64(l).unwrap_or(u64::MAX));
    RangeReq::Part {
        start,
        end: end.min(size - 1),
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

/// The file or directory entry `path` (already checked by [`check_path`]) names, with
/// symlinks followed like the file system would (relative to the link's folder, at most
/// [`MAX_HOPS`] of them). `find` gives the entry at exactly a path (a manifest's index, or a
/// manifest in memory); its error is returned as it is. Resolution never leaves the package:
/// `..` above the root and missing components are [`LookupError::NotFound`].
pub fn resolve<E, F>(mut find: F, path: &[u8]) -> Result<Result<Entry, LookupError>, E>
where
    F: FnMut(&[u8]) -> Result<Option<Entry>, E>,
{
    // The common case in one lookup: an entry at the path itself has only folders above it
    // (every entry's parent is a folder of the manifest), so nothing on the way is a link.
    match find(path)? {
        Some(e) if !matches!(e.kind, EntryKind::Symlink { .. }) => return Ok(Ok(e)),
        _ => {}
    }
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
                    return Ok(Err(LookupError::NotFound));
                }
                let parent = freight_core::manifest::parent_of(&done).len();
                done.truncate(parent);
                continue;
            }
            _ => {}
        }
        let here = join(&done, &comp);
        let Some(entry) = find(&here)? else {
            return Ok(Err(LookupError::NotFound));
        };
        match &entry.kind {
            EntryKind::Dir => done = here,
            EntryKind::File { .. } if pending.is_empty() => done = here,
            EntryKind::File { .. } => return Ok(Err(LookupError::NotFound)),
            EntryKind::Symlink { target } => {
                hops += 1;
                if hops > MAX_HOPS {
                    return Ok(Err(LookupError::TooManyLinks));
                }
                for c in target.split(|&c| c == b'/').rev() {
                    pending.push_front(c.to_vec());
                }
            }
        }
    }
    Ok(find(&done)?.ok_or(LookupError::NotFound))
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
    f: impl FnOnce() -> Result<T, Fail> + Send + 'static,
) -> Result<T, Fail> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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

fn busy(what: &str) -> Fail {
    Fail(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("this DP is busy with other {what}; retry in a few seconds"),
    )
}

fn versions_of(dir: &Shown, pkg: &PackageId) -> Result<Vec<u32>, Fail> {
    let vs = dir
        .versions_of(pkg)
        .map_err(|e| library_error("the package list", e))?;
    if vs.is_empty() {
        return Err(package_absent(pkg));
    }
    Ok(vs)
}

fn just_removed(pkg: &PackageId, v: u32) -> Fail {
    not_found(format!(
        "{pkg} v{v} is not on this DP (it was just removed); distribute it here first"
    ))
}

/// The version `ver` names and the identity of its manifest file (device, inode, size,
/// mtime): a manifest is replaced by renaming a new file into place, so a cached decode is
/// current exactly while its file's identity is unchanged.
fn locate_manifest(dir: &Shown, pkg: &PackageId, ver: VersionSel) -> Result<(u32, FileId), Fail> {
    use std::os::unix::fs::MetadataExt;
    let versions = versions_of(dir, pkg)?;
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
    let path = dir.path(pkg, v);
    match std::fs::metadata(&path) {
        Ok(m) => Ok((v, (m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(just_removed(pkg, v)),
        Err(e) => Err(library_error(
            &format!("the manifest of {pkg} v{v}"),
            freight_core::Error::io(&path, "read manifest", e),
        )),
    }
}

type FileId = (u64, u64, u64, i64, i64);

/// The identity of an open file (see [`locate_manifest`]).
fn file_id(f: &std::fs::File) -> std::io::Result<FileId> {
    use std::os::unix::fs::MetadataExt;
    let m = f.metadata()?;
    Ok((m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
}

/// A version's manifest as the content server holds it: its file, open and checked, and the
/// sparse index of its paths.
pub struct Loaded {
    /// The index (with the open manifest file and its hash).
    pub index: PathIndex,
    /// The identity of the manifest file it was built from.
    file: FileId,
}

impl Loaded {
    fn package(&self) -> &PackageId {
        self.index.stored().package()
    }

    fn version(&self) -> u32 {
        self.index.stored().version()
    }

    /// The package hash.
    pub fn hash(&self) -> blake3::Hash {
        self.index.hash()
    }
}

struct Cached {
    package: PackageId,
    version: u32,
    file: FileId,
    loaded: Arc<Loaded>,
}

/// Manifest indexes shared by the requests that need them. Every request checks the manifest
/// file's identity (one `stat`); a hit costs nothing more, a miss builds the index on the
/// blocking pool (one checked pass over the file), at most [`MAX_DECODES`] at a time. The most
/// recently used indexes are kept while their memory is within [`MANIFEST_CACHE_BYTES`].
pub struct Manifests {
    dir: Shown,
    decodes: Semaphore,
    /// Least recently used first.
    cache: Mutex<Vec<Cached>>,
}

impl Manifests {
    fn new(dir: Shown) -> Manifests {
        Manifests {
            dir,
            decodes: Semaphore::new(MAX_DECODES),
            cache: Mutex::new(Vec::new()),
        }
    }

    fn lookup(&self, pkg: &PackageId, v: u32, file: &FileId) -> Option<Arc<Loaded>> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let i = cache
            .iter()
            .position(|c| &c.package == pkg && c.version == v && &c.file == file)?;
        let hit = cache.remove(i);
        let loaded = hit.loaded.clone();
        cache.push(hit);
        Some(loaded)
    }

    fn keep(&self, loaded: &Arc<Loaded>) {
        let bytes = loaded.index.memory();
        if bytes > MANIFEST_CACHE_BYTES {
            return;
        }
        let (package, version) = (loaded.package().clone(), loaded.version());
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        // An older file of the same version (replaced by a redistribute) is done with.
        cache.retain(|c| !(c.package == package && c.version == version));
        cache.push(Cached {
            package,
            version,
            file: loaded.file,
            loaded: loaded.clone(),
        });
        let mut total: usize = cache.iter().map(|c| c.loaded.index.memory()).sum();
        while total > MANIFEST_CACHE_BYTES {
            total -= cache.remove(0).loaded.index.memory();
        }
    }

    /// The manifest a URL's `{PKG}` and `{VER}` name.
    async fn get(&self, pkg: &str, ver: &str) -> Result<Arc<Loaded>, Fail> {
        let pkg = parse_package(pkg)?;
        let ver = parse_version(ver)?;
        let p = pkg.clone();
        let dir = self.dir.clone();
        let (v, file) = blocking(move || locate_manifest(&dir, &p, ver)).await?;
        if let Some(hit) = self.lookup(&pkg, v, &file) {
            return Ok(hit);
        }
        let _permit = tokio::time::timeout(QUEUE_WAIT, self.decodes.acquire())
            .await
            .map_err(|_| busy("large requests"))?
            .map_err(|_| internal("the manifest reader stopped; restart freightd".into()))?;
        // Another request may have built it while this one waited.
        if let Some(hit) = self.lookup(&pkg, v, &file) {
            return Ok(hit);
        }
        let p = pkg.clone();
        let dir = self.dir.clone();
        let loaded = blocking(move || {
            let failed = |e| library_error(&format!("the manifest of {p} v{v}"), e);
            let stored = match dir.open(&p, v) {
                Ok(s) => s,
                Err(freight_core::Error::NoSuchVersion { .. }) => return Err(just_removed(&p, v)),
                Err(e) => return Err(failed(e)),
            };
            // The identity of the file opened, which may be newer than the one located.
            let file = file_id(stored.file())
                .map_err(|e| failed(freight_core::Error::io(stored.path(), "stat manifest", e)))?;
            let index = PathIndex::build(stored).map_err(failed)?;
            Ok(Arc::new(Loaded { index, file }))
        })
        .await?;
        self.keep(&loaded);
        Ok(loaded)
    }
}

// ---------------------------------------------------------------------------------------------
// Listings.

#[derive(Serialize)]
struct PackageVersions {
    package: String,
    versions: Vec<u32>,
}

async fn list_packages(State(c): State<Content>) -> Result<axum::Json<Vec<PackageVersions>>, Fail> {
    let dir = c.dir.clone();
    let all = blocking(move || {
        dir.versions()
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
    State(c): State<Content>,
    Path(pkg): Path<String>,
) -> Result<axum::Json<PackageVersions>, Fail> {
    let pkg = parse_package(&pkg)?;
    let p = pkg.clone();
    let dir = c.dir.clone();
    let versions = blocking(move || versions_of(&dir, &p)).await?;
    Ok(axum::Json(PackageVersions {
        package: pkg.to_string(),
        versions,
    }))
}

#[derive(Serialize)]
struct ListingHead<'a> {
    package: &'a str,
    version: u32,
    hash: &'a str,
}

#[derive(Serialize)]
struct ListedFile<'a> {
    path: Cow<'a, str>,
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
    target: Option<Cow<'a, str>>,
}

fn listed(e: &Entry) -> ListedFile<'_> {
    let (kind, size, tag, target) = match &e.kind {
        EntryKind::Dir => ("dir", None, None, None),
        EntryKind::File { size, chunks } => ("file", Some(*size), Some(etag(*size, chunks)), None),
        EntryKind::Symlink { target } => {
            ("symlink", None, None, Some(String::from_utf8_lossy(target)))
        }
    };
    ListedFile {
        path: String::from_utf8_lossy(&e.path),
        href: format!("files/{}", percent_encode(&e.path)),
        kind,
        size,
        mode: e.mode,
        mtime: e.mtime_sec,
        etag: tag,
        target,
    }
}

/// A listing being sent: `{"package", "version", "hash", "files": [...]}` written from the
/// manifest's entries a piece at a time, read one by one from its held file, so neither the
/// manifest nor the listing is ever in memory. Holds its listing slot until it is finished or
/// dropped.
pub struct ListingWriter {
    loaded: Arc<Loaded>,
    /// The entries not yet written (opened with the first piece).
    entries: Option<Reader<FileAt>>,
    /// Set once the closing bracket is out (or the listing failed).
    done: bool,
    wrote_entry: bool,
    _slot: Option<OwnedSemaphorePermit>,
}

impl ListingWriter {
    /// A writer for `loaded`'s listing.
    pub fn new(loaded: Arc<Loaded>) -> ListingWriter {
        ListingWriter {
            loaded,
            entries: None,
            done: false,
            wrote_entry: false,
            _slot: None,
        }
    }

    fn piece(&mut self) -> freight_core::Result<Bytes> {
        let mut out = Vec::with_capacity(LISTING_PIECE + 4096);
        if self.entries.is_none() {
            let head = ListingHead {
                package: self.loaded.package().as_str(),
                version: self.loaded.version(),
                hash: &self.loaded.hash().to_hex(),
            };
            let head = serde_json::to_vec(&head).expect("plain JSON");
            // `{...}` opened up to its last field, then the file array.
            out.extend_from_slice(&head[..head.len() - 1]);
            out.extend_from_slice(b",\"files\":[");
            self.entries = Some(self.loaded.index.entries()?);
        }
        let entries = self.entries.as_mut().expect("opened above");
        while out.len() < LISTING_PIECE {
            let Some(e) = entries.next_entry()? else {
                out.extend_from_slice(b"]}");
                self.done = true;
                break;
            };
            // The root is the listing itself.
            if e.path.is_empty() {
                continue;
            }
            if self.wrote_entry {
                out.push(b',');
            }
            serde_json::to_writer(&mut out, &listed(&e)).expect("plain JSON");
            self.wrote_entry = true;
        }
        Ok(Bytes::from(out))
    }
}

impl Iterator for ListingWriter {
    type Item = std::io::Result<Bytes>;

    /// The next piece of JSON (about [`LISTING_PIECE`] bytes), `None` after the last. A
    /// manifest file that fails to read midway ends the listing with an error (the client sees
    /// a truncated transfer), logged.
    fn next(&mut self) -> Option<std::io::Result<Bytes>> {
        if self.done {
            return None;
        }
        match self.piece() {
            Ok(b) => Some(Ok(b)),
            Err(e) => {
                self.done = true;
                tracing::warn!(error = %e, "listing cut short");
                Some(Err(std::io::Error::other(e.to_string())))
            }
        }
    }
}

async fn listing(
    State(c): State<Content>,
    method: Method,
    headers: HeaderMap,
    Path((pkg, ver)): Path<(String, String)>,
) -> Result<Response, Fail> {
    // The slot is taken before the manifest, so waiting listings hold nothing.
    let slot = tokio::time::timeout(QUEUE_WAIT, c.listings.clone().acquire_owned())
        .await
        .map_err(|_| busy("listings"))?
        .map_err(|_| internal("the listing slots are gone; restart freightd".into()))?;
    let loaded = c.manifests.get(&pkg, &ver).await?;
    let tag = listing_etag(&loaded.hash());
    let mut common = HeaderMap::new();
    common.insert(header::ETAG, HeaderValue::from_str(&tag).expect("hex"));
    match preconditions(&method, &headers, &tag, None) {
        Precondition::Proceed => {}
        Precondition::NotModified => return Ok((StatusCode::NOT_MODIFIED, common).into_response()),
        Precondition::Failed => {
            let f = Fail(
                StatusCode::PRECONDITION_FAILED,
                format!(
                    "the listing of {} v{} is {tag} now, not what If-Match names; fetch the listing again",
                    loaded.package(),
                    loaded.version()
                ),
            );
            return Ok((common, f).into_response());
        }
    }
    common.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if method == Method::HEAD {
        return Ok((StatusCode::OK, common).into_response());
    }
    let mut writer = ListingWriter::new(loaded);
    writer._slot = Some(slot);
    // Each piece is written on the blocking pool: a listing is pure CPU, and on the async
    // workers a few of them would make every other request wait its turn behind them.
    let body = Body::from_stream(futures_util::stream::unfold(writer, |mut w| async move {
        let (w, piece) = tokio::task::spawn_blocking(move || {
            let piece = w.next();
            (w, piece)
        })
        .await
        .ok()?;
        Some((piece?, w))
    }));
    Ok((StatusCode::OK, common, body).into_response())
}

/// `.../files/` names the root directory: always a 404 pointing at the listing (once the
/// package and version are known to exist).
async fn files_root(State(c): State<Content>, Path((pkg, ver)): Path<(String, String)>) -> Fail {
    match c.manifests.get(&pkg, &ver).await {
        Ok(m) => is_directory(&m, b""),
        Err(f) => f,
    }
}

fn listing_url(m: &Loaded) -> String {
    format!("/packages/{}/{}/", m.package(), m.version())
}

fn is_directory(m: &Loaded, path: &[u8]) -> Fail {
    let what = if path.is_empty() {
        "the root".to_string()
    } else {
        show(path)
    };
    not_found(format!(
        "{what} in {} v{} is a directory, not a file; list the version at {} to see its files",
        m.package(),
        m.version(),
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

/// Looks `path` up through `m`'s index (blocking: reads the manifest file).
fn find_file(m: &Loaded, path: &[u8]) -> Result<FileInfo, Fail> {
    let no_file = |extra: &str| {
        not_found(format!(
            "{} v{} has no file {}{extra}; list the version at {}",
            m.package(),
            m.version(),
            show(path),
            listing_url(m)
        ))
    };
    let found = resolve(|p: &[u8]| m.index.find(p), path).map_err(|e| {
        library_error(
            &format!("the manifest of {} v{}", m.package(), m.version()),
            e,
        )
    })?;
    let entry = match found {
        Ok(e) => e,
        Err(LookupError::NotFound) => return Err(no_file("")),
        Err(LookupError::TooManyLinks) => {
            return Err(no_file(&format!(
                " (it is a symlink that does not reach a file within {MAX_HOPS} hops)"
            )));
        }
    };
    match entry.kind {
        EntryKind::File { size, chunks } => Ok(FileInfo {
            package: m.package().clone(),
            version: m.version(),
            path: path.to_vec(),
            size,
            chunks,
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
    State(c): State<Content>,
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
    let pkg = String::from_utf8_lossy(&decode(pkg)?).into_owned();
    let ver = String::from_utf8_lossy(&decode(ver)?).into_owned();
    // Checked before any library access, so a bad request costs nothing.
    let pkg_id = parse_package(&pkg)?;
    let ver_sel = parse_version(&ver)?;
    let path = decode(raw)?;
    if let Err(reason) = check_path(&path) {
        return Err(bad_request(format!(
            "{} is not a path inside a package ({reason}); list the version at /packages/{pkg_id}/{}/",
            show(&path),
            match ver_sel {
                VersionSel::Latest => "latest".to_string(),
                VersionSel::Number(v) => v.to_string(),
            }
        )));
    }
    // At most twice: a `latest` whose version was dropped between its lookup and its first
    // chunk is looked up again.
    for again in [true, false] {
        let loaded = c.manifests.get(&pkg, &ver).await?;
        let file_id = loaded.file;
        let wanted = path.clone();
        // A few entries read from the manifest file: on the blocking pool.
        let info = blocking(move || find_file(&loaded, &wanted)).await?;
        let lib = c.lib.clone();

        let tag = etag(info.size, &info.chunks);
        let mut common = HeaderMap::new();
        common.insert(header::ETAG, HeaderValue::from_str(&tag).expect("hex"));
        let date = http_date(info.mtime_sec);
        if let Some(date) = &date {
            common.insert(
                header::LAST_MODIFIED,
                HeaderValue::from_str(date).expect("ascii"),
            );
        }
        common.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));

        let modified = date
            .and(SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(info.mtime_sec as u64)));
        match preconditions(&method, &headers, &tag, modified) {
            Precondition::Proceed => {}
            Precondition::NotModified => {
                return Ok((StatusCode::NOT_MODIFIED, common).into_response());
            }
            Precondition::Failed => {
                let f = Fail(
                    StatusCode::PRECONDITION_FAILED,
                    format!(
                        "{} in {} v{} is {tag} now, not what the request's precondition names; fetch it again",
                        show(&info.path),
                        info.package,
                        info.version
                    ),
                );
                return Ok((common, f).into_response());
            }
        }

        // A Range whose If-Range no longer holds asks for the whole (current) file.
        let range = match header_str(&headers, header::RANGE) {
            Some(h) if if_range_allows(&headers, &tag) => parse_range(h, info.size),
            _ => RangeReq::Whole,
        };
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
        let read = spawn_read(&lib, first);
        // Chunks are read under the library's lock, which a maintenance job (a redistribute's
        // repair, an install) holds for seconds: answer 503 then rather than keep the client.
        let read = match tokio::time::timeout(LIBRARY_WAIT, read).await {
            Ok(r) => r.unwrap_or_else(|e| Err(format!("chunk reader failed: {e}"))),
            Err(_) => return Err(busy("work on its library")),
        };
        let first = match read {
            Ok(b) => b,
            Err(msg) => {
                // A version removed since its manifest was looked up is gone, not damaged.
                let (dir, p, v) = (c.dir.clone(), info.package.clone(), info.version);
                let still =
                    blocking(move || locate_manifest(&dir, &p, VersionSel::Number(v))).await;
                match still {
                    Ok((_, id)) if id == file_id => {}
                    // `latest` moved on (an update installed a newer version and dropped this
                    // one meanwhile): answer from the newer one, never an error.
                    _ if again && ver_sel == VersionSel::Latest => continue,
                    Ok(_) => return Err(just_removed(&info.package, v)),
                    Err(f) => return Err(f),
                }
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
        return Ok((status, common, body).into_response());
    }
    Err(internal(format!(
        "{} could not be served; retry",
        show(&path)
    )))
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
    use freight_core::Manifest;

    /// [`resolve`] in a manifest held in memory.
    fn resolve_in(m: &Manifest, path: &[u8]) -> Result<Entry, LookupError> {
        let mut find = |p: &[u8]| {
            Ok::<_, ()>(
                m.entries
                    .binary_search_by(|e| e.path.as_slice().cmp(p))
                    .ok()
                    .map(|i| m.entries[i].clone()),
            )
        };
        resolve(&mut find, path).expect("in memory")
    }

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
            "bytes=99999999999999999999999-5",
            "",
        ] {
            assert_eq!(parse_range(h, 100), Whole, "{h}");
        }
        // Numbers past u64: a start past the file is unsatisfiable, an end or a suffix past it
        // means the file's end.
        let huge = "99999999999999999999999";
        assert_eq!(parse_range(&format!("bytes={huge}-"), 100), Unsatisfiable);
        assert_eq!(
            parse_range(&format!("bytes={huge}-{huge}9"), 100),
            Unsatisfiable
        );
        assert_eq!(
            parse_range("bytes=18446744073709551616-", u64::MAX),
            Unsatisfiable
        );
        assert_eq!(parse_range(&format!("bytes=5-{huge}"), 100), p(5, 99));
        assert_eq!(parse_range(&format!("bytes=-{huge}"), 100), p(0, 99));
        assert_eq!(
            parse_range("bytes=000000000000000000000000005-6", 100),
            p(5, 6)
        );
        assert_eq!(parse_range("bytes=-00", 100), Unsatisfiable);
        assert_eq!(
            parse_range("bytes=18446744073709551614-", u64::MAX),
            p(u64::MAX - 1, u64::MAX - 1)
        );
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
        assert!(a.parse::<ETag>().is_ok());
        assert!(listing_etag(&blake3::hash(b"m")).parse::<ETag>().is_ok());
    }

    fn with(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn preconditions_follow_rfc_9110() {
        use Precondition::*;
        let tag = "\"abc\"";
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000);
        let date =
            |s: u64| httpdate::fmt_http_date(SystemTime::UNIX_EPOCH + Duration::from_secs(s));
        let (get, head, put) = (Method::GET, Method::HEAD, Method::PUT);
        let eval =
            |m: &Method, pairs: &[(&str, &str)]| preconditions(m, &with(pairs), tag, Some(t));
        assert_eq!(eval(&get, &[]), Proceed);
        // If-None-Match: weak comparison, `*`, lists; 304 for GET and HEAD, 412 otherwise.
        for v in [tag, "*", "\"x\", W/\"abc\"", "W/\"abc\""] {
            assert_eq!(eval(&get, &[("if-none-match", v)]), NotModified, "{v}");
            assert_eq!(eval(&head, &[("if-none-match", v)]), NotModified, "{v}");
            assert_eq!(eval(&put, &[("if-none-match", v)]), Failed, "{v}");
        }
        assert_eq!(eval(&get, &[("if-none-match", "\"x\"")]), Proceed);
        assert_eq!(eval(&get, &[("if-none-match", "garbage")]), Proceed);
        // Whitespace inside a tag is malformed (and once panicked the headers crate).
        assert_eq!(eval(&get, &[("if-none-match", "\"a b\"")]), Proceed);
        assert_eq!(
            eval(&get, &[("if-none-match", "\"x\",\t\"a\tb\"")]),
            Proceed
        );
        assert_eq!(eval(&get, &[("if-match", "\"a b\"")]), Failed);
        assert!(!if_range_allows(&with(&[("if-range", "\"a b\"")]), tag));
        assert!(!if_range_allows(&with(&[("if-range", "\"a, -\"")]), tag));
        assert_eq!(eval(&get, &[("if-none-match", "\"a, b\"")]), Proceed);
        assert_eq!(
            eval(&get, &[("if-none-match", " \"abc\" , \"x\"")]),
            NotModified
        );
        // If-Match: strong comparison; 412 on a mismatch, a weak tag or garbage.
        for v in [tag, "*", "\"x\", \"abc\""] {
            assert_eq!(eval(&get, &[("if-match", v)]), Proceed, "{v}");
        }
        for v in ["\"x\"", "W/\"abc\"", "garbage", ""] {
            assert_eq!(eval(&get, &[("if-match", v)]), Failed, "{v}");
        }
        // If-Match is decided before If-None-Match.
        assert_eq!(
            eval(&get, &[("if-match", "\"x\""), ("if-none-match", tag)]),
            Failed
        );
        // Dates: only without the matching tag header, and ignored when unreadable.
        assert_eq!(
            eval(&get, &[("if-modified-since", &date(1_600_000_000))]),
            NotModified
        );
        assert_eq!(
            eval(&get, &[("if-modified-since", &date(1_599_999_999))]),
            Proceed
        );
        assert_eq!(eval(&get, &[("if-modified-since", "yesterday")]), Proceed);
        assert_eq!(
            eval(
                &get,
                &[
                    ("if-none-match", "\"x\""),
                    ("if-modified-since", &date(1_600_000_000))
                ]
            ),
            Proceed
        );
        assert_eq!(
            eval(&get, &[("if-unmodified-since", &date(1_599_999_999))]),
            Failed
        );
        assert_eq!(
            eval(&get, &[("if-unmodified-since", &date(1_600_000_000))]),
            Proceed
        );
        assert_eq!(
            eval(
                &get,
                &[("if-match", tag), ("if-unmodified-since", &date(1))]
            ),
            Proceed
        );
        // If-Range: only the strongly equal tag lets a range through.
        assert!(if_range_allows(&with(&[]), tag));
        assert!(if_range_allows(&with(&[("if-range", tag)]), tag));
        for v in [
            "W/\"abc\"",
            "\"x\"",
            "Sun, 13 Sep 2020 12:26:40 GMT",
            "junk",
        ] {
            assert!(!if_range_allows(&with(&[("if-range", v)]), tag), "{v}");
        }
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
        let path = |p: &str| resolve_in(&m, p.as_bytes()).map(|e| e.display_path());
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
        assert_eq!(resolve_in(&m, b"zz"), Err(LookupError::NotFound));
        // Chains longer than MAX_HOPS are refused even without a loop.
        let mut m = manifest();
        for i in 0..=MAX_HOPS {
            m.entries
                .push(link(&format!("l{i}"), &format!("l{}", i + 1)));
        }
        m.entries.push(file(&format!("l{}", MAX_HOPS + 1)));
        m.entries.sort_by(|x, y| x.path.cmp(&y.path));
        assert_eq!(
            resolve_in(&m, b"l1").map(|e| e.display_path()),
            Ok("l9".into())
        );
        assert_eq!(resolve_in(&m, b"l0"), Err(LookupError::TooManyLinks));
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
