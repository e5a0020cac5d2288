//! External sorting of fixed-size records in bounded memory.
//!
//! The library's whole-library passes (garbage collection's mark, statistics, verification)
//! need sets of chunk IDs as large as the library: every chunk a manifest names, every
//! location to keep. Held in a hash set those cost ~50-100 bytes per chunk (0.5-1 GB at
//! 10,000,000 chunks); sorted on disk and read back in order they cost a buffer. A [`Sorter`]
//! takes records in any order and keeps at most its memory budget of them, writing each full
//! buffer sorted to an anonymous spill file (created and unlinked at once, so nothing is left
//! behind by a crash); [`Sorter::finish`] merges the spill files into one sorted sequence
//! ([`Sorted`]) that can be read any number of times, and the consumers merge-join it with the
//! sorted chunk index ([`crate::chunk_index`]).

use crate::error::{IoContext, Result};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes of records a sorter keeps in memory before it spills them.
pub const SORT_MEMORY: usize = 16 << 20;
/// Bytes read ahead from each spill file while merging.
const READ_AHEAD: usize = 64 << 10;

static SPILLS: AtomicU64 = AtomicU64::new(0);

/// A new anonymous file in `dir`: created, then unlinked at once, so it lives only as long as
/// the handle and a crash leaves nothing behind.
pub fn anonymous_file(dir: &Path) -> Result<File> {
    let n = SPILLS.fetch_add(1, Ordering::Relaxed);
    let path = dir.join(format!(".spill-{}-{n}.tmp", std::process::id()));
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .ctx(&path, "create spill file")?;
    std::fs::remove_file(&path).ctx(&path, "unlink spill file")?;
    Ok(f)
}

/// Sorts records of `W` bytes (compared as byte strings) in bounded memory.
pub struct Sorter<const W: usize> {
    dir: PathBuf,
    buf: Vec<[u8; W]>,
    cap: usize,
    runs: Vec<(File, u64)>,
}

impl<const W: usize> Sorter<W> {
    /// A sorter spilling into `dir`, keeping at most about `memory` bytes of records.
    pub fn new(dir: &Path, memory: usize) -> Sorter<W> {
        Sorter {
            dir: dir.to_path_buf(),
            buf: Vec::new(),
            cap: (memory / W).max(1024),
            runs: Vec::new(),
        }
    }

    /// Adds one record.
    pub fn push(&mut self, rec: [u8; W]) -> Result<()> {
        self.buf.push(rec);
        if self.buf.len() >= self.cap {
            self.spill()?;
        }
        Ok(())
    }

    fn spill(&mut self) -> Result<()> {
        self.buf.sort_unstable();
        self.buf.dedup();
        let f = anonymous_file(&self.dir)?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, &f);
        for r in &self.buf {
            w.write_all(r).ctx(&self.dir, "write spill file")?;
        }
        w.flush().ctx(&self.dir, "write spill file")?;
        drop(w);
        self.runs.push((f, self.buf.len() as u64));
        self.buf.clear();
        Ok(())
    }

    /// Sorts what was pushed, each distinct record once.
    pub fn finish(mut self) -> Result<Sorted<W>> {
        if self.runs.is_empty() {
            self.buf.sort_unstable();
            self.buf.dedup();
            self.buf.shrink_to_fit();
            return Ok(Sorted {
                dir: self.dir,
                inner: Inner::Memory(self.buf),
            });
        }
        if !self.buf.is_empty() {
            self.spill()?;
        }
        let out = anonymous_file(&self.dir)?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, &out);
        let mut readers: Vec<FileReader<W>> = self
            .runs
            .iter()
            .map(|(f, n)| FileReader::new(f, *n, &self.dir))
            .collect();
        let mut heap = BinaryHeap::new();
        for (i, r) in readers.iter_mut().enumerate() {
            if let Some(x) = r.next_rec()? {
                heap.push(Reverse((x, i)));
            }
        }
        let mut last: Option<[u8; W]> = None;
        let mut count = 0u64;
        while let Some(Reverse((x, i))) = heap.pop() {
            if last != Some(x) {
                w.write_all(&x).ctx(&self.dir, "write spill file")?;
                count += 1;
                last = Some(x);
            }
            if let Some(y) = readers[i].next_rec()? {
                heap.push(Reverse((y, i)));
            }
        }
        w.flush().ctx(&self.dir, "write spill file")?;
        drop(w);
        Ok(Sorted {
            dir: self.dir,
            inner: Inner::File(out, count),
        })
    }
}

enum Inner<const W: usize> {
    Memory(Vec<[u8; W]>),
    File(File, u64),
}

/// Sorted distinct records ([`Sorter::finish`]); read them in order with
/// [`reader`](Self::reader), as often as needed.
pub struct Sorted<const W: usize> {
    dir: PathBuf,
    inner: Inner<W>,
}

impl<const W: usize> Sorted<W> {
    /// How many distinct records.
    pub fn len(&self) -> u64 {
        match &self.inner {
            Inner::Memory(v) => v.len() as u64,
            Inner::File(_, n) => *n,
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A reader from the first record.
    pub fn reader(&self) -> SortedReader<'_, W> {
        match &self.inner {
            Inner::Memory(v) => SortedReader::Memory(v.iter()),
            Inner::File(f, n) => SortedReader::File(FileReader::new(f, *n, &self.dir)),
        }
    }

    /// Whether `rec` is among the records (a binary search; for the in-memory case only,
    /// otherwise a scan: callers that test many records merge-join instead).
    pub fn contains(&self, rec: &[u8; W]) -> Result<bool> {
        match &self.inner {
            Inner::Memory(v) => Ok(v.binary_search(rec).is_ok()),
            Inner::File(..) => {
                let mut r = self.reader();
                while let Some(x) = r.next_rec()? {
                    if &x >= rec {
                        return Ok(&x == rec);
                    }
                }
                Ok(false)
            }
        }
    }
}

/// Reads sorted records in order (see [`Sorted::reader`]).
pub enum SortedReader<'a, const W: usize> {
    /// Records kept in memory.
    Memory(std::slice::Iter<'a, [u8; W]>),
    /// Records in a spill file.
    File(FileReader<'a, W>),
}

impl<const W: usize> SortedReader<'_, W> {
    /// The next record.
    pub fn next_rec(&mut self) -> Result<Option<[u8; W]>> {
        match self {
            SortedReader::Memory(it) => Ok(it.next().copied()),
            SortedReader::File(r) => r.next_rec(),
        }
    }
}

/// Reads the records of a spill file by positioned reads (the handle's offset is never used,
/// so several readers can share one file).
pub struct FileReader<'a, const W: usize> {
    file: &'a File,
    dir: &'a Path,
    left: u64,
    at: u64,
    buf: Vec<u8>,
    pos: usize,
}

impl<'a, const W: usize> FileReader<'a, W> {
    fn new(file: &'a File, count: u64, dir: &'a Path) -> FileReader<'a, W> {
        FileReader {
            file,
            dir,
            left: count,
            at: 0,
            buf: Vec::new(),
            pos: 0,
        }
    }

    /// The next record.
    pub fn next_rec(&mut self) -> Result<Option<[u8; W]>> {
        if self.pos + W > self.buf.len() {
            if self.left == 0 {
                return Ok(None);
            }
            let n = (self.left as usize).min((READ_AHEAD / W).max(1));
            self.buf.resize(n * W, 0);
            let got = crate::library::read_full_at(self.file, &mut self.buf, self.at)
                .ctx(self.dir, "read spill file")?;
            if got != self.buf.len() {
                let e = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "spill file short");
                return Err(crate::Error::io(self.dir, "read spill file", e));
            }
            self.at += got as u64;
            self.left -= n as u64;
            self.pos = 0;
        }
        let mut r = [0u8; W];
        r.copy_from_slice(&self.buf[self.pos..self.pos + W]);
        self.pos += W;
        Ok(Some(r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorts_and_dedups_in_memory_and_spilled() {
        let dir = std::env::temp_dir();
        for memory in [1 << 20, 8 << 10] {
            let mut s: Sorter<8> = Sorter::new(&dir, memory);
            let mut want = Vec::new();
            for i in 0..20_000u64 {
                let x = (i * 7919) % 5000;
                s.push(x.to_be_bytes()).unwrap();
                want.push(x);
            }
            want.sort_unstable();
            want.dedup();
            let sorted = s.finish().unwrap();
            assert_eq!(sorted.len(), want.len() as u64);
            for _ in 0..2 {
                let mut r = sorted.reader();
                let mut got = Vec::new();
                while let Some(x) = r.next_rec().unwrap() {
                    got.push(u64::from_be_bytes(x));
                }
                assert_eq!(got, want);
            }
            assert!(sorted.contains(&4999u64.to_be_bytes()).unwrap());
            assert!(!sorted.contains(&5000u64.to_be_bytes()).unwrap());
        }
    }
}
