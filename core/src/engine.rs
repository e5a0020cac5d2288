//! Block I/O engine: positioned reads and writes with many operations in flight.
//!
//! One thread owns an `io_uring` ring (the `io-uring` crate, used directly) and services
//! requests that arrive over a `crossbeam` channel; callers get a [`Pending`] handle per
//! operation and wait for it when they need the result, so they can keep dozens in flight.
//! Where io_uring is unavailable (kernel too old, disabled by sysctl, blocked by seccomp) the
//! same API is served by a small pool of threads doing `pread`/`pwrite`. The fallback can also
//! be forced, so both paths run the same tests.

use crate::error::{Error, Result};
use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender, TryRecvError, bounded, unbounded};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

/// Which I/O path to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IoMode {
    /// io_uring when the kernel allows it, else the fallback (logged once).
    #[default]
    Auto,
    /// io_uring or fail.
    Uring,
    /// Positioned reads and writes on worker threads.
    Fallback,
}

impl std::str::FromStr for IoMode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(IoMode::Auto),
            "uring" | "io_uring" => Ok(IoMode::Uring),
            "fallback" | "pread" => Ok(IoMode::Fallback),
            _ => Err(format!(
                "unknown I/O mode {s:?}; use auto, uring or fallback"
            )),
        }
    }
}

impl IoMode {
    /// The mode named by the `FREIGHT_IO` environment variable, if set and valid.
    pub fn from_env() -> Option<IoMode> {
        std::env::var("FREIGHT_IO").ok()?.parse().ok()
    }
}

/// The path an engine actually took.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineKind {
    /// io_uring.
    Uring,
    /// pread/pwrite threads.
    Fallback,
}

enum Op {
    Read {
        file: Arc<File>,
        offset: u64,
        len: usize,
        reply: Sender<io::Result<Vec<u8>>>,
    },
    Write {
        file: Arc<File>,
        offset: u64,
        data: Bytes,
        reply: Sender<io::Result<()>>,
    },
}

/// The result of one submitted operation, to be waited for.
#[must_use = "an I/O operation's result must be checked"]
pub struct Pending<T>(Receiver<io::Result<T>>);

impl<T> Pending<T> {
    /// Blocks until the operation completes.
    pub fn wait(self) -> io::Result<T> {
        self.0
            .recv()
            .unwrap_or_else(|_| Err(io::Error::other("I/O engine stopped")))
    }
}

struct Inner {
    tx: Option<Sender<Op>>,
    threads: Vec<JoinHandle<()>>,
    kind: EngineKind,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.tx.take();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A handle to the I/O engine; clones share it.
#[derive(Clone)]
pub struct Engine(Arc<Inner>);

static FALLBACK_LOGGED: AtomicBool = AtomicBool::new(false);
const DEPTH: u32 = 128;
const FALLBACK_THREADS: usize = 4;

impl Engine {
    /// Starts an engine in `mode`.
    pub fn new(mode: IoMode) -> Result<Engine> {
        let (tx, rx) = unbounded::<Op>();
        let uring = match mode {
            IoMode::Fallback => None,
            IoMode::Auto | IoMode::Uring => match io_uring::IoUring::new(DEPTH) {
                Ok(ring) => Some(ring),
                Err(e) if mode == IoMode::Uring => return Err(Error::UringUnavailable(e)),
                Err(e) => {
                    if !FALLBACK_LOGGED.swap(true, Ordering::Relaxed) {
                        tracing::warn!("io_uring unavailable ({e}); using positioned reads/writes");
                    }
                    None
                }
            },
        };
        let (kind, threads) = match uring {
            Some(ring) => {
                let t = std::thread::Builder::new()
                    .name("freight-uring".into())
                    .spawn(move || uring_loop(ring, rx))
                    .map_err(|e| Error::UringUnavailable(io::Error::other(e)))?;
                (EngineKind::Uring, vec![t])
            }
            None => {
                let mut v = Vec::new();
                for i in 0..FALLBACK_THREADS {
                    let rx = rx.clone();
                    let t = std::thread::Builder::new()
                        .name(format!("freight-io{i}"))
                        .spawn(move || fallback_loop(rx))
                        .map_err(|e| Error::io("<io thread>", "spawn", e))?;
                    v.push(t);
                }
                (EngineKind::Fallback, v)
            }
        };
        Ok(Engine(Arc::new(Inner {
            tx: Some(tx),
            threads,
            kind,
        })))
    }

    /// Which path this engine runs on.
    pub fn kind(&self) -> EngineKind {
        self.0.kind
    }

    fn submit(&self, op: Op) {
        // The receiver lives as long as `Inner`, which we hold.
        let _ = self.0.tx.as_ref().expect("engine running").send(op);
    }

    /// Reads up to `len` bytes at `offset`; the result is shorter only at end of file.
    pub fn read_at(&self, file: &Arc<File>, offset: u64, len: usize) -> Pending<Vec<u8>> {
        let (reply, rx) = bounded(1);
        self.submit(Op::Read {
            file: file.clone(),
            offset,
            len,
            reply,
        });
        Pending(rx)
    }

    /// Writes all of `data` at `offset`.
    pub fn write_at(&self, file: &Arc<File>, offset: u64, data: Bytes) -> Pending<()> {
        let (reply, rx) = bounded(1);
        self.submit(Op::Write {
            file: file.clone(),
            offset,
            data,
            reply,
        });
        Pending(rx)
    }
}

fn fallback_loop(rx: Receiver<Op>) {
    while let Ok(op) = rx.recv() {
        match op {
            Op::Read {
                file,
                offset,
                len,
                reply,
            } => {
                let mut buf = vec![0u8; len];
                let mut filled = 0;
                let res = loop {
                    if filled == len {
                        break Ok(());
                    }
                    match file.read_at(&mut buf[filled..], offset + filled as u64) {
                        Ok(0) => break Ok(()),
                        Ok(n) => filled += n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => break Err(e),
                    }
                };
                buf.truncate(filled);
                let _ = reply.send(res.map(|_| buf));
            }
            Op::Write {
                file,
                offset,
                data,
                reply,
            } => {
                let _ = reply.send(file.write_all_at(&data, offset));
            }
        }
    }
}

/// An operation the ring is working on; it owns the buffer the kernel reads from or writes to.
struct InFlight {
    op: Op,
    buf: Vec<u8>,
    done: usize,
}

fn push_sqe(ring: &mut io_uring::IoUring, slot: usize, f: &mut InFlight) {
    use io_uring::{opcode, types};
    let entry = match &f.op {
        Op::Read {
            file, offset, len, ..
        } => opcode::Read::new(
            types::Fd(file.as_raw_fd()),
            // SAFETY of the pointer: `buf` has capacity `len` and is not touched until the
            // completion for this slot arrives.
            unsafe { f.buf.as_mut_ptr().add(f.done) },
            (*len - f.done) as u32,
        )
        .offset(*offset + f.done as u64)
        .build(),
        Op::Write {
            file, offset, data, ..
        } => opcode::Write::new(
            types::Fd(file.as_raw_fd()),
            data[f.done..].as_ptr(),
            (data.len() - f.done).min(u32::MAX as usize) as u32,
        )
        .offset(*offset + f.done as u64)
        .build(),
    };
    let entry = entry.user_data(slot as u64);
    // SAFETY: the buffers referenced by the entry are owned by `slots[slot]`, which stays in
    // place until its completion is reaped. The queue has room: at most DEPTH ops are in
    // flight and each has at most one entry queued.
    unsafe {
        while ring.submission().push(&entry).is_err() {
            let _ = ring.submit();
        }
    }
}

fn uring_loop(mut ring: io_uring::IoUring, rx: Receiver<Op>) {
    let mut slots: Vec<Option<InFlight>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut inflight = 0usize;
    let mut closed = false;
    loop {
        // Take new work: block only when nothing is in flight.
        while inflight < DEPTH as usize && !closed {
            let op = if inflight == 0 {
                match rx.recv() {
                    Ok(op) => op,
                    Err(_) => {
                        closed = true;
                        break;
                    }
                }
            } else {
                match rx.try_recv() {
                    Ok(op) => op,
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        closed = true;
                        break;
                    }
                }
            };
            let buf = match &op {
                Op::Read { len, .. } => Vec::with_capacity(*len),
                Op::Write { .. } => Vec::new(),
            };
            let slot = free.pop().unwrap_or_else(|| {
                slots.push(None);
                slots.len() - 1
            });
            let f = slots[slot].insert(InFlight { op, buf, done: 0 });
            push_sqe(&mut ring, slot, f);
            inflight += 1;
        }
        if inflight == 0 {
            if closed {
                return;
            }
            continue;
        }
        if let Err(e) = ring.submit_and_wait(1) {
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            // The ring itself failed: fail everything in flight and stop.
            for f in slots.iter_mut().filter_map(Option::take) {
                finish(f, Err(io::Error::new(e.kind(), e.to_string())));
            }
            return;
        }
        let done: Vec<(usize, i32)> = ring
            .completion()
            .map(|c| (c.user_data() as usize, c.result()))
            .collect();
        for (slot, res) in done {
            let f = slots[slot].as_mut().expect("completion for a live slot");
            let outcome = if res < 0 {
                let err = io::Error::from_raw_os_error(-res);
                if matches!(-res, libc::EINTR | libc::EAGAIN) {
                    None
                } else {
                    Some(Err(err))
                }
            } else {
                let n = res as usize;
                f.done += n;
                match &f.op {
                    Op::Read { len, .. } if n == 0 || f.done == *len => {
                        // SAFETY: the kernel initialised `done` bytes of the buffer.
                        unsafe { f.buf.set_len(f.done) };
                        Some(Ok(()))
                    }
                    Op::Write { data, .. } if f.done == data.len() => Some(Ok(())),
                    Op::Write { .. } if n == 0 => Some(Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "write returned 0",
                    ))),
                    _ => None,
                }
            };
            match outcome {
                None => {
                    let f = slots[slot].as_mut().expect("live slot");
                    push_sqe(&mut ring, slot, f);
                }
                Some(r) => {
                    let f = slots[slot].take().expect("live slot");
                    free.push(slot);
                    inflight -= 1;
                    finish(f, r);
                }
            }
        }
    }
}

fn finish(f: InFlight, r: io::Result<()>) {
    match f.op {
        Op::Read { reply, .. } => {
            let _ = reply.send(r.map(|_| f.buf));
        }
        Op::Write { reply, .. } => {
            let _ = reply.send(r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(mode: IoMode) {
        let e = Engine::new(mode).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let f = Arc::new(
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(true)
                .read(true)
                .write(true)
                .open(&path)
                .unwrap(),
        );
        let blocks: Vec<Vec<u8>> = (0..64u8).map(|i| vec![i; 100_000 + i as usize]).collect();
        let mut off = 0u64;
        let mut pend = Vec::new();
        let mut offs = Vec::new();
        for b in &blocks {
            pend.push(e.write_at(&f, off, Bytes::from(b.clone())));
            offs.push(off);
            off += b.len() as u64;
        }
        for p in pend {
            p.wait().unwrap();
        }
        let reads: Vec<_> = offs
            .iter()
            .zip(&blocks)
            .map(|(o, b)| e.read_at(&f, *o, b.len()))
            .collect();
        for (r, b) in reads.into_iter().zip(&blocks) {
            assert_eq!(&r.wait().unwrap(), b);
        }
        // Reading past the end returns a short buffer, not an error.
        let tail = e.read_at(&f, off - 10, 1000).wait().unwrap();
        assert_eq!(tail.len(), 10);
        // Errors come back as errors: a write to a read-only file descriptor.
        let ro = Arc::new(std::fs::File::open(&path).unwrap());
        assert!(e.write_at(&ro, 0, Bytes::from_static(b"x")).wait().is_err());
    }

    #[test]
    fn uring_path_works_here() {
        let e = Engine::new(IoMode::Uring).expect("io_uring must be available on this machine");
        assert_eq!(e.kind(), EngineKind::Uring);
        roundtrip(IoMode::Uring);
    }

    #[test]
    fn fallback_path_works() {
        assert_eq!(
            Engine::new(IoMode::Fallback).unwrap().kind(),
            EngineKind::Fallback
        );
        roundtrip(IoMode::Fallback);
    }
}
