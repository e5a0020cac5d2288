//! PkgXferMgr, the package transfer manager: runs distribution jobs. One job per standard DP at a
//! time (a pull DP takes several, up to its capacity); at most `packages_parallel` packages and `dp_workers` DPs per package at once
//! (DistMgr's limits, SPEC §6). A standard DP gets the content pushed over QUIC under its
//! route's bandwidth windows, then is told to host it; a pull DP is notified with its ranked
//! sources and polled until it reports.
//!
//! A job's row is its whole state: it is marked running (attempt counted) before any byte
//! moves and finished in one transaction with its status and messages, so a crash at any
//! moment leaves it queued or done, never lost or twice. A job found running at start-up is
//! queued again; its push resumes with what the DP still lacks.

use crate::distmgr;
use crate::dp_proto::{DpReply, DpRequest, PullState, Source, decode_reply, encode};
use crate::site::{Site, now, now_ms};
use crate::statmgr::{self, Msg};
use freight_core::units::human;
use freight_core::{PackageId, SiteCode};
use freight_transport::command;
use freight_transport::session::{self, PushOptions, Resume};
use freight_transport::{Priority, RouteLimiter, RouteThrottle, SystemClock};
use rusqlite::{OptionalExtension, params};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A job taken from the queue.
#[derive(Debug, Clone)]
struct Job {
    id: i64,
    package: String,
    version: u32,
    dp: String,
    action: String,
    attempts: u32,
    priority: String,
    /// Pull DPs take several jobs at once (up to their capacity); others one at a time.
    pull: bool,
    /// The DP route's bandwidth windows (compact text).
    throttle: String,
}

/// Where a DP is and what it is.
struct Route {
    address: SocketAddr,
    code: SiteCode,
    pull: bool,
    throttle: String,
}

/// How a job attempt ended.
enum Outcome {
    /// Content hosted: bytes sent, seconds, where from (pull DPs).
    Copied { bytes: u64, secs: f64 },
    /// Removed; bytes freed on the DP.
    Removed { freed: u64 },
    /// Validation result.
    Validated {
        chunks: u64,
        bad: u64,
        files: Vec<String>,
    },
    /// A pull DP: no source holds the version yet (8212).
    NoSource,
    /// A pull DP is full (8211).
    AtCapacity(usize),
    /// A pull DP could not download from any of its sources (8213): why, per source.
    PullFailed(String),
    /// Failed this time.
    Failed(String),
}

/// What PkgXferMgr is running now.
#[derive(Default)]
struct Running {
    dps: HashSet<String>,
    packages: HashMap<String, usize>,
}

/// Runs DistMgr's planning and PkgXferMgr's dispatch until the process ends.
pub async fn run(site: Arc<Site>) {
    {
        let mut db = site.db();
        if let Err(e) = db.conn().execute(
            "UPDATE distribution_jobs SET state = 'queued' WHERE state = 'running'",
            [],
        ) {
            tracing::error!(error = %e, "cannot requeue interrupted jobs");
        }
    }
    let running: Arc<Mutex<Running>> = Arc::default();
    let limiters: Arc<Mutex<HashMap<String, RouteLimiter>>> = Arc::default();
    loop {
        if let Err(e) = distmgr::plan(&site) {
            tracing::error!(error = %e, "DistMgr could not plan jobs");
        }
        let next = match dispatch(&site, &running, &limiters) {
            Ok(next) => next,
            Err(e) => {
                tracing::error!(error = %e, "PkgXferMgr could not start jobs");
                Some(now_ms() + 1000)
            }
        };
        let wait = next.map_or(Duration::from_secs(5), |t| {
            Duration::from_millis((t - now_ms()).clamp(10, 5000) as u64)
        });
        tokio::select! {
            _ = site.wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Starts every due job the limits allow; returns when the next waiting job falls due.
fn dispatch(
    site: &Arc<Site>,
    running: &Arc<Mutex<Running>>,
    limiters: &Arc<Mutex<HashMap<String, RouteLimiter>>>,
) -> rusqlite::Result<Option<i64>> {
    let t = now_ms();
    let (due, next): (Vec<Job>, Option<i64>) = {
        let mut db = site.db();
        let c = db.conn();
        let due = c
            .prepare(
                "SELECT j.id, j.package, j.version, j.dp, j.action, j.attempts, p.priority, d.kind = 'pull', d.throttle
                 FROM distribution_jobs j JOIN packages p ON p.id = j.package JOIN dps d ON d.name = j.dp
                 WHERE j.state IN ('queued', 'retrying') AND j.next_attempt <= ?1
                 ORDER BY CASE p.priority WHEN 'high' THEN 0 WHEN 'medium' THEN 1 ELSE 2 END, j.created, j.id",
            )?
            .query_map([t], |r| {
                Ok(Job {
                    id: r.get(0)?,
                    package: r.get(1)?,
                    version: r.get(2)?,
                    dp: r.get(3)?,
                    action: r.get(4)?,
                    attempts: r.get(5)?,
                    priority: r.get(6)?,
                    pull: r.get(7)?,
                    throttle: r.get(8)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        let next = c.query_row(
            "SELECT min(next_attempt) FROM distribution_jobs WHERE state IN ('queued', 'retrying') AND next_attempt > ?1",
            [t],
            |r| r.get(0),
        )?;
        (due, next)
    };
    refresh_limiters(site, limiters)?;
    for mut job in due {
        if !window_open(&job) {
            continue;
        }
        let limits = (site.cfg.packages_parallel, site.cfg.dp_workers);
        if !running.lock().unwrap_or_else(|p| p.into_inner()).take(
            &job.package,
            &job.dp,
            job.pull,
            limits,
        ) {
            continue;
        }
        // Counted before any byte moves: a crash now costs one attempt, never a duplicate.
        let marked = site.db().conn().execute(
            "UPDATE distribution_jobs SET state = 'running', attempts = attempts + 1, updated = ?2 WHERE id = ?1 AND state IN ('queued', 'retrying')",
            params![job.id, now()],
        )?;
        if marked == 0 {
            release(running, &job);
            continue;
        }
        job.attempts += 1;
        let (site, running, limiters) = (site.clone(), running.clone(), limiters.clone());
        tokio::spawn(async move {
            let outcome = execute(&site, &job, &limiters).await;
            if let Err(e) = finish(&site, &job, outcome) {
                tracing::error!(job = job.id, error = %e, "could not record a job's result; it runs again");
            }
            site.progress
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&job.id);
            release(&running, &job);
            site.wake.notify_one();
        });
    }
    Ok(next)
}

/// Whether the DP route's current window lets this job's package start now. A copy outside its
/// window stays queued, so it never holds the DP while a package that may send waits behind it.
fn window_open(job: &Job) -> bool {
    let copies = job.action == "install" || job.action == "redistribute";
    if !copies || job.pull {
        return true;
    }
    let Ok(t) = RouteThrottle::parse(&job.throttle) else {
        return true;
    };
    let priority = job.priority.parse().unwrap_or(Priority::Medium);
    t.cell_at(jiff::Timestamp::now())
        .cell
        .allowed
        .permits(priority)
}

/// Gives running copies their route's current windows (a `dp schedule` applies within one
/// round of the loop, and wakes copies waiting for a window).
fn refresh_limiters(
    site: &Site,
    limiters: &Mutex<HashMap<String, RouteLimiter>>,
) -> rusqlite::Result<()> {
    let rows: Vec<(String, String)> = {
        let mut db = site.db();
        let c = db.conn();
        let mut st = c.prepare("SELECT name, throttle FROM dps")?;
        st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?
    };
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

fn release(running: &Mutex<Running>, job: &Job) {
    running
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .give_back(&job.package, &job.dp, job.pull);
}

impl Running {
    /// Takes a slot for a job of `package` to `dp` if DistMgr's limits allow it: at most
    /// `packages` packages at once, at most `workers` DPs per package, one job per standard
    /// DP (a pull DP takes several). Returns false, taking nothing, when they do not.
    fn take(
        &mut self,
        package: &str,
        dp: &str,
        pull: bool,
        (packages, workers): (usize, usize),
    ) -> bool {
        let in_pkg = self.packages.get(package).copied().unwrap_or(0);
        if (!pull && self.dps.contains(dp))
            || in_pkg >= workers
            || (in_pkg == 0 && self.packages.len() >= packages)
        {
            return false;
        }
        if !pull {
            self.dps.insert(dp.to_string());
        }
        *self.packages.entry(package.to_string()).or_default() += 1;
        true
    }

    /// Gives back what [`take`](Self::take) took.
    fn give_back(&mut self, package: &str, dp: &str, pull: bool) {
        if !pull {
            self.dps.remove(dp);
        }
        if let Some(n) = self.packages.get_mut(package) {
            *n -= 1;
            if *n == 0 {
                self.packages.remove(package);
            }
        }
    }
}

fn route(site: &Site, dp: &str) -> Result<Route, String> {
    let row: Option<(String, String, String, String)> = site
        .db()
        .conn()
        .query_row(
            "SELECT address, key_site, kind, throttle FROM dps WHERE name = ?1",
            [dp],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .optional()
        .map_err(|e| e.to_string())?;
    let (address, code, kind, throttle) =
        row.ok_or_else(|| format!("DP {dp} is no longer known"))?;
    Ok(Route {
        address: address
            .parse()
            .map_err(|_| format!("DP {dp}: bad address {address:?}"))?,
        code: SiteCode::parse(&code).map_err(|e| e.to_string())?,
        pull: kind == "pull",
        throttle,
    })
}

/// Sends one command to a DP on a fresh connection.
async fn ask(site: &Site, r: &Route, dp: &str, req: &DpRequest) -> Result<DpReply, String> {
    let conn = site
        .node
        .connect(r.address, r.code)
        .await
        .map_err(|e| e.to_string())?;
    let reply = command::request(&conn, &encode(req)).await;
    conn.close("done");
    let reply = decode_reply(&reply.map_err(|e| e.to_string())?, dp)?;
    match reply {
        DpReply::Error { message } => Err(format!("DP {dp}: {message}")),
        other => Ok(other),
    }
}

async fn execute(
    site: &Arc<Site>,
    job: &Job,
    limiters: &Mutex<HashMap<String, RouteLimiter>>,
) -> Outcome {
    match execute_inner(site, job, limiters).await {
        Ok(o) => o,
        Err(e) => Outcome::Failed(e),
    }
}

async fn execute_inner(
    site: &Arc<Site>,
    job: &Job,
    limiters: &Mutex<HashMap<String, RouteLimiter>>,
) -> Result<Outcome, String> {
    let r = route(site, &job.dp)?;
    let package = job.package.clone();
    match job.action.as_str() {
        "remove" => match ask(site, &r, &job.dp, &DpRequest::Remove { package }).await? {
            DpReply::Ok { freed } => Ok(Outcome::Removed { freed }),
            other => Err(format!("unexpected answer {other:?}")),
        },
        "validate" => match ask(site, &r, &job.dp, &DpRequest::Validate { package }).await? {
            DpReply::Validated {
                chunks, bad, files, ..
            } => Ok(Outcome::Validated { chunks, bad, files }),
            other => Err(format!("unexpected answer {other:?}")),
        },
        _ if r.pull => pull(site, job, &r).await,
        _ => push(site, job, &r, limiters).await,
    }
}

async fn push(
    site: &Arc<Site>,
    job: &Job,
    r: &Route,
    limiters: &Mutex<HashMap<String, RouteLimiter>>,
) -> Result<Outcome, String> {
    let pid = PackageId::parse(&job.package).map_err(|e| e.to_string())?;
    let manifest = site
        .lib
        .read()
        .manifest(&pid, job.version)
        .map_err(|e| e.to_string())?;
    forget_if_redistributing(site, r, job).await?;
    let throttle = RouteThrottle::parse(&r.throttle).map_err(|e| e.to_string())?;
    let limiter = {
        let mut l = limiters.lock().unwrap_or_else(|p| p.into_inner());
        let lim = l
            .entry(job.dp.clone())
            .or_insert_with(|| RouteLimiter::new(throttle.clone(), Arc::new(SystemClock)));
        if lim.throttle() != throttle {
            lim.set_throttle(throttle);
        }
        lim.clone()
    };
    let progress = site.track(job.id);
    let opts = PushOptions {
        progress: Some(progress),
        limiter: Some(limiter),
        priority: job.priority.parse().unwrap_or(Priority::Medium),
    };
    let resume = Resume {
        attempts: site.cfg.resume_sessions.max(1),
        delay: Duration::from_millis(500),
    };
    let started = Instant::now();
    let (reports, res) = session::push_resuming(
        &site.node, r.address, r.code, &site.lib, &manifest, &opts, &resume,
    )
    .await;
    let bytes: u64 = reports.iter().map(|p| p.bytes_sent).sum();
    record_bytes(site, job, bytes);
    res.map_err(|e| e.to_string())?;
    ask(
        site,
        r,
        &job.dp,
        &DpRequest::Install {
            package: job.package.clone(),
            version: job.version,
            hash: manifest.hash().to_hex().to_string(),
        },
    )
    .await?;
    Ok(Outcome::Copied {
        bytes,
        secs: started.elapsed().as_secs_f64(),
    })
}

/// A redistribute overwrites: the DP first forgets the package and its unshared or corrupt
/// content, so everything moves again.
async fn forget_if_redistributing(site: &Site, r: &Route, job: &Job) -> Result<(), String> {
    if job.action == "redistribute" {
        let package = job.package.clone();
        ask(site, r, &job.dp, &DpRequest::Forget { package }).await?;
    }
    Ok(())
}

fn record_bytes(site: &Site, job: &Job, bytes: u64) {
    let _ = site.db().conn().execute(
        "UPDATE distribution_jobs SET bytes_sent = bytes_sent + ?2 WHERE id = ?1",
        params![job.id, bytes as i64],
    );
}

async fn pull(site: &Arc<Site>, job: &Job, r: &Route) -> Result<Outcome, String> {
    // Sources that hold this version, best first.
    let sources: Vec<Source> = {
        let mut db = site.db();
        let c = db.conn();
        c.prepare(
            "SELECT d.key_site, d.address FROM dp_sources s JOIN dps d ON d.name = s.source
             JOIN package_dp_status st ON st.dp = s.source AND st.package = ?2
             WHERE s.dp = ?1 AND st.state = 'installed' AND st.version = ?3 ORDER BY s.rank",
        )
        .and_then(|mut st| {
            st.query_map(params![job.dp, job.package, job.version], |r| {
                Ok(Source {
                    code: r.get(0)?,
                    address: r.get(1)?,
                })
            })?
            .collect::<Result<_, _>>()
        })
        .map_err(|e| e.to_string())?
    };
    if sources.is_empty() {
        return Ok(Outcome::NoSource);
    }
    let pid = PackageId::parse(&job.package).map_err(|e| e.to_string())?;
    let hash = site
        .lib
        .read()
        .manifest(&pid, job.version)
        .map_err(|e| e.to_string())?
        .hash()
        .to_hex()
        .to_string();
    let started = Instant::now();
    let progress = site.track(job.id);
    let notify = DpRequest::Pull {
        package: job.package.clone(),
        version: job.version,
        hash,
        sources,
    };
    forget_if_redistributing(site, r, job).await?;
    match ask(site, r, &job.dp, &notify).await? {
        DpReply::AtCapacity { active } => return Ok(Outcome::AtCapacity(active)),
        DpReply::Accepted => {}
        other => return Err(format!("unexpected answer {other:?}")),
    }
    let status = DpRequest::PullStatus {
        package: job.package.clone(),
        version: job.version,
    };
    // Poll until the pull DP reports (the seeds' "PkgXferMgr also polls").
    loop {
        tokio::time::sleep(site.cfg.poll_interval).await;
        match ask(site, r, &job.dp, &status).await? {
            DpReply::Pull(PullState::Running { total, done, .. }) => {
                progress
                    .total_bytes
                    .store(total, std::sync::atomic::Ordering::Relaxed);
                progress
                    .done_bytes
                    .store(done, std::sync::atomic::Ordering::Relaxed);
            }
            DpReply::Pull(PullState::Installed { bytes, .. }) => {
                return Ok(Outcome::Copied {
                    bytes,
                    secs: started.elapsed().as_secs_f64(),
                });
            }
            DpReply::Pull(PullState::Failed { reason }) => return Ok(Outcome::PullFailed(reason)),
            DpReply::Pull(PullState::Unknown) => match ask(site, r, &job.dp, &notify).await? {
                // Restarted since: notified again.
                DpReply::AtCapacity { active } => return Ok(Outcome::AtCapacity(active)),
                _ => continue,
            },
            other => return Err(format!("unexpected answer {other:?}")),
        }
    }
}

/// Records a job attempt's end: job row, status, messages, in one transaction.
fn finish(site: &Site, job: &Job, outcome: Outcome) -> rusqlite::Result<()> {
    let code = site.code.to_string();
    let mut db = site.db();
    let tx = db.conn().transaction()?;
    let t = now();
    // Superseded (DistMgr changed the job while it ran): the new request runs next.
    let current: Option<(u32, String)> = tx
        .query_row(
            "SELECT version, action FROM distribution_jobs WHERE id = ?1 AND state IN ('queued', 'running', 'retrying')",
            [job.id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    if current != Some((job.version, job.action.clone())) {
        tx.commit()?;
        return Ok(());
    }
    let raise = |m: Msg| {
        statmgr::raise(
            &tx,
            &code,
            t,
            &m.package(&job.package, job.version).dp(&job.dp),
        )
    };
    let (p, v, dp) = (&job.package, &job.version, &job.dp);
    let status = |state: &str, version: Option<u32>, copied: bool, msg: &str| {
        tx.execute(
            "INSERT INTO package_dp_status (package, dp, state, version, last_copied, message, updated)
             VALUES (?1, ?2, ?3, ?4, CASE WHEN ?5 THEN ?7 END, ?6, ?7)
             ON CONFLICT (package, dp) DO UPDATE SET state = ?3, version = ?4,
                 last_copied = CASE WHEN ?5 THEN ?7 ELSE last_copied END, message = ?6, updated = ?7",
            params![p, dp, state, version, copied, msg, t],
        )
    };
    let done = |state: &str, error: Option<&str>| {
        tx.execute(
            "UPDATE distribution_jobs SET state = ?2, error = ?3, updated = ?4 WHERE id = ?1",
            params![job.id, state, error, t],
        )
    };
    // Another attempt after `delay` (raising `msg`), or, after `attempts`, a failure (8202).
    let retry = |reason: &str, attempts: u32, delay: Duration, msg: Msg| -> rusqlite::Result<()> {
        let held: Option<u32> = tx
            .query_row(
                "SELECT version FROM package_dp_status WHERE package = ?1 AND dp = ?2",
                params![p, dp],
                |r| r.get(0),
            )
            .optional()?
            .flatten();
        let removing = job.action == "remove";
        if job.attempts >= attempts {
            done("failed", Some(reason))?;
            status("failed", held, false, reason)?;
            return raise(Msg::new(8202, &[p, v, dp, &job.attempts, &reason]));
        }
        tx.execute(
            "UPDATE distribution_jobs SET state = 'retrying', error = ?2, next_attempt = ?3, updated = ?4 WHERE id = ?1",
            params![job.id, reason, now_ms() + delay.as_millis() as i64, t],
        )?;
        if job.action != "validate" {
            status(
                if removing {
                    "removal_pending"
                } else {
                    "retrying"
                },
                held,
                false,
                reason,
            )?;
        }
        raise(msg)
    };
    let cfg = &site.cfg;
    let (pull_wait, dp_wait) = (
        human_delay(cfg.pull_retry_delay),
        human_delay(cfg.dp_retry_delay),
    );
    match outcome {
        Outcome::Copied { bytes, secs } => {
            done("done", None)?;
            status("installed", Some(job.version), true, "")?;
            tx.execute(
                "UPDATE package_dp_status SET message = NULL, last_validated = ?3 WHERE package = ?1 AND dp = ?2",
                params![p, dp, t],
            )?;
            raise(Msg::new(
                8200,
                &[p, v, dp, &human(bytes), &format!("{secs:.2}")],
            ))?;
            raise(Msg::new(2329, &[p, v, dp]))?;
            raise(Msg::new(8210, &[p, v, dp]))?;
            raise(Msg::new(2330, &[p, v, dp]))?;
        }
        Outcome::Removed { freed } => {
            done("done", None)?;
            status("removed", None, false, "")?;
            raise(Msg::new(2332, &[p, dp, &human(freed)]))?;
        }
        Outcome::Validated { chunks, bad, files } => {
            done("done", None)?;
            if bad == 0 {
                tx.execute(
                    "UPDATE package_dp_status SET last_validated = ?3 WHERE package = ?1 AND dp = ?2",
                    params![p, dp, t],
                )?;
                raise(Msg::new(2384, &[p, v, dp, &chunks]))?;
            } else {
                let why = format!(
                    "validation found {bad} corrupt or missing chunk(s); redistribute to repair"
                );
                tx.execute(
                    "UPDATE package_dp_status SET state = 'failed', message = ?3, last_validated = ?4, updated = ?4 WHERE package = ?1 AND dp = ?2",
                    params![p, dp, why, t],
                )?;
                raise(Msg::new(2386, &[p, v, dp, &bad, &files.join(", ")]))?;
            }
        }
        Outcome::NoSource => {
            let (n, delay) = (cfg.pull_attempts, cfg.pull_retry_delay);
            let msg = Msg::new(8212, &[dp, p, v, &job.attempts, &n, &pull_wait]);
            retry("no source DP holds this version yet", n, delay, msg)?;
        }
        Outcome::AtCapacity(active) => {
            let reason = format!("pull DP at capacity ({active} active jobs)");
            let msg = Msg::new(8211, &[dp, &active, p, v, &pull_wait]);
            retry(&reason, cfg.pull_attempts, cfg.pull_retry_delay, msg)?;
        }
        Outcome::PullFailed(reason) => {
            let reason = one_line(
                job,
                &format!("could not download from any source: {reason}"),
            );
            let (n, delay) = (cfg.dp_attempts, cfg.dp_retry_delay);
            let msg = Msg::new(8213, &[dp, p, v, &job.attempts, &n, &reason, &dp_wait]);
            retry(&reason, n, delay, msg)?;
        }
        Outcome::Failed(reason) => {
            let reason = one_line(job, &reason);
            let (n, delay) = (cfg.dp_attempts, cfg.dp_retry_delay);
            let msg = Msg::new(8201, &[p, v, dp, &job.attempts, &n, &reason, &dp_wait]);
            retry(&reason, n, delay, msg)?;
        }
    }
    distmgr::package_settled(&tx, &code, p, job.version)?;
    tx.commit()
}

/// A failed attempt's reason on one line (for the status row and messages), logged.
fn one_line(job: &Job, reason: &str) -> String {
    let one_line = reason.replace('\n', " ");
    tracing::warn!(package = %job.package, dp = %job.dp, error = %one_line, "copy failed");
    one_line
}

fn human_delay(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 120.0 {
        format!("{s:.0} s")
    } else {
        format!("{:.0} min", s / 60.0)
    }
}

#[cfg(test)]
mod tests {
    use super::Running;

    #[test]
    fn distmgr_limits_three_packages_five_dps_each_one_job_per_standard_dp() {
        let mut r = Running::default();
        let limits = (3, 5);
        // Five DPs of one package, not a sixth.
        for i in 0..5 {
            assert!(r.take("P1", &format!("dp{i}"), false, limits));
        }
        assert!(!r.take("P1", "dp5", false, limits));
        // A standard DP busy with P1 takes no job of P2; another DP does.
        assert!(!r.take("P2", "dp0", false, limits));
        assert!(r.take("P2", "dp9", false, limits));
        assert!(r.take("P3", "dp10", false, limits));
        // A fourth package waits.
        assert!(!r.take("P4", "dp11", false, limits));
        // A pull DP takes jobs of several packages at once.
        assert!(r.take("P2", "pull", true, limits));
        assert!(r.take("P3", "pull", true, limits));
        // Giving back frees the slot.
        r.give_back("P3", "dp10", false);
        r.give_back("P3", "pull", true);
        assert!(r.take("P4", "dp11", false, limits));
        assert!(r.take("P4", "dp10", false, limits));
    }
}
