//! Fault injection into the io_uring engine: its ring fails, or its thread panics, while the
//! kernel holds a read that is still waiting for data (a pipe nobody has written to yet).
//!
//! The kernel writes into a read's buffer whenever the data comes, so freeing the buffer
//! before the kernel has handed the operation back would let it write into freed memory. A
//! buffer-poisoning allocator catches exactly that: every freed block of the size these reads
//! use is filled with a pattern and never reused; after the pipe is written, every such block
//! must still hold only the pattern. Then the engine must still work: the waiting read gets its
//! data, and new I/O succeeds (on a new ring, or on positioned I/O when no ring can be made).

use bytes::Bytes;
use freight_core::engine::{AT_CURRENT, Fault};
use freight_core::{Engine, EngineKind, IoMode};

use std::alloc::{GlobalAlloc, Layout, System};
use std::fs::File;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Reads in these tests use this length, which nothing else in the process allocates.
const LEN: usize = 40_007;
const POISON: u8 = 0xA5;
const QUARANTINE: usize = 1024;

/// Blocks of `LEN` bytes are poisoned and kept on free; everything else goes to the system.
struct Poisoning;

static KEPT: [AtomicUsize; QUARANTINE] = [const { AtomicUsize::new(0) }; QUARANTINE];
static KEPT_N: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Poisoning {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if layout.size() == LEN {
            let i = KEPT_N.fetch_add(1, Ordering::SeqCst);
            if i < QUARANTINE {
                unsafe { std::ptr::write_bytes(ptr, POISON, LEN) };
                KEPT[i].store(ptr as usize, Ordering::SeqCst);
                return;
            }
        }
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Poisoning = Poisoning;

/// Every freed `LEN`-byte block still holds only the poison: nothing wrote to freed memory.
fn assert_no_write_after_free() {
    let n = KEPT_N.load(Ordering::SeqCst).min(QUARANTINE);
    for slot in KEPT.iter().take(n) {
        let p = slot.load(Ordering::SeqCst);
        if p == 0 {
            continue;
        }
        // SAFETY: the block was allocated with LEN bytes and is never given back.
        let block = unsafe { std::slice::from_raw_parts(p as *const u8, LEN) };
        let bad = block.iter().filter(|b| **b != POISON).count();
        assert_eq!(bad, 0, "{bad} bytes written into a freed I/O buffer");
    }
}

fn pipe() -> (Arc<File>, File) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills both descriptors, which we then own.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    let (r, w) = unsafe {
        (
            File::from(OwnedFd::from_raw_fd(fds[0])),
            File::from(OwnedFd::from_raw_fd(fds[1])),
        )
    };
    (Arc::new(r), w)
}

/// A file round trip on `e`.
fn file_io_works(e: &Engine) {
    let dir = tempfile::tempdir().unwrap();
    let f = Arc::new(
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(dir.path().join("f"))
            .unwrap(),
    );
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    e.write_at(&f, 4096, Bytes::from(data.clone()))
        .wait()
        .unwrap();
    assert_eq!(e.read_at(&f, 4096, data.len()).wait().unwrap(), data);
}

/// Arms `fault` (and `then`), starts a pipe read of `LEN` that meets it while the kernel holds
/// it (nothing was written yet), then writes the pipe: the read returns exactly the written
/// bytes, and no freed buffer was written to.
fn fault_with_a_read_in_the_kernel(fault: Fault, then: Option<Fault>) -> Engine {
    let e = Engine::new(IoMode::Uring).expect("io_uring must be available on this machine");
    let (r, mut w) = pipe();
    if let Some(f) = then {
        e.inject(f);
    }
    e.inject(fault);
    let waiting = e.read_at(&r, AT_CURRENT, LEN);
    // The engine meets the fault and recovers while the read waits for data.
    std::thread::sleep(Duration::from_millis(200));
    let sent: Vec<u8> = (0..LEN).map(|i| (i % 7) as u8 + 1).collect();
    std::io::Write::write_all(&mut w, &sent[..LEN / 2]).unwrap();
    std::io::Write::write_all(&mut w, &sent[LEN / 2..]).unwrap();
    let got = waiting.wait();
    std::thread::sleep(Duration::from_millis(100));
    assert_no_write_after_free();
    let bytes = got.expect("the read in flight was carried over");
    assert!(bytes == sent, "the carried-over read returned other bytes");
    e
}

#[test]
fn a_failing_submit_frees_no_buffer_the_kernel_holds_and_the_engine_goes_on() {
    let e = fault_with_a_read_in_the_kernel(Fault::FailSubmit, None);
    assert_eq!(
        e.kind(),
        EngineKind::Uring,
        "a new ring replaces the failed one"
    );
    file_io_works(&e);
}

#[test]
fn a_panic_mid_batch_frees_no_buffer_the_kernel_holds_and_the_engine_goes_on() {
    let e = fault_with_a_read_in_the_kernel(Fault::PanicMidBatch, None);
    assert_eq!(e.kind(), EngineKind::Uring);
    file_io_works(&e);
    // And again: the engine survives more than one failure.
    let e2 = fault_with_a_read_in_the_kernel(Fault::PanicMidBatch, None);
    file_io_works(&e2);
}

#[test]
fn without_a_new_ring_the_engine_falls_back_to_positioned_io() {
    let e = fault_with_a_read_in_the_kernel(Fault::FailSubmit, Some(Fault::NoNewRing));
    assert_eq!(e.kind(), EngineKind::Fallback);
    file_io_works(&e);
}
