//! Content-defined chunking (FastCDC gear hash, `fastcdc` crate) over a stream of blocks.
//!
//! Freight uses FastCDC *without* size normalisation: the cut test is the same at every position
//! past the minimum size, so after an edit the chunker falls back onto the old cut points at the
//! first boundary behind the edit. Normalised chunking keys its mask on the distance from the
//! chunk start, which delays that re-synchronisation by a chunk or two.

use bytes::{Bytes, BytesMut};
use fastcdc::v2020::{Normalization, cut, select_masks};

/// Chunk size bounds in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChunkParams {
    /// No cut before this many bytes.
    pub min: usize,
    /// Target spacing of cut points past `min` (a power of two is exact).
    pub avg: usize,
    /// A chunk never exceeds this.
    pub max: usize,
}

impl Default for ChunkParams {
    /// 256 KiB / 1 MiB / 4 MiB: packages are dominated by large binaries, so big chunks keep the
    /// index small, I/O large and zstd efficient, while an edit still costs only a few chunks.
    fn default() -> Self {
        ChunkParams {
            min: 256 << 10,
            avg: 1 << 20,
            max: 4 << 20,
        }
    }
}

/// Largest average chunk size the cut-point masks support (32 MiB).
pub const MAX_AVG: usize = 32 << 20;

impl ChunkParams {
    /// Checks the bounds are usable by the gear-hash cutter.
    pub fn validate(&self) -> Result<(), String> {
        let even = [self.min, self.avg, self.max]
            .iter()
            .all(|v| v.is_multiple_of(2));
        if !even || self.min < 64 || self.min >= self.avg || self.avg >= self.max {
            return Err(format!(
                "chunk sizes min {} avg {} max {} must be even with 64 <= min < avg < max",
                self.min, self.avg, self.max
            ));
        }
        if self.max > 64 << 20 {
            return Err("max chunk size is limited to 64 MiB".into());
        }
        // The gear-hash masks exist for averages up to 2^25: a larger one would index past
        // them (fastcdc panics), so it is refused here, where a config is read.
        if self.avg > MAX_AVG {
            return Err(format!(
                "average chunk size {} is above the largest the cutter supports ({MAX_AVG})",
                self.avg
            ));
        }
        Ok(())
    }

    fn masks(&self) -> (u64, u64) {
        let (mask, _) = select_masks(self.avg, Normalization::Level0);
        (mask, mask << 1)
    }
}

/// Finds the length of the next chunk at the start of `data`.
///
/// `data` must hold at least `max` bytes unless it is the end of the file.
fn next_cut(data: &[u8], p: &ChunkParams, mask: u64, mask_ls: u64) -> usize {
    let (_, len) = cut(data, p.min, p.avg, p.max, mask, mask, mask_ls, mask_ls);
    len
}

/// Splits a whole buffer into chunk lengths (used by tests and benchmarks).
pub fn chunk_lengths(data: &[u8], p: &ChunkParams) -> Vec<usize> {
    let (mask, mask_ls) = p.masks();
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        let len = next_cut(&data[pos..], p, mask, mask_ls);
        out.push(len);
        pos += len;
    }
    out
}

/// Incremental chunker: feed blocks of a file in order, receive chunks as they are decided.
pub struct StreamChunker {
    params: ChunkParams,
    mask: u64,
    mask_ls: u64,
    buf: BytesMut,
}

impl StreamChunker {
    /// A chunker for one file.
    pub fn new(params: ChunkParams) -> Self {
        let (mask, mask_ls) = params.masks();
        StreamChunker {
            params,
            mask,
            mask_ls,
            buf: BytesMut::new(),
        }
    }

    /// Appends `data` and hands every chunk that is now final to `out`.
    pub fn push(&mut self, data: &[u8], out: &mut impl FnMut(Bytes)) {
        if self.buf.is_empty() && data.len() < self.params.max {
            self.buf.reserve(self.params.max * 2);
        }
        self.buf.extend_from_slice(data);
        // A cut is only final once `max` bytes are visible: before that, a later byte could
        // still be the boundary.
        while self.buf.len() >= self.params.max {
            let len = next_cut(&self.buf, &self.params, self.mask, self.mask_ls);
            out(self.buf.split_to(len).freeze());
        }
    }

    /// Ends the file, handing out the remaining chunks.
    pub fn finish(&mut self, out: &mut impl FnMut(Bytes)) {
        while !self.buf.is_empty() {
            let len = next_cut(&self.buf, &self.params, self.mask, self.mask_ls);
            out(self.buf.split_to(len).freeze());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng, rngs::StdRng};

    fn random(n: usize, seed: u64) -> Vec<u8> {
        let mut r = StdRng::seed_from_u64(seed);
        let mut v = vec![0u8; n];
        r.fill(&mut v[..]);
        v
    }

    #[test]
    fn stream_matches_whole_buffer_for_any_block_size() {
        let p = ChunkParams {
            min: 1024,
            avg: 4096,
            max: 16384,
        };
        let data = random(300_000, 1);
        let whole = chunk_lengths(&data, &p);
        for block in [1, 100, 4096, 16384, 50_000, 300_000] {
            let mut c = StreamChunker::new(p);
            let mut lens = Vec::new();
            for b in data.chunks(block) {
                c.push(b, &mut |ch| lens.push(ch.len()));
            }
            c.finish(&mut |ch| lens.push(ch.len()));
            assert_eq!(lens, whole, "block size {block}");
        }
        assert_eq!(whole.iter().sum::<usize>(), data.len());
        assert!(whole.iter().all(|&l| l <= p.max));
    }

    #[test]
    fn edit_in_middle_changes_few_chunks() {
        let p = ChunkParams::default();
        let mut data = random(40 << 20, 7);
        let before = chunk_lengths(&data, &p);
        let mid = data.len() / 2;
        let patch = random(1 << 20, 8);
        data[mid..mid + patch.len()].copy_from_slice(&patch);
        let after = chunk_lengths(&data, &p);
        let starts = |lens: &[usize]| {
            let mut s = std::collections::HashSet::new();
            let mut o = 0;
            for &l in lens {
                s.insert((o, l));
                o += l;
            }
            s
        };
        let old = starts(&before);
        let new_chunks = starts(&after).difference(&old).count();
        assert!(new_chunks <= 4, "{new_chunks} new chunks");
    }

    #[test]
    fn params_validate() {
        assert!(ChunkParams::default().validate().is_ok());
        let bad = ChunkParams {
            min: 4096,
            avg: 1024,
            max: 8192,
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn every_valid_average_cuts_without_panicking_and_larger_ones_are_refused() {
        // Found by pushing a 64 MiB chunk: an average near 64 MiB passed validation and then
        // indexed past the cutter's masks in the ingest's reader thread.
        let data = random(1 << 20, 5);
        for avg in [256, 1 << 20, 8 << 20, MAX_AVG] {
            let p = ChunkParams {
                min: 64,
                avg,
                max: 64 << 20,
            };
            p.validate().unwrap();
            assert!(!chunk_lengths(&data, &p).is_empty());
        }
        let too_big = ChunkParams {
            min: 64,
            avg: (64 << 20) - 2,
            max: 64 << 20,
        };
        let e = too_big.validate().unwrap_err();
        assert!(e.contains("largest the cutter supports"), "{e}");
    }
}
