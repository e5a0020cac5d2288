//! Reading many chunks from the library in parallel: reads in flight on the engine,
//! decompression and hash checks on one worker per core.

use crate::error::{Error, Result};
use crate::id::ChunkId;
use crate::library::{Library, decode_chunk};
use crate::pack::Loc;
use crossbeam_channel::bounded;

/// Reads, decompresses and verifies each `(tag, chunk)` of `items`, calling `sink` with the
/// chunk's bytes (or the reason it is bad) in completion order, on the calling thread.
/// `window` bounds the chunks in flight. A `sink` error stops the stream and is returned.
pub fn for_each_chunk<T, I, S>(lib: &Library, items: I, window: usize, mut sink: S) -> Result<()>
where
    T: Send,
    I: Iterator<Item = (T, ChunkId)> + Send,
    S: FnMut(T, ChunkId, Result<Vec<u8>>) -> Result<()>,
{
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|s| {
        let (work_tx, work_rx) = bounded(window.max(1));
        let (done_tx, done_rx) = bounded(window.max(1));
        s.spawn(move || {
            for (tag, id) in items {
                let item = match lib.locate(&id) {
                    None => (tag, id, None, Err(missing(&id))),
                    Some(loc) => match lib.read_checked(&id, &loc) {
                        Ok(p) => (tag, id, Some(loc), Ok(p)),
                        Err(e) => (tag, id, Some(loc), Err(e)),
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
                for (tag, id, loc, pending) in rx.iter() {
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
                    if tx.send((tag, id, res)).is_err() {
                        return;
                    }
                }
            });
        }
        drop(work_rx);
        drop(done_tx);
        for (tag, id, res) in done_rx.iter() {
            sink(tag, id, res)?;
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
