//! Block I/O engine: positioned reads and writes with many operations in flight.
//!
//! One thread owns an `io_uring` ring (the `io-uring` crate, used directly) and services
//! requests that arrive over a `crossbeam` channel; callers get a [`Pending`] handle per
//! operation and wait for it when they need the result, so they can keep dozens in flight.
//! Where io_uring is unavailable (kernel too old or lacking an opcode the engine needs, disabled
//! by sysctl, blocked by seccomp) the same API is served by a small pool of threads doing
//! `pread`/`pwrite`. The fallback can also be forced, so both paths run the same tests.
//!
//! # Buffers and ring failures
//! The kernel reads from and writes into an operation's buffer until it posts the operation's
//! completion, so a buffer is freed only after its completion was reaped. When the ring fails
//! (`io_uring_enter` returns an error other than EINTR/EBUSY/EAGAIN) or the engine thread
//! panics with operations in flight, the engine asks the kernel to cancel every one of them
//! and waits (a bounded time) for their completions; operations it gets back are carried over
//! to a new ring (or, when no ring can be made, finished with positioned I/O, for good), so
//! callers see their results as if nothing happened. An operation the kernel never gives back
//! is answered with an error and its buffer is deliberately leaked, never freed. Either event
//! is logged once per engine.

use crate::error::{Error, Result};
use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender, TryRecvError, bounded, unbounded};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Which I/O path to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IoMode {
    /// io_uring when the kernel allows it and supports the operations the engine needs, else
    /// the fallback (logged once).
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

/// An offset meaning "the file's current position", for streams (pipes, sockets) that have
/// no offsets; io_uring reads and writes at it, the fallback uses plain `read`/`write`.
pub const AT_CURRENT: u64 = u64::MAX;

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

/// Faults a test can make the engine meet (see [`Engine::inject`]).
#[cfg(any(test, feature = "fault-injection"))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The next submit-and-wait submits what is queued, then fails as if the ring broke, with
    /// those operations in the kernel.
    FailSubmit,
    /// The engine thread panics right after its next submission, with that batch in flight.
    PanicMidBatch,
    /// The next attempt to make a new ring after a failure fails (the engine falls back).
    NoNewRing,
}

/// Armed faults, each taken once.
#[derive(Default)]
struct Faults {
    fail_submit: AtomicBool,
    panic_mid_batch: AtomicBool,
    no_new_ring: AtomicBool,
}

impl Faults {
    fn take(flag: &AtomicBool) -> bool {
        flag.swap(false, Ordering::Relaxed)
    }
}

const KIND_URING: u8 = 0;
const KIND_FALLBACK: u8 = 1;

/// What the engine's callers and its thread share.
struct Shared {
    kind: AtomicU8,
    faults: Faults,
}

struct Inner {
    tx: Option<Sender<Op>>,
    threads: Vec<JoinHandle<()>>,
    shared: Arc<Shared>,
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
/// `user_data` bit marking a cancel request's own completion.
const CANCEL_TAG: u64 = 1 << 63;
/// How long a failed ring is given to hand back its operations.
const RECLAIM_TIMEOUT: Duration = Duration::from_secs(5);

/// A ring that supports every operation the engine uses.
fn new_ring() -> io::Result<io_uring::IoUring> {
    use io_uring::opcode;
    let ring = io_uring::IoUring::new(DEPTH)?;
    if !ring.params().is_feature_ext_arg() {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "kernel lacks io_uring wait timeouts (Linux 5.11+)",
        ));
    }
    let mut probe = io_uring::Probe::new();
    ring.submitter().register_probe(&mut probe)?;
    for (code, name) in [
        (opcode::Read::CODE, "read"),
        (opcode::Write::CODE, "write"),
        (opcode::AsyncCancel::CODE, "cancel"),
    ] {
        if !probe.is_supported(code) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("kernel lacks the io_uring {name} operation"),
            ));
        }
    }
    Ok(ring)
}

impl Engine {
    /// Starts an engine in `mode`.
    pub fn new(mode: IoMode) -> Result<Engine> {
        let (tx, rx) = unbounded::<Op>();
        let uring = match mode {
            IoMode::Fallback => None,
            IoMode::Auto | IoMode::Uring => match new_ring() {
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
        let shared = Arc::new(Shared {
            kind: AtomicU8::new(if uring.is_some() {
                KIND_URING
            } else {
                KIND_FALLBACK
            }),
            faults: Faults::default(),
        });
        let threads = match uring {
            Some(ring) => {
                let sh = shared.clone();
                let t = std::thread::Builder::new()
                    .name("freight-uring".into())
                    .spawn(move || uring_thread(ring, rx, sh))
                    .map_err(|e| Error::UringUnavailable(io::Error::other(e)))?;
                vec![t]
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
                v
            }
        };
        Ok(Engine(Arc::new(Inner {
            tx: Some(tx),
            threads,
            shared,
        })))
    }

    /// Which path this engine runs on now (an io_uring engine whose ring failed and could
    /// not be replaced runs on the fallback from then on).
    pub fn kind(&self) -> EngineKind {
        match self.0.shared.kind.load(Ordering::Relaxed) {
            KIND_URING => EngineKind::Uring,
            _ => EngineKind::Fallback,
        }
    }

    /// Arms `fault` for the engine's next occasion to meet it (tests only).
    #[cfg(any(test, feature = "fault-injection"))]
    pub fn inject(&self, fault: Fault) {
        let f = &self.0.shared.faults;
        match fault {
            Fault::FailSubmit => f.fail_submit.store(true, Ordering::Relaxed),
            Fault::PanicMidBatch => f.panic_mid_batch.store(true, Ordering::Relaxed),
            Fault::NoNewRing => f.no_new_ring.store(true, Ordering::Relaxed),
        }
    }

    fn submit(&self, op: Op) {
        // The receiver lives as long as `Inner`, which we hold.
        let _ = self.0.tx.as_ref().expect("engine running").send(op);
    }

    /// Reads up to `len` bytes at `offset` (or [`AT_CURRENT`]); the result is shorter only at
    /// end of file.
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

    /// Writes all of `data` at `offset` (or [`AT_CURRENT`]).
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

/// `offset + done`, keeping [`AT_CURRENT`] as it is.
fn at(offset: u64, done: usize) -> u64 {
    if offset == AT_CURRENT {
        AT_CURRENT
    } else {
        offset + done as u64
    }
}

fn read_some(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    if offset == AT_CURRENT {
        io::Read::read(&mut &*file, buf)
    } else {
        file.read_at(buf, offset)
    }
}

/// Reads into `buf` until it is full or the file ends; returns the bytes read.
fn read_full(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match read_some(file, &mut buf[filled..], at(offset, filled)) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

fn write_full(file: &File, data: &[u8], offset: u64) -> io::Result<()> {
    if offset == AT_CURRENT {
        io::Write::write_all(&mut &*file, data)
    } else {
        file.write_all_at(data, offset)
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
                let res = read_full(&file, &mut buf, offset).map(|n| {
                    buf.truncate(n);
                    buf
                });
                let _ = reply.send(res);
            }
            Op::Write {
                file,
                offset,
                data,
                reply,
            } => {
                let _ = reply.send(write_full(&file, &data, offset));
            }
        }
    }
}

/// An operation the ring is working on; it owns the buffer the kernel reads from or writes to.
struct InFlight {
    op: Op,
    buf: Vec<u8>,
    done: usize,
    /// Whether its entry is queued on the ring or in the kernel (false: parked, to push).
    in_kernel: bool,
}

impl InFlight {
    fn new(op: Op) -> InFlight {
        let buf = match &op {
            Op::Read { len, .. } => Vec::with_capacity(*len),
            Op::Write { .. } => Vec::new(),
        };
        InFlight {
            op,
            buf,
            done: 0,
            in_kernel: false,
        }
    }

    /// Accounts for one completion: `Some(result)` when the operation is over, `None` when the
    /// rest must be submitted again (a short transfer, EINTR, EAGAIN, a cancel).
    fn progress(&mut self, res: i32) -> Option<io::Result<()>> {
        if res < 0 {
            return match -res {
                libc::EINTR | libc::EAGAIN | libc::ECANCELED => None,
                e => Some(Err(io::Error::from_raw_os_error(e))),
            };
        }
        let n = res as usize;
        self.done += n;
        match &self.op {
            Op::Read { len, .. } if n == 0 || self.done == *len => {
                // SAFETY: the kernel initialised `done` bytes of the buffer (capacity `len`).
                unsafe { self.buf.set_len(self.done) };
                Some(Ok(()))
            }
            Op::Write { data, .. } if self.done == data.len() => Some(Ok(())),
            Op::Write { .. } if n == 0 => Some(Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "write returned 0",
            ))),
            _ => None,
        }
    }

    /// Finishes the rest with positioned I/O on this thread (no ring left to do it).
    fn finish_positioned(mut self) {
        let res = match &self.op {
            Op::Read {
                file, offset, len, ..
            } => {
                // SAFETY: the kernel initialised the first `done` bytes; the rest is zeroed.
                unsafe { self.buf.set_len(self.done) };
                self.buf.resize(*len, 0);
                let (file, offset, done) = (file.clone(), *offset, self.done);
                read_full(&file, &mut self.buf[done..], at(offset, done)).map(|n| {
                    self.buf.truncate(done + n);
                })
            }
            Op::Write {
                file, offset, data, ..
            } => write_full(file, &data[self.done..], at(*offset, self.done)),
        };
        finish(self, res);
    }

    /// Answers the caller with an error and leaks the buffer: the kernel may still be using it
    /// and never said it stopped, so freeing it could let the kernel write into memory that
    /// belongs to something else by then.
    fn abandon(self) {
        let InFlight { op, buf, .. } = self;
        std::mem::forget(buf);
        let e = || {
            io::Error::other(
                "the I/O engine's ring failed and the kernel did not give this operation back; retry",
            )
        };
        match op {
            Op::Read { reply, .. } => {
                let _ = reply.send(Err(e()));
            }
            Op::Write { data, reply, .. } => {
                std::mem::forget(data);
                let _ = reply.send(Err(e()));
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

/// A ring and the operations it holds.
struct Ring {
    ring: io_uring::IoUring,
    slots: Vec<Option<InFlight>>,
    free: Vec<usize>,
    inflight: usize,
    /// Operations whose entry could not be queued yet.
    parked: usize,
}

impl Ring {
    fn new(ring: io_uring::IoUring) -> Ring {
        Ring {
            ring,
            slots: Vec::new(),
            free: Vec::new(),
            inflight: 0,
            parked: 0,
        }
    }

    /// Queues `entry`, submitting to make room if needed.
    fn push(&mut self, entry: &io_uring::squeue::Entry) -> io::Result<()> {
        for _ in 0..100 {
            // SAFETY: every buffer an entry references is owned by a slot that stays in place
            // until the entry's completion is reaped (or is leaked, see `InFlight::abandon`).
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                return Ok(());
            }
            match self.ring.submit() {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EINTR | libc::EBUSY | libc::EAGAIN)
                    ) =>
                {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::other("the io_uring submission queue stays full"))
    }

    /// Queues the rest of the operation in `slot`; on failure it stays parked.
    fn push_sqe(&mut self, slot: usize) -> io::Result<()> {
        use io_uring::{opcode, types};
        let f = self.slots[slot].as_mut().expect("live slot");
        let entry = match &f.op {
            Op::Read {
                file, offset, len, ..
            } => opcode::Read::new(
                types::Fd(file.as_raw_fd()),
                // The buffer has capacity `len` and is not touched until this slot's
                // completion arrives.
                f.buf.spare_capacity_mut()[f.done..]
                    .as_mut_ptr()
                    .cast::<u8>(),
                (*len - f.done).min(u32::MAX as usize) as u32,
            )
            .offset(at(*offset, f.done))
            .build(),
            Op::Write {
                file, offset, data, ..
            } => opcode::Write::new(
                types::Fd(file.as_raw_fd()),
                data[f.done..].as_ptr(),
                (data.len() - f.done).min(u32::MAX as usize) as u32,
            )
            .offset(at(*offset, f.done))
            .build(),
        };
        let res = self.push(&entry.user_data(slot as u64));
        let f = self.slots[slot].as_mut().expect("live slot");
        f.in_kernel = res.is_ok();
        if res.is_err() {
            self.parked += 1;
        }
        res
    }

    fn start(&mut self, f: InFlight) -> io::Result<()> {
        let slot = self.free.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.slots.len() - 1
        });
        self.slots[slot] = Some(f);
        self.inflight += 1;
        self.push_sqe(slot)
    }

    /// Queues the operations a failed push left parked.
    fn push_parked(&mut self) -> io::Result<()> {
        if self.parked == 0 {
            return Ok(());
        }
        self.parked = 0;
        for slot in 0..self.slots.len() {
            if self.slots[slot].as_ref().is_some_and(|f| !f.in_kernel) {
                self.push_sqe(slot)?;
            }
        }
        Ok(())
    }

    /// Handles one completion of an operation (not of a cancel request).
    fn complete(&mut self, slot: usize, res: i32) -> io::Result<()> {
        let Some(f) = self.slots.get_mut(slot).and_then(Option::as_mut) else {
            tracing::warn!(slot, "io_uring completion for no operation; ignored");
            return Ok(());
        };
        f.in_kernel = false;
        match f.progress(res) {
            None => self.push_sqe(slot)?,
            Some(r) => {
                let f = self.slots[slot].take().expect("live slot");
                self.free.push(slot);
                self.inflight -= 1;
                finish(f, r);
            }
        }
        Ok(())
    }

    /// Serves requests until the channel closes (and nothing is in flight) or the ring fails.
    fn serve(&mut self, rx: &Receiver<Op>, faults: &Faults) -> io::Result<()> {
        let mut closed = false;
        loop {
            // Take new work: block only when nothing is in flight.
            while self.inflight < DEPTH as usize && !closed {
                let op = if self.inflight == 0 {
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
                self.start(InFlight::new(op))?;
            }
            self.push_parked()?;
            if self.inflight == 0 {
                if closed {
                    return Ok(());
                }
                continue;
            }
            if Faults::take(&faults.fail_submit) {
                let _ = self.ring.submit();
                return Err(io::Error::other("injected ring failure"));
            }
            if Faults::take(&faults.panic_mid_batch) {
                let _ = self.ring.submit();
                panic!("injected panic with a batch in flight");
            }
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                // The completion queue is full or the kernel is short of memory: reap, retry.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY | libc::EAGAIN)) => {
                    if self.ring.completion().is_empty() {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
                Err(e) => return Err(e),
            }
            let done: Vec<(u64, i32)> = self
                .ring
                .completion()
                .map(|c| (c.user_data(), c.result()))
                .collect();
            for (ud, res) in done {
                if ud & CANCEL_TAG == 0 {
                    self.complete(ud as usize, res)?;
                }
            }
        }
    }

    /// Gets every operation back from the kernel after a failure: cancels them all, waits for
    /// their completions, and returns those to carry over (finished ones are answered). What
    /// the kernel does not give back within [`RECLAIM_TIMEOUT`] is abandoned (buffer leaked).
    fn reclaim(&mut self) -> Vec<InFlight> {
        let mut carry = Vec::new();
        self.parked = 0;
        // Parked operations never reached the ring: they are ours already.
        for slot in 0..self.slots.len() {
            if self.slots[slot].as_ref().is_some_and(|f| !f.in_kernel) {
                carry.extend(self.slots[slot].take());
                self.free.push(slot);
                self.inflight -= 1;
            }
        }
        let live: Vec<usize> = (0..self.slots.len())
            .filter(|i| self.slots[*i].is_some())
            .collect();
        for slot in live {
            let cancel = io_uring::opcode::AsyncCancel::new(slot as u64)
                .build()
                .user_data(CANCEL_TAG | slot as u64);
            if self.push(&cancel).is_err() {
                // The ring takes nothing more; operations may still complete on their own.
                break;
            }
        }
        let deadline = Instant::now() + RECLAIM_TIMEOUT;
        while self.inflight > 0 && Instant::now() < deadline {
            let ts = io_uring::types::Timespec::new().nsec(50_000_000);
            let args = io_uring::types::SubmitArgs::new().timespec(&ts);
            match self.ring.submitter().submit_with_args(1, &args) {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN)
                    ) => {}
                // The ring cannot even be waited on: what is left is abandoned below.
                Err(_) => break,
            }
            let done: Vec<(u64, i32)> = self
                .ring
                .completion()
                .map(|c| (c.user_data(), c.result()))
                .collect();
            for (ud, res) in done {
                if ud & CANCEL_TAG != 0 {
                    continue;
                }
                let slot = ud as usize;
                let Some(mut f) = self.slots.get_mut(slot).and_then(Option::take) else {
                    continue;
                };
                f.in_kernel = false;
                self.free.push(slot);
                self.inflight -= 1;
                match f.progress(res) {
                    Some(r) => finish(f, r),
                    None => carry.push(f),
                }
            }
        }
        for f in self.slots.iter_mut().filter_map(Option::take) {
            f.abandon();
        }
        self.inflight = 0;
        carry
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // Never free a buffer the kernel may still use: get the operations back first.
        for f in self.reclaim() {
            finish(f, Err(io::Error::other("I/O engine stopped")));
        }
    }
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}

/// The io_uring thread: serves, and after a ring failure or a panic gets its operations back
/// and carries on with a new ring, or with positioned I/O when none can be made.
fn uring_thread(ring: io_uring::IoUring, rx: Receiver<Op>, shared: Arc<Shared>) {
    let mut st = Ring::new(ring);
    let mut told = false;
    loop {
        let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            st.serve(&rx, &shared.faults)
        }));
        let why = match res {
            Ok(Ok(())) => return,
            Ok(Err(e)) => format!("ring failed ({e})"),
            Err(p) => format!("thread panicked ({})", panic_text(&*p)),
        };
        let carry = st.reclaim();
        let next = if Faults::take(&shared.faults.no_new_ring) {
            Err(io::Error::other("injected: no new ring"))
        } else {
            new_ring()
        };
        match next {
            Ok(ring) => {
                if !told {
                    tracing::warn!(
                        "io_uring engine: {why}; started a new ring and carried over {} operations in flight",
                        carry.len()
                    );
                    told = true;
                } else {
                    tracing::debug!("io_uring engine: {why}; started a new ring again");
                }
                st = Ring::new(ring);
                for f in carry {
                    // One that cannot be queued stays parked; serving queues it again.
                    let _ = st.start(f);
                }
            }
            Err(e) => {
                tracing::warn!(
                    "io_uring engine: {why}, and no new ring can be made ({e}); using positioned reads/writes from now on"
                );
                shared.kind.store(KIND_FALLBACK, Ordering::Relaxed);
                drop(st);
                for f in carry {
                    f.finish_positioned();
                }
                for i in 1..FALLBACK_THREADS {
                    let rx = rx.clone();
                    let _ = std::thread::Builder::new()
                        .name(format!("freight-io{i}"))
                        .spawn(move || fallback_loop(rx));
                }
                fallback_loop(rx);
                return;
            }
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
