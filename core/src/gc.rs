//! Garbage collection: drop chunks no manifest references and reclaim their space.
//!
//! Packs are append-only, so space comes back by compaction: the live chunks of a pack with
//! garbage are copied (still compressed) into a fresh pack, that pack is committed (durable and
//! indexed), and only then the old pack's index and data file are deleted, in that order. A
//! crash at any point leaves every live chunk reachable through at least one index; a data
//! file whose index is already gone is removed at the next open.

use crate::error::{IoContext, Result};
use crate::id::ChunkId;
use crate::library::Library;
use crate::pack::{self, Loc};
use crate::progress::Progress;
use std::collections::{HashSet, VecDeque};

/// What a collection did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct GcReport {
    /// Distinct chunks dropped.
    pub chunks_removed: u64,
    /// Packs deleted outright (nothing live in them).
    pub packs_deleted: u64,
    /// Packs rewritten without their garbage.
    pub packs_compacted: u64,
    /// Stored bytes of live chunks copied.
    pub bytes_moved: u64,
    /// Bytes of pack files released.
    pub bytes_freed: u64,
}

/// Collects garbage in `lib`: every pack with garbage is compacted.
pub fn gc(lib: &mut Library, progress: &Progress) -> Result<GcReport> {
    gc_with(lib, &HashSet::new(), 0.0, progress)
}

/// Collects garbage cheaply after an update: packs with nothing live are deleted, but a pack
/// is rewritten only when at least `min_garbage` (0.0 to 1.0) of its bytes are garbage. An
/// update that drops a little of every pack then costs no rewrite of the whole library; the
/// space comes back once a pack is mostly garbage (or at the next full [`gc`]).
pub fn gc_partial(lib: &mut Library, min_garbage: f64, progress: &Progress) -> Result<GcReport> {
    gc_with(lib, &HashSet::new(), min_garbage, progress)
}

/// Collects garbage and also drops the chunks in `drop` even where a manifest still names them
/// (corrupt chunks before a repair: the next transfer asks for them again). A manifest that
/// names a dropped chunk fails verification until it is repaired.
pub fn gc_dropping(
    lib: &mut Library,
    drop: &HashSet<ChunkId>,
    progress: &Progress,
) -> Result<GcReport> {
    gc_with(lib, drop, 0.0, progress)
}

/// Collects garbage: every pack with nothing live is deleted, and every pack whose garbage is
/// at least `min_garbage` of its bytes is rewritten. A chunk in `drop` counts as garbage even
/// where a manifest names it; a non-empty `drop` comes only with `min_garbage` 0.0 (from
/// [`gc_dropping`]), so every pack holding a dropped chunk is rewritten and the chunk is gone.
fn gc_with(
    lib: &mut Library,
    drop: &HashSet<ChunkId>,
    min_garbage: f64,
    progress: &Progress,
) -> Result<GcReport> {
    lib.require_write();
    let live: HashSet<ChunkId> = lib
        .refcounts()?
        .into_keys()
        .filter(|id| !drop.contains(id))
        .collect();
    let mut report = GcReport::default();
    // The packs to delete or rewrite, each with its live entries to keep.
    let mut plan: Vec<(u32, Vec<(ChunkId, Loc)>)> = Vec::new();
    for (&n, info) in lib.packs() {
        let ix = pack::read_index(&info.idx, n)?;
        let mut keep = Vec::new();
        let (mut dead, mut total) = (0u64, 0u64);
        for (id, loc) in ix.entries {
            total += loc.clen as u64;
            if live.contains(&id) && lib.locate(&id) == Some(loc) {
                keep.push((id, loc));
            } else {
                dead += loc.clen as u64;
            }
        }
        let worth = dead > 0 && dead as f64 >= min_garbage * total.max(1) as f64;
        if keep.is_empty() || worth {
            plan.push((n, keep));
        }
    }
    let total: u64 = plan
        .iter()
        .flat_map(|(_, k)| k.iter().map(|(_, l)| l.clen as u64))
        .sum();
    progress.start("gc", plan.len() as u64, total);
    let before = lib.chunk_count();
    let mut writer = lib.writer(false);
    for (n, keep) in &plan {
        let f = lib.pack_file(*n)?;
        let path = lib.pack_path(*n);
        let mut reads: VecDeque<_> = VecDeque::new();
        let mut it = keep.iter();
        loop {
            while reads.len() < 32 {
                let Some((id, loc)) = it.next() else { break };
                reads.push_back((
                    *id,
                    *loc,
                    lib.engine().read_at(&f, loc.offset, loc.clen as usize),
                ));
            }
            let Some((id, loc, p)) = reads.pop_front() else {
                break;
            };
            let bytes = p.wait().ctx(&path, "read pack")?;
            writer.append(id, loc.ulen, loc.flags, &bytes)?;
            report.bytes_moved += bytes.len() as u64;
            progress.add_bytes(bytes.len() as u64);
        }
        if keep.is_empty() {
            report.packs_deleted += 1;
        } else {
            report.packs_compacted += 1;
        }
    }
    let committed = writer.commit()?;
    lib.apply(committed);
    for (n, _) in &plan {
        let info = lib.packs()[n].clone();
        report.bytes_freed += std::fs::metadata(&info.data).map(|m| m.len()).unwrap_or(0);
        // Index first: a data file without an index is known garbage at the next open.
        std::fs::remove_file(&info.idx).ctx(&info.idx, "remove index")?;
        std::fs::remove_file(&info.data).ctx(&info.data, "remove pack")?;
        lib.forget_pack(*n);
        progress.add_file();
    }
    if !plan.is_empty() {
        for root in lib.roots() {
            let d = root.join("packs");
            std::fs::File::open(&d)
                .and_then(|f| f.sync_all())
                .ctx(&d, "fsync directory")?;
        }
    }
    // Every pack of the plan is gone, and its live chunks are indexed in the new packs (whose
    // numbers are above every old one): only the entries of the removed packs go. Garbage left
    // in packs not worth rewriting stays indexed: it is intact, and a transfer that needs it
    // again finds it.
    lib.index.retain(|_, loc| lib.packs.contains_key(&loc.pack));
    report.chunks_removed = (before - lib.chunk_count().min(before)) as u64;
    Ok(report)
}
