//! Criterion benchmarks of the ingest pieces: chunking, hashing, compression, manifest codec.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use freight_core::chunker::{ChunkParams, chunk_lengths};
use freight_core::manifest::{ChunkRef, Entry, EntryKind, Manifest};
use freight_core::{ChunkId, PackageId};
use std::hint::black_box;

fn noise(len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    blake3::Hasher::new()
        .update(b"bench")
        .finalize_xof()
        .fill(&mut out);
    out
}

fn text(len: usize) -> Vec<u8> {
    let words = [
        "package ", "site ", "version ", "chunk ", "status\n", "retry ", "window ",
    ];
    let r = noise(len / 4);
    let mut out = Vec::with_capacity(len + 16);
    let mut i = 0;
    while out.len() < len {
        out.extend_from_slice(words[r[i % r.len()] as usize % words.len()].as_bytes());
        i += 1;
    }
    out.truncate(len);
    out
}

fn pieces(c: &mut Criterion) {
    let len = 16 << 20;
    let inputs = [("random", noise(len)), ("text", text(len))];
    let mut g = c.benchmark_group("ingest-pieces");
    g.throughput(Throughput::Bytes(len as u64));
    g.sample_size(10);
    for (name, data) in &inputs {
        g.bench_with_input(BenchmarkId::new("fastcdc", name), data, |b, d| {
            b.iter(|| black_box(chunk_lengths(d, &ChunkParams::default())))
        });
        g.bench_with_input(BenchmarkId::new("blake3", name), data, |b, d| {
            b.iter(|| d.chunks(1 << 20).map(ChunkId::of).count())
        });
        for level in [-1, 1, 3] {
            g.bench_with_input(
                BenchmarkId::new(format!("zstd{level}"), name),
                data,
                |b, d| {
                    let mut comp = zstd::bulk::Compressor::new(level).unwrap();
                    b.iter(|| {
                        d.chunks(1 << 20)
                            .map(|c| comp.compress(c).unwrap().len())
                            .sum::<usize>()
                    })
                },
            );
        }
    }
    g.finish();
}

fn manifest_codec(c: &mut Criterion) {
    let mut entries = vec![Entry {
        path: Vec::new(),
        mode: 0o755,
        mtime_sec: 0,
        mtime_nsec: 0,
        kind: EntryKind::Dir,
    }];
    for i in 0..10_000u32 {
        entries.push(Entry {
            path: format!("f{i:06}").into_bytes(),
            mode: 0o644,
            mtime_sec: i as i64,
            mtime_nsec: 0,
            kind: EntryKind::File {
                size: 1000,
                chunks: vec![ChunkRef {
                    id: ChunkId::of(&i.to_le_bytes()),
                    len: 1000,
                }],
            },
        });
    }
    let m = Manifest {
        package: PackageId::parse("CAS00001").unwrap(),
        version: 1,
        entries,
    };
    let bytes = m.encode();
    let mut g = c.benchmark_group("manifest-10k-files");
    g.bench_function("encode", |b| b.iter(|| black_box(m.encode())));
    g.bench_function("decode", |b| {
        b.iter(|| Manifest::decode(black_box(&bytes), "bench").unwrap())
    });
    g.finish();
}

criterion_group!(benches, pieces, manifest_codec);
criterion_main!(benches);
