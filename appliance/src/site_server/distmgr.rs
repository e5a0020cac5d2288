//! DistMgr, the distribution manager (seed 001). Its inbox is `package_targets`, written by
//! the admin actions. Each round it:
//! 1. asks for scheduled validations (`validate_every`);
//! 2. plans every pending action into a distribution job, one transaction per package (its
//!    *package thread* opens: 2300, then 2342/2357, 2331 or 2380 per DP, from [`job::plan`]);
//! 3. drops the site's copy of deleted packages (a durable queue: `packages.purged`);
//! 4. admits due jobs within its limits (SPEC §6: 3 packages at once, 5 DP workers each; one
//!    copy per standard DP; a copy waits for its route's window) and hands them to PkgXferMgr;
//! 5. closes package threads with no live job (2301, or 2302 with failures).
//!
//! It wakes when an action writes its inbox, when PkgXferMgr reports a job's end, or when the
//! next retry falls due.

use super::error::SiteResult;
use super::job::{self, Planned, TargetFacts};
use super::statmgr::Msg;
use super::store::JobRow;
use super::store::types::DpKind;
use super::{SiteServer, now, now_ms, pkgxfer};
use crate::content::drop_package;
use freight_core::PackageId;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

/// Runs DistMgr until the process ends: admitted jobs go out on `jobs`; PkgXferMgr sends each
/// back on `ended` once its result is recorded.
pub async fn run(
    site: Arc<SiteServer>,
    jobs: UnboundedSender<JobRow>,
    mut ended: UnboundedReceiver<JobRow>,
) {
    match site.store.write(|db| db.requeue_running()) {
        Ok(0) => {}
        Ok(n) => tracing::info!(jobs = n, "interrupted jobs queued again"),
        Err(e) => tracing::error!(error = %e, "cannot requeue interrupted jobs"),
    }
    let mut slots = Slots::default();
    loop {
        while let Ok(j) = ended.try_recv() {
            slots.give_back(&j);
        }
        let next = match round(&site, &mut slots, &jobs).await {
            Ok(next) => next,
            Err(e) => {
                tracing::error!(error = %e, "DistMgr could not finish its round");
                Some(now_ms() + 1000)
            }
        };
        let wait = next.map_or(Duration::from_secs(5), |t| {
            Duration::from_millis((t - now_ms()).clamp(10, 5000) as u64)
        });
        tokio::select! {
            _ = site.distmgr_wake.notified() => {}
            j = ended.recv() => match j {
                Some(j) => slots.give_back(&j),
                None => return,
            },
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// One round; returns when the next waiting job falls due (unix ms).
async fn round(
    site: &SiteServer,
    slots: &mut Slots,
    jobs: &UnboundedSender<JobRow>,
) -> SiteResult<Option<i64>> {
    if let Some(every) = site.cfg.validate_every {
        site.store
            .write(|db| db.schedule_validation(now(), every.as_secs() as i64))?;
    }
    plan(site)?;
    // Packages for sites below: mini-jobs into the Sender's outbox.
    if super::scheduler::plan(site)? {
        site.sender_wake.notify_one();
    }
    purge(site).await?;
    let next = admit(site, slots, jobs)?;
    settle(site)?;
    // Statuses may have changed this round: the parent hears of them.
    site.report_wake.notify_one();
    Ok(next)
}

/// Turns every pending action into a job, one transaction per package.
fn plan(site: &SiteServer) -> SiteResult<()> {
    let code = site.code.as_str();
    for (package, name) in site.store.read(|db| db.packages_with_targets())? {
        site.store.write(|db| {
            let targets = db.targets_of(&package)?;
            let t = now();
            let first = targets.first().map_or(0, |t| t.version);
            db.raise(
                code,
                t,
                &Msg::new(2300, &[&package, &name]).package(&package, first),
            )?;
            for tg in &targets {
                let facts = TargetFacts {
                    package: &package,
                    dp: &tg.dp,
                    action: tg.action,
                    version: tg.version,
                    settled: tg.settled,
                    live: tg.live,
                };
                let Planned::Job { state, messages } = job::plan(&facts) else {
                    continue;
                };
                db.queue_job(&package, &tg.dp, tg.version, tg.action, now_ms())?;
                if let Some(state) = state {
                    db.set_dp_state(&package, &tg.dp, state, t)?;
                }
                for m in &messages {
                    db.raise(code, t, m)?;
                }
            }
            // Every target read above is handled (nothing else writes inside this transaction).
            db.targets_planned(&package)
        })?;
    }
    Ok(())
}

/// Drops the site's own copy of deleted packages.
async fn purge(site: &SiteServer) -> SiteResult<()> {
    for id in site.store.read(|db| db.packages_to_purge())? {
        if let Ok(pid) = PackageId::parse(&id) {
            let dropped = site
                .lib
                .exclusive(move |l| drop_package(l, &pid, &HashSet::new(), None))
                .await?;
            if let Err(e) = dropped {
                tracing::warn!(package = %id, error = %e, "removing the site's copy of a package failed; trying again");
                continue;
            }
        }
        site.store.write(|db| db.mark_purged(&id))?;
    }
    Ok(())
}

/// Admits every due job the limits and route windows allow; returns when the next waiting job
/// falls due.
fn admit(
    site: &SiteServer,
    slots: &mut Slots,
    jobs: &UnboundedSender<JobRow>,
) -> SiteResult<Option<i64>> {
    let t = now_ms();
    let (due, next) = site
        .store
        .read(|db| Ok::<_, super::error::SiteError>((db.due_jobs(t)?, db.next_due(t)?)))?;
    let limits = (site.cfg.packages_parallel, site.cfg.dp_workers);
    for mut j in due {
        // A copy outside its window stays queued, so it never holds the DP while a package
        // that may send waits behind it.
        if !pkgxfer::window_open(&j) {
            continue;
        }
        // A pull DP's copy waits while no source holds the version and one is still being
        // given it: run now, it would only find no source (8212) and spend an attempt and a
        // retry delay; it is admitted in the round after that source's job ends.
        if j.kind == DpKind::Pull
            && j.action.copies()
            && site
                .store
                .read(|db| db.waits_for_source(&j.dp, &j.package, j.version))?
        {
            continue;
        }
        if !slots.take(&j, limits) {
            continue;
        }
        // Counted before any byte moves: a crash now costs one attempt, never a duplicate.
        if !site.store.write(|db| db.mark_running(j.id, now()))? {
            slots.give_back(&j);
            continue;
        }
        j.attempts += 1;
        if jobs.send(j).is_err() {
            // PkgXferMgr is gone: the process is stopping; the job is queued again at start.
            break;
        }
    }
    Ok(next)
}

/// Closes every package thread whose jobs have all ended.
fn settle(site: &SiteServer) -> SiteResult<()> {
    let code = site.code.as_str();
    for p in site.store.read(|db| db.settled_packages())? {
        site.store.write(|db| {
            db.raise(
                code,
                now(),
                &job::settled(&p.id, &p.name, p.version, p.failed),
            )?;
            db.close_thread(&p.id)
        })?;
    }
    Ok(())
}

/// DistMgr's package threads and DP workers in use (SPEC §6).
#[derive(Default)]
struct Slots {
    /// Standard DPs with a job running (one at a time each).
    dps: HashSet<String>,
    /// Jobs running per package.
    packages: HashMap<String, usize>,
}

impl Slots {
    /// Takes a slot for `j` if the limits allow it: at most `packages` packages at once, at
    /// most `workers` DPs per package, one job per standard DP (a pull DP takes several, up to
    /// its own capacity). Returns false, taking nothing, when they do not.
    fn take(&mut self, j: &JobRow, (packages, workers): (usize, usize)) -> bool {
        let pull = j.kind == DpKind::Pull;
        let in_pkg = self.packages.get(&j.package).copied().unwrap_or(0);
        if (!pull && self.dps.contains(&j.dp))
            || in_pkg >= workers
            || (in_pkg == 0 && self.packages.len() >= packages)
        {
            return false;
        }
        if !pull {
            self.dps.insert(j.dp.clone());
        }
        *self.packages.entry(j.package.clone()).or_default() += 1;
        true
    }

    /// Gives back what [`take`](Self::take) took.
    fn give_back(&mut self, j: &JobRow) {
        if j.kind != DpKind::Pull {
            self.dps.remove(&j.dp);
        }
        if let Some(n) = self.packages.get_mut(&j.package) {
            *n -= 1;
            if *n == 0 {
                self.packages.remove(&j.package);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::site_server::store::types::Action;
    use freight_transport::Priority;

    fn job(package: &str, dp: &str, kind: DpKind) -> JobRow {
        JobRow {
            id: 1,
            package: package.into(),
            version: 1,
            dp: dp.into(),
            action: Action::Install,
            attempts: 0,
            priority: Priority::Medium,
            kind,
            throttle: "daily unlimited".into(),
        }
    }

    #[test]
    fn three_packages_five_dps_each_one_job_per_standard_dp() {
        let mut s = Slots::default();
        let limits = (3, 5);
        let std = |p: &str, d: &str| job(p, d, DpKind::Standard);
        // Five DPs of one package, not a sixth.
        for i in 0..5 {
            assert!(s.take(&std("P1", &format!("dp{i}")), limits));
        }
        assert!(!s.take(&std("P1", "dp5"), limits));
        // A standard DP busy with P1 takes no job of P2; another DP does.
        assert!(!s.take(&std("P2", "dp0"), limits));
        assert!(s.take(&std("P2", "dp9"), limits));
        assert!(s.take(&std("P3", "dp10"), limits));
        // A fourth package waits.
        assert!(!s.take(&std("P4", "dp11"), limits));
        // A pull DP takes jobs of several packages at once.
        assert!(s.take(&job("P2", "pull", DpKind::Pull), limits));
        assert!(s.take(&job("P3", "pull", DpKind::Pull), limits));
        // Giving back frees the slot.
        s.give_back(&std("P3", "dp10"));
        s.give_back(&job("P3", "pull", DpKind::Pull));
        assert!(s.take(&std("P4", "dp11"), limits));
        assert!(s.take(&std("P4", "dp10"), limits));
    }
}
