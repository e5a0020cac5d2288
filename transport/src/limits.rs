//! Per-node budgets, enforced before anything is allocated for a peer: what one trusted but
//! misbehaving (or compromised) peer can cost this host is bounded, and a peer over budget is
//! slowed or refused, never the process.
//!
//! - receive memory: frames being assembled and chunks being decompressed for verification
//!   reserve their declared size here first (shared by all sessions; one peer may hold at most
//!   half of it), so a few kilobytes on the wire cannot pin gigabytes;
//! - verification: decompressing and hashing runs on at most one blocking thread per core;
//! - sessions and connections per peer;
//! - handshakes in progress (the accept queue).

use crate::quic::NodeConfig;
use freight_core::SiteCode;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
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
        })
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
