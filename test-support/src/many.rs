//! Trees of very many small files (plus a few large ones): the shape of driver collections,
//! SDKs and documentation sets, for scale tests and `freight-bench scale`.
//!
//! File `i` lives at `dNNN/dNNN/fNNNNNNN.txt` (a thousand files per folder, a thousand folders
//! per parent), holds between 200 and 3,000 bytes of text that names it (so no two files are
//! equal and dedup does not shrink the package) and has a fixed mtime. The large files
//! `large/blobN.bin` hold incompressible bytes. Everything follows from the seed.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

/// Files per folder.
const PER_DIR: u64 = 1000;
/// Fixed mtime of every generated file (2023-11-14).
const MTIME_SECS: u64 = 1_700_000_000;

/// What [`generate`] made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Regular files written.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// Path of small file `i` under `root`.
pub fn small_path(root: &Path, i: u64) -> PathBuf {
    root.join(format!("d{:03}", i / (PER_DIR * PER_DIR)))
        .join(format!("d{:03}", (i / PER_DIR) % PER_DIR))
        .join(format!("f{i:07}.txt"))
}

/// SplitMix64: a cheap deterministic stream, enough for sizes and filler text.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The bytes of small file `i` in `round` (0 when generated, then each [`change_every`]).
fn small_content(seed: u64, i: u64, round: u64) -> Vec<u8> {
    let h = mix(seed ^ mix(i) ^ round.rotate_left(32));
    let len = 200 + (h % 2801) as usize;
    let mut out = format!("file {i} round {round} seed {seed}\n").into_bytes();
    const WORDS: [&str; 16] = [
        "package", "driver", "version", "install", "content", "library", "setup", "manual",
        "release", "network", "system", "update", "device", "program", "report", "status",
    ];
    let mut x = h;
    while out.len() < len {
        x = mix(x);
        out.extend_from_slice(WORDS[(x % 16) as usize].as_bytes());
        out.push(if x.is_multiple_of(11) { b'\n' } else { b' ' });
    }
    out.truncate(len);
    out
}

fn write_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = fs::File::create(path)?;
    f.write_all(bytes)?;
    f.set_modified(UNIX_EPOCH + Duration::from_secs(MTIME_SECS))
}

/// Writes `files` small files and `large` files of `large_bytes` each under `root` (which
/// must not exist or be empty).
pub fn generate(
    root: &Path,
    files: u64,
    large: u32,
    large_bytes: u64,
    seed: u64,
) -> io::Result<Summary> {
    let mut s = Summary::default();
    let mut made = PathBuf::new();
    for i in 0..files {
        let p = small_path(root, i);
        let dir = p.parent().expect("a file has a folder");
        if dir != made {
            fs::create_dir_all(dir)?;
            made = dir.to_path_buf();
        }
        let bytes = small_content(seed, i, 0);
        write_file(&p, &bytes)?;
        s.files += 1;
        s.bytes += bytes.len() as u64;
    }
    if large > 0 {
        let dir = root.join("large");
        fs::create_dir_all(&dir)?;
        for n in 0..large {
            let p = dir.join(format!("blob{n}.bin"));
            let mut f = io::BufWriter::with_capacity(1 << 20, fs::File::create(&p)?);
            let mut x = mix(seed ^ 0x1a46e ^ u64::from(n));
            let mut left = large_bytes;
            let mut block = vec![0u8; 1 << 16];
            while left > 0 {
                for w in block.chunks_exact_mut(8) {
                    x = mix(x);
                    w.copy_from_slice(&x.to_le_bytes());
                }
                let k = left.min(block.len() as u64) as usize;
                f.write_all(&block[..k])?;
                left -= k as u64;
            }
            let f = f.into_inner().map_err(|e| e.into_error())?;
            f.set_modified(UNIX_EPOCH + Duration::from_secs(MTIME_SECS))?;
            s.files += 1;
            s.bytes += large_bytes;
        }
    }
    Ok(s)
}

/// Rewrites every `nth` small file of the first `files` (starting at `offset`) with the
/// content of `round` and a later mtime; returns how many files and bytes it wrote.
pub fn change_every(
    root: &Path,
    files: u64,
    nth: u64,
    offset: u64,
    round: u64,
    seed: u64,
) -> io::Result<Summary> {
    let mut s = Summary::default();
    let mut i = offset;
    while i < files {
        let bytes = small_content(seed, i, round);
        let p = small_path(root, i);
        let mut f = fs::File::create(&p)?;
        f.write_all(&bytes)?;
        f.set_modified(UNIX_EPOCH + Duration::from_secs(MTIME_SECS + round * 60))?;
        s.files += 1;
        s.bytes += bytes.len() as u64;
        i += nth.max(1);
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_differ_sizes_vary_and_a_change_rewrites_every_nth() {
        let dir = tempfile::tempdir().unwrap();
        let s = generate(dir.path(), 2_500, 1, 100_000, 7).unwrap();
        assert_eq!(s.files, 2_501);
        let a = fs::read(small_path(dir.path(), 0)).unwrap();
        let b = fs::read(small_path(dir.path(), 1)).unwrap();
        assert_ne!(a, b);
        assert!((200..=3000).contains(&a.len()));
        assert!(small_path(dir.path(), 2_499).starts_with(dir.path().join("d000/d002")));
        let c = change_every(dir.path(), 2_500, 100, 0, 1, 7).unwrap();
        assert_eq!(c.files, 25);
        assert_ne!(fs::read(small_path(dir.path(), 0)).unwrap(), a);
        assert_eq!(fs::read(small_path(dir.path(), 1)).unwrap(), b);
        assert_eq!(
            fs::metadata(dir.path().join("large/blob0.bin"))
                .unwrap()
                .len(),
            100_000
        );
    }
}
