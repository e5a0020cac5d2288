//! Reading many chunks from the library in parallel: reads in flight on the engine,
//! decompression and hash checks on one worker per core.

use crate::error::{Error, Result};
use crate::id::ChunkId;
use crate::library::{Library, decode_chunk};
use crate::pack::Loc;
use crossbeam_channel::bounded;
use std::sync::{Condvar, Mutex};

/// Most bytes of chunks (stored and decoded) in flight in [`for_each_chunk`] at once, beyond
/// its first chunk: the window counts chunks, and 64 chunks of a large file (up to 4 MiB
/// each, held stored and decoded) would otherwise take hundreds of MiB.
pub const MAX_BYTES_IN_FLIGHT: u64 = 32 << 20;

/// Bytes in flight, and whether the consumer stopped (so a reader waiting for room gives up).
#[derive(Default)]
struct Budget {
    state: Mutex<(u64, bool)>,
    room: Condvar,
}

impl Budget {
    /// Waits until `n` more bytes fit (always when nothing is in flight); false once stopped.
    fn take(&self, n: u64) -> bool {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        while !st.1 && st.0 > 0 && st.0 + n > MAX_BYTES_IN_FLIGHT {
            st = self.room.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        st.0 += n;
        !st.1
    }

    fn give(&self, n: u64) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.0 = st.0.saturating_sub(n);
        self.room.notify_all();
    }

    fn stop(&self) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).1 = true;
        self.room.notify_all();
    }
}

/// Reads, decompresses and verifies each `(tag, chunk)` of `items`, calling `sink` with the
/// chunk's bytes (or the reason it is bad) in completion order, on the calling thread.
/// `window` bounds the chunks in flight, [`MAX_BYTES_IN_FLIGHT`] their bytes. A `sink` error
/// stops the stream and is returned.
pub fn for_each_chunk<T, I, S>(lib: &Library, items: I, window: usize, mut sink: S) -> Result<()>
where
    T: Send,
    I: Iterator<Item = (T, ChunkId)> + Send,
    S: FnMut(T, ChunkId, Result<Vec<u8>>) -> Result<()>,
{
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let budget = Budget::default();
    std::thread::scope(|s| {
        let (work_tx, work_rx) = bounded(window.max(1));
        let (done_tx, done_rx) = bounded(window.max(1));
        let budget = &budget;
        s.spawn(move || {
            for (tag, id) in items {
                let loc = lib.locate(&id);
                // Stored and decoded bytes both live until the sink has taken the chunk.
                let cost = loc.map_or(0, |l| u64::from(l.clen) + u64::from(l.ulen));
                if !budget.take(cost) {
                    return;
                }
                let item = match loc {
                    None => (tag, id, None, cost, Err(missing(&id))),
                    Some(loc) => match lib.read_checked(&id, &loc) {
                        Ok(p) => (tag, id, Some(loc), cost, Ok(p)),
                        Err(e) => (tag, id, Some(loc), cost, Err(e)),
                    },
                };
                if work_tx.send(item).is_err() {
                    return;
                }
            }
        });
        for _ in 0..workers {
            let rx = work_rx.clone();
            let tx = done_tx.clone();
            s.spawn(move || {
                for (tag, id, loc, cost, pending) in rx.iter() {
                    let res = pending.and_then(|p| {
                        let loc: Loc = loc.expect("located");
                        let pack = p.path.clone();
                        let stored = p.wait()?;
                        decode_chunk(&id, &loc, &stored).map_err(|reason| Error::CorruptChunk {
                            id: id.to_hex(),
                            pack,
                            reason,
                        })
                    });
                    if tx.send((tag, id, cost, res)).is_err() {
                        return;
                    }
                }
            });
        }
        drop(work_rx);
        drop(done_tx);
        for (tag, id, cost, res) in done_rx.iter() {
            let r = sink(tag, id, res);
            budget.give(cost);
            if let Err(e) = r {
                // The reader may be waiting for room that will never be given back.
                budget.stop();
                return Err(e);
            }
        }
        Ok(())
    })
}

fn missing(id: &ChunkId) -> Error {
    Error::MissingChunk {
        id: id.to_hex(),
        package: "?".into(),
        version: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn the_budget_admits_one_chunk_of_any_size_then_waits_for_room() {
        let b = Arc::new(Budget::default());
        // Nothing in flight: even a chunk larger than the budget goes.
        assert!(b.take(MAX_BYTES_IN_FLIGHT + 1));
        let (tx, rx) = std::sync::mpsc::channel();
        let b2 = b.clone();
        let t = std::thread::spawn(move || {
            let ok = b2.take(1);
            tx.send(ok).unwrap();
        });
        // The second waits while the first is in flight ...
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
        // ... and goes when it is given back.
        b.give(MAX_BYTES_IN_FLIGHT + 1);
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok(true));
        t.join().unwrap();
    }

    #[test]
    fn a_stopped_budget_releases_a_waiting_reader() {
        let b = Arc::new(Budget::default());
        assert!(b.take(MAX_BYTES_IN_FLIGHT));
        let b2 = b.clone();
        let t = std::thread::spawn(move || b2.take(1));
        std::thread::sleep(Duration::from_millis(50));
        b.stop();
        assert!(!t.join().unwrap(), "a stopped budget says so");
    }
}
