//! Garbage collection: drop chunks no manifest references and reclaim their space.
//!
//! A chunk is live while a manifest names it or a transfer's lease covers it (see
//! [`Library::lease`]): chunks a transfer received before its manifest arrived are kept.
//!
//! Packs are append-only, so space comes back in two steps. First every pack with nothing
//! live is deleted outright: that needs no free space, so a collection on a full disk still
//! frees what it can. Then the live chunks of packs with enough garbage are copied (still
//! compressed) into fresh packs, a group of about one pack's worth at a time; each group is
//! committed (durable and indexed) before the packs it empties are deleted, so the extra space
//! needed is about one pack. Deleting renames the index to a tombstone first (see
//! [`crate::pack`]); a crash at any point leaves every live chunk reachable through at least
//! one index, and the next open finishes an interrupted deletion.

use crate::error::{Error, IoContext, Result};
use crate::id::ChunkId;
use crate::library::Library;
use crate::pack::{self, Loc};
use crate::progress::Progress;
use crate::spill::{SORT_MEMORY, Sorter};
use crate::writer::{PackInfo, delete_pack};
use std::collections::{HashMap, HashSet, VecDeque};

/// Width of a live location's sort key: pack number and offset, big-endian, so byte order
/// is storage order.
const KEEP: usize = 12;

fn keep_key(pack: u32, offset: u64) -> [u8; KEEP] {
    let mut k = [0u8; KEEP];
    k[..4].copy_from_slice(&pack.to_be_bytes());
    k[4..].copy_from_slice(&offset.to_be_bytes());
    k
}

/// Streams the committed entries of pack `n` from its index file, in index order.
fn pack_entries(
    n: u32,
    info: &PackInfo,
    f: &mut dyn FnMut(ChunkId, Loc) -> Result<()>,
) -> Result<()> {
    let damaged = |d: pack::IndexDamage| Error::NeedsRepair {
        path: info.idx.clone(),
        reason: d.to_string(),
    };
    if info.format == 1 {
        let ix = pack::read_index(&info.idx, n)?.map_err(damaged)?;
        for (id, loc) in ix.entries {
            f(id, loc)?;
        }
        return Ok(());
    }
    let file = std::fs::File::open(&info.idx).ctx(&info.idx, "open index")?;
    pack::read_entries(
        &file,
        &info.idx,
        n,
        pack::IDX_HEADER as u64,
        info.idx_len,
        &mut |id, loc, _| f(id, loc),
    )?
    .map_err(damaged)
}

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
    /// Chunks no manifest names that were kept for transfers under way (leases).
    pub chunks_leased: u64,
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

/// Drops the chunks in `drop` even where a manifest still names them, touching only the packs
/// that hold them: each is rewritten without them (packs with nothing live are deleted, which
/// costs nothing); other garbage stays for a later collection. A repair that must hold the
/// library only as long as the damage needs (a DP serving beside it) uses this rather than
/// [`gc_dropping`], which also compacts every pack with any garbage.
pub fn drop_chunks(
    lib: &mut Library,
    drop: &HashSet<ChunkId>,
    progress: &Progress,
) -> Result<GcReport> {
    gc_with(lib, drop, f64::INFINITY, progress)
}

/// Collects garbage: every pack with nothing live is deleted, and every pack whose garbage is
/// at least `min_garbage` of its bytes is rewritten. A chunk in `drop` counts as garbage even
/// where a manifest names it, and every pack holding one is rewritten whatever its garbage, so
/// the chunk is gone ([`gc_dropping`], [`drop_chunks`]).
fn gc_with(
    lib: &mut Library,
    drop: &HashSet<ChunkId>,
    min_garbage: f64,
    progress: &Progress,
) -> Result<GcReport> {
    lib.require_write();
    // Mark, in bounded memory: the chunks manifests name, sorted on disk, merge-joined with
    // the chunk index in ID order; what is live is recorded by where it is (pack, offset),
    // sorted again, then met pack by pack with each pack's index.
    let named = lib.referenced_ids()?;
    let leased = lib.leased_ids()?;
    let mut report = GcReport::default();
    let spill = lib.spill_dir();
    let mut keeps = Sorter::<KEEP>::new(&spill, SORT_MEMORY);
    let mut live_bytes: HashMap<u32, u64> = HashMap::new();
    {
        let mut names = named.reader();
        let mut cur = names.next_rec()?;
        let mut leases = leased.reader();
        let mut lease = leases.next_rec()?;
        let mut err: Option<Error> = None;
        lib.for_each_chunk(&mut |id, loc| {
            while cur.is_some_and(|c| c < id.0) {
                cur = names.next_rec()?;
            }
            while lease.is_some_and(|c| c < id.0) {
                lease = leases.next_rec()?;
            }
            let is_named = cur == Some(id.0);
            let is_leased = lease == Some(id.0);
            if is_leased && !is_named {
                report.chunks_leased += 1;
            }
            if (is_named || is_leased) && !drop.contains(&id) {
                if let Err(e) = keeps.push(keep_key(loc.pack, loc.offset)) {
                    err = Some(e);
                }
                *live_bytes.entry(loc.pack).or_insert(0) += loc.clen as u64;
            }
            Ok(())
        })?;
        if let Some(e) = err {
            return Err(e);
        }
    }
    std::mem::drop(named);
    std::mem::drop(leased);
    let keeps = keeps.finish()?;
    // The packs to delete or rewrite.
    let mut empty: Vec<u32> = Vec::new();
    let mut rewrite: Vec<(u32, u64)> = Vec::new();
    let packs: Vec<(u32, PackInfo)> = lib.packs().iter().map(|(n, i)| (*n, i.clone())).collect();
    {
        let mut kr = keeps.reader();
        let mut next = kr.next_rec()?;
        for (n, info) in &packs {
            let (mut dead, mut total) = (0u64, 0u64);
            let mut kept = false;
            let mut holds_dropped = false;
            let mut err = None;
            pack_entries(*n, info, &mut |id, loc| {
                total += loc.clen as u64;
                while let Some(k) = next
                    && k < keep_key(*n, loc.offset)
                {
                    next = match kr.next_rec() {
                        Ok(x) => x,
                        Err(e) => {
                            err = Some(e);
                            None
                        }
                    };
                }
                if next == Some(keep_key(*n, loc.offset)) {
                    kept = true;
                } else {
                    dead += loc.clen as u64;
                    holds_dropped |= drop.contains(&id);
                }
                Ok(())
            })?;
            if let Some(e) = err {
                return Err(e);
            }
            if !kept {
                empty.push(*n);
            } else if holds_dropped
                || (dead > 0 && dead as f64 >= min_garbage * total.max(1) as f64)
            {
                rewrite.push((*n, live_bytes.get(n).copied().unwrap_or(0)));
            }
        }
    }
    let moving: u64 = rewrite.iter().map(|(_, b)| b).sum();
    progress.start("gc", (empty.len() + rewrite.len()) as u64, moving);
    let before = lib.chunk_count();
    // One record for the whole collection: none of these numbers will be used again.
    if let Some(highest) = empty.iter().chain(rewrite.iter().map(|(n, _)| n)).max() {
        lib.pack_numbers().retire(*highest)?;
    }
    // Step 1: packs with nothing live go first; this needs no space.
    for n in &empty {
        report.bytes_freed += remove(lib, *n)?;
        report.packs_deleted += 1;
        progress.add_file();
    }
    // Step 2: rewrite the rest, about one pack's worth of live bytes per transaction.
    let pack_size = lib.config().pack_size;
    let mut groups: Vec<Vec<u32>> = Vec::new();
    let mut group_bytes = 0u64;
    for (n, bytes) in rewrite {
        if groups.is_empty() || group_bytes + bytes > pack_size {
            groups.push(Vec::new());
            group_bytes = 0;
        }
        group_bytes += bytes;
        groups.last_mut().expect("a group").push(n);
    }
    let mut kr = keeps.reader();
    let mut next = kr.next_rec()?;
    for group in groups {
        let mut writer = lib.writer(false);
        for n in &group {
            // This pack's live entries (one pack's worth at most), in storage order.
            let info = packs
                .iter()
                .find(|(x, _)| x == n)
                .map(|(_, i)| i.clone())
                .expect("a listed pack");
            let mut keep: Vec<(ChunkId, Loc)> = Vec::new();
            let mut err = None;
            pack_entries(*n, &info, &mut |id, loc| {
                while let Some(k) = next
                    && k < keep_key(*n, loc.offset)
                {
                    next = match kr.next_rec() {
                        Ok(x) => x,
                        Err(e) => {
                            err = Some(e);
                            None
                        }
                    };
                }
                if next == Some(keep_key(*n, loc.offset)) {
                    keep.push((id, loc));
                }
                Ok(())
            })?;
            if let Some(e) = err {
                return Err(e);
            }
            let mut reads: VecDeque<_> = VecDeque::new();
            let mut it = keep.iter();
            loop {
                while reads.len() < 32 {
                    let Some((id, loc)) = it.next() else { break };
                    reads.push_back((*id, *loc, lib.read_checked(id, loc)?));
                }
                let Some((id, loc, read)) = reads.pop_front() else {
                    break;
                };
                let bytes = read.wait()?;
                writer.append(id, loc.ulen, loc.flags, &bytes)?;
                report.bytes_moved += bytes.len() as u64;
                progress.add_bytes(bytes.len() as u64);
            }
        }
        let committed = writer.commit()?;
        lib.apply(committed);
        // Every live chunk of the group is durable and indexed elsewhere now.
        for n in &group {
            report.bytes_freed += remove(lib, *n)?;
            report.packs_compacted += 1;
            progress.add_file();
        }
    }
    // Entries of the deleted packs are ignored from now on; the merge drops them for good
    // and counts what is left.
    if report.packs_deleted + report.packs_compacted > 0 {
        lib.compact_index()?;
    }
    // Garbage left in packs not worth rewriting stays indexed: it is intact, and a transfer
    // that needs it again finds it.
    report.chunks_removed = (before - lib.chunk_count().min(before)) as u64;
    Ok(report)
}

/// Deletes pack `n` (tombstone first) and forgets it; returns the bytes its data file held.
fn remove(lib: &mut Library, n: u32) -> Result<u64> {
    let info = lib.packs()[&n].clone();
    lib.pack_numbers().retire(n)?;
    let len = std::fs::metadata(&info.data).map(|m| m.len()).unwrap_or(0);
    delete_pack(&info.data, &info.idx, n)?;
    lib.forget_pack(n);
    Ok(len)
}
