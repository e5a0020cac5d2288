//! Freight benchmarks: a deterministic generator of realistic package trees
//! ([`dataset`]), the timing and memory harness used to compare Freight
//! against conventional tools ([`harness`]), a UDP impairment proxy for
//! network tests ([`netem`]), chunk transport over loopback QUIC in one
//! process ([`loopback`]) and the peers' servers ([`servers`]).

#![warn(missing_docs)]

pub mod dataset;
pub mod harness;
pub mod loopback;
pub mod netem;
pub mod servers;
mod words;

pub use dataset::{DatasetSpec, DatasetSummary, generate, is_generated, write_marker};
pub use netem::{Impairment, PathStats, ProxyStats, UdpProxy};
pub mod tree;

/// Deterministic pseudo-random bytes (BLAKE3 in XOF mode keyed by `seed`), for tests.
pub fn noise(seed: &str, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    blake3::Hasher::new()
        .update(seed.as_bytes())
        .finalize_xof()
        .fill(&mut out);
    out
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
        },
        &freight_core::Progress::default(),
    )
}
