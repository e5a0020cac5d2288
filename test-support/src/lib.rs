//! Helpers shared by Freight's test suites and by the benchmarks: a deterministic generator of realistic package trees
//! ([`dataset`]), walking and comparing trees ([`tree`]), a tmpfs for full-disk tests
//! ([`tmpfs`]), a UDP impairment proxy ([`netem`]), the path of the appliance's binaries
//! ([`bins`]) and small helpers for seeds, noise and ingests.
//!
//! It depends on `freight-core` only: no async runtime, no QUIC.

#![warn(missing_docs)]

pub mod bins;
pub mod dataset;
pub mod loopfs;
pub mod many;
pub mod netem;
pub mod synthetic;
pub mod tmpfs;
pub mod tree;
mod words;

pub use dataset::{DatasetSpec, DatasetSummary, generate, is_generated, write_marker};
pub use netem::{Impairment, PathStats, ProxyStats, UdpProxy};

/// Deterministic pseudo-random bytes (BLAKE3 in XOF mode keyed by `seed`), for tests.
pub fn noise(seed: &str, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    blake3::Hasher::new()
        .update(seed.as_bytes())
        .finalize_xof()
        .fill(&mut out);
    out
}

/// A 5% update of the tree at `src`: rewrites every 20th regular file (in byte order of their
/// paths, starting at index `offset % 20`) with different bytes of the same length. Returns the
/// number of files rewritten and their bytes.
pub fn rewrite_every_20th(src: &std::path::Path, offset: usize) -> std::io::Result<(usize, u64)> {
    let mut files = Vec::new();
    tree::walk(src, &mut |p, meta| {
        if meta.is_file() {
            files.push(p.to_path_buf());
        }
        Ok(())
    })?;
    files.sort_by(|a, b| a.as_os_str().cmp(b.as_os_str()));
    let (mut n, mut bytes) = (0, 0);
    for (i, f) in files
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 20 == offset % 20)
    {
        let io = |e: std::io::Error| {
            std::io::Error::new(e.kind(), format!("rewriting {}: {e}", f.display()))
        };
        let mut data = std::fs::read(f).map_err(io)?;
        for (j, b) in data.iter_mut().enumerate() {
            *b = b.wrapping_add((i + j) as u8 | 1);
        }
        std::fs::write(f, &data).map_err(io)?;
        n += 1;
        bytes += data.len() as u64;
    }
    Ok((n, bytes))
}

/// The seed of a randomised test: the one in environment variable `var` (to replay a run), or
/// a fresh one; printed either way so a failure can be replayed.
pub fn replay_seed(var: &str) -> u64 {
    let seed = std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            // Fresh entropy without a thread RNG: wall-clock nanoseconds mixed by BLAKE3.
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            let h = blake3::hash(&now.to_le_bytes());
            u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes"))
        });
    eprintln!("{var}={seed} replays this run");
    seed
}

/// Ingests `src` as version `version` of `package` (an ID such as `CAS00001`), for tests.
pub fn ingest_version(
    lib: &mut freight_core::Library,
    src: &std::path::Path,
    package: &str,
    version: u32,
) -> freight_core::Result<freight_core::ingest::IngestReport> {
    freight_core::ingest::ingest(
        lib,
        src,
        &freight_core::ingest::IngestOptions {
            package: freight_core::PackageId::parse(package)?,
            version: Some(version),
            quick_check: None,
            skip_if_unchanged_from: None,
        },
        &freight_core::Progress::default(),
    )
}
