//! PkgXferMgr, the package transfer manager: runs the jobs DistMgr admits. A standard DP gets
//! the content pushed over QUIC under its route's bandwidth windows, then is told to host it;
//! a pull DP is notified with its ranked sources and polled until it reports; removals and
//! validations are commands. Each attempt's end goes through the [`job`] state machine and is
//! written with its status and messages in one transaction; then DistMgr hears of it.
//!
//! PkgXferMgr owns the DP routes' limiters: one per DP, shared by its sessions, updated when a
//! route's windows change.

use super::job::{self, FailureKind, JobFacts, Outcome, RetryPolicy};
use super::store::types::{Action, DpKind};
use super::store::{JobRow, Route, StoreError};
use super::{SiteServer, now_ms};
use crate::dp::command::{DpReply, DpRequest, PullState, Source, decode_reply, encode};
use freight_core::{PackageId, SiteCode};
use freight_transport::command;
use freight_transport::session::{self, Offer, PushOptions, Resume};
use freight_transport::{RouteLimiter, RouteThrottle};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tracing::Instrument;

/// Why an attempt failed before the DP could answer, or what it answered.
#[derive(Debug, thiserror::Error)]
enum XferError {
    /// The DP was removed while its job waited.
    #[error("DP {0} is no longer known")]
    UnknownDp(String),
    /// The DP's stored address does not parse.
    #[error("DP {dp}: bad address {address:?}; fix it with `freight dp remove` and `dp add`")]
    BadAddress {
        /// DP name.
        dp: String,
        /// The stored text.
        address: String,
    },
    /// The transport failed (names the peer and the step).
    #[error(transparent)]
    Transport(#[from] freight_transport::Error),
    /// The content library failed.
    #[error(transparent)]
    Library(#[from] freight_core::Error),
    /// The site database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The DP refused or failed the command (its one-line reason).
    #[error("DP {dp}: {message}")]
    Refused {
        /// DP name.
        dp: String,
        /// The DP's line.
        message: String,
        /// Whether the DP says another attempt can help.
        kind: FailureKind,
    },
    /// The DP's answer does not parse.
    #[error(
        "DP {dp} sent an answer this site server does not understand ({reason}); run the same Freight version on both"
    )]
    BadReply {
        /// DP name.
        dp: String,
        /// The decoder's reason.
        reason: serde_json::Error,
    },
    /// The DP answered something that does not fit the request.
    #[error("DP {dp} answered {answer} to {request}; run the same Freight version on both")]
    Unexpected {
        /// DP name.
        dp: String,
        /// The request's name.
        request: &'static str,
        /// The answer, for the log.
        answer: String,
    },
}

impl XferError {
    /// Whether another attempt can help: what the DP said of its own failures; permanent for
    /// what no retry changes here (an unknown DP, a bad address, a manifest too large for one
    /// frame, a certificate the peer refuses, an answer from another Freight version);
    /// transient for the rest (unreachable, timeouts, lost connections, local storage).
    fn kind(&self) -> FailureKind {
        use freight_transport::Error as T;
        match self {
            XferError::Refused { kind, .. } => *kind,
            XferError::UnknownDp(_)
            | XferError::BadAddress { .. }
            | XferError::BadReply { .. }
            | XferError::Unexpected { .. } => FailureKind::Permanent,
            XferError::Transport(T::TooLarge { .. } | T::PeerRefused(_)) => FailureKind::Permanent,
            XferError::Transport(_) | XferError::Library(_) | XferError::Store(_) => {
                FailureKind::Transient
            }
        }
    }
}

use super::Limiters;

/// Runs PkgXferMgr until DistMgr stops sending: every job received runs as its own task, and
/// goes back on `ended` once its result is recorded.
pub async fn run(
    site: Arc<SiteServer>,
    mut jobs: UnboundedReceiver<JobRow>,
    ended: UnboundedSender<JobRow>,
) {
    let limiters = site.dp_limiters.clone();
    loop {
        tokio::select! {
            j = jobs.recv() => {
                let Some(j) = j else { return };
                let (site, limiters, ended) = (site.clone(), limiters.clone(), ended.clone());
                // Everything the attempt logs, down to its QUIC sessions, names the job.
                let span = tracing::info_span!(
                    "job",
                    id = j.id,
                    package = %j.package,
                    version = j.version,
                    dp = %j.dp,
                    action = %j.action,
                    attempt = j.attempts
                );
                tokio::spawn(async move {
                    let outcome = match execute(&site, &j, &limiters).await {
                        Ok(o) => o,
                        Err(e) => Outcome::Failed { reason: e.to_string(), kind: e.kind() },
                    };
                    if let Err(e) = finish(&site, &j, outcome) {
                        tracing::error!(job = j.id, error = %e, "could not record a job's result; it runs again");
                    }
                    site.progress
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&j.id);
                    let _ = ended.send(j);
                }.instrument(span));
            }
            _ = site.routes_changed.notified() => {
                if let Err(e) = refresh_limiters(&site, &limiters) {
                    tracing::error!(error = %e, "could not read the DP routes' windows");
                }
            }
        }
    }
}

/// Whether the DP route's current window lets this job's package start now (DistMgr admits a
/// copy only then). Pull DPs fetch on their own routes; commands move no content.
pub fn window_open(j: &JobRow) -> bool {
    if !j.action.copies() || j.kind == DpKind::Pull {
        return true;
    }
    let Ok(t) = RouteThrottle::parse(&j.throttle) else {
        return true;
    };
    t.cell_at(jiff::Timestamp::now())
        .cell
        .allowed
        .permits(j.priority)
}

/// Gives running copies their route's current windows (and wakes copies waiting for one).
fn refresh_limiters(
    site: &SiteServer,
    limiters: &Mutex<HashMap<String, RouteLimiter>>,
) -> Result<(), StoreError> {
    let rows = site.store.read(|db| db.dp_throttles())?;
    let limiters = limiters.lock().unwrap_or_else(|p| p.into_inner());
    for (dp, text) in rows {
        if let (Some(l), Ok(t)) = (limiters.get(&dp), RouteThrottle::parse(&text))
            && l.throttle() != t
        {
            l.set_throttle(t);
        }
    }
    Ok(())
}

/// Where a DP is, parsed.
struct Peer {
    dp: String,
    address: SocketAddr,
    code: SiteCode,
    route: Route,
}

fn peer(site: &SiteServer, dp: &str) -> Result<Peer, XferError> {
    let route = site
        .store
        .read(|db| db.route(dp))?
        .ok_or_else(|| XferError::UnknownDp(dp.to_string()))?;
    Ok(Peer {
        dp: dp.to_string(),
        address: route.address.parse().map_err(|_| XferError::BadAddress {
            dp: dp.to_string(),
            address: route.address.clone(),
        })?,
        code: SiteCode::parse(&route.key_site)?,
        route,
    })
}

/// Sends one command to a DP on a fresh connection.
async fn ask(site: &SiteServer, p: &Peer, req: &DpRequest) -> Result<DpReply, XferError> {
    let conn = site.node.connect(p.address, p.code).await?;
    let reply = command::request(&conn, &encode(req)).await;
    conn.close("done");
    match decode_reply(&reply?).map_err(|reason| XferError::BadReply {
        dp: p.dp.clone(),
        reason,
    })? {
        DpReply::Error { message, kind } => Err(XferError::Refused {
            dp: p.dp.clone(),
            message,
            kind,
        }),
        other => Ok(other),
    }
}

fn unexpected(p: &Peer, request: &'static str, answer: DpReply) -> XferError {
    XferError::Unexpected {
        dp: p.dp.clone(),
        request,
        answer: format!("{answer:?}"),
    }
}

async fn execute(
    site: &Arc<SiteServer>,
    j: &JobRow,
    limiters: &Limiters,
) -> Result<Outcome, XferError> {
    let p = peer(site, &j.dp)?;
    let package = j.package.clone();
    match j.action {
        Action::Remove => match ask(site, &p, &DpRequest::Remove { package }).await? {
            DpReply::Ok { freed } => Ok(Outcome::Removed { freed }),
            other => Err(unexpected(&p, "remove", other)),
        },
        Action::Validate => match ask(site, &p, &DpRequest::Validate { package }).await? {
            DpReply::Validated {
                version,
                chunks,
                bad,
                files,
            } => Ok(Outcome::Validated {
                version,
                chunks,
                bad,
                files,
            }),
            other => Err(unexpected(&p, "validate", other)),
        },
        Action::Install | Action::Redistribute if p.route.kind == DpKind::Pull => {
            pull(site, j, &p).await
        }
        Action::Install | Action::Redistribute => push(site, j, &p, limiters).await,
    }
}

async fn push(
    site: &Arc<SiteServer>,
    j: &JobRow,
    p: &Peer,
    limiters: &Limiters,
) -> Result<Outcome, XferError> {
    let pid = PackageId::parse(&j.package)?;
    let version = j.version;
    // The package hash, in one streamed pass over the stored manifest (never held whole).
    let p_id = pid.clone();
    let hash = site
        .lib
        .read_async(move |l| l.manifest_dir().open_manifest(&p_id, version)?.hash())
        .await??;
    repair_if_redistributing(site, p, j).await?;
    let throttle = RouteThrottle::parse(&p.route.throttle)?;
    let opts = PushOptions {
        progress: Some(track(site, j.id)),
        limiter: Some(super::sender::route_limiter(limiters, &j.dp, throttle)),
        priority: j.priority,
    };
    let resume = Resume {
        attempts: site.cfg.resume_sessions.max(1),
        delay: Duration::from_millis(500),
    };
    let started = Instant::now();
    let (reports, res) = session::push_resuming(
        &site.node,
        p.address,
        p.code,
        &site.lib,
        Offer::Stored(&pid, version),
        &opts,
        &resume,
    )
    .await;
    let bytes: u64 = reports.iter().map(|r| r.bytes_sent).sum();
    site.store.write(|db| db.add_bytes_sent(j.id, bytes))?;
    res?;
    let install = DpRequest::Install {
        package: j.package.clone(),
        version: j.version,
        hash: hash.to_hex().to_string(),
    };
    match ask(site, p, &install).await? {
        DpReply::Ok { .. } => Ok(Outcome::Copied {
            bytes,
            secs: started.elapsed().as_secs_f64(),
        }),
        DpReply::NewerHeld { newer } => Ok(Outcome::NewerHeld { newer }),
        other => Err(unexpected(p, "install", other)),
    }
}

/// Starts counting the bytes of a running job (for `watch`); dropped when the job ends.
fn track(site: &SiteServer, job: i64) -> Arc<freight_core::Progress> {
    let p = Arc::new(freight_core::Progress::default());
    site.progress
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(job, p.clone());
    p
}

/// A redistribute repairs without emptying the DP: the DP first verifies the package and
/// drops only the chunks that fail (for every package using them), so the push that follows
/// sends exactly those and whatever else is missing, and the Install swaps the repaired copy
/// in. Meanwhile the installed copy keeps being served.
async fn repair_if_redistributing(
    site: &SiteServer,
    p: &Peer,
    j: &JobRow,
) -> Result<(), XferError> {
    if j.action == Action::Redistribute {
        let package = j.package.clone();
        match ask(site, p, &DpRequest::Repair { package }).await? {
            DpReply::Ok { .. } => {}
            other => return Err(unexpected(p, "repair", other)),
        }
    }
    Ok(())
}

async fn pull(site: &Arc<SiteServer>, j: &JobRow, p: &Peer) -> Result<Outcome, XferError> {
    let sources: Vec<Source> = site
        .store
        .read(|db| db.pull_sources(&j.dp, &j.package, j.version))?
        .into_iter()
        .map(|(code, address)| Source { code, address })
        .collect();
    if sources.is_empty() {
        return Ok(Outcome::NoSource);
    }
    let pid = PackageId::parse(&j.package)?;
    let version = j.version;
    let hash = site
        .lib
        .read_async(move |l| l.manifest_dir().open_manifest(&pid, version)?.hash())
        .await??
        .to_hex()
        .to_string();
    let started = Instant::now();
    let progress = track(site, j.id);
    let notify = DpRequest::Pull {
        package: j.package.clone(),
        version: j.version,
        hash,
        sources,
    };
    repair_if_redistributing(site, p, j).await?;
    match ask(site, p, &notify).await? {
        DpReply::AtCapacity { active } => return Ok(Outcome::AtCapacity { active }),
        DpReply::Accepted => {}
        other => return Err(unexpected(p, "pull", other)),
    }
    let status = DpRequest::PullStatus {
        package: j.package.clone(),
        version: j.version,
    };
    // Poll until the pull DP reports (the seeds' "PkgXferMgr also polls").
    loop {
        tokio::time::sleep(site.cfg.poll_interval).await;
        match ask(site, p, &status).await? {
            DpReply::Pull(PullState::Running { total, done, .. }) => {
                progress.total_bytes.store(total, Ordering::Relaxed);
                progress.done_bytes.store(done, Ordering::Relaxed);
            }
            DpReply::Pull(PullState::Installed { bytes, .. }) => {
                return Ok(Outcome::Copied {
                    bytes,
                    secs: started.elapsed().as_secs_f64(),
                });
            }
            DpReply::Pull(PullState::Failed { reason, kind }) => {
                return Ok(Outcome::PullFailed { reason, kind });
            }
            DpReply::Pull(PullState::NewerHeld { newer }) => {
                return Ok(Outcome::NewerHeld { newer });
            }
            // Restarted since: notified again.
            DpReply::Pull(PullState::Unknown) => {
                if let DpReply::AtCapacity { active } = ask(site, p, &notify).await? {
                    return Ok(Outcome::AtCapacity { active });
                }
            }
            other => return Err(unexpected(p, "pull status", other)),
        }
    }
}

/// Records an attempt's end: job row, status and messages, in one transaction. A job that
/// DistMgr changed while it ran (superseded) keeps its new request, which runs next.
fn finish(site: &SiteServer, j: &JobRow, outcome: Outcome) -> Result<(), StoreError> {
    if matches!(&outcome, Outcome::Failed { reason, .. } if !reason.is_empty()) {
        tracing::warn!(package = %j.package, dp = %j.dp, outcome = ?outcome, "job attempt failed");
    }
    let cfg = &site.cfg;
    let policy = RetryPolicy {
        dp_attempts: cfg.dp_attempts,
        dp_delay: cfg.dp_retry_delay,
        pull_attempts: cfg.pull_attempts,
        pull_delay: cfg.pull_retry_delay,
    };
    site.store.write(|db| {
        if db.live_job(j.id)? != Some((j.version, j.action)) {
            return Ok(());
        }
        let facts = JobFacts {
            package: &j.package,
            version: j.version,
            dp: &j.dp,
            action: j.action,
            attempts: j.attempts,
            held: db.held_version(&j.package, &j.dp)?,
        };
        let t = job::next(&facts, outcome, &policy);
        db.apply(site.code.as_str(), j.id, &j.package, &j.dp, &t, now_ms())
    })
}
