//! Per-node budgets, enforced before anything is allocated for a peer: what one trusted but
//! misbehaving (or compromised) peer can cost this host is bounded, and a peer over budget is
//! slowed or refused, never the process.
//!
//! - receive memory: frames being assembled and chunks being decompressed for verification
//!   reserve their declared size here first (shared by all sessions; one peer may hold at most
//!   half of it), so a few kilobytes on the wire cannot pin gigabytes;
//! - verification: decompressing and hashing runs on at most one blocking thread per core;
//! - sessions and connections per peer;
//! - handshakes in progress (the accept queue);
//! - disk: the chunks a peer's unfinished transfers stored here (kept by their leases for a
//!   resumption) count against a quota per peer ([`Limits::charge`]); a transfer's bytes are
//!   released when its manifest is stored ([`Limits::settle`]) or when its lease would have
//!   expired. A transfer is aborted while the peer's *other* unfinished transfers hold more
//!   than the quota, so a peer that starts and abandons transfers cannot fill the disk with
//!   chunks nothing names, while one transfer of any size (and its resumption) always goes.

use crate::quic::NodeConfig;
use freight_core::SiteCode;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Frames up to this size are read without a reservation (control messages, small chunks):
/// their memory is already bounded by the stream windows.
pub const RESERVE_ABOVE: u32 = 1 << 20;

/// The node's budgets (shared by its connections).
#[derive(Debug)]
pub struct Limits {
    /// Receive memory in KiB.
    memory: Arc<Semaphore>,
    memory_kib: u32,
    /// One peer's share of the receive memory, in KiB.
    per_peer_kib: u32,
    peer_memory: Mutex<HashMap<SiteCode, Arc<Semaphore>>>,
    /// Verifications at once.
    verify: Arc<Semaphore>,
    /// Push sessions per peer at once.
    sessions: Mutex<HashMap<SiteCode, usize>>,
    sessions_per_peer: usize,
    /// Handshakes in progress.
    pub(crate) handshakes: Arc<Semaphore>,
    /// Bytes stored by each peer's unfinished transfers, by transfer.
    unfinished: Mutex<HashMap<SiteCode, HashMap<Transfer, Held>>>,
    unfinished_per_peer: u64,
    unfinished_expiry: Duration,
}

/// A transfer as the quota knows it: the package version it brings.
pub type Transfer = (freight_core::PackageId, u32);

/// What one unfinished transfer stored, and when it last stored something.
#[derive(Debug, Clone, Copy)]
struct Held {
    bytes: u64,
    last: Instant,
}

/// A peer whose other unfinished transfers hold more than its quota; the session storing
/// more is aborted.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "site {peer} holds {held} bytes of chunks of other unfinished transfers here, more than its quota of {quota}; finish or resume those transfers (their chunks are released when they commit, or {expiry_h} h after their last chunk)"
)]
pub struct OverQuota {
    /// The peer.
    pub peer: SiteCode,
    /// What its other unfinished transfers hold.
    pub held: u64,
    /// Its quota.
    pub quota: u64,
    /// Hours until an abandoned transfer's bytes are released.
    pub expiry_h: u64,
}

/// Receive memory held for one frame or one verification; released on drop.
#[derive(Debug)]
pub struct Reservation {
    _global: OwnedSemaphorePermit,
    _peer: OwnedSemaphorePermit,
}

/// One running push session of a peer; ends on drop.
#[derive(Debug)]
pub struct SessionSlot {
    limits: Arc<Limits>,
    peer: SiteCode,
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        let mut s = self
            .limits
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = s.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                s.remove(&self.peer);
            }
        }
    }
}

impl Limits {
    /// The budgets of `cfg`.
    pub fn new(cfg: &NodeConfig) -> Arc<Limits> {
        let memory_kib = (cfg.receive_memory >> 10).clamp(1, u32::MAX as u64 >> 4) as u32;
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Arc::new(Limits {
            memory: Arc::new(Semaphore::new(memory_kib as usize)),
            memory_kib,
            per_peer_kib: (memory_kib / 2).max(1),
            peer_memory: Mutex::default(),
            verify: Arc::new(Semaphore::new(cores)),
            sessions: Mutex::default(),
            sessions_per_peer: cfg.sessions_per_peer.max(1),
            handshakes: Arc::new(Semaphore::new(cfg.max_handshakes.max(1))),
            unfinished: Mutex::default(),
            unfinished_per_peer: cfg.unfinished_per_peer,
            unfinished_expiry: cfg.unfinished_expiry,
        })
    }

    /// Counts `bytes` stored for `transfer` of `peer` as unfinished; refuses them (counting
    /// nothing) while the peer's *other* unfinished transfers hold more than its quota.
    /// Transfers that stored nothing for the expiry time (their leases have lapsed) no longer
    /// count.
    pub fn charge(&self, peer: SiteCode, transfer: &Transfer, bytes: u64) -> Result<(), OverQuota> {
        self.charge_at(peer, transfer, bytes, Instant::now())
    }

    fn charge_at(
        &self,
        peer: SiteCode,
        transfer: &Transfer,
        bytes: u64,
        now: Instant,
    ) -> Result<(), OverQuota> {
        let mut all = self.unfinished.lock().unwrap_or_else(|p| p.into_inner());
        let mine = all.entry(peer).or_default();
        let expiry = self.unfinished_expiry;
        mine.retain(|_, h| now.saturating_duration_since(h.last) < expiry);
        // Only the peer's *other* unfinished transfers count: one transfer alone is never
        // limited (a real package may be larger than any quota, and a resumption of a cut
        // one must go on), but what a peer leaves behind stops its next transfers.
        let held: u64 = mine
            .iter()
            .filter(|(t, _)| *t != transfer)
            .map(|(_, h)| h.bytes)
            .sum();
        if held > self.unfinished_per_peer {
            return Err(OverQuota {
                peer,
                held,
                quota: self.unfinished_per_peer,
                expiry_h: expiry.as_secs() / 3600,
            });
        }
        let h = mine.entry(transfer.clone()).or_insert(Held {
            bytes: 0,
            last: now,
        });
        h.bytes += bytes;
        h.last = now;
        Ok(())
    }

    /// `transfer` of `peer` was stored whole: its chunks are named by a manifest now.
    pub fn settle(&self, peer: SiteCode, transfer: &Transfer) {
        let mut all = self.unfinished.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(mine) = all.get_mut(&peer) {
            mine.remove(transfer);
            if mine.is_empty() {
                all.remove(&peer);
            }
        }
    }

    /// Bytes `peer`'s unfinished transfers hold (for tests and metrics).
    pub fn unfinished_bytes(&self, peer: SiteCode) -> u64 {
        let all = self.unfinished.lock().unwrap_or_else(|p| p.into_inner());
        all.get(&peer)
            .map_or(0, |m| m.values().map(|h| h.bytes).sum())
    }

    /// Reserves `bytes` of receive memory for `peer`, waiting while the peer's share or the
    /// node's budget is in use (the peer's stream then stops being read, and QUIC flow
    /// control stops it sending). A request above a share is capped to the share, so the
    /// largest frame always fits.
    pub async fn reserve(&self, peer: SiteCode, bytes: u64) -> Reservation {
        let kib = bytes.div_ceil(1024).clamp(1, self.per_peer_kib as u64) as u32;
        let peer_sem = self
            .peer_memory
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(peer)
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_peer_kib as usize)))
            .clone();
        // Peer first: a peer at its share waits without holding any of the node's budget.
        let peer_permit = peer_sem
            .acquire_many_owned(kib)
            .await
            .expect("the semaphore is never closed");
        let global = self
            .memory
            .clone()
            .acquire_many_owned(kib.min(self.memory_kib))
            .await
            .expect("the semaphore is never closed");
        Reservation {
            _global: global,
            _peer: peer_permit,
        }
    }

    /// A verification slot (one per core).
    pub async fn verify_slot(&self) -> OwnedSemaphorePermit {
        self.verify
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed")
    }

    /// Starts a push session of `peer`; None if it already runs its share.
    pub fn begin_session(self: &Arc<Self>, peer: SiteCode) -> Option<SessionSlot> {
        let mut s = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let n = s.entry(peer).or_default();
        if *n >= self.sessions_per_peer {
            return None;
        }
        *n += 1;
        Some(SessionSlot {
            limits: self.clone(),
            peer,
        })
    }

    /// Push sessions one peer may run at once.
    pub fn sessions_per_peer(&self) -> usize {
        self.sessions_per_peer
    }

    /// Receive memory left, in KiB (for tests and metrics).
    pub fn memory_free_kib(&self) -> usize {
        self.memory.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(c: &str) -> SiteCode {
        SiteCode::parse(c).unwrap()
    }

    #[test]
    fn unfinished_transfers_count_against_a_quota_until_they_commit_or_expire() {
        let cfg = NodeConfig {
            unfinished_per_peer: 100,
            unfinished_expiry: Duration::from_secs(3600),
            ..NodeConfig::default()
        };
        let l = Limits::new(&cfg);
        let (a, b) = (code("PS1"), code("PS2"));
        let t = |v: u32| (freight_core::PackageId::parse("PS100001").unwrap(), v);
        let t0 = Instant::now();
        // One transfer alone is never limited, however large.
        l.charge_at(a, &t(1), 60, t0).unwrap();
        l.charge_at(a, &t(1), 90, t0).unwrap();
        // Another one goes while the first holds no more than the quota...
        assert!(l.charge_at(a, &t(2), 40, t0).is_err());
        let e = l.charge_at(a, &t(2), 1, t0).unwrap_err();
        assert_eq!((e.held, e.quota), (150, 100));
        assert!(e.to_string().contains("site PS1 holds 150 bytes"), "{e}");
        assert_eq!(l.unfinished_bytes(a), 150);
        // ... and the first resumes: its own bytes never stop it.
        l.charge_at(a, &t(1), 10, t0).unwrap();
        // Another peer has its own quota.
        l.charge_at(b, &t(2), 100, t0).unwrap();
        // A committed transfer releases its bytes.
        l.settle(a, &t(1));
        l.charge_at(a, &t(2), 60, t0).unwrap();
        l.charge_at(a, &t(3), 50, t0).unwrap();
        assert!(l.charge_at(a, &t(4), 1, t0).is_err());
        // Abandoned ones are released when their leases would have lapsed.
        let later = t0 + Duration::from_secs(3601);
        l.charge_at(a, &t(4), 100, later).unwrap();
        assert_eq!(l.unfinished_bytes(a), 100);
    }

    #[tokio::test]
    async fn a_peer_gets_at_most_half_the_memory_and_waits_for_more() {
        let cfg = NodeConfig {
            receive_memory: 8 << 20,
            ..NodeConfig::default()
        };
        let l = Limits::new(&cfg);
        let a = l.reserve(code("DP1"), 3 << 20).await;
        // DP1's share is 4 MiB: another 3 MiB waits; DP2 still gets its share.
        let more = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            l.reserve(code("DP1"), 3 << 20),
        )
        .await;
        assert!(more.is_err(), "DP1 went past its share");
        let b = l.reserve(code("DP2"), 4 << 20).await;
        assert_eq!(l.memory_free_kib(), 1024);
        drop((a, b));
        assert_eq!(l.memory_free_kib(), 8 << 10);
        // A request larger than a share is capped to it, so it can always be granted.
        let big = l.reserve(code("DP1"), 1 << 30).await;
        assert_eq!(l.memory_free_kib(), 4 << 10);
        drop(big);
    }

    #[test]
    fn sessions_per_peer_are_counted_and_released() {
        let cfg = NodeConfig {
            sessions_per_peer: 2,
            ..NodeConfig::default()
        };
        let l = Limits::new(&cfg);
        let a = l.begin_session(code("DP1")).unwrap();
        let _b = l.begin_session(code("DP1")).unwrap();
        assert!(l.begin_session(code("DP1")).is_none());
        assert!(l.begin_session(code("DP2")).is_some());
        drop(a);
        assert!(l.begin_session(code("DP1")).is_some());
    }
}
