//! The rows of sending across sites (issue 13): DistMgr's site targets, the Sender's outbox of
//! send requests, the sites below this one that children report, their DPs' package status,
//! and the log of status changes this site reports to its parent.

use super::types::StoredPriority;
use super::{Db, Result};
use crate::api::PackageStatus;
use freight_transport::Priority;
use rusqlite::{OptionalExtension, params};

/// Ended send requests a listing shows beyond the live ones (IDs are never reused, so the
/// newest are the highest).
pub const SENDS_SHOWN: i64 = 1000;

/// A site target DistMgr has not planned yet.
#[derive(Debug, Clone, PartialEq)]
pub struct SiteTarget {
    /// Package ID.
    pub package: String,
    /// The target site (a child or below).
    pub site: String,
    /// `install` or `remove`.
    pub action: String,
    /// Version to install.
    pub version: u32,
}

/// One send request of the Sender's outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct SendRow {
    /// Row ID.
    pub id: i64,
    /// Package ID.
    pub package: String,
    /// Version sent.
    pub version: u32,
    /// The child it goes to (the next hop).
    pub dest: String,
    /// Its priority on the address's windows.
    pub priority: Priority,
    /// The signed instruction, sent last.
    pub instruction: Vec<u8>,
    /// Attempts so far.
    pub attempts: u32,
}

/// A child's report of one status change below it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StatusChange {
    /// The reporting site's sequence number of the change.
    pub seq: i64,
    /// Package ID.
    pub package: String,
    /// The DP's site.
    pub site: String,
    /// DP name at that site.
    pub dp: String,
    /// State word (`installed`, ...).
    pub state: String,
    /// Version the DP holds.
    pub version: Option<u32>,
    /// Last message about it.
    pub message: Option<String>,
}

impl Db<'_> {
    /// Targets `sites` with the newest version (`install`) or the removal of `package`.
    pub fn set_site_targets(
        &self,
        package: &str,
        sites: &[String],
        action: &str,
        version: u32,
        now: i64,
    ) -> Result<()> {
        for site in sites {
            self.c.execute(
                "INSERT INTO site_targets (package, site, action, version, updated)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (package, site) DO UPDATE SET action = ?3, version = ?4, updated = ?5",
                params![package, site, action, version, now],
            )?;
        }
        Ok(())
    }

    /// A new version of `package`: every site it was sent to (not being removed) gets it.
    pub fn retarget_sites(&self, package: &str, version: u32, now: i64) -> Result<()> {
        self.c.execute(
            "UPDATE site_targets SET action = 'install', version = ?2, updated = ?3
             WHERE package = ?1 AND action != 'remove'",
            params![package, version, now],
        )?;
        Ok(())
    }

    /// The package is removed: every site it was sent to is to remove it too.
    pub fn remove_site_targets(&self, package: &str, now: i64) -> Result<usize> {
        Ok(self.c.execute(
            "UPDATE site_targets SET action = 'remove', updated = ?2 WHERE package = ?1",
            params![package, now],
        )?)
    }

    /// A package's name, deleted or not.
    pub fn package_name(&self, id: &str) -> Result<Option<String>> {
        Ok(self
            .c
            .query_row("SELECT name FROM packages WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()?)
    }

    /// Site targets waiting to be planned, oldest first.
    pub fn pending_site_targets(&self) -> Result<Vec<SiteTarget>> {
        let mut st = self.c.prepare(
            "SELECT t.package, t.site, t.action, t.version FROM site_targets t
             JOIN packages p ON p.id = t.package
             WHERE t.action != 'none' ORDER BY t.updated, t.package, t.site",
        )?;
        let rows = st
            .query_map([], |r| {
                Ok(SiteTarget {
                    package: r.get(0)?,
                    site: r.get(1)?,
                    action: r.get(2)?,
                    version: r.get(3)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Marks a site target planned.
    pub fn site_target_planned(&self, package: &str, site: &str) -> Result<()> {
        self.c.execute(
            "UPDATE site_targets SET action = 'none' WHERE package = ?1 AND site = ?2",
            params![package, site],
        )?;
        Ok(())
    }

    /// The child of this site on the way to `site`: itself if it is a child, else the child
    /// whose report names it.
    pub fn next_hop(&self, site: &str) -> Result<Option<String>> {
        let me: Option<String> = self
            .c
            .query_row("SELECT code FROM sites WHERE is_self = 1", [], |r| r.get(0))
            .optional()?;
        let child = self
            .c
            .query_row(
                "SELECT code FROM sites WHERE code = ?1 AND is_self = 0 AND parent = ?2",
                params![site, me],
                |r| r.get(0),
            )
            .optional()?;
        if child.is_some() {
            return Ok(child);
        }
        Ok(self
            .c
            .query_row(
                "SELECT via FROM remote_sites WHERE code = ?1",
                [site],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Whether a send of `package` to `dest` is queued, running, retrying, or a parcel not
    /// yet confirmed.
    pub fn live_send(&self, package: &str, dest: &str) -> Result<bool> {
        Ok(self
            .c
            .query_row(
                "SELECT 1 FROM send_requests WHERE package = ?1 AND dest = ?2
                   AND state IN ('queued', 'sending', 'retrying', 'pending')",
                params![package, dest],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    /// The newest version of `package` sent to `dest` and acknowledged by it.
    pub fn last_sent(&self, package: &str, dest: &str) -> Result<Option<u32>> {
        Ok(self.c.query_row(
            "SELECT max(version) FROM send_requests WHERE package = ?1 AND dest = ?2
               AND state IN ('sent', 'confirmed')",
            params![package, dest],
            |r| r.get(0),
        )?)
    }

    /// Whether a request of `version` (or newer) of `package` that named final site `site`
    /// reached `dest` (sent or confirmed).
    pub fn sent_for(&self, package: &str, dest: &str, site: &str, version: u32) -> Result<bool> {
        let mut st = self.c.prepare(
            "SELECT sites FROM send_requests WHERE package = ?1 AND dest = ?2 AND version >= ?3
               AND state IN ('sent', 'confirmed')",
        )?;
        let lists: Vec<String> = st
            .query_map(params![package, dest, version], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(lists.iter().any(|l| {
            serde_json::from_str::<Vec<String>>(l).is_ok_and(|v| v.iter().any(|s| s == site))
        }))
    }

    /// Queues a send request (the Scheduler's output).
    #[allow(clippy::too_many_arguments)]
    pub fn queue_send(
        &self,
        package: &str,
        version: u32,
        base: Option<u32>,
        dest: &str,
        sites: &[String],
        priority: Priority,
        instruction: &[u8],
        now_ms: i64,
    ) -> Result<i64> {
        self.c.execute(
            "INSERT INTO send_requests (package, version, base_version, dest, sites, priority,
                 instruction, next_attempt, created, updated)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8, ?8)",
            params![
                package,
                version,
                base,
                dest,
                serde_json::to_string(sites).unwrap_or_default(),
                StoredPriority(priority),
                instruction,
                now_ms
            ],
        )?;
        Ok(self.c.last_insert_rowid())
    }

    /// Send requests due now, by priority (high first) then age.
    pub fn due_sends(&self, now_ms: i64) -> Result<Vec<SendRow>> {
        let mut st = self.c.prepare(
            "SELECT id, package, version, dest, priority, instruction, attempts FROM send_requests
             WHERE state IN ('queued', 'retrying') AND next_attempt <= ?1
               AND EXISTS (SELECT 1 FROM addresses a WHERE a.site = dest AND a.kind = 'standard')
             ORDER BY CASE priority WHEN 'high' THEN 0 WHEN 'medium' THEN 1 ELSE 2 END, created, id",
        )?;
        let rows = st
            .query_map([now_ms], |r| {
                Ok(SendRow {
                    id: r.get(0)?,
                    package: r.get(1)?,
                    version: r.get(2)?,
                    dest: r.get(3)?,
                    priority: r.get::<_, StoredPriority>(4)?.0,
                    instruction: r.get(5)?,
                    attempts: r.get(6)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// When the next waiting send request becomes due (unix ms).
    pub fn next_send_due(&self) -> Result<Option<i64>> {
        Ok(self.c.query_row(
            "SELECT min(next_attempt) FROM send_requests WHERE state IN ('queued', 'retrying')
               AND EXISTS (SELECT 1 FROM addresses a WHERE a.site = dest AND a.kind = 'standard')",
            [],
            |r| r.get(0),
        )?)
    }

    /// Marks a send request running and counts the attempt.
    pub fn mark_sending(&self, id: i64, now_ms: i64) -> Result<()> {
        self.c.execute(
            "UPDATE send_requests SET state = 'sending', attempts = attempts + 1, updated = ?2
             WHERE id = ?1",
            params![id, now_ms],
        )?;
        Ok(())
    }

    /// Records the end of a send attempt: `sent`, `retrying` (due at `next_ms`) or `failed`.
    pub fn end_send(
        &self,
        id: i64,
        state: &str,
        error: Option<&str>,
        bytes: u64,
        next_ms: i64,
        now_ms: i64,
    ) -> Result<()> {
        self.c.execute(
            "UPDATE send_requests SET state = ?2, error = ?3, bytes_sent = bytes_sent + ?4,
                 next_attempt = ?5, updated = ?6 WHERE id = ?1",
            params![id, state, error, bytes as i64, next_ms, now_ms],
        )?;
        Ok(())
    }

    /// After a restart: sends that were running are queued again (the transfer resumes from
    /// what the child stored; the instruction is sent again, which the child accepts as a
    /// re-delivery).
    pub fn requeue_sending(&self) -> Result<usize> {
        Ok(self.c.execute(
            "UPDATE send_requests SET state = 'queued' WHERE state = 'sending'",
            [],
        )?)
    }

    /// Send requests, newest first (for `freight sends`, `courier list` and tests): every
    /// live one and the newest [`SENDS_SHOWN`] in all, the history being unbounded; with
    /// `courier`, only those to children reached by courier alone.
    pub fn sends(&self, courier: bool) -> Result<Vec<serde_json::Value>> {
        let mut st = self.c.prepare(
            "SELECT id, package, version, base_version, dest, sites, priority, state, attempts,
                    bytes_sent, error
             FROM send_requests r
             WHERE (state IN ('queued', 'sending', 'retrying', 'pending')
                    OR id > (SELECT coalesce(max(id), 0) FROM send_requests) - ?2)
               AND (?1 = 0 OR (EXISTS (SELECT 1 FROM addresses a WHERE a.site = r.dest AND a.kind = 'courier')
                     AND NOT EXISTS (SELECT 1 FROM addresses a WHERE a.site = r.dest AND a.kind = 'standard')))
             ORDER BY id DESC",
        )?;
        let rows = st
            .query_map(params![courier, SENDS_SHOWN], |r| {
                Ok(serde_json::json!({
                    "id": r.get::<_, i64>(0)?,
                    "package": r.get::<_, String>(1)?,
                    "version": r.get::<_, u32>(2)?,
                    "base_version": r.get::<_, Option<u32>>(3)?,
                    "dest": r.get::<_, String>(4)?,
                    "sites": serde_json::from_str::<serde_json::Value>(&r.get::<_, String>(5)?)
                        .unwrap_or_default(),
                    "priority": r.get::<_, StoredPriority>(6)?.0.name(),
                    "state": r.get::<_, String>(7)?,
                    "attempts": r.get::<_, u32>(8)?,
                    "bytes_sent": r.get::<_, i64>(9)?,
                    "error": r.get::<_, Option<String>>(10)?,
                }))
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Where a package came from: `Some(site)` for a package another site sent, `None` for one
    /// made here; `Err` only on a database failure, `Ok(None)` also when it does not exist.
    pub fn package_origin(&self, id: &str) -> Result<Option<String>> {
        Ok(self
            .c
            .query_row("SELECT origin FROM packages WHERE id = ?1", [id], |r| {
                r.get::<_, Option<String>>(0)
            })
            .optional()?
            .flatten())
    }

    /// Records a package another site sent (its definition travels with its instruction).
    pub fn insert_received_package(
        &self,
        id: &str,
        name: &str,
        priority: Priority,
        origin: &str,
        now: i64,
    ) -> Result<()> {
        self.c.execute(
            "INSERT INTO packages (id, name, source, priority, created, origin)
             VALUES (?1, ?2, '', ?3, ?4, ?5)",
            params![id, name, StoredPriority(priority), now, origin],
        )?;
        Ok(())
    }

    /// The manifest hash of `version` of `package`, if recorded.
    pub fn version_hash(&self, package: &str, version: u32) -> Result<Option<Vec<u8>>> {
        Ok(self
            .c
            .query_row(
                "SELECT manifest_hash FROM package_versions WHERE package = ?1 AND version = ?2",
                params![package, version],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// The newest recorded version of `package`.
    pub fn newest_version(&self, package: &str) -> Result<Option<u32>> {
        Ok(self.c.query_row(
            "SELECT max(version) FROM package_versions WHERE package = ?1",
            [package],
            |r| r.get(0),
        )?)
    }

    /// Every DP of this site, by name.
    pub fn dp_names(&self) -> Result<Vec<String>> {
        let mut st = self.c.prepare("SELECT name FROM dps ORDER BY name")?;
        let rows = st
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    // ---- the courier ----

    /// Whether `site` is reached only by courier.
    pub fn courier_only(&self, site: &str) -> Result<bool> {
        let kinds: Vec<String> = {
            let mut st = self
                .c
                .prepare("SELECT kind FROM addresses WHERE site = ?1")?;
            st.query_map([site], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?
        };
        Ok(kinds.iter().any(|k| k == "courier") && !kinds.iter().any(|k| k == "standard"))
    }

    /// One send request by ID.
    pub fn send(&self, id: i64) -> Result<Option<(SendRow, Option<u32>, String)>> {
        Ok(self
            .c
            .query_row(
                "SELECT id, package, version, dest, priority, instruction, attempts, base_version,
                        state FROM send_requests WHERE id = ?1",
                [id],
                |r| {
                    Ok((
                        SendRow {
                            id: r.get(0)?,
                            package: r.get(1)?,
                            version: r.get(2)?,
                            dest: r.get(3)?,
                            priority: r.get::<_, StoredPriority>(4)?.0,
                            instruction: r.get(5)?,
                            attempts: r.get(6)?,
                        },
                        r.get(7)?,
                        r.get(8)?,
                    ))
                },
            )
            .optional()?)
    }

    /// Records that a parcel arrived here by courier, to be confirmed to the parent.
    pub fn courier_arrived(&self, package: &str, version: u32) -> Result<()> {
        self.c.execute(
            "INSERT OR IGNORE INTO courier_received (package, version) VALUES (?1, ?2)",
            params![package, version],
        )?;
        Ok(())
    }

    /// Courier arrivals not yet reported to the parent.
    pub fn courier_unreported(&self) -> Result<Vec<(String, u32)>> {
        let mut st = self.c.prepare(
            "SELECT package, version FROM courier_received WHERE reported = 0 ORDER BY 1, 2 LIMIT 500",
        )?;
        let rows = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// The parent acknowledged these arrivals.
    pub fn courier_reported(&self, arrivals: &[(String, u32)]) -> Result<()> {
        for (p, v) in arrivals {
            self.c.execute(
                "UPDATE courier_received SET reported = 1 WHERE package = ?1 AND version = ?2",
                params![p, v],
            )?;
        }
        Ok(())
    }

    /// A child confirmed parcels: their pending requests become confirmed; returns those
    /// confirmed now.
    pub fn confirm_courier(
        &self,
        child: &str,
        arrivals: &[(String, u32)],
        now_ms: i64,
    ) -> Result<Vec<(String, u32)>> {
        let mut done = Vec::new();
        for (p, v) in arrivals {
            let n = self.c.execute(
                "UPDATE send_requests SET state = 'confirmed', updated = ?4
                 WHERE dest = ?1 AND package = ?2 AND version = ?3 AND state = 'pending'",
                params![child, p, v, now_ms],
            )?;
            if n > 0 {
                done.push((p.clone(), *v));
            }
        }
        Ok(done)
    }

    // ---- status reports up the hierarchy ----

    /// Status changes past `after` to report to the parent, at most `limit`.
    pub fn status_changes(&self, after: i64, limit: usize) -> Result<Vec<StatusChange>> {
        let mut st = self.c.prepare(
            "SELECT seq, package, site, dp, state, version, message FROM status_log
             WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )?;
        let rows = st
            .query_map(params![after, limit as i64], |r| {
                Ok(StatusChange {
                    seq: r.get(0)?,
                    package: r.get(1)?,
                    site: r.get(2)?,
                    dp: r.get(3)?,
                    state: r.get(4)?,
                    version: r.get(5)?,
                    message: r.get(6)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// The sequence number the parent acknowledged last.
    pub fn report_acked(&self) -> Result<i64> {
        Ok(self
            .c
            .query_row("SELECT acked FROM report_cursor", [], |r| r.get(0))?)
    }

    /// The parent acknowledged every change up to `seq`: they are dropped from the log.
    pub fn ack_report(&self, seq: i64) -> Result<()> {
        self.c
            .execute("UPDATE report_cursor SET acked = max(acked, ?1)", [seq])?;
        self.c
            .execute("DELETE FROM status_log WHERE seq <= ?1", [seq])?;
        Ok(())
    }

    /// A parent was just set: every current status row goes into the log, so the parent
    /// hears of what happened before it was configured.
    pub fn log_all_status(&self) -> Result<()> {
        self.c.execute(
            "INSERT INTO status_log (package, site, dp, state, version, message)
             SELECT s.package, (SELECT code FROM sites WHERE is_self = 1), s.dp, s.state,
                    s.version, s.message FROM package_dp_status s",
            [],
        )?;
        self.c.execute(
            "INSERT INTO status_log (package, site, dp, state, version, message)
             SELECT package, site, dp, state, version, message FROM remote_status",
            [],
        )?;
        Ok(())
    }

    /// Applies a child's report: the sites below it (`(code, parent)`) and status changes.
    pub fn apply_report(
        &self,
        child: &str,
        sites: &[(String, String)],
        changes: &[StatusChange],
        now: i64,
    ) -> Result<()> {
        for (code, parent) in sites {
            if code == child {
                continue;
            }
            self.c.execute(
                "INSERT INTO remote_sites (code, parent, via, updated) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (code) DO UPDATE SET parent = ?2, via = ?3, updated = ?4",
                params![code, parent, child, now],
            )?;
        }
        for c in changes {
            self.c.execute(
                "INSERT INTO remote_status (package, site, dp, state, version, message, updated)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (package, site, dp) DO UPDATE SET state = ?4, version = ?5,
                     message = ?6, updated = ?7",
                params![c.package, c.site, c.dp, c.state, c.version, c.message, now],
            )?;
        }
        Ok(())
    }

    /// The sites below this one as `(code, parent)`: its children and what they reported.
    pub fn sites_below(&self) -> Result<Vec<(String, String)>> {
        let mut st = self.c.prepare(
            "SELECT c.code, c.parent FROM sites c JOIN sites me ON me.is_self = 1
               WHERE c.parent = me.code AND c.is_self = 0
             UNION SELECT code, parent FROM remote_sites ORDER BY 1",
        )?;
        let rows = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Package status on the DPs of sites below, as reported (for `freight status`).
    pub fn remote_status(&self, package: Option<&str>) -> Result<Vec<PackageStatus>> {
        let mut st = self.c.prepare(
            "SELECT package, site, dp, state, version, message FROM remote_status
             WHERE ?1 IS NULL OR package = ?1 ORDER BY package, site, dp",
        )?;
        let rows = st
            .query_map([package], |r| {
                let state: String = r.get(3)?;
                let state = state
                    .parse::<super::types::DpState>()
                    .map(|s| s.label().to_string())
                    .unwrap_or(state);
                Ok(PackageStatus {
                    package: r.get(0)?,
                    site: Some(r.get(1)?),
                    dp: r.get(2)?,
                    state,
                    version: r.get(4)?,
                    last_copied: None,
                    message: r.get(5)?,
                    last_bytes: None,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::site_server::store::Store;

    fn change(dp: &str, state: &str) -> StatusChange {
        StatusChange {
            seq: 0,
            package: "CAS00001".into(),
            site: "SS1".into(),
            dp: dp.into(),
            state: state.into(),
            version: Some(1),
            message: None,
        }
    }

    /// However long the parent is away, the log holds one row per DP: its newest state.
    #[test]
    fn the_status_log_keeps_only_each_dps_newest_state() {
        let t = tempfile::tempdir().unwrap();
        let s = Store::open(&t.path().join("site.db")).unwrap();
        s.write(|db| {
            db.record_self("PS1")?;
            db.insert_parent("CAS", &[1; 32], None, 0)?;
            db.insert_child("SS1", &[2; 32], 0)?;
            for (i, state) in ["install_pending", "retrying", "retrying", "installed"]
                .iter()
                .enumerate()
            {
                db.apply_report("SS1", &[], &[change("dp1", state)], i as i64)?;
            }
            db.apply_report("SS1", &[], &[change("dp2", "failed")], 9)?;
            Ok::<_, super::super::StoreError>(())
        })
        .unwrap();
        let log = s.read(|db| db.status_changes(0, 100)).unwrap();
        let states: Vec<(&str, &str)> = log
            .iter()
            .map(|c| (c.dp.as_str(), c.state.as_str()))
            .collect();
        assert_eq!(states, [("dp1", "installed"), ("dp2", "failed")]);
    }
}
