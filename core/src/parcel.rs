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
//!
//! Neither side holds the manifest: `create` copies the stored manifest file into the parcel
//! and writes the chunks of its [`ChunkTable`] (36 bytes a chunk, in chunk ID order); the
//! reader checks the manifest section one entry at a time as it streams past (the one
//! [`manifest::Reader`]), keeping only its hash and chunk table, and an import copies the
//! section into a temporary file of the library that is stored as the version once everything
//! verified ([`Library::commit_manifest_file`]).

use crate::chunk_table::{ChunkTable, ChunkTableBuilder};
use crate::error::{Error, IoContext, Result};
use crate::id::{ChunkId, PackageId};
use crate::library::{FileAt, Library, StoredManifest, check_chunk};
use crate::manifest::{self, EntryKind};
use crate::pack::{FLAG_ZSTD, Loc};
use crate::progress::Progress;
use crate::writer::Writer;
use crossbeam_channel::bounded;
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"FRPARCEL";
const END_MAGIC: &[u8; 8] = b"FRPEND\0\x01";
/// The parcel format this code writes and reads.
pub const FORMAT: u16 = 1;
const FLAG_DELTA: u16 = 1;
const MAX_INSTRUCTION: u32 = 64 << 10;
/// Largest manifest a parcel carries: 1 GiB (some 7 million files), the most its u32 length
/// field says with room to spare. The reader streams the manifest (nothing of it is held but
/// its chunk table), so this is a defence against a length field that lies, checked against
/// the parcel's size too; `create` refuses a larger manifest with an error naming the
/// package.
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

/// Everything before the chunks, as the reader found it (the manifest checked entry by entry
/// as it streamed past, never held).
#[derive(Clone, Debug)]
pub struct Header {
    /// Signed instruction bytes (verified by the caller).
    pub instruction: Vec<u8>,
    /// The package of the version carried.
    pub package: PackageId,
    /// The version carried.
    pub version: u32,
    /// Entries of its manifest.
    pub entries: u64,
    /// Bytes of its manifest.
    pub manifest_len: u64,
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

/// Writes a parcel of the stored version `manifest` (minus the chunks of `base`, for a delta)
/// to `out`. The manifest file is copied in as it is stored (its hash is the one an instruction
/// signs: [`StoredManifest::hash`]); its chunks are read in chunk ID order from its
/// [`ChunkTable`], so memory holds 36 bytes a chunk (and 8 for the index), never the manifest.
pub fn create(
    lib: &Library,
    manifest: &StoredManifest,
    base: Option<&StoredManifest>,
    instruction: &[u8],
    out: &Path,
    progress: &Progress,
) -> Result<CreateReport> {
    if instruction.len() > MAX_INSTRUCTION as usize {
        return Err(bad(out, "instruction", 0, "instruction too large"));
    }
    if manifest.len() > u64::from(MAX_MANIFEST) {
        return Err(Error::BadManifest {
            what: format!("manifest of {} v{}", manifest.package(), manifest.version()),
            offset: 0,
            reason: format!(
                "{} bytes, more than a parcel carries ({MAX_MANIFEST}); split the package",
                manifest.len()
            ),
        });
    }
    // One checked pass over the manifest for its chunks.
    let table = manifest.chunk_table()?;
    if let Some(id) = lib.missing_sorted(table.ids()).first() {
        return Err(Error::MissingChunk {
            id: id.to_hex(),
            package: manifest.package().to_string(),
            version: manifest.version(),
        });
    }
    let base = match base {
        Some(b) => Some((b.version(), b.hash()?, b.chunk_table()?)),
        None => None,
    };
    let carried = |id: &ChunkId| {
        base.as_ref()
            .is_none_or(|(_, _, t)| t.position(id).is_none())
    };
    let (mut count, mut total) = (0u64, 0u64);
    for (id, len) in table.iter() {
        if carried(&id) {
            count += 1;
            total += u64::from(len);
        }
    }
    progress.start("parcel", count, total);
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
        if let Some((version, hash, _)) = &base {
            w.put(&version.to_le_bytes())?;
            w.put(hash.as_bytes())?;
        }
        w.put(&(instruction.len() as u32).to_le_bytes())?;
        w.put(instruction)?;
        // The stored file as it is, through the open descriptor (a version replaced meanwhile
        // is still read as it was checked).
        w.put(&(manifest.len() as u32).to_le_bytes())?;
        let mut src = FileAt::new(manifest.file().clone(), 0);
        let mut buf = vec![0u8; 256 << 10];
        let mut left = manifest.len();
        while left > 0 {
            let n = (left as usize).min(buf.len());
            src.read_exact(&mut buf[..n])
                .ctx(manifest.path(), "read manifest")?;
            w.put(&buf[..n])?;
            left -= n as u64;
        }
        drop(buf);
        w.put(&count.to_le_bytes())?;
        // Each record's offset, in the order written: the index names them again in order.
        let mut offsets: Vec<u64> = Vec::with_capacity(count as usize);
        let mut chunk_bytes = 0u64;
        // Reads stay in flight on the engine while earlier chunks are written out.
        let mut reads: VecDeque<(ChunkId, Loc, crate::engine::Pending<Vec<u8>>)> = VecDeque::new();
        let mut it = table.ids().iter().filter(|id| carried(id));
        loop {
            while reads.len() < 32 {
                let Some(id) = it.next() else { break };
                let loc = lib.locate(id).ok_or_else(|| Error::MissingChunk {
                    id: id.to_hex(),
                    package: manifest.package().to_string(),
                    version: manifest.version(),
                })?;
                reads.push_back((*id, loc, lib.read_stored(&loc)?));
            }
            let Some((id, loc, p)) = reads.pop_front() else {
                break;
            };
            let stored = p.wait().ctx(lib.pack_path(loc.pack), "read pack")?;
            offsets.push(w.pos);
            w.put(&id.0)?;
            w.put(&loc.ulen.to_le_bytes())?;
            w.put(&loc.clen.to_le_bytes())?;
            w.put(&[loc.flags])?;
            w.put(&stored)?;
            chunk_bytes += stored.len() as u64;
            progress.add_bytes(u64::from(loc.ulen));
            progress.add_file();
        }
        let index_offset = w.pos;
        w.put(&(offsets.len() as u64).to_le_bytes())?;
        for (id, off) in table.ids().iter().filter(|id| carried(id)).zip(&offsets) {
            w.put(&id.0)?;
            w.put(&off.to_le_bytes())?;
        }
        w.put(&index_offset.to_le_bytes())?;
        w.put(&(offsets.len() as u64).to_le_bytes())?;
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
            chunks: offsets.len() as u64,
            chunk_bytes,
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
    /// The manifest's distinct chunks.
    chunks: ChunkTable,
    count: u64,
    read: u64,
    offsets: Vec<(ChunkId, u64)>,
}

/// The manifest section as it streams past: what is read is hashed into the parcel's checksum,
/// counted, and copied to `sink` (an import's temporary file), never kept.
struct Section<'a> {
    r: &'a mut (dyn Read + Send),
    hasher: &'a mut blake3::Hasher,
    pos: &'a mut u64,
    left: u64,
    sink: Option<&'a mut BufWriter<File>>,
    /// A failed write to `sink`: the import's own failure, not the parcel's.
    sink_err: Option<std::io::Error>,
}

impl Read for Section<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let want = (buf.len() as u64).min(self.left) as usize;
        if want == 0 {
            return Ok(0);
        }
        let n = self.r.read(&mut buf[..want])?;
        self.hasher.update(&buf[..n]);
        *self.pos += n as u64;
        self.left -= n as u64;
        if let Some(sink) = &mut self.sink
            && let Err(e) = sink.write_all(&buf[..n])
        {
            let err = std::io::Error::new(e.kind(), e.to_string());
            self.sink_err = Some(e);
            return Err(err);
        }
        Ok(n)
    }
}

impl ParcelReader {
    /// Opens `path` and reads and checks the header, instruction and manifest sections.
    pub fn open(path: &Path) -> Result<ParcelReader> {
        Self::open_to(path, None)
    }

    /// [`open`](Self::open), copying the manifest section's bytes to `sink` as they are read
    /// (and checked).
    fn open_to(path: &Path, sink: Option<&mut BufWriter<File>>) -> Result<ParcelReader> {
        let f = File::open(path).ctx(path, "open parcel")?;
        let len = f.metadata().ctx(path, "stat parcel")?.len();
        ParcelReader::start(
            Box::new(BufReader::with_capacity(1 << 20, f)),
            len,
            path,
            sink,
        )
    }

    /// Reads a parcel of `len` bytes from `r`; `name` labels errors.
    pub fn from_reader(r: Box<dyn Read + Send>, len: u64, name: &Path) -> Result<ParcelReader> {
        Self::start(r, len, name, None)
    }

    fn start(
        r: Box<dyn Read + Send>,
        len: u64,
        name: &Path,
        sink: Option<&mut BufWriter<File>>,
    ) -> Result<ParcelReader> {
        let path = name;
        let mut pr = ParcelReader {
            path: path.to_path_buf(),
            r,
            hasher: blake3::Hasher::new(),
            pos: 0,
            len,
            header: Header {
                instruction: Vec::new(),
                package: PackageId::parse("XXX00000").expect("valid"),
                version: 0,
                entries: 0,
                manifest_len: 0,
                manifest_hash: [0; 32],
                base: None,
            },
            chunks: ChunkTable::default(),
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
        pr.read_manifest(u64::from(n), sink).map_err(|e| match e {
            Error::BadManifest { .. } => bad(path, "manifest", at + 4, e.to_string()),
            e => e,
        })?;
        let at = pr.pos;
        pr.count = pr.u64("chunks")?;
        if pr.count > pr.chunks.len() as u64 {
            return Err(bad(
                path,
                "chunks",
                at,
                "more chunks than the manifest names",
            ));
        }
        Ok(pr)
    }

    /// Reads the manifest section of `n` bytes one entry at a time, every check of the one
    /// decoder: its package, version, entry count, hash and chunk table are kept.
    fn read_manifest(&mut self, n: u64, sink: Option<&mut BufWriter<File>>) -> Result<()> {
        let what = format!("in parcel {}", self.path.display());
        let mut section = Section {
            r: &mut *self.r,
            hasher: &mut self.hasher,
            pos: &mut self.pos,
            left: n,
            sink,
            sink_err: None,
        };
        let res = (|| {
            let mut r = manifest::Reader::hashing(&mut section, n, &what)?;
            let mut table = ChunkTableBuilder::new(what.clone());
            while let Some(e) = r.next_entry()? {
                if let EntryKind::File { chunks, .. } = &e.kind {
                    for c in chunks {
                        table.push(c.id, c.len)?;
                    }
                }
            }
            let hash = r
                .hash()
                .expect("a hashing reader read to the end has a hash");
            Ok((
                r.package().clone(),
                r.version(),
                r.entry_count(),
                hash,
                table.finish()?,
            ))
        })();
        if let Some(e) = section.sink_err.take() {
            return Err(Error::io(&self.path, "copy the parcel's manifest", e));
        }
        let (package, version, entries, hash, chunks) = match res {
            Ok(x) => x,
            // A read that failed is the parcel's: name it so.
            Err(Error::Io { source, .. }) => {
                return Err(bad(
                    &self.path,
                    "manifest",
                    self.pos,
                    format!("read failed: {source}"),
                ));
            }
            Err(e) => return Err(e),
        };
        self.header.package = package;
        self.header.version = version;
        self.header.entries = entries;
        self.header.manifest_len = n;
        self.header.manifest_hash = *hash.as_bytes();
        self.chunks = chunks;
        Ok(())
    }

    /// The distinct chunks the parcel's manifest names.
    pub fn manifest_chunks(&self) -> &ChunkTable {
        &self.chunks
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

/// A temporary file of the library holding a parcel's manifest section until the import stores
/// it (then it is gone from this name); removed if the import fails (a crash leaves it for the
/// next opening of the library, which removes temporary files under `pending/`).
struct TempManifest {
    path: PathBuf,
}

impl Drop for TempManifest {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The error of a parcel whose instruction does not fit it (at `path`, one line).
pub fn instruction_mismatch(path: &Path, reason: String) -> Error {
    Error::BadParcel {
        path: path.to_path_buf(),
        part: "instruction".into(),
        offset: 0,
        reason,
    }
}

/// Checks that the verified instruction `i` describes exactly the content the parcel at
/// `path` carries (its header `h`): package, version, manifest hash, whole or delta.
pub fn check_instruction(
    path: &Path,
    i: &crate::instruction::Instruction,
    h: &Header,
) -> Result<()> {
    use crate::instruction::InstructionKind;
    if i.package != h.package || i.version != h.version {
        return Err(instruction_mismatch(
            path,
            format!(
                "instruction is for {} v{}, content is {} v{}",
                i.package, i.version, h.package, h.version
            ),
        ));
    }
    if i.manifest_hash != h.manifest_hash {
        return Err(instruction_mismatch(
            path,
            "manifest hash differs from the signed instruction".into(),
        ));
    }
    let base = h.base.as_ref().map(|b| b.version);
    let kind_ok = match i.kind {
        InstructionKind::Delta => base.is_some() && i.base_version == base,
        InstructionKind::Package => base.is_none(),
        _ => false,
    };
    if !kind_ok {
        return Err(instruction_mismatch(
            path,
            format!("a {:?} instruction cannot carry this content", i.kind),
        ));
    }
    Ok(())
}

/// Imports a parcel into `lib`. `accept` sees the header first and refuses it with an error
/// (signature, origin, destination, version rules) before anything is read further.
/// Nothing becomes visible in the library unless every byte of the parcel verified.
///
/// The manifest streams from the parcel into a temporary file of the library, checked as it
/// goes; only its chunk table (36 bytes a chunk, and a bit each for what arrived) is held.
pub fn import(
    lib: &mut Library,
    path: &Path,
    accept: impl FnOnce(&Header) -> Result<()>,
    progress: &Progress,
) -> Result<ImportReport> {
    lib.require_write();
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let pending = lib.dir().join("pending");
    std::fs::create_dir_all(&pending).ctx(&pending, "create lease folder")?;
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = TempManifest {
        path: pending.join(format!(".parcel-{}-{n}.tmp", std::process::id())),
    };
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp.path)
        .ctx(&tmp.path, "create temporary manifest")?;
    let mut sink = BufWriter::with_capacity(256 << 10, file);
    let mut r = ParcelReader::open_to(path, Some(&mut sink))?;
    sink.into_inner()
        .map_err(|e| Error::io(&tmp.path, "write temporary manifest", e.into_error()))?;
    let header = r.header().clone();
    accept(&header)?;
    let (package, version) = (header.package.clone(), header.version);
    // A delta needs its base: the chunks the parcel leaves out must already be here.
    if let Some(base) = &header.base {
        let have = lib
            .manifest_dir()
            .open_manifest(&package, base.version)
            .and_then(|bm| bm.hash());
        match have {
            Ok(h) if *h.as_bytes() == base.hash => {}
            _ => {
                return Err(Error::MissingBase {
                    package: package.to_string(),
                    version: base.version,
                });
            }
        }
    }
    let table = std::mem::take(&mut r.chunks);
    let total = r.len;
    progress.start("import", r.chunk_count(), total);
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let lib_ref: &Library = lib;
    let mut writer = lib_ref.writer(true);
    let parcel_path = path.to_path_buf();
    let table_ref = &table;
    let (writer, added) = std::thread::scope(|s| -> Result<(Writer, Vec<bool>)> {
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
        let p = &parcel_path;
        let appender = s.spawn(move || -> Result<(Writer, Vec<bool>)> {
            // Which of the manifest's chunks this parcel added, by position in its table.
            let mut added = vec![false; table_ref.len()];
            let mut first_err = None;
            for res in done_rx.iter() {
                match res {
                    Ok(rec) => {
                        if first_err.is_some() {
                            continue;
                        }
                        // A parcel carries only chunks its manifest names.
                        let Some(i) = table_ref.position(&rec.id) else {
                            first_err = Some(bad(
                                p,
                                &format!("chunk {} ({})", rec.n, rec.id.short()),
                                rec.offset,
                                "a chunk the manifest does not name",
                            ));
                            continue;
                        };
                        if !added[i] && !lib_ref.has_chunk(&rec.id) {
                            added[i] = true;
                            if let Err(e) =
                                writer.append(rec.id, rec.loc.ulen, rec.loc.flags, &rec.data)
                            {
                                first_err = Some(e);
                            }
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
    for id in lib.missing_sorted(table.ids()) {
        let i = table.position(&id).expect("a chunk of the table");
        if !added[i] {
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
    // Checked once more entry by entry (and every chunk present), then moved into place.
    let created = lib.commit_manifest_file(&tmp.path, &package, version)?;
    Ok(ImportReport {
        package: package.to_string(),
        version,
        chunks: table.len() as u64,
        new_chunks: added.iter().filter(|a| **a).count() as u64,
        created,
    })
}
