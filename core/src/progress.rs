//! Progress counters shared between long operations and whoever displays them.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Lock-free counters a worker bumps and a progress bar polls.
#[derive(Debug, Default)]
pub struct Progress {
    /// Bytes the operation will process in all (0 while unknown).
    pub total_bytes: AtomicU64,
    /// Bytes processed so far.
    pub done_bytes: AtomicU64,
    /// Files the operation will process.
    pub total_files: AtomicU64,
    /// Files processed so far.
    pub done_files: AtomicU64,
    phase: Mutex<&'static str>,
}

impl Progress {
    /// Adds processed bytes.
    pub fn add_bytes(&self, n: u64) {
        self.done_bytes.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts a finished file.
    pub fn add_file(&self) {
        self.done_files.fetch_add(1, Ordering::Relaxed);
    }

    /// Starts a phase with known totals.
    pub fn start(&self, phase: &'static str, files: u64, bytes: u64) {
        *self.phase.lock().unwrap_or_else(|e| e.into_inner()) = phase;
        self.total_files.store(files, Ordering::Relaxed);
        self.total_bytes.store(bytes, Ordering::Relaxed);
        self.done_files.store(0, Ordering::Relaxed);
        self.done_bytes.store(0, Ordering::Relaxed);
    }

    /// Grows the totals, for a phase that finds its work as it goes (a streaming walk).
    pub fn add_total(&self, files: u64, bytes: u64) {
        self.total_files.fetch_add(files, Ordering::Relaxed);
        self.total_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// The current phase's name.
    pub fn phase(&self) -> &'static str {
        *self.phase.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// (done, total) bytes.
    pub fn bytes(&self) -> (u64, u64) {
        (
            self.done_bytes.load(Ordering::Relaxed),
            self.total_bytes.load(Ordering::Relaxed),
        )
    }
}
