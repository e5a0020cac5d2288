//! A content library shared by every session of one process.
//!
//! Sessions read the library in parallel (which chunks it lacks, chunk bytes to send). Writes
//! go through one store thread, because a library takes one append transaction at a time:
//! sessions hand it verified chunks, it appends them through the block engine and commits
//! (fdatasync, then index) every [`COMMIT_BYTES`] and whenever a session asks it to flush. A
//! committed chunk survives a cut connection or a crash, so the next session does not ask for
//! it again; what was appended but not committed when the process dies is re-sent (see
//! [`crate::session::in_flight_window`] for the whole bound).
//!
//! Chunks committed before their manifest arrives are named by no manifest yet: a receiving
//! session takes a lease on its manifest when it asks what the library lacks
//! ([`SharedLibrary::lacking`]), so garbage collection (which runs on this same thread, see
//! [`SharedLibrary::exclusive`]) keeps them; storing the manifest releases the lease, and an
//! abandoned transfer's lease expires (see [`freight_core::library::LEASE_TIMEOUT`]).
//!
//! A batch that fails to commit (a full disk) is rolled back; the error is kept for the chunks
//! that batch lost, and only a session whose manifest names one of them is told, when it
//! commits. Other sessions never see it.
//!
//! A site that passes a package on (a relay, issue 13 item 8) offers a version while it is
//! still arriving: a receiving session registers its complete, checked manifest file by hash
//! once it has leased it ([`SharedLibrary::register_incoming`]), and every commit of received
//! chunks is announced ([`SharedLibrary::arrivals`]), so a push can send chunks as soon as they
//! are stored and verified here, not after the whole version is.
//!
//! The library sits behind a blocking lock that maintenance holds for as long as it runs
//! (seconds for a collection): never take [`SharedLibrary::read`] on an async worker; use
//! [`SharedLibrary::read_async`], which runs on the blocking pool.

use crate::error::{Error, Result};
use freight_core::library::ReadView;
use freight_core::writer::Writer;
use freight_core::{ChunkId, ChunkTable, Library, PackageId};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use tokio::sync::{mpsc, oneshot, watch};

/// Appended bytes after which the store thread commits on its own, by default.
pub const COMMIT_BYTES: u64 = 16 << 20;
/// Verified chunks queued for the store thread at most (bounds memory and what a crash loses).
pub const STORE_QUEUE: usize = 4;
/// Chunks lost to failed commits that are remembered, with their error, at most (beyond it a
/// session whose chunk was lost is told the chunk is missing, without the store's reason).
const LOST_KEPT: usize = 1 << 16;

type Job = Box<dyn FnOnce(&mut Library) + Send>;

enum Cmd {
    Append(ChunkId, u32, u8, Vec<u8>),
    Flush(oneshot::Sender<Result<()>>),
    Lacking(ReceivedManifest, oneshot::Sender<Result<Vec<bool>>>),
    Commit(ReceivedManifest, oneshot::Sender<Result<bool>>),
    Stop(oneshot::Sender<Result<()>>),
    Exclusive(Job),
}

/// A manifest a receiving session holds whole in a file of the library's folder (its
/// `pending/` folder), checked and hashed: what the store thread leases, looks up and commits
/// without reading it into memory.
#[derive(Clone, Debug)]
pub struct ReceivedManifest {
    /// The complete manifest file.
    pub file: PathBuf,
    /// Its package hash.
    pub hash: blake3::Hash,
    /// Whose version it is.
    pub package: PackageId,
    /// The version.
    pub version: u32,
    /// Its distinct chunks.
    pub chunks: Arc<ChunkTable>,
}

/// Manifest files of receiving sessions by manifest hash, each with its registration's token.
type Incoming = Arc<Mutex<HashMap<[u8; 32], Vec<(u64, PathBuf)>>>>;

/// A library open for writing, shared by sessions (cheap to clone).
#[derive(Clone)]
pub struct SharedLibrary {
    lib: Arc<RwLock<Library>>,
    tx: mpsc::Sender<Cmd>,
    /// Counts the store thread's commits and registrations of incoming manifests: what a relay
    /// waits on for more chunks (or its manifest) to appear.
    arrivals: Arc<watch::Sender<u64>>,
    /// Manifests of receiving sessions, by hash (see [`SharedLibrary::register_incoming`]).
    incoming: Incoming,
}

/// A receiving session's registration of its manifest as a relay's source; removed when
/// dropped (the session committed, failed or ended).
#[derive(Debug)]
pub struct IncomingGuard {
    incoming: Incoming,
    hash: [u8; 32],
    token: u64,
}

impl Drop for IncomingGuard {
    fn drop(&mut self) {
        let mut map = self.incoming.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = map.get_mut(&self.hash) {
            v.retain(|(t, _)| *t != self.token);
            if v.is_empty() {
                map.remove(&self.hash);
            }
        }
    }
}

impl std::fmt::Debug for SharedLibrary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedLibrary").finish_non_exhaustive()
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
        let arrivals = Arc::new(watch::Sender::new(0));
        let worker = Store {
            commit_bytes,
            arrivals: arrivals.clone(),
            lib: lib.clone(),
            writer: None,
            pending: HashSet::new(),
            pending_bytes: 0,
            lost: HashMap::new(),
        };
        std::thread::Builder::new()
            .name("freight-store".into())
            .spawn(move || worker.run(rx))
            .expect("spawn the store thread");
        SharedLibrary {
            lib,
            tx,
            arrivals,
            incoming: Arc::default(),
        }
    }

    /// Registers the complete, checked and leased manifest file of a receiving session under
    /// its hash, so that a relay can offer the version before it is stored; the registration
    /// lasts as long as the guard.
    pub fn register_incoming(&self, m: &ReceivedManifest) -> IncomingGuard {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let token = NEXT.fetch_add(1, Ordering::Relaxed);
        let hash = *m.hash.as_bytes();
        self.incoming
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(hash)
            .or_default()
            .push((token, m.file.clone()));
        self.arrivals.send_modify(|n| *n += 1);
        IncomingGuard {
            incoming: self.incoming.clone(),
            hash,
            token,
        }
    }

    /// The manifest files of receiving sessions whose manifest hashes to `hash`, newest last.
    /// A file may be gone by the time it is opened (its session committed or ended).
    pub fn incoming(&self, hash: &[u8; 32]) -> Vec<PathBuf> {
        self.incoming
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(hash)
            .map(|v| v.iter().map(|(_, p)| p.clone()).collect())
            .unwrap_or_default()
    }

    /// Announces each commit of received chunks (and each registered incoming manifest): a
    /// relay looks again when the value changes.
    pub fn arrivals(&self) -> watch::Receiver<u64> {
        self.arrivals.subscribe()
    }

    /// Like [`read_view`](Self::read_view) for the chunks of `ids` the library holds now;
    /// also returns the others (a relay waits for them to arrive).
    pub async fn read_view_present(&self, ids: Vec<ChunkId>) -> Result<(ReadView, Vec<ChunkId>)> {
        self.read_async(move |lib| lib.read_view_present(ids))
            .await?
            .map_err(Error::from)
    }

    /// Read access to the library. Blocks while maintenance (gc, install) holds it: call it
    /// only on a blocking thread; async code uses [`read_async`](Self::read_async).
    pub fn read(&self) -> RwLockReadGuard<'_, Library> {
        self.lib.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` with read access on the blocking pool, so an async worker never waits for
    /// the library's lock.
    pub async fn read_async<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Library) -> T + Send + 'static,
    ) -> Result<T> {
        let lib = self.lib.clone();
        tokio::task::spawn_blocking(move || f(&lib.read().unwrap_or_else(|e| e.into_inner())))
            .await
            .map_err(|e| Error::Misuse(format!("a library read panicked: {e}")))
    }

    /// Locates `ids` for a sender and keeps their packs open (see
    /// [`Library::read_view`]): a collection meanwhile cannot take the bytes away.
    pub async fn read_view(
        &self,
        ids: Vec<ChunkId>,
        package: PackageId,
        version: u32,
    ) -> Result<ReadView> {
        self.read_async(move |lib| lib.read_view(ids, &package, version))
            .await?
            .map_err(Error::from)
    }

    /// Queues a verified chunk in its stored form (a receiver's `Store` event).
    pub async fn append(&self, id: ChunkId, ulen: u32, flags: u8, data: Vec<u8>) -> Result<()> {
        self.tx
            .send(Cmd::Append(id, ulen, flags, data))
            .await
            .map_err(|_| stopped())
    }

    /// Commits everything queued so far. Fails when that commit failed (its chunks were
    /// rolled back and will be asked for again); the sessions whose chunks it lost are told
    /// when they commit.
    pub async fn flush(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Cmd::Flush(tx)).await.map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// Takes a lease on the chunks of `m` (see the module docs), commits what is queued,
    /// and returns which chunks of `m` the library lacks, by position in `m.chunks`.
    pub async fn lacking(&self, m: &ReceivedManifest) -> Result<Vec<bool>> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Lacking(m.clone(), tx))
            .await
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// Commits what is queued, then stores `m` (all its chunks must be present) and releases
    /// its lease. Returns false when the same version was already stored with identical
    /// content. When a chunk of `m` was lost to a failed commit, fails with that commit's
    /// error.
    /// The file is moved into the library's manifests.
    pub async fn commit_manifest(&self, m: &ReceivedManifest) -> Result<bool> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Commit(m.clone(), tx))
            .await
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// Commits what is queued, stops the store thread and gives the library back. Fails when
    /// other handles (running sessions) still share it.
    pub async fn close(self) -> Result<Library> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Cmd::Stop(tx)).await.map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())??;
        let SharedLibrary { lib, tx, .. } = self;
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
    /// writer. Receiving sessions wait meanwhile; their leases keep what they received.
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
    /// Bumped after each commit (see [`SharedLibrary::arrivals`]).
    arrivals: Arc<watch::Sender<u64>>,
    lib: Arc<RwLock<Library>>,
    writer: Option<Writer>,
    pending: HashSet<ChunkId>,
    pending_bytes: u64,
    /// Chunks rolled back by a failed commit, with that commit's error (one line).
    lost: HashMap<ChunkId, Arc<str>>,
}

impl Store {
    fn run(mut self, mut rx: mpsc::Receiver<Cmd>) {
        while let Some(cmd) = rx.blocking_recv() {
            match cmd {
                Cmd::Append(id, ulen, flags, data) => {
                    if let Err(e) = self.append(id, ulen, flags, &data) {
                        self.fail(&e);
                    } else if self.pending_bytes >= self.commit_bytes {
                        let _ = self.commit();
                    }
                }
                Cmd::Flush(reply) => {
                    let _ = reply.send(self.commit().map_err(Error::from));
                }
                Cmd::Lacking(m, reply) => {
                    let _ = reply.send(self.lacking(&m));
                }
                Cmd::Commit(m, reply) => {
                    let _ = reply.send(self.commit_manifest(&m));
                }
                Cmd::Exclusive(f) => {
                    // Commit the open batch first: maintenance must see every chunk received
                    // so far, and a second writer (gc) must not append beside this one.
                    let _ = self.commit();
                    f(&mut self.lib.write().unwrap_or_else(|e| e.into_inner()));
                }
                Cmd::Stop(reply) => {
                    let res = self.commit().map_err(Error::from);
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

    /// Commits the open batch; on failure rolls it back (see [`fail`](Self::fail)).
    fn commit(&mut self) -> freight_core::Result<()> {
        let Some(w) = self.writer.take() else {
            return Ok(());
        };
        match w.commit() {
            Ok(committed) => {
                for id in self.pending.drain() {
                    self.lost.remove(&id);
                }
                self.pending_bytes = 0;
                self.lib
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .apply(committed);
                self.arrivals.send_modify(|n| *n += 1);
                Ok(())
            }
            Err(e) => {
                self.fail(&e);
                Err(e)
            }
        }
    }

    /// Rolls back the open transaction (its chunks will be asked for again) and remembers the
    /// error for the chunks it held, for the sessions that commit a manifest naming them.
    fn fail(&mut self, e: &freight_core::Error) {
        tracing::warn!(error = %e, "storing received chunks failed; rolled back the open batch");
        self.writer = None;
        let line: Arc<str> = e.to_string().into();
        if self.lost.len() + self.pending.len() > LOST_KEPT {
            self.lost.clear();
        }
        for id in self.pending.drain() {
            self.lost.insert(id, line.clone());
        }
        self.pending_bytes = 0;
    }

    fn lacking(&mut self, m: &ReceivedManifest) -> Result<Vec<bool>> {
        // The lease first: from here on no collection takes what this transfer relies on,
        // neither chunks already here nor those it is about to send.
        self.lib
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .lease_file(&m.file, &m.hash)?;
        // A failed commit is reported to the sessions whose chunks it lost, at their commit;
        // here its chunks are simply lacking again.
        let _ = self.commit();
        Ok(self
            .lib
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .missing_mask(m.chunks.ids()))
    }

    fn commit_manifest(&mut self, m: &ReceivedManifest) -> Result<bool> {
        let _ = self.commit();
        let mut lib = self.lib.write().unwrap_or_else(|e| e.into_inner());
        // Streamed: a chunk that is still missing matters only when a failed commit lost it.
        let ids = m.chunks.ids();
        let mut lost = None;
        lib.for_each_missing(ids, &mut |i| {
            if lost.is_none() {
                lost = self.lost.get(&ids[i]).map(|l| (ids[i], l.clone()));
            }
        });
        if let Some((id, line)) = lost {
            return Err(Error::StoreFailed {
                package: m.package.to_string(),
                version: m.version,
                chunk: id.short(),
                reason: line.to_string(),
            });
        }
        Ok(lib.commit_manifest_file(&m.file, &m.package, m.version)?)
    }
}
