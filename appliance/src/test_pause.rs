//! A test hook for crash tests: with `FREIGHT_TEST_PAUSE` set to a comma-separated list of
//! named points, the process stops for good when it reaches one of them (until a test kills
//! it), after writing the point's name to the file `FREIGHT_TEST_PAUSE_FILE` names. A test
//! waits for that file instead of guessing a moment with sleeps. Unset (always, outside
//! tests), a point costs one environment lookup.
//!
//! Points: `repaired` (a redistribute's bad chunks dropped, before the DP answers),
//! `install` (an Install command received, nothing done yet), `materialised` (the share's new
//! tree complete in staging, not swapped in), `swapped` (the new tree swapped in, the install
//! not yet recorded).

use std::time::Duration;

/// Stops here for good if `FREIGHT_TEST_PAUSE` names `name` (blocks the calling thread: call
/// it only where no lock is held that the rest of the process needs, or through
/// [`point_async`]).
pub fn point(name: &str) {
    let Some(want) = std::env::var_os("FREIGHT_TEST_PAUSE") else {
        return;
    };
    if !want.to_string_lossy().split(',').any(|w| w == name) {
        return;
    }
    if let Some(f) = std::env::var_os("FREIGHT_TEST_PAUSE_FILE") {
        let _ = std::fs::write(f, name);
    }
    tracing::warn!(point = name, "paused by FREIGHT_TEST_PAUSE until killed");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// [`point`] from async code, on a blocking thread.
pub async fn point_async(name: &'static str) {
    if std::env::var_os("FREIGHT_TEST_PAUSE").is_some() {
        let _ = tokio::task::spawn_blocking(move || point(name)).await;
    }
}
