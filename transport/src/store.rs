//! A content library shared by every session of one process.
//!
//! Sessions read the library in parallel (which chunks it lacks, chunk bytes to send). Writes
//! go through one store thread, because a library takes one append transaction at a time:
//! sessions hand it verified chunks, it appends them through the block engine and commits
//! (fdatasync, then index) every [`COMMIT_BYTES`] and whenever a session asks it to flush. A
//! committed chunk survives a cut connection or a crash, so the next session does not ask for
//! it again; what was appended but not committed when the process dies is re-sent (see
//! [`crate::session::in_flight_window`] for the whole bound).

use crate::error::{Error, Result};
use freight_core::writer::Writer;
use freight_core::{ChunkId, Library, Manifest};
use std::collections::HashSet;
use std::sync::{Arc, RwLock, RwLockReadGuard};
use tokio::sync::{mpsc, oneshot};

/// Appended bytes after which the store thread commits on its own, by default.
pub const COMMIT_BYTES: u64 = 16 << 20;
/// Verified chunks queued for the store thread at most (bounds memory and what a crash loses).
pub const STORE_QUEUE: usize = 4;

enum Cmd {
    Append(ChunkId, u32, u8, Vec<u8>),
    Flush(oneshot::Sender<Result<()>>),
    Stop(oneshot::Sender<Result<()>>),
    Exclusive(Box<dyn FnOnce(&mut Library) + Send>),
}

/// A library open for writing, shared by sessions (cheap to clone).
#[derive(Clone)]
pub struct SharedLibrary {
    lib: Arc<RwLock<Library>>,
    tx: mpsc::Sender<Cmd>,
}

impl std::fmt::Debug for SharedLibrary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedLibrary")
            .field("dir", &self.read().dir())
            .finish_non_exhaustive()
    }
}

impl SharedLibrary {
    /// Shares `lib` (opened for writing) and starts its store thread, which ends when the last
    /// clone is dropped. Commits every [`COMMIT_BYTES`].
    pub fn new(lib: Library) -> SharedLibrary {
        Self::with_commit_bytes(lib, COMMIT_BYTES)
    }

    /// Like [`new`](Self::new), committing every `commit_bytes` appended: smaller batches lose
    /// less to a crash, larger ones sync less often.
    pub fn with_commit_bytes(lib: Library, commit_bytes: u64) -> SharedLibrary {
        let lib = Arc::new(RwLock::new(lib));
        let (tx, rx) = mpsc::channel(STORE_QUEUE);
        let worker = Store {
            commit_bytes,
            lib: lib.clone(),
            writer: None,
            pending: HashSet::new(),
            pending_bytes: 0,
            failed: None,
        };
        std::thread::Builder::new()
            .name("freight-store".into())
            .spawn(move || worker.run(rx))
            .expect("spawn the store thread");
        SharedLibrary { lib, tx }
    }

    /// Read access to the library.
    pub fn read(&self) -> RwLockReadGuard<'_, Library> {
        self.lib.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a verified chunk in its stored form (a receiver's `Store` event).
    pub async fn append(&self, id: ChunkId, ulen: u32, flags: u8, data: Vec<u8>) -> Result<()> {
        self.tx
            .send(Cmd::Append(id, ulen, flags, data))
            .await
            .map_err(|_| stopped())
    }

    /// Commits everything queued so far. Returns the store's first error since the last flush
    /// (then the chunks queued since that error were dropped and the session must fail).
    pub async fn flush(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Cmd::Flush(tx)).await.map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// The chunks of `m` the library lacks (after a flush, so queued chunks count).
    pub async fn lacking(&self, m: &Manifest) -> Result<Vec<ChunkId>> {
        self.flush().await?;
        Ok(self.read().missing(m))
    }

    /// Flushes, then stores `m` (all its chunks must be present). Returns false when the same
    /// version was already stored with identical content.
    pub async fn commit_manifest(&self, m: &Manifest) -> Result<bool> {
        self.flush().await?;
        let lib = self.lib.clone();
        let m = m.clone();
        // Manifest writes fsync: keep them off the async workers.
        tokio::task::spawn_blocking(move || {
            let mut guard = lib.write().unwrap_or_else(|e| e.into_inner());
            guard.store_manifest(&m).map_err(Error::from)
        })
        .await
        .map_err(|_| stopped())?
    }

    /// Commits what is queued, stops the store thread and gives the library back. Fails when
    /// other handles (running sessions) still share it.
    pub async fn close(self) -> Result<Library> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Cmd::Stop(tx)).await.map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())??;
        let SharedLibrary { lib, tx } = self;
        drop(tx);
        let lib = Arc::try_unwrap(lib).map_err(|_| {
            Error::Misuse(
                "the library is still shared by running sessions; close it after they end".into(),
            )
        })?;
        Ok(lib.into_inner().unwrap_or_else(|e| e.into_inner()))
    }

    /// Runs `f` on the store thread with exclusive access, after the open batch is committed,
    /// so maintenance that writes packs (gc, removing versions) never races the store's own
    /// writer. Receiving sessions wait meanwhile.
    pub async fn exclusive<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Library) -> T + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        let job = Box::new(move |lib: &mut Library| {
            let _ = tx.send(f(lib));
        });
        self.tx
            .send(Cmd::Exclusive(job))
            .await
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())
    }
}

fn stopped() -> Error {
    Error::Misuse(
        "the library's store thread has stopped (it panicked); restart the process".into(),
    )
}

/// The store thread's state.
struct Store {
    commit_bytes: u64,
    lib: Arc<RwLock<Library>>,
    writer: Option<Writer>,
    pending: HashSet<ChunkId>,
    pending_bytes: u64,
    failed: Option<freight_core::Error>,
}

impl Store {
    fn run(mut self, mut rx: mpsc::Receiver<Cmd>) {
        while let Some(cmd) = rx.blocking_recv() {
            match cmd {
                Cmd::Append(id, ulen, flags, data) => {
                    if self.failed.is_some() {
                        continue;
                    }
                    if let Err(e) = self.append(id, ulen, flags, &data) {
                        self.fail(e);
                    } else if self.pending_bytes >= self.commit_bytes
                        && let Err(e) = self.commit()
                    {
                        self.fail(e);
                    }
                }
                Cmd::Flush(reply) => {
                    let _ = reply.send(self.flush());
                }
                Cmd::Exclusive(f) => {
                    // Commit the open batch first: a second writer (gc) must not pick the pack
                    // number this one holds, and must see every chunk received so far.
                    if let Err(e) = self.commit() {
                        self.fail(e);
                    }
                    f(&mut self.lib.write().unwrap_or_else(|e| e.into_inner()));
                }
                Cmd::Stop(reply) => {
                    let res = self.flush();
                    // Let go of the library before answering, so the caller can take it.
                    drop(self);
                    let _ = reply.send(res);
                    return;
                }
            }
        }
        // Every handle is gone: keep what arrived.
        if let Err(e) = self.commit() {
            tracing::warn!(error = %e, "could not commit the last received chunks");
        }
    }

    fn flush(&mut self) -> Result<()> {
        match self.failed.take() {
            Some(e) => Err(e.into()),
            None => self.commit().map_err(Error::from),
        }
    }

    fn append(
        &mut self,
        id: ChunkId,
        ulen: u32,
        flags: u8,
        data: &[u8],
    ) -> freight_core::Result<()> {
        let lib = self.lib.read().unwrap_or_else(|e| e.into_inner());
        // Two sessions (or a session and its resumption) may deliver the same chunk.
        if lib.has_chunk(&id) || !self.pending.insert(id) {
            return Ok(());
        }
        let w = self.writer.get_or_insert_with(|| lib.writer(true));
        drop(lib);
        w.append(id, ulen, flags, data)?;
        self.pending_bytes += data.len() as u64;
        Ok(())
    }

    fn commit(&mut self) -> freight_core::Result<()> {
        let Some(w) = self.writer.take() else {
            return Ok(());
        };
        self.pending.clear();
        self.pending_bytes = 0;
        let committed = w.commit()?;
        self.lib
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .apply(committed);
        Ok(())
    }

    /// Rolls back the open transaction (its chunks will be asked for again) and keeps the
    /// error for the next flush.
    fn fail(&mut self, e: freight_core::Error) {
        tracing::warn!(error = %e, "storing received chunks failed; rolled back the open batch");
        self.writer = None;
        self.pending.clear();
        self.pending_bytes = 0;
        self.failed.get_or_insert(e);
    }
}
