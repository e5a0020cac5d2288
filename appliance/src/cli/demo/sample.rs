//! The demonstrations' sample package: deterministic files of text and noise, and the change
//! that makes its next version.

use crate::cli::error::CliError;
use std::io::Write;
use std::path::Path;

/// Deterministic bytes: BLAKE3 in XOF mode keyed by a label.
fn noise(label: &str, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    blake3::Hasher::new()
        .update(label.as_bytes())
        .finalize_xof()
        .fill(&mut out);
    out
}

/// Deterministic lines of words, keyed by a label.
fn text(label: &str, len: usize) -> Vec<u8> {
    const WORDS: [&str; 16] = [
        "package",
        "site",
        "version",
        "distribution",
        "point",
        "chunk",
        "status",
        "sender",
        "install",
        "pending",
        "retry",
        "schedule",
        "window",
        "content",
        "library",
        "parcel",
    ];
    let seed = noise(label, 4096);
    let mut out = Vec::with_capacity(len + 64);
    let mut i = 0usize;
    while out.len() < len {
        let w = WORDS[(seed[i % seed.len()] as usize) % WORDS.len()];
        out.extend_from_slice(w.as_bytes());
        out.push(if i % 11 == 10 { b'\n' } else { b' ' });
        i += 1;
    }
    out.truncate(len);
    out
}

fn write(path: &Path, data: &[u8]) -> Result<(), CliError> {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p)?;
    }
    std::fs::File::create(path)?.write_all(data)?;
    Ok(())
}

/// Builds the sample tree: text, binaries, nested folders, an empty folder, a symlink.
pub fn sample(root: &Path, size: u64) -> Result<(), CliError> {
    let big = (size / 2) as usize;
    write(&root.join("bin/installer.bin"), &noise("installer", big))?;
    let small = ((size as usize - big) / 64).max(1);
    for i in 0..48 {
        write(
            &root.join(format!("docs/part{}/readme-{i}.txt", i % 4)),
            &text(&format!("t{i}"), small),
        )?;
    }
    for i in 0..16 {
        write(
            &root.join(format!("lib/module-{i}.so")),
            &noise(&format!("m{i}"), small),
        )?;
    }
    std::fs::create_dir_all(root.join("logs/empty"))?;
    write(&root.join("config/empty.cfg"), b"")?;
    std::os::unix::fs::symlink("../bin/installer.bin", root.join("docs/installer"))?;
    Ok(())
}

/// The demos' update of the sample tree: 1 MiB of new bytes in the middle of the installer, a
/// new file, a dropped file.
pub fn change_sample(src: &Path) -> Result<(), CliError> {
    let inst = src.join("bin/installer.bin");
    let mut data = std::fs::read(&inst)?;
    let mid = data.len() / 2;
    let patch = noise("patch", (1 << 20).min(data.len() / 4));
    data[mid..mid + patch.len()].copy_from_slice(&patch);
    std::fs::write(&inst, &data)?;
    write(&src.join("docs/CHANGES.txt"), &text("changes", 10_000))?;
    std::fs::remove_file(src.join("lib/module-3.so"))?;
    Ok(())
}

pub fn step(title: &str) {
    println!("\n== {title}");
}
