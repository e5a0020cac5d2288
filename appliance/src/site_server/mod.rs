//! The site server role: the site database and the components of the seeds, each owning its
//! queue and its loop.
//!
//! ```text
//! admin API ─► hierarchy ──► sites, addresses; the transport's parent/child roles
//! admin API ─► actions ──► package_targets ──► DistMgr ──► distribution_jobs
//!                          (its inbox)         plans jobs, │ admits them (3 packages,
//!                                              settles     │ 5 DP workers each, one copy
//!                                              packages    ▼ per standard DP)
//!                                                        PkgXferMgr: push / pull / command,
//!                                                        the job's result in one transaction
//!              site_targets ──► DistMgr's mini-jobs (scheduler) ──► send_requests
//!                                                                   │ Sender: push, then the
//!                                                                   ▼ signed instruction
//!   child site: peer (command streams) ──► despooler ──► package_targets / site_targets
//!   child site: peer "prepare" ──► relay: pushes to the next sites and DPs while it arrives
//!   child site: status_log ──► report ──► parent's remote_status, remote_sites
//! ```
//! Calls go one way: actions and components call the [`store`] (the only SQL), the pure
//! [`job`] state machine and the [`statmgr`] catalogue; DistMgr hands admitted jobs to
//! PkgXferMgr over a channel and hears of their end over another, so neither calls back into
//! the other.

pub mod actions;
pub mod courier;
pub mod despooler;
pub mod distmgr;
pub mod error;
pub mod hierarchy;
pub mod job;
pub mod peer;
pub mod pkgxfer;
pub mod relay;
pub mod report;
pub mod scheduler;
pub mod sender;
pub mod statmgr;
pub mod store;

use crate::daemon::config::SiteRole;
use error::SiteResult;
use freight_core::{Progress, SiteCode};
use freight_transport::quic::Node;
use freight_transport::store::SharedLibrary;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use store::Store;
use tokio::sync::Notify;

/// How often a site with a parent looks for status changes to report, besides being woken.
pub const REPORT_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// Unix seconds now.
pub fn now() -> i64 {
    now_ms() / 1000
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The site server: its database, library, QUIC node, settings, and the signals between its
/// components.
pub struct SiteServer {
    /// This site's code.
    pub code: SiteCode,
    /// The site database.
    pub store: Store,
    /// The site's content library.
    pub lib: SharedLibrary,
    /// The site's QUIC endpoint (pushes to DPs, commands).
    pub node: Node,
    /// The trust store's folder (DP keys are imported here).
    pub trust_dir: PathBuf,
    /// Settings.
    pub cfg: SiteRole,
    /// Wakes DistMgr: its inbox changed.
    pub distmgr_wake: Notify,
    /// Tells PkgXferMgr that a DP route's bandwidth windows changed.
    pub routes_changed: Notify,
    /// Bytes of running copies by job ID (PkgXferMgr counts, `watch` reads).
    pub progress: Mutex<HashMap<i64, Arc<Progress>>>,
    /// The site's home: its key signs instructions, its sequence numbers them.
    pub home: Arc<crate::home::Home>,
    /// Wakes the Sender: its outbox or an address changed.
    pub sender_wake: Notify,
    /// Wakes the reporter: a status may have changed.
    pub report_wake: Notify,
    /// The sites below this one as last acknowledged by the parent.
    pub reported_sites: Mutex<Option<Vec<(String, String)>>>,
    /// Route limiters of the addresses to child sites, by site code: one per address, shared
    /// by the Sender's sends and the relays to that site.
    pub site_limiters: Limiters,
    /// Route limiters of the DP routes, by DP name: shared by PkgXferMgr's copies and relays.
    pub dp_limiters: Limiters,
    /// Pushes running to each child site (the Sender's sends and relays), against the
    /// address's limit and [`sender::MAX_SENDS`].
    pub sends_running: Mutex<HashMap<String, usize>>,
    /// Relays under way and the latest ended ones: (package, version, destination site or
    /// DP) (see `relay`).
    pub relays: Mutex<(
        std::collections::HashSet<RelayKey>,
        std::collections::VecDeque<RelayKey>,
    )>,
}

/// A relay: package, version, destination.
pub type RelayKey = (String, u32, String);

/// Route limiters by destination, each shared by every push on that route.
pub type Limiters = Arc<Mutex<HashMap<String, freight_transport::RouteLimiter>>>;

impl SiteServer {
    /// Assembles the site server; records this site in its database.
    pub fn new(
        home: Arc<crate::home::Home>,
        store: Store,
        lib: SharedLibrary,
        node: Node,
        cfg: SiteRole,
    ) -> SiteResult<Arc<SiteServer>> {
        let (code, trust_dir) = (home.code, home.trust_dir());
        store.write(|db| db.record_self(code.as_str()))?;
        Ok(Arc::new(SiteServer {
            code,
            store,
            lib,
            node,
            trust_dir,
            cfg,
            distmgr_wake: Notify::new(),
            routes_changed: Notify::new(),
            progress: Mutex::new(HashMap::new()),
            home,
            sender_wake: Notify::new(),
            report_wake: Notify::new(),
            reported_sites: Mutex::new(None),
            site_limiters: Arc::default(),
            dp_limiters: Arc::default(),
            sends_running: Mutex::default(),
            relays: Mutex::default(),
        }))
    }

    /// Starts DistMgr, PkgXferMgr, the Sender and the status reporter; they run until the
    /// process ends.
    pub fn start(self: &Arc<SiteServer>) {
        let (jobs_tx, jobs_rx) = tokio::sync::mpsc::unbounded_channel();
        let (ended_tx, ended_rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(distmgr::run(self.clone(), jobs_tx, ended_rx));
        tokio::spawn(pkgxfer::run(self.clone(), jobs_rx, ended_tx));
        tokio::spawn(sender::run(self.clone()));
        tokio::spawn(report::run(self.clone(), REPORT_EVERY));
    }
}
