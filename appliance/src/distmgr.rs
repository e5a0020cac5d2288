//! DistMgr, the distribution manager: turns the admin interface's pending actions (rows of
//! `package_targets`) into distribution jobs for PkgXferMgr, one transaction per package,
//! with the status messages of SPEC §7 (2300, 2342, 2357, 2331, 2380), and schedules periodic
//! validation. Its limits (packages at once, DP workers per package) are applied when
//! PkgXferMgr starts jobs ([`crate::pkgxfer`]), since that is where the work happens.

use crate::site::{Site, now, now_ms};
use crate::statmgr::{self, Msg};
use rusqlite::{OptionalExtension, params};

/// One pending action, with what the DP holds and whether a job for it is live.
struct Target {
    dp: String,
    action: String,
    version: u32,
    /// The DP holds an installed copy of `version` or newer.
    settled: bool,
    /// A job of this package to this DP is queued, running or retrying.
    live: bool,
}

/// Turns every pending action into a job. Returns how many jobs were created or changed.
pub fn plan(site: &Site) -> rusqlite::Result<usize> {
    if let Some(every) = site.cfg.validate_every {
        schedule_validation(site, every.as_secs() as i64)?;
    }
    let packages: Vec<(String, String)> = {
        let mut db = site.db();
        let c = db.conn();
        c.prepare(
            "SELECT DISTINCT t.package, p.name FROM package_targets t JOIN packages p ON p.id = t.package
             WHERE t.action != 'none' ORDER BY t.package",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?
    };
    let mut changed = 0;
    for (package, name) in packages {
        changed += plan_package(site, &package, &name)?;
    }
    Ok(changed)
}

fn plan_package(site: &Site, package: &str, name: &str) -> rusqlite::Result<usize> {
    let code = site.code.to_string();
    let mut db = site.db();
    let tx = db.conn().transaction()?;
    // At most one live job per (package, dp) (index one_live_job), so one row per target.
    let targets: Vec<Target> = tx
        .prepare(
            "SELECT t.dp, t.action, t.version,
                 coalesce(s.state = 'installed' AND s.version >= t.version, 0), j.id IS NOT NULL
             FROM package_targets t
             LEFT JOIN package_dp_status s ON s.package = t.package AND s.dp = t.dp
             LEFT JOIN distribution_jobs j ON j.package = t.package AND j.dp = t.dp
                 AND j.state IN ('queued', 'running', 'retrying')
             WHERE t.package = ?1 AND t.action != 'none' ORDER BY t.dp",
        )?
        .query_map([package], |r| {
            Ok(Target {
                dp: r.get(0)?,
                action: r.get(1)?,
                version: r.get(2)?,
                settled: r.get(3)?,
                live: r.get(4)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    let t = now();
    let raise = |m: Msg| statmgr::raise(&tx, &code, t, &m);
    raise(
        Msg::new(2300, &[&package, &name])
            .package(package, targets.first().map_or(0, |t| t.version)),
    )?;
    let mut changed = 0;
    for tg in &targets {
        // Distributing what a DP already holds, with nothing else going on, moves nothing.
        if tg.action == "install" && tg.settled && !tg.live {
            continue;
        }
        // A running job set back to queued is taken again once its task ends (PkgXferMgr
        // runs one job per DP); the task's own result no longer matches and is dropped.
        // A validation never displaces a copy or a removal already queued.
        if tg.action == "validate" && tg.live {
            continue;
        }
        let updated = tx.execute(
            "UPDATE distribution_jobs SET version = ?3, action = ?4, state = 'queued',
                 attempts = 0, next_attempt = ?5, error = NULL, updated = ?6
             WHERE package = ?1 AND dp = ?2 AND state IN ('queued', 'running', 'retrying')",
            params![package, tg.dp, tg.version, tg.action, now_ms(), t],
        )?;
        if updated == 0 {
            tx.execute(
                "INSERT INTO distribution_jobs (package, version, dp, action, next_attempt, created, updated)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
                params![package, tg.version, tg.dp, tg.action, now_ms(), t],
            )?;
        }
        let state = match tg.action.as_str() {
            "remove" => Some("removal_pending"),
            "validate" => None,
            _ => Some("install_pending"),
        };
        if let Some(state) = state {
            tx.execute(
                "INSERT INTO package_dp_status (package, dp, state, updated) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (package, dp) DO UPDATE SET state = ?3, message = NULL, updated = ?4",
                params![package, tg.dp, state, t],
            )?;
        }
        match tg.action.as_str() {
            "remove" => raise(
                Msg::new(2331, &[&package, &tg.dp])
                    .package(package, tg.version)
                    .dp(&tg.dp),
            )?,
            "validate" => raise(
                Msg::new(2380, &[&package, &tg.version, &tg.dp])
                    .package(package, tg.version)
                    .dp(&tg.dp),
            )?,
            action => {
                let verb = if action == "redistribute" {
                    "redistribute"
                } else {
                    "add or update"
                };
                raise(
                    Msg::new(2342, &[&verb, &package, &tg.dp])
                        .package(package, tg.version)
                        .dp(&tg.dp),
                )?;
                raise(
                    Msg::new(2357, &[&package, &tg.version, &tg.dp, &action])
                        .package(package, tg.version)
                        .dp(&tg.dp),
                )?;
            }
        }
        changed += 1;
    }
    // Every target read above is handled (nothing else writes inside this transaction).
    tx.execute(
        "UPDATE package_targets SET action = 'none' WHERE package = ?1 AND action != 'none'",
        [package],
    )?;
    tx.commit()?;
    Ok(changed)
}

/// Queues a validation of every installed copy not validated within `every` seconds.
fn schedule_validation(site: &Site, every: i64) -> rusqlite::Result<()> {
    let t = now();
    let mut db = site.db();
    db.conn().execute(
        "UPDATE package_targets SET action = 'validate', updated = ?1
         WHERE action = 'none' AND EXISTS (
             SELECT 1 FROM package_dp_status s WHERE s.package = package_targets.package
             AND s.dp = package_targets.dp AND s.state = 'installed'
             AND coalesce(s.last_validated, s.last_copied, 0) + ?2 <= ?1)",
        params![t, every],
    )?;
    Ok(())
}

/// After a job of `package` ended: when none is left, the package is processed (2301), or
/// processed with failures (2302).
pub fn package_settled(
    tx: &rusqlite::Transaction,
    site: &str,
    package: &str,
    version: u32,
) -> rusqlite::Result<()> {
    let live: i64 = tx.query_row(
        "SELECT count(*) FROM distribution_jobs WHERE package = ?1 AND state IN ('queued', 'running', 'retrying')",
        [package],
        |r| r.get(0),
    )?;
    if live > 0 {
        return Ok(());
    }
    let name: String = tx
        .query_row("SELECT name FROM packages WHERE id = ?1", [package], |r| {
            r.get(0)
        })
        .optional()?
        .unwrap_or_default();
    let failed: i64 = tx.query_row(
        "SELECT count(*) FROM package_dp_status WHERE package = ?1 AND state = 'failed'",
        [package],
        |r| r.get(0),
    )?;
    let m = if failed > 0 {
        Msg::new(2302, &[&package, &name, &failed])
    } else {
        Msg::new(2301, &[&package, &name])
    };
    statmgr::raise(tx, site, now(), &m.package(package, version))
}
