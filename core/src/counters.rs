//! Process-wide counters of events worth watching from outside (the appliance's Prometheus
//! metrics read them). Counted where the event is decided, so every path that meets it is
//! counted: a chunk failing its check is counted by [`crate::library::check_chunk`] and
//! [`crate::library::decode_chunk`], which every reader of stored or received chunks goes
//! through (transfers, the DP's HTTP server, materialise, verify, repair, parcel import).

use std::sync::atomic::{AtomicU64, Ordering};

static CHUNK_VERIFY_FAILURES: AtomicU64 = AtomicU64::new(0);

/// Counts one chunk whose bytes did not decode to, or hash to, its ID.
pub fn chunk_verify_failed() {
    CHUNK_VERIFY_FAILURES.fetch_add(1, Ordering::Relaxed);
}

/// Chunks that failed their check in this process since it started.
pub fn chunk_verify_failures() -> u64 {
    CHUNK_VERIFY_FAILURES.load(Ordering::Relaxed)
}
