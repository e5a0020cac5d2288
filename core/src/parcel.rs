//! Parcels: one self-describing file carrying a package version (or a delta) between sites
//! without a network: the courier sender's and prestaging's format.
//!
//! # Format 1
//! All integers little-endian.
//! ```text
//! header       magic "FRPARCEL", format u16 = 1, flags u16 (bit 0: delta), reserved u32 = 0
//!              if delta: base version u32, base manifest hash [32]
//! instruction  u32 length (<= 64 KiB) + signed instruction bytes (opaque here)
//! manifest     u32 length (<= MAX_MANIFEST, 1 GiB) + canonical manifest bytes
//! chunks       u64 count, then per chunk: id [32], uncompressed length u32,
//!              stored length u32, flags u8, stored bytes (as kept in the library)
//! index        u64 count, then per chunk: id [32], offset of its record u64
//! trailer      index offset u64, chunk count u64, BLAKE3 of every byte before this
//!              field [32], magic "FRPEND\0\x01"
//! ```
//! A parcel is written to a temporary name and renamed into place when complete. It is read as
//! a stream: every chunk is decompressed and matched against its ID, every byte is covered by
//! the trailing BLAKE3, and the index must agree with what was read. Import stages chunks in an
//! uncommitted library transaction, so nothing of a parcel becomes visible until all of it has
//! verified.

use crate::error::{Error, IoContext, Result};
use crate::id::ChunkId;
use crate::library::{Library, check_chunk};
use crate::manifest::Manifest;
use crate::pack::{FLAG_ZSTD, Loc};
use crate::progress::Progress;
use crate::writer::Writer;
use crossbeam_channel::bounded;
use std::collections::{HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"FRPARCEL";
const END_MAGIC: &[u8; 8] = b"FRPEND\0\x01";
/// The parcel format this code writes and reads.
pub const FORMAT: u16 = 1;
const FLAG_DELTA: u16 = 1;
const MAX_INSTRUCTION: u32 = 64 << 10;
/// Largest manifest a parcel carries: 1 GiB (some 7 million files), the transfer protocol's
/// limit too, so whatever travels over the network also travels by parcel. A defence limit
/// for the reader (a parcel's manifest is read whole, and only as far as the file holds it);
/// `create` refuses a larger manifest with an error naming the package.
pub const MAX_MANIFEST: u32 = 1 << 30;
const RECORD_HEADER: u64 = 32 + 4 + 4 + 1;

/// The base version a delta parcel was cut against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Base {
    /// Base version number.
    pub version: u32,
    /// Hash of the base version's manifest.
    pub hash: [u8; 32],
}

/// Everything before the chunks.
#[derive(Clone, Debug)]
pub struct Header {
    /// Signed instruction bytes (verified by the caller).
    pub instruction: Vec<u8>,
    /// The package version carried.
    pub manifest: Manifest,
    /// Hash of the manifest's canonical bytes.
    pub manifest_hash: [u8; 32],
    /// Set for a delta parcel.
    pub base: Option<Base>,
}

/// What a parcel holds, as `inspect` reports it.
#[derive(Clone, Debug)]
pub struct ParcelInfo {
    /// The header.
    pub header: Header,
    /// Chunks carried.
    pub chunks: u64,
    /// Stored bytes of those chunks.
    pub chunk_bytes: u64,
    /// File size.
    pub bytes: u64,
}

/// What `create` wrote.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CreateReport {
    /// Parcel file size.
    pub bytes: u64,
    /// Chunks carried.
    pub chunks: u64,
    /// Stored bytes of those chunks.
    pub chunk_bytes: u64,
    /// True for a delta.
    pub delta: bool,
}

/// What `import` did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ImportReport {
    /// Package ID.
    pub package: String,
    /// Version imported.
    pub version: u32,
    /// Chunks in the parcel.
    pub chunks: u64,
    /// Chunks the library did not have.
    pub new_chunks: u64,
    /// False when the version was already stored identically.
    pub created: bool,
}

fn bad(path: &Path, part: &str, offset: u64, reason: impl Into<String>) -> Error {
    Error::BadParcel {
        path: path.to_path_buf(),
        part: part.to_string(),
        offset,
        reason: reason.into(),
    }
}

/// Writes a parcel of `manifest` (minus the chunks of `base`, for a delta) to `out`.
pub fn create(
    lib: &Library,
    manifest: &Manifest,
    base: Option<&Manifest>,
    instruction: &[u8],
    out: &Path,
    progress: &Progress,
) -> Result<CreateReport> {
    if instruction.len() > MAX_INSTRUCTION as usize {
        return Err(bad(out, "instruction", 0, "instruction too large"));
    }
    if let Some(id) = lib.missing(manifest).first() {
        return Err(Error::MissingChunk {
            id: id.to_hex(),
            package: manifest.package.to_string(),
            version: manifest.version,
        });
    }
    let skip: HashSet<ChunkId> = base
        .map(|b| b.chunks().into_keys().collect())
        .unwrap_or_default();
    // Chunks in file order, once each.
    let mut seen = HashSet::new();
    let mut chunks: Vec<(ChunkId, Loc)> = Vec::new();
    for e in &manifest.entries {
        if let crate::manifest::EntryKind::File { chunks: cs, .. } = &e.kind {
            for c in cs {
                if !skip.contains(&c.id) && seen.insert(c.id) {
                    chunks.push((c.id, lib.locate(&c.id).expect("checked present")));
                }
            }
        }
    }
    let total: u64 = chunks.iter().map(|(_, l)| l.clen as u64).sum();
    progress.start("parcel", chunks.len() as u64, total);
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = out
        .file_name()
        .ok_or_else(|| bad(out, "file name", 0, "no file name"))?;
    let tmp: PathBuf = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    let res = (|| {
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .ctx(&tmp, "create parcel")?;
        let mut w = HashingWriter {
            inner: BufWriter::with_capacity(1 << 20, f),
            hasher: blake3::Hasher::new(),
            pos: 0,
            path: &tmp,
        };
        w.put(MAGIC)?;
        w.put(&FORMAT.to_le_bytes())?;
        w.put(&(if base.is_some() { FLAG_DELTA } else { 0 }).to_le_bytes())?;
        w.put(&0u32.to_le_bytes())?;
        if let Some(b) = base {
            w.put(&b.version.to_le_bytes())?;
            w.put(b.hash().as_bytes())?;
        }
        w.put(&(instruction.len() as u32).to_le_bytes())?;
        w.put(instruction)?;
        let mbytes = manifest.encode();
        if mbytes.len() > MAX_MANIFEST as usize {
            return Err(Error::BadManifest {
                what: format!("manifest of {} v{}", manifest.package, manifest.version),
                offset: 0,
                reason: format!(
                    "{} bytes, more than a parcel carries ({MAX_MANIFEST}); split the package",
                    mbytes.len()
                ),
            });
        }
        w.put(&(mbytes.len() as u32).to_le_bytes())?;
        w.put(&mbytes)?;
        w.put(&(chunks.len() as u64).to_le_bytes())?;
        let mut index = Vec::with_capacity(chunks.len());
        // Reads stay in flight on the engine while earlier chunks are written out.
        let mut reads: VecDeque<(ChunkId, Loc, crate::engine::Pending<Vec<u8>>)> = VecDeque::new();
        let mut it = chunks.iter();
        loop {
            while reads.len() < 32 {
                let Some((id, loc)) = it.next() else { break };
                reads.push_back((*id, *loc, lib.read_stored(loc)?));
            }
            let Some((id, loc, p)) = reads.pop_front() else {
                break;
            };
            let stored = p.wait().ctx(lib.pack_path(loc.pack), "read pack")?;
            index.push((id, w.pos));
            w.put(&id.0)?;
            w.put(&loc.ulen.to_le_bytes())?;
            w.put(&loc.clen.to_le_bytes())?;
            w.put(&[loc.flags])?;
            w.put(&stored)?;
            progress.add_bytes(stored.len() as u64);
            progress.add_file();
        }
        let index_offset = w.pos;
        w.put(&(index.len() as u64).to_le_bytes())?;
        for (id, off) in &index {
            w.put(&id.0)?;
            w.put(&off.to_le_bytes())?;
        }
        w.put(&index_offset.to_le_bytes())?;
        w.put(&(index.len() as u64).to_le_bytes())?;
        let sum = *w.hasher.finalize().as_bytes();
        w.put(&sum)?;
        w.put(END_MAGIC)?;
        let size = w.pos;
        let f = w
            .inner
            .into_inner()
            .map_err(|e| Error::io(&tmp, "write parcel", e.into_error()))?;
        f.sync_all().ctx(&tmp, "fsync parcel")?;
        std::fs::rename(&tmp, out).ctx(out, "rename parcel into place")?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .ctx(dir, "fsync directory")?;
        Ok(CreateReport {
            bytes: size,
            chunks: index.len() as u64,
            chunk_bytes: total,
            delta: base.is_some(),
        })
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

struct HashingWriter<'a> {
    inner: BufWriter<File>,
    hasher: blake3::Hasher,
    pos: u64,
    path: &'a Path,
}

impl HashingWriter<'_> {
    fn put(&mut self, b: &[u8]) -> Result<()> {
        self.inner.write_all(b).ctx(self.path, "write parcel")?;
        self.hasher.update(b);
        self.pos += b.len() as u64;
        Ok(())
    }
}

/// One chunk record as read.
pub struct Record {
    /// Its number in the parcel (0-based).
    pub n: u64,
    /// Offset of the record.
    pub offset: u64,
    /// Chunk ID.
    pub id: ChunkId,
    /// Where it would sit in a pack (offset unset): lengths and flags.
    pub loc: Loc,
    /// Stored bytes.
    pub data: Vec<u8>,
}

/// Streaming reader: header, then records, then `finish` checks index and trailer.
pub struct ParcelReader {
    path: PathBuf,
    r: Box<dyn Read + Send>,
    hasher: blake3::Hasher,
    pos: u64,
    len: u64,
    header: Header,
    count: u64,
    read: u64,
    offsets: Vec<(ChunkId, u64)>,
}

impl ParcelReader {
    /// Opens `path` and reads and checks the header, instruction and manifest sections.
    pub fn open(path: &Path) -> Result<ParcelReader> {
        let f = File::open(path).ctx(path, "open parcel")?;
        let len = f.metadata().ctx(path, "stat parcel")?.len();
        ParcelReader::from_reader(Box::new(BufReader::with_capacity(1 << 20, f)), len, path)
    }

    /// Reads a parcel of `len` bytes from `r`; `name` labels errors.
    pub fn from_reader(r: Box<dyn Read + Send>, len: u64, name: &Path) -> Result<ParcelReader> {
        let path = name;
        let mut pr = ParcelReader {
            path: path.to_path_buf(),
            r,
            hasher: blake3::Hasher::new(),
            pos: 0,
            len,
            header: Header {
                instruction: Vec::new(),
                manifest: Manifest {
                    package: crate::PackageId::parse("XXX00000").expect("valid"),
                    version: 0,
                    entries: Vec::new(),
                },
                manifest_hash: [0; 32],
                base: None,
            },
            count: 0,
            read: 0,
            offsets: Vec::new(),
        };
        let magic = pr.take("header", 8)?;
        if magic != MAGIC {
            return Err(bad(path, "header", 0, "not a Freight parcel (bad magic)"));
        }
        let format = pr.u16("header")?;
        if format != FORMAT {
            return Err(bad(
                path,
                "header",
                8,
                format!("format {format} is not supported (this build reads {FORMAT})"),
            ));
        }
        let flags = pr.u16("header")?;
        if flags & !FLAG_DELTA != 0 || pr.u32("header")? != 0 {
            return Err(bad(path, "header", 10, "unknown flags"));
        }
        if flags & FLAG_DELTA != 0 {
            let version = pr.u32("header")?;
            let hash: [u8; 32] = pr.take("header", 32)?.try_into().expect("32");
            pr.header.base = Some(Base { version, hash });
        }
        let at = pr.pos;
        let n = pr.u32("instruction")?;
        if n > MAX_INSTRUCTION {
            return Err(bad(path, "instruction", at, "length exceeds its limit"));
        }
        pr.header.instruction = pr.take("instruction", n as usize)?;
        let at = pr.pos;
        let n = pr.u32("manifest")?;
        if n > MAX_MANIFEST || n as u64 > pr.len - pr.pos {
            return Err(bad(path, "manifest", at, "length exceeds the parcel"));
        }
        let mbytes = pr.take("manifest", n as usize)?;
        pr.header.manifest = Manifest::decode(&mbytes, &format!("in parcel {}", path.display()))
            .map_err(|e| bad(path, "manifest", at + 4, e.to_string()))?;
        pr.header.manifest_hash = *blake3::hash(&mbytes).as_bytes();
        let at = pr.pos;
        pr.count = pr.u64("chunks")?;
        if pr.count > pr.header.manifest.chunks().len() as u64 {
            return Err(bad(
                path,
                "chunks",
                at,
                "more chunks than the manifest names",
            ));
        }
        Ok(pr)
    }

    /// The header sections.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Chunk records the parcel declares.
    pub fn chunk_count(&self) -> u64 {
        self.count
    }

    fn take(&mut self, part: &str, n: usize) -> Result<Vec<u8>> {
        if (n as u64) > self.len.saturating_sub(self.pos) {
            return Err(bad(&self.path, part, self.pos, "truncated"));
        }
        let mut b = vec![0u8; n];
        self.r
            .read_exact(&mut b)
            .map_err(|e| bad(&self.path, part, self.pos, format!("read failed: {e}")))?;
        self.hasher.update(&b);
        self.pos += n as u64;
        Ok(b)
    }
    fn u16(&mut self, part: &str) -> Result<u16> {
        Ok(u16::from_le_bytes(
            self.take(part, 2)?.try_into().expect("2"),
        ))
    }
    fn u32(&mut self, part: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(
            self.take(part, 4)?.try_into().expect("4"),
        ))
    }
    fn u64(&mut self, part: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(
            self.take(part, 8)?.try_into().expect("8"),
        ))
    }

    /// The next chunk record, or `None` after the last.
    pub fn next_record(&mut self) -> Result<Option<Record>> {
        if self.read == self.count {
            return Ok(None);
        }
        let offset = self.pos;
        let part = format!("chunk {}", self.read);
        let id = ChunkId(self.take(&part, 32)?.try_into().expect("32"));
        let ulen = self.u32(&part)?;
        let clen = self.u32(&part)?;
        let flags = self.take(&part, 1)?[0];
        if flags & !FLAG_ZSTD != 0
            || ulen == 0
            || ulen > crate::manifest::MAX_CHUNK
            || clen > crate::manifest::MAX_CHUNK + (1 << 16)
        {
            return Err(bad(&self.path, &part, offset, "bad record header"));
        }
        let data = self.take(&part, clen as usize)?;
        self.offsets.push((id, offset));
        let n = self.read;
        self.read += 1;
        Ok(Some(Record {
            n,
            offset,
            id,
            loc: Loc {
                pack: 0,
                offset: 0,
                clen,
                ulen,
                flags,
            },
            data,
        }))
    }

    /// Reads the index and trailer after the last record and checks them and the checksum.
    pub fn finish(mut self) -> Result<u64> {
        while self.next_record()?.is_some() {}
        let index_offset = self.pos;
        let n = self.u64("index")?;
        if n != self.count {
            return Err(bad(
                &self.path,
                "index",
                index_offset,
                "entry count differs from the chunks",
            ));
        }
        for i in 0..n as usize {
            let at = self.pos;
            let id = ChunkId(self.take("index", 32)?.try_into().expect("32"));
            let off = self.u64("index")?;
            if self.offsets[i] != (id, off) {
                return Err(bad(
                    &self.path,
                    "index",
                    at,
                    "entry differs from the chunk it names",
                ));
            }
        }
        let at = self.pos;
        if self.u64("trailer")? != index_offset || self.u64("trailer")? != self.count {
            return Err(bad(
                &self.path,
                "trailer",
                at,
                "index offset or count differs",
            ));
        }
        let expect = *self.hasher.finalize().as_bytes();
        let at = self.pos;
        let sum = self.take("trailer", 32)?;
        if sum != expect {
            return Err(bad(
                &self.path,
                "checksum",
                at,
                "BLAKE3 of the parcel does not match its trailer",
            ));
        }
        if self.take("trailer", 8)? != END_MAGIC {
            return Err(bad(&self.path, "trailer", self.pos - 8, "bad end magic"));
        }
        if self.pos != self.len {
            return Err(bad(
                &self.path,
                "trailer",
                self.pos,
                "bytes after the end of the parcel",
            ));
        }
        Ok(self.len)
    }
}

/// Reads a whole parcel and checks its structure, index and checksum (chunks are not
/// decompressed; `import` does that).
pub fn inspect(path: &Path) -> Result<ParcelInfo> {
    let mut r = ParcelReader::open(path)?;
    let header = r.header().clone();
    let chunks = r.chunk_count();
    let mut chunk_bytes = 0;
    while let Some(rec) = r.next_record()? {
        chunk_bytes += rec.loc.clen as u64;
    }
    let bytes = r.finish()?;
    Ok(ParcelInfo {
        header,
        chunks,
        chunk_bytes,
        bytes,
    })
}

/// Imports a parcel into `lib`. `accept` sees the header first and refuses it with an error
/// (signature, origin, destination, version rules) before anything is read further.
/// Nothing becomes visible in the library unless every byte of the parcel verified.
pub fn import(
    lib: &mut Library,
    path: &Path,
    accept: impl FnOnce(&Header) -> Result<()>,
    progress: &Progress,
) -> Result<ImportReport> {
    lib.require_write();
    let mut r = ParcelReader::open(path)?;
    let header = r.header().clone();
    accept(&header)?;
    let m = &header.manifest;
    // A delta needs its base: the chunks the parcel leaves out must already be here.
    if let Some(base) = &header.base {
        let have = lib.manifest(&m.package, base.version);
        match have {
            Ok(bm) if *bm.hash().as_bytes() == base.hash => {}
            _ => {
                return Err(Error::MissingBase {
                    package: m.package.to_string(),
                    version: base.version,
                });
            }
        }
    }
    let total = r.len;
    progress.start("import", r.chunk_count(), total);
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let lib_ref: &Library = lib;
    let mut writer = lib_ref.writer(true);
    let parcel_path = path.to_path_buf();
    let (writer, added) = std::thread::scope(|s| -> Result<(Writer, HashSet<ChunkId>)> {
        let (work_tx, work_rx) = bounded::<Record>(workers * 2);
        let (done_tx, done_rx) = bounded::<Result<Record>>(workers * 2);
        for _ in 0..workers {
            let rx = work_rx.clone();
            let tx = done_tx.clone();
            let p = &parcel_path;
            s.spawn(move || {
                for rec in rx.iter() {
                    let res = match check_chunk(&rec.id, &rec.loc, &rec.data) {
                        Ok(_) => Ok(rec),
                        Err(reason) => Err(bad(
                            p,
                            &format!("chunk {} ({})", rec.n, rec.id.short()),
                            rec.offset,
                            reason,
                        )),
                    };
                    if tx.send(res).is_err() {
                        return;
                    }
                }
            });
        }
        drop(work_rx);
        drop(done_tx);
        let appender = s.spawn(move || -> Result<(Writer, HashSet<ChunkId>)> {
            let mut added = HashSet::new();
            let mut first_err = None;
            for res in done_rx.iter() {
                match res {
                    Ok(rec) => {
                        if first_err.is_none()
                            && !lib_ref.has_chunk(&rec.id)
                            && added.insert(rec.id)
                            && let Err(e) =
                                writer.append(rec.id, rec.loc.ulen, rec.loc.flags, &rec.data)
                        {
                            first_err = Some(e);
                        }
                    }
                    Err(e) => {
                        first_err.get_or_insert(e);
                    }
                }
            }
            match first_err {
                Some(e) => Err(e),
                None => Ok((writer, added)),
            }
        });
        let mut read_err = None;
        loop {
            match r.next_record() {
                Ok(Some(rec)) => {
                    progress.add_bytes(rec.data.len() as u64 + RECORD_HEADER);
                    progress.add_file();
                    let (n, off) = (rec.n, rec.offset);
                    if work_tx.send(rec).is_err() {
                        read_err = Some(bad(
                            &parcel_path,
                            &format!("chunk {n}"),
                            off,
                            "verification stopped",
                        ));
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    read_err = Some(e);
                    break;
                }
            }
        }
        drop(work_tx);
        let appended = appender.join().expect("appender panicked");
        if let Some(e) = read_err {
            return Err(e);
        }
        let (w, new) = appended?;
        // Only a parcel whose index, trailer and checksum hold may commit anything.
        r.finish()?;
        Ok((w, new))
    })?;
    for id in m.chunks().into_keys() {
        if !lib.has_chunk(&id) && !added.contains(&id) {
            return Err(bad(
                path,
                "chunks",
                0,
                format!(
                    "chunk {} of the manifest is neither in the parcel nor in the library",
                    id.short()
                ),
            ));
        }
    }
    let committed = writer.commit()?;
    lib.apply(committed);
    let created = lib.store_manifest(m)?;
    Ok(ImportReport {
        package: m.package.to_string(),
        version: m.version,
        chunks: header.manifest.chunks().len() as u64,
        new_chunks: added.len() as u64,
        created,
    })
}
