//! `freight library repair`: rebuild what damaged packs still hold, set the rest aside.
//!
//! Opening a library for writing refuses damage a crash cannot leave (see
//! [`crate::library`]); repair is the one way past it, run by hand. For each damaged pack it
//! gathers every place a chunk may be:
//! - the record headers of a format-2 data file, read from the data alone (each names its
//!   chunk and lengths under a check value; after damaged bytes the scan finds the next
//!   record by its magic),
//! - the entries of the index that are still valid one by one (the only source for a
//!   format-1 pack, whose data has no record headers),
//!
//! reads each chunk and keeps it only if it decompresses and hashes to its ID. The chunks kept
//! are written into new packs and committed (durable and indexed) before the damaged pack's
//! files are moved to `ROOT/quarantine/` (never read again; delete them once satisfied), so a
//! crash during repair loses nothing and the next repair starts over. A pack of a newer
//! format is set aside unread. Finally every package version that names a chunk the library
//! no longer holds is listed: those lost data and must be redistributed or ingested again.

use crate::error::{Error, IoContext, Result};
use crate::id::ChunkId;

use crate::library::{Access, Damaged, Library, check_chunk, read_full_at};
use crate::pack::{self, ENTRY_LEN, Loc, PACK_HEADER, RECORD_HEADER, RECORD_MAGIC};
use crate::progress::Progress;
use crate::writer::sync_dir;
use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};

/// A package version that names chunks the library no longer holds.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LostVersion {
    /// Package ID.
    pub package: String,
    /// Version.
    pub version: u32,
    /// How many distinct chunks it names that are missing.
    pub missing_chunks: u64,
}

/// What a repair did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RepairReport {
    /// Damaged packs found (each listed with its reason).
    pub damaged: Vec<String>,
    /// Chunks read back intact from damaged packs and stored in new packs.
    pub chunks_recovered: u64,
    /// Chunks a damaged pack named whose bytes failed their check.
    pub chunks_unreadable: u64,
    /// Files moved to a quarantine folder.
    pub quarantined: Vec<PathBuf>,
    /// Package versions that lost data (missing chunks), for redistribution.
    pub lost: Vec<LostVersion>,
}

impl RepairReport {
    /// True when nothing was damaged and no version misses a chunk.
    pub fn is_clean(&self) -> bool {
        self.damaged.is_empty() && self.lost.is_empty()
    }
}

/// Largest window read at once while looking for the next record after damage.
const SCAN_WINDOW: usize = 1 << 20;

/// Repairs `lib`, which must be open with [`Access::Repair`].
pub fn repair(lib: &mut Library, progress: &Progress) -> Result<RepairReport> {
    if lib.access() != Access::Repair {
        return Err(Error::BadLibrary {
            path: lib.dir().to_path_buf(),
            reason: "repair needs the library opened for repair".into(),
        });
    }
    let damaged: Vec<Damaged> = lib.damage().to_vec();
    let mut report = RepairReport::default();
    progress.start("repair", damaged.len() as u64, 0);
    for d in &damaged {
        report
            .damaged
            .push(format!("{}: {}", d.path.display(), d.reason));
        salvage(lib, d, &mut report)?;
        quarantine(lib, d, &mut report)?;
        progress.add_file();
    }
    for (p, vs) in lib.versions()? {
        for v in vs {
            // Its distinct chunks (36 bytes each), not the decoded manifest.
            let chunks = lib.manifest_dir().open_manifest(&p, v)?.chunk_table()?;
            let missing = lib.missing_sorted(chunks.ids()).len() as u64;
            if missing > 0 {
                report.lost.push(LostVersion {
                    package: p.to_string(),
                    version: v,
                    missing_chunks: missing,
                });
            }
        }
    }
    lib.clear_damage();
    Ok(report)
}

/// Every place pack `d` may hold a chunk: record headers (format 2) and index entries that
/// are valid one by one. Each is only a candidate; its bytes are checked before use, so
/// trying more places than needed is safe (a damaged header leaves the format unknown).
fn candidates(d: &Damaged, data: Option<&File>, data_len: u64) -> Result<Vec<(ChunkId, Loc)>> {
    let mut out = Vec::new();
    if let Some(f) = data {
        let path = d.data.as_deref().unwrap_or(&d.path);
        let mut head = [0u8; PACK_HEADER];
        let got = read_full_at(f, &mut head, 0).ctx(path, "read pack")?;
        if got == PACK_HEADER && &head[..7] == b"FRPACK\x00" && head[7] > pack::FORMAT {
            // A newer format: nothing of it can be read safely.
            return Ok(out);
        }
        scan_records(f, d.pack, data_len, &mut out).ctx(path, "scan pack")?;
    }
    if let Some(idx) = &d.idx {
        let bytes = std::fs::read(idx).ctx(idx, "read index")?;
        for header in [pack::IDX_HEADER_V1, pack::IDX_HEADER] {
            if bytes.len() <= header {
                continue;
            }
            for e in bytes[header..].chunks(ENTRY_LEN) {
                if let Some(x) = pack::decode_entry(e, d.pack)
                    && x.1.end() <= data_len
                {
                    out.push(x);
                }
            }
        }
    }
    Ok(out)
}

/// Walks the records of a format-2 data file. A header found where the previous record ended
/// is trusted for its length (its check value holds) even if its bytes turn out bad; after an
/// unreadable header the next record is searched for by its magic, and each one found that
/// way is a candidate, its bytes checked later like every other.
fn scan_records(
    f: &File,
    pack_no: u32,
    len: u64,
    out: &mut Vec<(ChunkId, Loc)>,
) -> std::io::Result<()> {
    let mut pos = PACK_HEADER as u64;
    let mut hdr = [0u8; RECORD_HEADER];
    while pos + RECORD_HEADER as u64 <= len {
        let got = read_full_at(f, &mut hdr, pos)?;
        if let Some((id, loc)) = pack::decode_record(&hdr[..got], pack_no, pos)
            && loc.end() <= len
        {
            out.push((id, loc));
            pos = loc.end();
            continue;
        }
        // Lost sync: look for the next header that decodes.
        match find_record(f, pack_no, pos + 1, len)? {
            Some(next) => pos = next,
            None => break,
        }
    }
    Ok(())
}

/// The offset of the first record header at or after `from` that decodes and fits.
fn find_record(f: &File, pack_no: u32, from: u64, len: u64) -> std::io::Result<Option<u64>> {
    let mut buf = vec![0u8; SCAN_WINDOW + RECORD_HEADER];
    let mut at = from;
    while at + RECORD_HEADER as u64 <= len {
        let got = read_full_at(f, &mut buf, at)?;
        let window = &buf[..got];
        let mut i = 0;
        while i + RECORD_HEADER <= window.len() {
            let Some(k) = window[i..].windows(4).position(|w| w == RECORD_MAGIC) else {
                break;
            };
            let p = i + k;
            if p + RECORD_HEADER > window.len() {
                break;
            }
            let off = at + p as u64;
            if pack::decode_record(&window[p..p + RECORD_HEADER], pack_no, off)
                .is_some_and(|(_, l)| l.end() <= len)
            {
                return Ok(Some(off));
            }
            i = p + 1;
        }
        if got < buf.len() {
            break;
        }
        // Overlap by a header so one straddling the window edge is not missed.
        at += SCAN_WINDOW as u64;
    }
    Ok(None)
}

/// Copies every intact chunk of damaged pack `d` that the library lacks into new packs.
fn salvage(lib: &mut Library, d: &Damaged, report: &mut RepairReport) -> Result<()> {
    let data = match &d.data {
        Some(p) => Some(File::open(p).ctx(p, "open pack")?),
        None => None,
    };
    let data_len = match &data {
        Some(f) => f.metadata().ctx(&d.path, "stat pack")?.len(),
        None => 0,
    };
    let mut seen = HashSet::new();
    let mut writer = lib.writer(false);
    let mut stored = 0u64;
    for (id, loc) in candidates(d, data.as_ref(), data_len)? {
        if lib.has_chunk(&id) || !seen.insert(id) {
            continue;
        }
        let Some(f) = &data else { continue };
        let mut bytes = vec![0u8; loc.clen as usize];
        let got = read_full_at(f, &mut bytes, loc.offset).ctx(&d.path, "read pack")?;
        if got != bytes.len() || check_chunk(&id, &loc, &bytes).is_err() {
            report.chunks_unreadable += 1;
            seen.remove(&id);
            continue;
        }
        writer.append(id, loc.ulen, loc.flags, &bytes)?;
        stored += 1;
    }
    let committed = writer.commit()?;
    lib.apply(committed);
    report.chunks_recovered += stored;
    Ok(())
}

/// Moves the damaged pack's files to `ROOT/quarantine/`, index first.
fn quarantine(lib: &Library, d: &Damaged, report: &mut RepairReport) -> Result<()> {
    lib.pack_numbers().retire(d.pack)?;
    let root = &lib.roots()[d.root];
    let qdir = root.join("quarantine");
    std::fs::create_dir_all(&qdir).ctx(&qdir, "create quarantine folder")?;
    sync_dir(root)?;
    for f in [&d.idx, &d.data].into_iter().flatten() {
        let Some(name) = f.file_name() else { continue };
        let mut to = qdir.join(name);
        let mut k = 1;
        while to.exists() {
            to = qdir.join(format!("{}.{k}", name.to_string_lossy()));
            k += 1;
        }
        std::fs::rename(f, &to).ctx(f, "move to quarantine")?;
        sync_dir(&qdir)?;
        sync_dir(f.parent().unwrap_or(Path::new(".")))?;
        report.quarantined.push(to);
    }
    Ok(())
}
