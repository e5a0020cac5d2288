//! Snapshots of a source folder that changes while it is read, by accident or by someone
//! hostile who can write in it: what is hashed is what the walk saw and what was opened, and a
//! version never holds bytes from outside the source or a file in a state it never had.

mod common;

use common::*;
use freight_core::ingest::{IngestOptions, IngestReport, ingest};
use freight_core::{ChunkId, EntryKind, Error, Library, LibraryConfig, Manifest, PackageId};
use freight_core::{Progress, Result};
use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const PKG: &str = "CAS00001";

fn pid() -> PackageId {
    PackageId::parse(PKG).unwrap()
}

/// Ingests with explicit options (version numbered by the library).
fn snapshot(
    lib: &mut Library,
    src: &Path,
    quick_check: Option<u32>,
    skip_if_unchanged_from: Option<u32>,
) -> Result<IngestReport> {
    let opts = IngestOptions {
        package: pid(),
        version: None,
        quick_check,
        skip_if_unchanged_from,
    };
    ingest(lib, src, &opts, &Progress::default())
}

/// The bytes of the file at `rel` in `m`, read back from the library's chunks.
fn content(lib: &Library, m: &Manifest, rel: &str) -> Option<Vec<u8>> {
    let e = m.entries.iter().find(|e| e.path == rel.as_bytes())?;
    let EntryKind::File { chunks, .. } = &e.kind else {
        return None;
    };
    let mut out = Vec::new();
    for c in chunks {
        out.extend_from_slice(&lib.read_chunk(&c.id).unwrap());
    }
    Some(out)
}

/// Every regular file's bytes in every stored version: (version, path, bytes).
fn every_file(lib: &Library) -> Vec<(u32, String, Vec<u8>)> {
    let mut out = Vec::new();
    for m in lib.stored_manifests().unwrap() {
        let m = m.load().unwrap();
        for e in &m.entries {
            if matches!(e.kind, EntryKind::File { .. }) {
                let p = e.display_path();
                let bytes = content(lib, &m, &p).unwrap();
                out.push((m.version, p, bytes));
            }
        }
    }
    out
}

/// True when `needle` occurs in any file under `dir` (pack files keep incompressible chunks
/// raw, so a secret that reached the library in any form is found).
fn library_holds(dir: &Path, needle: &[u8]) -> bool {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else if std::fs::read(e.path())
                .unwrap()
                .windows(needle.len())
                .any(|w| w == needle)
            {
                return true;
            }
        }
    }
    false
}

/// A refused snapshot: one line, naming `name`, saying the source changed (or, when the walk
/// itself met the swapped-in symlink, that it points outside the package).
fn assert_refusal(err: &Error, name: &str) {
    let msg = err.to_string();
    assert!(!msg.contains('\n'), "one line: {msg:?}");
    assert!(msg.contains(name), "{msg:?} should name {name}");
    assert!(
        matches!(
            err,
            Error::SourceChanged { .. } | Error::SymlinkEscapes { .. }
        ),
        "{err:?}"
    );
    if let Error::SourceChanged { .. } = err {
        assert!(
            msg.contains("changed while the snapshot read it")
                && msg.contains("snapshot again when the source is quiet"),
            "{msg}"
        );
    }
}

/// A thread exchanging two names (`renameat2(RENAME_EXCHANGE)`, atomic) as fast as it can, in
/// bursts of 2,000 exchanges (leaving the names as they were); every fourth burst is followed
/// by a quiet 80 ms, so that some snapshots can succeed and show what they kept.
struct Swapper {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<u64>,
}

impl Swapper {
    fn start(a: PathBuf, b: PathBuf) -> Swapper {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut swaps = 0u64;
            while !flag.load(Ordering::Relaxed) {
                for _ in 0..2000 {
                    renameat2(AT_FDCWD, &a, AT_FDCWD, &b, RenameFlags::RENAME_EXCHANGE).unwrap();
                    swaps += 1;
                }
                if swaps.is_multiple_of(8000) {
                    std::thread::sleep(Duration::from_millis(80));
                }
            }
            swaps
        });
        Swapper { stop, handle }
    }

    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap()
    }
}

/// Runs 20 snapshots of `src` while `victim` (in the source) and `decoy` (a symlink to
/// something outside it, holding `secret`) are exchanged as fast as possible. Every snapshot
/// either succeeds or is refused with the one-line error and leaves the library as it was;
/// afterwards no version and no pack byte holds the secret, and every version's copy of
/// `victim_file` is the real one.
fn twenty_snapshots_while_swapping(
    t: &Path,
    victim: &Path,
    decoy: &Path,
    victim_file: &str,
    real: &[u8],
    secret: &[u8],
) {
    let src = t.join("src");
    let lib_dir = t.join("lib");
    let mut lib = new_lib(&lib_dir, &LibraryConfig::default());
    let name = victim.file_name().unwrap().to_str().unwrap().to_string();
    let swapper = Swapper::start(victim.to_path_buf(), decoy.to_path_buf());
    let started = Instant::now();
    let mut made = 0;
    let mut refusals = std::collections::BTreeMap::<String, u32>::new();
    for _ in 0..20 {
        let before = lib_state(&lib_dir);
        // Spread the snapshots over the swapper's bursts and pauses.
        std::thread::sleep(Duration::from_millis(5));
        match snapshot(&mut lib, &src, None, None) {
            Ok(_) => made += 1,
            Err(e) => {
                assert_refusal(&e, &name);
                assert_eq!(lib_state(&lib_dir), before, "library changed after: {e}");
                let why = match &e {
                    Error::SourceChanged { how, .. } => how.clone(),
                    _ => "walk met the symlink".into(),
                };
                *refusals.entry(why).or_default() += 1;
            }
        }
    }
    let swaps = swapper.stop();
    eprintln!(
        "{made} versions made, refused: {refusals:?}; {swaps} swaps in {:?}",
        started.elapsed()
    );
    assert!(swaps > 20, "the swapper ran ({swaps} swaps)");
    let secret_id = ChunkId::of(secret);
    for m in lib.stored_manifests().unwrap() {
        let m = m.load().unwrap();
        assert!(
            !m.chunks().contains_key(&secret_id),
            "v{} names the secret's chunk",
            m.version
        );
    }
    for (v, path, bytes) in every_file(&lib) {
        assert!(
            !bytes.windows(64).any(|w| w == &secret[..64]),
            "v{v} {path} holds outside bytes"
        );
        if path == victim_file {
            assert_eq!(bytes, real, "v{v} {path} is the real file");
        }
    }
    assert!(
        !library_holds(&lib_dir, &secret[..64]),
        "the secret reached the library"
    );
}

/// A file swapped, again and again, for a symlink to a root-only file outside the source
/// (issue 10 point 5): no version ever holds the outside file's bytes.
#[test]
fn a_file_swapped_for_a_symlink_to_an_outside_file_never_brings_its_bytes_in() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    let outside = t.path().join("outside");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(src.join("sub/other.txt"), b"other").unwrap();
    let real = noise("real", 64 << 10);
    std::fs::write(src.join("victim.bin"), &real).unwrap();
    let secret = noise("secret", 64 << 10);
    let secret_path = outside.join("secret");
    std::fs::write(&secret_path, &secret).unwrap();
    std::fs::set_permissions(&secret_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let decoy = outside.join("decoy");
    std::os::unix::fs::symlink(&secret_path, &decoy).unwrap();
    twenty_snapshots_while_swapping(
        t.path(),
        &src.join("victim.bin"),
        &decoy,
        "victim.bin",
        &real,
        &secret,
    );
}

/// A folder swapped, again and again, for a symlink to a folder outside the source: no
/// version ever holds the outside folder's files.
#[test]
fn a_folder_swapped_for_a_symlink_to_an_outside_folder_never_brings_its_files_in() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    let outside = t.path().join("outside");
    std::fs::create_dir_all(src.join("dir/deeper")).unwrap();
    std::fs::create_dir_all(outside.join("secrets/deeper")).unwrap();
    std::fs::write(src.join("top.txt"), b"top").unwrap();
    let real = noise("real", 64 << 10);
    let secret = noise("secret", 64 << 10);
    for (dir, bytes) in [(src.join("dir"), &real), (outside.join("secrets"), &secret)] {
        std::fs::write(dir.join("f.bin"), bytes).unwrap();
        std::fs::write(dir.join("deeper/g.bin"), bytes).unwrap();
        std::fs::set_permissions(dir.join("f.bin"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
    }
    let decoy = outside.join("decoy");
    std::os::unix::fs::symlink(outside.join("secrets"), &decoy).unwrap();
    twenty_snapshots_while_swapping(
        t.path(),
        &src.join("dir"),
        &decoy,
        "dir/f.bin",
        &real,
        &secret,
    );
}

/// Runs `change` on another thread as soon as `path` is first read (inotify `IN_ACCESS`; the
/// walk only stats), so that it overlaps the snapshot's reading without depending on timing.
/// If no read comes within 20 s the change runs anyway.
fn on_first_read(path: &Path, change: impl FnOnce() + Send + 'static) -> JoinHandle<()> {
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
    let ino = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).unwrap();
    ino.add_watch(path, AddWatchFlags::IN_ACCESS).unwrap();
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            match ino.read_events() {
                Ok(ev) if !ev.is_empty() => break,
                _ => std::thread::sleep(Duration::from_micros(200)),
            }
        }
        change();
    })
}

/// Snapshots `src` while `change` runs from the first read of `file` on, `rounds` times
/// (`prepare` resets the file first). Each snapshot must either hold a copy of `file` that
/// `consistent` accepts or be refused with a one-line error naming the file. Returns how many
/// versions were kept, how many files were read again in them, and how many were refused.
fn snapshots_while_changing(
    rounds: usize,
    file: &str,
    prepare: &dyn Fn(&Path),
    change: &dyn Fn(PathBuf) -> Box<dyn FnOnce() + Send>,
    consistent: &dyn Fn(&[u8]) -> Result<(), String>,
) -> (u64, u64, u64) {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("small.txt"), b"unchanged").unwrap();
    let path = src.join(file);
    let lib_dir = t.path().join("lib");
    let mut lib = new_lib(&lib_dir, &LibraryConfig::default());
    let (mut kept, mut refused, mut reread) = (0u64, 0u64, 0u64);
    let started = Instant::now();
    for round in 0..rounds {
        prepare(&path);
        let writer = on_first_read(&path, change(path.clone()));
        let before = lib_state(&lib_dir);
        let outcome = snapshot(&mut lib, &src, None, None);
        writer.join().unwrap();
        match outcome {
            Ok(r) => {
                let m = lib.manifest(&pid(), r.version).unwrap();
                let bytes = content(&lib, &m, file).unwrap();
                if let Err(why) = consistent(&bytes) {
                    panic!("round {round}: v{} holds a torn {file}: {why}", r.version);
                }
                kept += 1;
                reread += r.reread_files;
            }
            Err(e) => {
                let msg = e.to_string();
                assert!(
                    matches!(e, Error::SourceChanged { .. })
                        && msg.contains(file)
                        && !msg.contains('\n'),
                    "{msg}"
                );
                assert_eq!(lib_state(&lib_dir), before, "library changed after: {msg}");
                refused += 1;
            }
        }
    }
    eprintln!(
        "{file}: {kept} versions kept ({reread} files read again), {refused} refused, in {:?}",
        started.elapsed()
    );
    (kept, reread, refused)
}

/// A file appended to while the snapshot reads it (issue 11 point 3): the version holds one
/// of the sizes the file really had, or the snapshot refuses naming it.
#[test]
fn a_file_appended_to_while_read_is_kept_as_it_was_at_one_moment_or_refused() {
    const BLOCK: usize = 256 << 10;
    const START: usize = 16 << 20;
    let data: Arc<Vec<u8>> = Arc::new(noise("grow", 40 << 20));
    let d = data.clone();
    let prepare = move |p: &Path| std::fs::write(p, &d[..START]).unwrap();
    let d = data.clone();
    let change = move |p: PathBuf| -> Box<dyn FnOnce() + Send> {
        let d = d.clone();
        Box::new(move || {
            let f = std::fs::OpenOptions::new().append(true).open(p).unwrap();
            for block in d[START..].chunks(BLOCK) {
                std::io::Write::write_all(&mut &f, block).unwrap();
                std::thread::sleep(Duration::from_micros(300));
            }
        })
    };
    let consistent = |b: &[u8]| {
        if b.len() < START || b.len() > data.len() || !(b.len() - START).is_multiple_of(BLOCK) {
            return Err(format!("{} bytes: a size the file never had", b.len()));
        }
        if b != &data[..b.len()] {
            return Err("bytes the file never held".into());
        }
        Ok(())
    };
    snapshots_while_changing(4, "growing.bin", &prepare, &change, &consistent);
}

/// A file truncated while the snapshot reads it: the version holds one of the sizes the file
/// really had, or the snapshot refuses naming it.
#[test]
fn a_file_truncated_while_read_is_kept_as_it_was_at_one_moment_or_refused() {
    const FULL: usize = 32 << 20;
    const STEP: usize = 1 << 20;
    let data: Arc<Vec<u8>> = Arc::new(noise("shrink", FULL));
    let d = data.clone();
    let prepare = move |p: &Path| std::fs::write(p, &d[..]).unwrap();
    let change = |p: PathBuf| -> Box<dyn FnOnce() + Send> {
        Box::new(move || {
            let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
            let mut len = FULL;
            while len > FULL / 4 {
                len -= STEP;
                f.set_len(len as u64).unwrap();
                std::thread::sleep(Duration::from_micros(500));
            }
        })
    };
    let consistent = |b: &[u8]| {
        if b.len() < FULL / 4 || !b.len().is_multiple_of(STEP) {
            return Err(format!("{} bytes: a size the file never had", b.len()));
        }
        if b != &data[..b.len()] {
            return Err("bytes the file never held".into());
        }
        Ok(())
    };
    snapshots_while_changing(4, "shrinking.bin", &prepare, &change, &consistent);
}

/// A 256 MiB file (generated, no holes) appended to, 1 MiB at a time up to 320 MiB, from its
/// first read on (issue 11 point 3): the version holds the bytes the file had at one moment
/// (a prefix of the final file, at a size it really had), or the snapshot refuses naming it.
/// The change must have been seen: the file was read again, or the snapshot refused.
#[test]
fn a_256_mib_file_appended_to_while_read_is_kept_as_it_was_at_one_moment_or_refused() {
    const BLOCK: usize = 1 << 20;
    const START: usize = 256 << 20;
    const END: usize = 320 << 20;
    let data: Arc<Vec<u8>> = Arc::new(noise("grow large", END));
    let d = data.clone();
    let prepare = move |p: &Path| std::fs::write(p, &d[..START]).unwrap();
    let d = data.clone();
    let change = move |p: PathBuf| -> Box<dyn FnOnce() + Send> {
        let d = d.clone();
        Box::new(move || {
            let f = std::fs::OpenOptions::new().append(true).open(p).unwrap();
            for block in d[START..].chunks(BLOCK) {
                std::io::Write::write_all(&mut &f, block).unwrap();
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let consistent = |b: &[u8]| {
        if b.len() < START || !(b.len() - START).is_multiple_of(BLOCK) {
            return Err(format!("{} bytes: a size the file never had", b.len()));
        }
        if b != &data[..b.len()] {
            return Err("bytes the file never held".into());
        }
        Ok(())
    };
    let (_, reread, refused) =
        snapshots_while_changing(1, "large.bin", &prepare, &change, &consistent);
    assert!(
        reread + refused > 0,
        "the appends were not seen: the snapshot neither read the file again nor refused"
    );
}

/// A 256 MiB file truncated, 8 MiB at a time down to 64 MiB, from its first read on: the
/// version holds the bytes the file had at one moment, or the snapshot refuses naming it; the
/// change must have been seen.
#[test]
fn a_256_mib_file_truncated_while_read_is_kept_as_it_was_at_one_moment_or_refused() {
    const FULL: usize = 256 << 20;
    const STEP: usize = 8 << 20;
    let data: Arc<Vec<u8>> = Arc::new(noise("shrink large", FULL));
    let d = data.clone();
    let prepare = move |p: &Path| std::fs::write(p, &d[..]).unwrap();
    let change = |p: PathBuf| -> Box<dyn FnOnce() + Send> {
        Box::new(move || {
            let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
            let mut len = FULL;
            while len > FULL / 4 {
                len -= STEP;
                f.set_len(len as u64).unwrap();
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let consistent = |b: &[u8]| {
        if b.len() < FULL / 4 || !b.len().is_multiple_of(STEP) {
            return Err(format!("{} bytes: a size the file never had", b.len()));
        }
        if b != &data[..b.len()] {
            return Err("bytes the file never held".into());
        }
        Ok(())
    };
    let (_, reread, refused) =
        snapshots_while_changing(1, "large.bin", &prepare, &change, &consistent);
    assert!(
        reread + refused > 0,
        "the truncation was not seen: the snapshot neither read the file again nor refused"
    );
}

/// A file rewritten in place (same size) while the snapshot reads it, block after block,
/// from one content to another and back: the version holds a state the file had (the first
/// k blocks of one content, the rest of the other), never a mixture of moments.
#[test]
fn a_file_rewritten_in_place_while_read_is_never_torn() {
    const BLOCK: usize = 1 << 20;
    const BLOCKS: usize = 24;
    let a: Arc<Vec<u8>> = Arc::new(noise("A", BLOCK * BLOCKS));
    let b: Arc<Vec<u8>> = Arc::new(noise("B", BLOCK * BLOCKS));
    let a1 = a.clone();
    let prepare = move |p: &Path| std::fs::write(p, &a1[..]).unwrap();
    let (a2, b2) = (a.clone(), b.clone());
    let change = move |p: PathBuf| -> Box<dyn FnOnce() + Send> {
        let (a, b) = (a2.clone(), b2.clone());
        Box::new(move || {
            let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
            for pass in 0..8 {
                let to = if pass % 2 == 0 { &b } else { &a };
                for k in 0..BLOCKS {
                    f.write_all_at(&to[k * BLOCK..(k + 1) * BLOCK], (k * BLOCK) as u64)
                        .unwrap();
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        })
    };
    let consistent = |bytes: &[u8]| {
        if bytes.len() != BLOCK * BLOCKS {
            return Err(format!("{} bytes", bytes.len()));
        }
        let labels: Vec<char> = bytes
            .chunks(BLOCK)
            .enumerate()
            .map(|(k, blk)| {
                if blk == &a[k * BLOCK..(k + 1) * BLOCK] {
                    'A'
                } else if blk == &b[k * BLOCK..(k + 1) * BLOCK] {
                    'B'
                } else {
                    '?'
                }
            })
            .collect();
        let switches = labels.windows(2).filter(|w| w[0] != w[1]).count();
        if labels.contains(&'?') || switches > 1 {
            return Err(format!("blocks {}", labels.iter().collect::<String>()));
        }
        Ok(())
    };
    snapshots_while_changing(6, "rewritten.bin", &prepare, &change, &consistent);
}

/// One change during the first read of a large file: the snapshot reads the file again and
/// keeps a state the file had, instead of failing (or keeping a torn copy).
#[test]
fn a_file_changed_once_while_read_is_read_again_and_kept() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let path = src.join("big.bin");
    let old = noise("old", 48 << 20);
    let mut new = old.clone();
    new.extend_from_slice(b"appended once");
    std::fs::write(&path, &old).unwrap();
    let mut lib = new_lib(&t.path().join("lib"), &LibraryConfig::default());
    let p = path.clone();
    let writer = on_first_read(&path, move || {
        let f = std::fs::OpenOptions::new().append(true).open(p).unwrap();
        std::io::Write::write_all(&mut &f, b"appended once").unwrap();
    });
    let r = snapshot(&mut lib, &src, None, None).expect("one change is read again, not refused");
    writer.join().unwrap();
    let m = lib.manifest(&pid(), r.version).unwrap();
    let bytes = content(&lib, &m, "big.bin").unwrap();
    eprintln!(
        "read again: {} file(s); kept the {} state",
        r.reread_files,
        if bytes == new { "new" } else { "old" }
    );
    assert!(bytes == new || bytes == old, "{} bytes", bytes.len());
    let EntryKind::File { size, .. } = m.entries[1].kind else {
        panic!("big.bin is a file");
    };
    assert_eq!(
        size,
        bytes.len() as u64,
        "the size recorded is the size read"
    );
}

/// Names at the file system's limits (issue 11 point 5): a 255-byte name, and a path whose
/// absolute form is longer than PATH_MAX (made with mkdirat, as no absolute path can reach
/// it), both ingest with their bytes.
#[test]
fn a_255_byte_name_and_a_path_longer_than_path_max_ingest() {
    use nix::fcntl::{OFlag, openat};
    use nix::sys::stat::{Mode, mkdirat};
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let long = "n".repeat(255);
    std::fs::write(src.join(&long), b"long name").unwrap();
    // 16 folders of 254 bytes and a file: a relative path of 4,088 bytes (a manifest carries
    // up to 4,096), longer than PATH_MAX once the temporary folder is in front.
    let comp = "d".repeat(254);
    let mut rel = String::new();
    let mut dir =
        nix::fcntl::open(&src, OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty()).unwrap();
    for _ in 0..16 {
        mkdirat(&dir, comp.as_str(), Mode::from_bits_truncate(0o755)).unwrap();
        dir = openat(
            &dir,
            comp.as_str(),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY,
            Mode::empty(),
        )
        .unwrap();
        rel.push_str(&comp);
        rel.push('/');
    }
    rel.push_str("deep.txt");
    assert!(
        src.as_os_str().len() + 1 + rel.len() > 4096,
        "{}",
        rel.len()
    );
    assert!(rel.len() <= 4096, "a manifest carries it");
    let f = openat(
        &dir,
        "deep.txt",
        OFlag::O_WRONLY | OFlag::O_CREAT,
        Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    std::fs::File::from(f).write_all_at(b"deep", 0).unwrap();

    let mut lib = new_lib(&t.path().join("lib"), &LibraryConfig::default());
    let r = snapshot(&mut lib, &src, None, None).unwrap();
    assert_eq!(r.files, 2);
    let m = lib.manifest(&pid(), r.version).unwrap();
    assert_eq!(content(&lib, &m, &long).unwrap(), b"long name");
    assert_eq!(content(&lib, &m, &rel).unwrap(), b"deep");
}

/// The quick check takes files only from the version the caller names (issue 10 point 1): a
/// version someone else put in the library, with the same paths, sizes and mtimes but other
/// bytes, is never trusted unless named.
#[test]
fn quick_check_reuses_files_only_from_the_named_base() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    let forged = t.path().join("forged");
    let files = [("a.bin", 300 << 10), ("sub/b.bin", 2 << 20), ("c.txt", 10)];
    for (root, seed) in [(&src, "real"), (&forged, "forged")] {
        for (name, len) in files {
            let p = root.join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, noise(&format!("{seed}{name}"), len)).unwrap();
        }
    }
    // The forgery copies every file's mtime.
    for (name, _) in files {
        let mtime = std::fs::metadata(src.join(name))
            .unwrap()
            .modified()
            .unwrap();
        std::fs::File::options()
            .write(true)
            .open(forged.join(name))
            .unwrap()
            .set_modified(mtime)
            .unwrap();
    }
    let mut lib = new_lib(&t.path().join("lib"), &LibraryConfig::default());
    let v1 = snapshot(&mut lib, &src, None, None).unwrap();
    let v2 = snapshot(&mut lib, &forged, None, None).unwrap();
    assert_eq!((v1.version, v2.version), (1, 2));

    // Based on version 1, the site's own: nothing is read, and the bytes are the real ones.
    let v3 = snapshot(&mut lib, &src, Some(1), None).unwrap();
    assert_eq!((v3.version, v3.unchanged_files), (3, 3));
    let m3 = lib.manifest(&pid(), 3).unwrap();
    for (name, len) in files {
        assert_eq!(
            content(&lib, &m3, name).unwrap(),
            noise(&format!("real{name}"), len),
            "{name}"
        );
    }
    // Based on nothing: everything is read, with the same result.
    let full = snapshot(&mut lib, &src, None, None).unwrap();
    assert_eq!(full.unchanged_files, 0);
    assert_eq!(
        lib.manifest(&pid(), full.version).unwrap().entries,
        m3.entries
    );
    // Only a caller who names the forged version gets its bytes: the quick check trusts
    // exactly the base it is given.
    let trusting = snapshot(&mut lib, &src, Some(2), None).unwrap();
    assert_eq!(trusting.unchanged_files, 3);
    let m = lib.manifest(&pid(), trusting.version).unwrap();
    assert_eq!(
        content(&lib, &m, "c.txt").unwrap(),
        noise("forgedc.txt", 10)
    );
    // A base the library does not hold reads everything.
    let missing = snapshot(&mut lib, &src, Some(99), None).unwrap();
    assert_eq!(missing.unchanged_files, 0);
}

/// A quick re-snapshot (issue 11 point 3) of an unchanged tree of 20,000 files reads no file
/// content (the ingest's own read counter says 0 bytes, every file taken unread); a file
/// whose size and mtime are unchanged but whose ctime changed (content rewritten, mtime set
/// back), or that is another inode (replaced by a copy with the same size and mtime), is read
/// again, and the version holds its new bytes.
#[test]
fn a_quick_resnapshot_of_20000_unchanged_files_reads_nothing_but_a_new_inode_or_ctime_is_read() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    for d in 0..20 {
        let dir = src.join(format!("d{d:02}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..1000 {
            std::fs::write(dir.join(format!("f{f:03}")), format!("file {d}/{f}\n")).unwrap();
        }
    }
    let mut lib = new_lib(&t.path().join("lib"), &LibraryConfig::default());
    let v1 = snapshot(&mut lib, &src, None, None).unwrap();
    assert_eq!((v1.files, v1.unchanged_files), (20_000, 0));
    assert!(v1.read_bytes >= v1.bytes, "{v1:?}");

    let v2 = snapshot(&mut lib, &src, Some(1), None).unwrap();
    assert_eq!(v2.unchanged_files, 20_000, "{v2:?}");
    assert_eq!(v2.read_bytes, 0, "an unchanged tree is not read: {v2:?}");
    assert_eq!(
        lib.manifest(&pid(), 2).unwrap().entries,
        lib.manifest(&pid(), 1).unwrap().entries
    );

    // Same size, content changed, mtime set back: only the ctime tells.
    let edited = src.join("d03/f007");
    let old = std::fs::read(&edited).unwrap();
    let meta = std::fs::metadata(&edited).unwrap();
    let mut new = old.clone();
    new[0] = b'F';
    std::fs::write(&edited, &new).unwrap();
    let f = std::fs::File::options().write(true).open(&edited).unwrap();
    f.set_modified(meta.modified().unwrap()).unwrap();
    drop(f);
    let after = std::fs::metadata(&edited).unwrap();
    assert_eq!(
        (after.len(), after.modified().unwrap()),
        (meta.len(), meta.modified().unwrap())
    );
    // Another inode with the same size, mtime and bytes: a copy renamed over the file.
    let replaced = src.join("d11/f500");
    let bytes = std::fs::read(&replaced).unwrap();
    let meta = std::fs::metadata(&replaced).unwrap();
    let copy = src.join("d11/.copy");
    std::fs::write(&copy, &bytes).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&copy)
        .unwrap()
        .set_modified(meta.modified().unwrap())
        .unwrap();
    std::fs::rename(&copy, &replaced).unwrap();
    let after = std::fs::metadata(&replaced).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_ne!(after.ino(), meta.ino());
    assert_eq!(after.modified().unwrap(), meta.modified().unwrap());

    // A file whose ctime is within the clock tick of its read cannot be told from one changed
    // while read, and is read a second time by design: let the edits age past that tick, as
    // any real edit before a snapshot has (`ingest::RECENT`), so each is read exactly once.
    std::thread::sleep(freight_core::ingest::RECENT * 2);
    let v3 = snapshot(&mut lib, &src, Some(2), None).unwrap();
    assert_eq!(v3.unchanged_files, 19_998, "{v3:?}");
    assert_eq!(
        v3.read_bytes,
        (new.len() + bytes.len()) as u64,
        "exactly the two files are read: {v3:?}"
    );
    let m3 = lib.manifest(&pid(), v3.version).unwrap();
    assert_eq!(content(&lib, &m3, "d03/f007").unwrap(), new);
    assert_eq!(content(&lib, &m3, "d11/f500").unwrap(), bytes);
    // Without the record of what the snapshot saw (a base received from elsewhere), size and
    // mtime alone decide, as before.
    std::fs::remove_dir_all(t.path().join("lib/quick-check")).unwrap();
    let v4 = snapshot(&mut lib, &src, Some(3), None).unwrap();
    assert_eq!((v4.unchanged_files, v4.read_bytes), (20_000, 0), "{v4:?}");
}

/// An update with no change makes no version (issue 10 point 10); any change does.
#[test]
fn an_unchanged_source_makes_no_version() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("sub/a.txt"), b"a").unwrap();
    std::fs::write(src.join("b.bin"), noise("b", 1 << 20)).unwrap();
    let lib_dir = t.path().join("lib");
    let mut lib = new_lib(&lib_dir, &LibraryConfig::default());
    let v1 = snapshot(&mut lib, &src, None, Some(1)).unwrap();
    assert_eq!((v1.version, v1.created, v1.unchanged_from), (1, true, None));

    let before = lib_state(&lib_dir);
    let same = snapshot(&mut lib, &src, Some(1), Some(1)).unwrap();
    assert_eq!(
        (same.version, same.created, same.unchanged_from),
        (1, false, Some(1))
    );
    assert_eq!(same.hash, v1.hash);
    assert_eq!(lib.versions_of(&pid()).unwrap(), vec![1]);
    assert_eq!(lib_state(&lib_dir), before, "nothing stored");
    // Read in full, it is still unchanged.
    let same = snapshot(&mut lib, &src, None, Some(1)).unwrap();
    assert_eq!(same.unchanged_from, Some(1));
    assert_eq!(lib.versions_of(&pid()).unwrap(), vec![1]);

    // One byte changed: a version.
    std::fs::write(src.join("sub/a.txt"), b"A").unwrap();
    let v2 = snapshot(&mut lib, &src, Some(1), Some(1)).unwrap();
    assert_eq!((v2.version, v2.created, v2.unchanged_from), (2, true, None));
    // Only metadata changed (mode): a version too, as the manifest carries it.
    std::fs::set_permissions(src.join("b.bin"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let v3 = snapshot(&mut lib, &src, Some(2), Some(2)).unwrap();
    assert_eq!((v3.version, v3.unchanged_from), (3, None));
    assert_eq!(lib.versions_of(&pid()).unwrap(), vec![1, 2, 3]);
}
