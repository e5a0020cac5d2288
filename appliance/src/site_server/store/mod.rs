//! The site database, and the only module that speaks SQL: one SQLite file (WAL) holding the
//! site's objects and every queue, so that a restart loses no job and duplicates none (SPEC
//! §4, DESIGN "Site database").
//!
//! Components never see a connection: they call [`Store::write`] with a closure over a
//! [`Db`], whose typed methods are the queries; the closure runs in one transaction that is
//! committed only when it returns `Ok`. So "an action is one transaction" is how the code is
//! shaped, not a rule to remember. States, actions, kinds and priorities are the enums of
//! [`types`], never string literals outside this module.
//!
//! # Migrations
//! The schema is a list of SQL steps ([`schema::MIGRATIONS`]); `PRAGMA user_version` records
//! how many have been applied. Opening applies the missing ones, each in its own transaction
//! together with the version bump, so a crash leaves the database at one version or the next,
//! never in between. A database written by a newer Freight is refused rather than guessed at.
//!
//! # Tables
//! ```text
//! sites                 this site, its parent and its children: code, parent, the key a
//!                       parent or child was configured with, when it was added
//! addresses             (site, kind): how this site sends to a child: QUIC endpoint
//!                       (standard), throttle (canonical compact text), retries, retry
//!                       delay (ms) and sends at once (NULL: the site's default)
//! dps                   distribution points: name, kind, QUIC and HTTP addresses, site, their
//!                       key's site code and fingerprint, throttle (compact text)
//! dp_sources            a pull DP's ranked source DPs
//! dp_groups, dp_group_members
//! packages              ID, name, source folder, priority, deleted and purged marks, and
//!                       `processing` (DistMgr's package thread is open)
//! package_ids           IDs reserved for snapshots still running (never reused)
//! package_versions      (package, version): manifest hash, files, bytes, created
//! package_targets       (package, dp): the pending action (DistMgr's inbox)
//! distribution_jobs     PkgXferMgr's queue: package, version, dp, action, state, attempts,
//!                       next attempt (unix ms), last error, bytes sent
//! package_dp_status     (package, dp): state, version held, last copy, last validation, message
//! status_messages       ID, severity, component, site, time, package, dp, version, strings
//! site_targets          (package, site): a site below to send the package to, or remove it
//!                       from (DistMgr's inbox for sites)
//! send_requests         the Sender's outbox: package, version (and base for a delta), next
//!                       hop, final sites, priority, signed instruction, state, attempts,
//!                       next attempt (unix ms), bytes sent, last error
//! remote_sites          sites below the children, as their reports name them (`via`: the
//!                       child on the way)
//! remote_status         (package, site, dp): status on DPs below, as reported
//! status_log, report_cursor  status changes to report to the parent, and the last one it
//!                       acknowledged
//! courier_received      parcels received by courier, until the parent heard of them
//! ```
//! Times are unix seconds except `distribution_jobs.next_attempt` (milliseconds: retry delays
//! are short in tests).

pub mod health;
pub mod hierarchy;
pub mod schema;
pub mod sends;
pub mod types;

use super::job::{JobEnd, NO_SOURCE_YET, StatusWrite, Transition};
use super::statmgr::{self, Msg};
use crate::api::{
    DpInfo, GroupInfo, JobProgress, PackageInfo, PackageStatus, StatusMessage, Summary, VersionInfo,
};
use freight_transport::Priority;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use schema::MIGRATIONS;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;
use types::{Action, DpKind, DpState, JobState, StoredPriority};

/// Errors of the site database, each naming the file or the cause and the fix.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file could not be opened or migrated.
    #[error(
        "{path}: site database: {source}; check the file and its folder are writable and not damaged"
    )]
    Open {
        /// The database file.
        path: PathBuf,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// Another process has the database open as its site server.
    #[error("{}: site database is in use by another freightd; stop it, or give this one its own database", path.display())]
    InUse {
        /// The database file.
        path: PathBuf,
    },
    /// The file was written by a newer Freight.
    #[error(
        "{path}: site database was written by a newer Freight (schema version {found}, this freight knows up to {known}); upgrade freight (never downgrade a site)"
    )]
    TooNew {
        /// The database file.
        path: PathBuf,
        /// Its schema version.
        found: i64,
        /// The newest this build knows.
        known: i64,
    },
    /// A query failed.
    #[error("site database: {0}; check the disk and the log")]
    Sql(#[from] rusqlite::Error),
}

type Result<T> = std::result::Result<T, StoreError>;

/// The site database: one writer connection, used in short transactions.
pub struct Store {
    conn: Mutex<Connection>,
    path: PathBuf,
    /// Held for the store's life: one site server per database.
    _lock: std::fs::File,
}

impl Store {
    /// Opens (creating if needed) the database at `path`, in WAL mode with foreign keys on,
    /// and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Store> {
        let open_err = |source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        let io_err =
            |e: std::io::Error| open_err(rusqlite::Error::ToSqlConversionFailure(Box::new(e)));
        // One site server per database: a second one on the same file would take the same
        // jobs and fail them. The lock is a file beside it (SQLite's own locks are per
        // transaction), held while the store lives and released by the kernel on a crash.
        let lock_path = path.with_extension("db.lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io_err)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StoreError::InUse {
                    path: path.to_path_buf(),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io_err(e)),
        }
        // Created owner-only: it holds the site's whole state (SQLite gives its journal files
        // the database's mode).
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(path)
            .map_err(io_err)?;
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(open_err)?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(open_err)?;
        // WAL: readers never block the writer. FULL sync: a commit that returned survives a
        // power cut too, which the queues rely on (a job is never lost once accepted).
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(open_err)?;
        let mut store = Store {
            conn: Mutex::new(conn),
            path: path.to_path_buf(),
            _lock: lock,
        };
        store.migrate()?;
        Ok(store)
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The schema version the database is at.
    pub fn version(&self) -> Result<i64> {
        Ok(self
            .conn()
            .pragma_query_value(None, "user_version", |r| r.get(0))?)
    }

    fn migrate(&mut self) -> Result<()> {
        let known = MIGRATIONS.len() as i64;
        let found = self.version()?;
        if found > known {
            return Err(StoreError::TooNew {
                path: self.path.clone(),
                found,
                known,
            });
        }
        let path = self.path.clone();
        let conn = self.conn.get_mut().unwrap_or_else(|p| p.into_inner());
        for (i, step) in MIGRATIONS.iter().enumerate().skip(found as usize) {
            let applied = conn.transaction().and_then(|tx| {
                tx.execute_batch(step)?;
                tx.pragma_update(None, "user_version", i as i64 + 1)?;
                tx.commit()
            });
            applied.map_err(|source| StoreError::Open {
                path: path.clone(),
                source,
            })?;
            tracing::info!(path = %path.display(), version = i + 1, "site database migrated");
        }
        Ok(())
    }

    /// SQLite's own consistency check: `ok`, or what it found.
    pub fn integrity_check(&self) -> Result<String> {
        Ok(self
            .conn()
            .query_row("PRAGMA integrity_check", [], |r| r.get::<_, String>(0))?)
    }

    /// Runs `f` in one transaction, committed when `f` returns `Ok` and rolled back otherwise.
    pub fn write<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&Db) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(StoreError::from)?;
        let out = f(&Db { c: &tx })?;
        tx.commit().map_err(StoreError::from)?;
        Ok(out)
    }

    /// Runs raw SQL in one transaction: tests set up rows the API has no verb for.
    #[cfg(test)]
    pub(crate) fn write_sql_for_tests(&self, sql: &str) {
        let mut conn = self.conn();
        let tx = conn.transaction().unwrap();
        tx.execute_batch(sql).unwrap();
        tx.commit().unwrap();
    }

    /// Runs `f` on one consistent view of the database (a read transaction).
    pub fn read<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&Db) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(StoreError::from)?;
        f(&Db { c: &tx })
    }
}

/// The queries, on one transaction of the [`Store`].
pub struct Db<'a> {
    c: &'a Connection,
}

/// A DP to record (`dp add`).
pub struct NewDp<'a> {
    /// Name, unique at the site.
    pub name: &'a str,
    /// The site it belongs to.
    pub site: &'a str,
    /// Standard or pull.
    pub kind: DpKind,
    /// QUIC address.
    pub address: &'a str,
    /// HTTP content address.
    pub http: Option<&'a str>,
    /// The site code its key carries.
    pub key_site: &'a str,
    /// Its key's fingerprint.
    pub fingerprint: &'a str,
    /// Bandwidth windows (compact text).
    pub throttle: &'a str,
    /// Unix seconds.
    pub created: i64,
}

/// Where a DP is and what it is (PkgXferMgr's view).
#[derive(Debug, Clone)]
pub struct Route {
    /// QUIC address as stored.
    pub address: String,
    /// The site code its key carries.
    pub key_site: String,
    /// Standard or pull.
    pub kind: DpKind,
    /// Bandwidth windows (compact text).
    pub throttle: String,
}

/// A pending action with what DistMgr needs to plan it.
#[derive(Debug, Clone)]
pub struct TargetRow {
    /// DP name.
    pub dp: String,
    /// The action.
    pub action: Action,
    /// The version it is for.
    pub version: u32,
    /// The DP holds an installed copy of `version` or newer.
    pub settled: bool,
    /// A job of this package to this DP is live.
    pub live: bool,
}

/// A job due to run, with what PkgXferMgr needs.
#[derive(Debug, Clone)]
pub struct JobRow {
    /// Row ID.
    pub id: i64,
    /// Package ID.
    pub package: String,
    /// Version.
    pub version: u32,
    /// DP name.
    pub dp: String,
    /// What it does.
    pub action: Action,
    /// Attempts made so far.
    pub attempts: u32,
    /// The package's priority.
    pub priority: Priority,
    /// The DP's kind.
    pub kind: DpKind,
    /// The DP route's bandwidth windows (compact text).
    pub throttle: String,
}

/// A package thread with no live job left.
#[derive(Debug, Clone)]
pub struct SettledPackage {
    /// Package ID.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Newest version.
    pub version: u32,
    /// DPs whose status is Failed.
    pub failed: u32,
}

impl Db<'_> {
    // ---- sites ----

    /// Records this site (once).
    pub fn record_self(&self, code: &str) -> Result<()> {
        self.c.execute(
            "INSERT OR IGNORE INTO sites (code, is_self) VALUES (?1, 1)",
            [code],
        )?;
        Ok(())
    }

    // ---- DPs ----

    /// Whether a DP called `name` is known.
    pub fn dp_exists(&self, name: &str) -> Result<bool> {
        Ok(self
            .c
            .query_row("SELECT 1 FROM dps WHERE name = ?1", [name], |_| Ok(()))
            .optional()?
            .is_some())
    }

    /// Records a DP.
    pub fn insert_dp(&self, d: &NewDp) -> Result<()> {
        self.c.execute(
            "INSERT INTO dps (name, site, kind, address, key_site, throttle, created, http, fingerprint)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                d.name,
                d.site,
                d.kind,
                d.address,
                d.key_site,
                d.throttle,
                d.created,
                d.http,
                d.fingerprint
            ],
        )?;
        Ok(())
    }

    /// Adds `source` as pull DP `dp`'s source of `rank` (0 = best).
    pub fn add_source(&self, dp: &str, source: &str, rank: usize) -> Result<()> {
        self.c.execute(
            "INSERT INTO dp_sources (dp, source, rank) VALUES (?1, ?2, ?3)",
            params![dp, source, rank as i64],
        )?;
        Ok(())
    }

    /// The DP called `name`, or (None) every DP, by name.
    pub fn dps(&self, name: Option<&str>) -> Result<Vec<DpInfo>> {
        let mut st = self.c.prepare(
            "SELECT name, kind, address, http, key_site, fingerprint, throttle FROM dps
             WHERE ?1 IS NULL OR name = ?1 ORDER BY name",
        )?;
        let mut dps: Vec<DpInfo> = st
            .query_map([name], |r| {
                Ok(DpInfo {
                    name: r.get(0)?,
                    kind: r.get::<_, DpKind>(1)?.to_string(),
                    address: r.get(2)?,
                    http: r.get(3)?,
                    key_site: r.get(4)?,
                    fingerprint: r.get(5)?,
                    throttle: r.get(6)?,
                    sources: Vec::new(),
                    groups: Vec::new(),
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        let mut sources = self
            .c
            .prepare("SELECT source FROM dp_sources WHERE dp = ?1 ORDER BY rank")?;
        let mut groups = self
            .c
            .prepare("SELECT grp FROM dp_group_members WHERE dp = ?1 ORDER BY grp")?;
        for d in &mut dps {
            d.sources = sources
                .query_map([&d.name], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            d.groups = groups
                .query_map([&d.name], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
        }
        Ok(dps)
    }

    /// Packages DP `name` holds or is getting (status not Removed).
    pub fn dp_holdings(&self, name: &str) -> Result<u32> {
        Ok(self.c.query_row(
            "SELECT count(*) FROM package_dp_status WHERE dp = ?1 AND state != ?2",
            params![name, DpState::Removed],
            |r| r.get(0),
        )?)
    }

    /// Pull DPs that have `name` as a source.
    pub fn dp_source_uses(&self, name: &str) -> Result<u32> {
        Ok(self.c.query_row(
            "SELECT count(*) FROM dp_sources WHERE source = ?1",
            [name],
            |r| r.get(0),
        )?)
    }

    /// Deletes a DP (its status rows, targets and jobs go with it).
    pub fn delete_dp(&self, name: &str) -> Result<()> {
        self.c.execute("DELETE FROM dps WHERE name = ?1", [name])?;
        Ok(())
    }

    /// Sets a DP's bandwidth windows; false if there is no such DP.
    pub fn set_throttle(&self, name: &str, throttle: &str) -> Result<bool> {
        Ok(self.c.execute(
            "UPDATE dps SET throttle = ?2 WHERE name = ?1",
            params![name, throttle],
        )? > 0)
    }

    /// Every DP's bandwidth windows: (name, compact text).
    pub fn dp_throttles(&self) -> Result<Vec<(String, String)>> {
        let mut st = self.c.prepare("SELECT name, throttle FROM dps")?;
        let rows = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Where DP `name` is and what it is.
    pub fn route(&self, name: &str) -> Result<Option<Route>> {
        Ok(self
            .c
            .query_row(
                "SELECT address, key_site, kind, throttle FROM dps WHERE name = ?1",
                [name],
                |r| {
                    Ok(Route {
                        address: r.get(0)?,
                        key_site: r.get(1)?,
                        kind: r.get(2)?,
                        throttle: r.get(3)?,
                    })
                },
            )
            .optional()?)
    }

    /// Pull DP `dp`'s sources that hold `version` of `package` installed, best first: (key
    /// site code, QUIC address).
    pub fn pull_sources(
        &self,
        dp: &str,
        package: &str,
        version: u32,
    ) -> Result<Vec<(String, String)>> {
        let mut st = self.c.prepare(
            "SELECT d.key_site, d.address FROM dp_sources s JOIN dps d ON d.name = s.source
             JOIN package_dp_status st ON st.dp = s.source AND st.package = ?2
             WHERE s.dp = ?1 AND st.state = ?4 AND st.version = ?3 ORDER BY s.rank",
        )?;
        let rows = st
            .query_map(params![dp, package, version, DpState::Installed], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    // ---- DP groups ----

    /// Creates a group; false if it exists.
    pub fn insert_group(&self, name: &str) -> Result<bool> {
        Ok(self
            .c
            .execute("INSERT OR IGNORE INTO dp_groups (name) VALUES (?1)", [name])?
            > 0)
    }

    /// Adds `dp` to `group` (once).
    pub fn add_member(&self, group: &str, dp: &str) -> Result<()> {
        self.c.execute(
            "INSERT OR IGNORE INTO dp_group_members (grp, dp) VALUES (?1, ?2)",
            params![group, dp],
        )?;
        Ok(())
    }

    /// Takes `dp` out of `group`.
    pub fn remove_member(&self, group: &str, dp: &str) -> Result<()> {
        self.c.execute(
            "DELETE FROM dp_group_members WHERE grp = ?1 AND dp = ?2",
            params![group, dp],
        )?;
        Ok(())
    }

    /// Deletes a group; false if there was none.
    pub fn delete_group(&self, name: &str) -> Result<bool> {
        Ok(self
            .c
            .execute("DELETE FROM dp_groups WHERE name = ?1", [name])?
            > 0)
    }

    /// The group called `name`, or (None) every group, with their members.
    pub fn groups(&self, name: Option<&str>) -> Result<Vec<GroupInfo>> {
        let names: Vec<String> = self
            .c
            .prepare("SELECT name FROM dp_groups WHERE ?1 IS NULL OR name = ?1 ORDER BY name")?
            .query_map([name], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        let mut members_of = self
            .c
            .prepare("SELECT dp FROM dp_group_members WHERE grp = ?1 ORDER BY dp")?;
        let mut out = Vec::new();
        for name in names {
            let members = members_of
                .query_map([&name], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            out.push(GroupInfo { name, members });
        }
        Ok(out)
    }

    // ---- packages ----

    /// Reserves the next package ID of site `code` (`CODE` + 5 hex digits), never handed out
    /// before; None when all are used.
    pub fn reserve_package_id(&self, code: &str, now: i64) -> Result<Option<String>> {
        let mut st = self.c.prepare(
            "SELECT id FROM packages WHERE id LIKE ?1 || '%'
             UNION SELECT id FROM package_ids WHERE id LIKE ?1 || '%'",
        )?;
        let ids: Vec<String> = st
            .query_map([code], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        let next = ids
            .iter()
            .filter_map(|i| i.get(3..).and_then(|n| u32::from_str_radix(n, 16).ok()))
            .max()
            .map_or(1, |n| n + 1);
        if next > 0xFFFFF {
            return Ok(None);
        }
        let id = format!("{code}{next:05X}");
        self.c.execute(
            "INSERT INTO package_ids (id, reserved) VALUES (?1, ?2)",
            params![id, now],
        )?;
        Ok(Some(id))
    }

    /// Records a package (with its first version, in the same transaction).
    pub fn insert_package(
        &self,
        id: &str,
        name: &str,
        source: &str,
        priority: Priority,
        now: i64,
    ) -> Result<()> {
        self.c.execute(
            "INSERT INTO packages (id, name, source, priority, created) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![id, name, source, StoredPriority(priority), now],
        )?;
        self.c
            .execute("DELETE FROM package_ids WHERE id = ?1", [id])?;
        Ok(())
    }

    /// Records a snapshot as a version of `package`.
    pub fn insert_version(
        &self,
        package: &str,
        version: u32,
        hash: &[u8],
        files: u64,
        bytes: u64,
        now: i64,
    ) -> Result<()> {
        self.c.execute(
            "INSERT INTO package_versions (package, version, manifest_hash, created, files, bytes)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![package, version, hash, now, files as i64, bytes as i64],
        )?;
        Ok(())
    }

    /// A package's source folder and name (not deleted).
    pub fn package_source(&self, id: &str) -> Result<Option<(String, String)>> {
        Ok(self
            .c
            .query_row(
                "SELECT source, name FROM packages WHERE id = ?1 AND deleted = 0",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }

    /// Package `id`, or (None) every package, not deleted, with its newest version and DP
    /// counts.
    pub fn packages(&self, id: Option<&str>) -> Result<Vec<PackageInfo>> {
        let mut st = self.c.prepare(
            "SELECT p.id, p.name, p.source, p.priority, v.version, v.manifest_hash, v.files, v.bytes
             FROM packages p JOIN package_versions v ON v.package = p.id
             WHERE p.deleted = 0 AND (?1 IS NULL OR p.id = ?1)
               AND v.version = (SELECT max(version) FROM package_versions WHERE package = p.id)
             ORDER BY p.id",
        )?;
        let mut out: Vec<PackageInfo> = st
            .query_map([id], |r| {
                Ok(PackageInfo {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    source: r.get(2)?,
                    priority: r.get::<_, StoredPriority>(3)?.0,
                    version: r.get(4)?,
                    hash: hex(&r.get::<_, Vec<u8>>(5)?),
                    files: r.get::<_, i64>(6)? as u64,
                    bytes: r.get::<_, i64>(7)? as u64,
                    summary: Summary::default(),
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        // The summary counts the DPs of the sites below too, as their reports give them.
        let mut st = self.c.prepare(
            "SELECT state, version FROM package_dp_status WHERE package = ?1 AND state != ?2
             UNION ALL
             SELECT state, version FROM remote_status WHERE package = ?1 AND state != ?2",
        )?;
        for p in &mut out {
            let rows: Vec<(DpState, Option<u32>)> = st
                .query_map(params![p.id, DpState::Removed], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?
                .collect::<rusqlite::Result<_>>()?;
            let s = &mut p.summary;
            for (state, version) in rows {
                s.targeted += 1;
                match state {
                    DpState::Installed if version == Some(p.version) => s.installed += 1,
                    DpState::Failed => s.failed += 1,
                    DpState::InstallPending | DpState::Retrying | DpState::Installed => {
                        s.retrying += 1
                    }
                    _ => {}
                }
            }
        }
        Ok(out)
    }

    /// A package's versions, oldest first.
    pub fn versions(&self, id: &str) -> Result<Vec<VersionInfo>> {
        let mut st = self.c.prepare(
            "SELECT version, manifest_hash, files, bytes, created FROM package_versions
             WHERE package = ?1 ORDER BY version",
        )?;
        let rows = st
            .query_map([id], |r| {
                Ok(VersionInfo {
                    version: r.get(0)?,
                    hash: hex(&r.get::<_, Vec<u8>>(1)?),
                    files: r.get::<_, i64>(2)? as u64,
                    bytes: r.get::<_, i64>(3)? as u64,
                    created: r.get(4)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// The DPs with a status row for package `id` whose state `which` selects, by name.
    pub fn package_dps(&self, id: &str, which: impl Fn(DpState) -> bool) -> Result<Vec<String>> {
        let mut st = self
            .c
            .prepare("SELECT dp, state FROM package_dp_status WHERE package = ?1 ORDER BY dp")?;
        let rows: Vec<(String, DpState)> = st
            .query_map([id], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows
            .into_iter()
            .filter(|(_, s)| which(*s))
            .map(|(d, _)| d)
            .collect())
    }

    /// Records a pending action of `package` for each DP (DistMgr's inbox).
    pub fn set_targets(
        &self,
        package: &str,
        dps: &[String],
        action: Action,
        version: u32,
        now: i64,
    ) -> Result<()> {
        for dp in dps {
            self.c.execute(
                "INSERT INTO package_targets (package, dp, action, version, updated)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (package, dp) DO UPDATE SET action = ?3, version = ?4, updated = ?5",
                params![package, dp, action, version, now],
            )?;
        }
        Ok(())
    }

    /// Marks a package deleted; DistMgr purges the site's copy.
    pub fn mark_deleted(&self, id: &str) -> Result<()> {
        self.c
            .execute("UPDATE packages SET deleted = 1 WHERE id = ?1", [id])?;
        Ok(())
    }

    /// Deleted packages whose copy in the site's library is not yet dropped.
    pub fn packages_to_purge(&self) -> Result<Vec<String>> {
        let mut st = self
            .c
            .prepare("SELECT id FROM packages WHERE deleted = 1 AND purged = 0 ORDER BY id")?;
        let rows = st
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Records that a deleted package's copy is gone from the site's library.
    pub fn mark_purged(&self, id: &str) -> Result<()> {
        self.c
            .execute("UPDATE packages SET purged = 1 WHERE id = ?1", [id])?;
        Ok(())
    }

    // ---- status ----

    /// Package status per DP, optionally of one package and of one DP.
    pub fn status(&self, package: Option<&str>, dp: Option<&str>) -> Result<Vec<PackageStatus>> {
        let mut st = self.c.prepare(
            "SELECT package, dp, state, version, last_copied, message,
                 (SELECT bytes_sent FROM distribution_jobs j WHERE j.package = s.package
                  AND j.dp = s.dp AND j.state = ?3 AND j.action IN (?4, ?5)
                  ORDER BY j.id DESC LIMIT 1)
             FROM package_dp_status s WHERE (?1 IS NULL OR package = ?1) AND (?2 IS NULL OR dp = ?2)
             ORDER BY package, dp",
        )?;
        let rows = st
            .query_map(
                params![
                    package,
                    dp,
                    JobState::Done,
                    Action::Install,
                    Action::Redistribute
                ],
                |r| {
                    Ok(PackageStatus {
                        package: r.get(0)?,
                        site: None,
                        dp: r.get(1)?,
                        state: r.get::<_, DpState>(2)?.label().to_string(),
                        version: r.get(3)?,
                        last_copied: r.get(4)?,
                        message: r.get(5)?,
                        last_bytes: r.get::<_, Option<i64>>(6)?.map(|b| b as u64),
                    })
                },
            )?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Live jobs by row ID, and pending actions DistMgr has not turned into jobs yet (ID -1,
    /// state `requested`), so a caller never sees a calm moment between asking and the job.
    pub fn live_jobs(&self) -> Result<Vec<(i64, JobProgress)>> {
        let mut st = self.c.prepare(
            "SELECT id, package, version, dp, action, state, attempts FROM distribution_jobs
             WHERE state IN (?1, ?2, ?3)
             UNION ALL
             SELECT -1, package, version, dp, action, 'requested', 0 FROM package_targets
             WHERE action != 'none'
             ORDER BY 1",
        )?;
        let rows = st
            .query_map(
                params![JobState::Queued, JobState::Running, JobState::Retrying],
                |r| {
                    Ok((
                        r.get(0)?,
                        JobProgress {
                            package: r.get(1)?,
                            version: r.get(2)?,
                            dp: r.get(3)?,
                            action: r.get(4)?,
                            state: r.get(5)?,
                            attempts: r.get(6)?,
                            total: 0,
                            done: 0,
                        },
                    ))
                },
            )?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    // ---- status messages ----

    /// Records message `m` of `site` at `time` (unix seconds).
    pub fn raise(&self, site: &str, time: i64, m: &Msg) -> Result<()> {
        let (severity, component) = statmgr::describe(m.id);
        tracing::info!(id = m.id, "{}", statmgr::render(m.id, &m.strings));
        self.c.execute(
            "INSERT INTO status_messages (message_id, severity, component, site, time, package, dp, version, strings)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                m.id,
                severity,
                component,
                site,
                time,
                m.package,
                m.dp,
                m.version,
                serde_json::to_string(&m.strings).unwrap_or_else(|_| "[]".into()),
            ],
        )?;
        Ok(())
    }

    /// Messages after sequence number `since`, optionally of one package, oldest first: the
    /// audit trail (`audit`) or everything else.
    pub fn messages(
        &self,
        package: Option<&str>,
        since: i64,
        audit: bool,
    ) -> Result<Vec<StatusMessage>> {
        let mut st = self.c.prepare(
            "SELECT id, message_id, severity, component, site, time, package, dp, version, strings
             FROM status_messages WHERE id > ?1 AND (?2 IS NULL OR package = ?2)
               AND (component = ?3) = ?4 ORDER BY id",
        )?;
        let rows = st
            .query_map(params![since, package, statmgr::AUDIT, audit], |r| {
                let strings: String = r.get(9)?;
                let strings: Vec<String> = serde_json::from_str(&strings).unwrap_or_default();
                let id: u32 = r.get(1)?;
                Ok(StatusMessage {
                    seq: r.get(0)?,
                    id,
                    severity: r.get(2)?,
                    component: r.get(3)?,
                    site: r.get(4)?,
                    time: r.get(5)?,
                    package: r.get(6)?,
                    dp: r.get(7)?,
                    version: r.get(8)?,
                    text: statmgr::render(id, &strings),
                    strings,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    // ---- DistMgr ----

    /// Asks for a validation of every installed copy not validated within `every` seconds.
    pub fn schedule_validation(&self, now: i64, every: i64) -> Result<()> {
        self.c.execute(
            "UPDATE package_targets SET action = ?3, updated = ?1
             WHERE action = 'none' AND EXISTS (
                 SELECT 1 FROM package_dp_status s WHERE s.package = package_targets.package
                 AND s.dp = package_targets.dp AND s.state = ?4
                 AND coalesce(s.last_validated, s.last_copied, 0) + ?2 <= ?1)",
            params![now, every, Action::Validate, DpState::Installed],
        )?;
        Ok(())
    }

    /// Packages with pending actions: (ID, name).
    pub fn packages_with_targets(&self) -> Result<Vec<(String, String)>> {
        let mut st = self.c.prepare(
            "SELECT DISTINCT t.package, p.name FROM package_targets t JOIN packages p ON p.id = t.package
             WHERE t.action != 'none' ORDER BY t.package",
        )?;
        let rows = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// The pending actions of `package`, by DP.
    pub fn targets_of(&self, package: &str) -> Result<Vec<TargetRow>> {
        // At most one live job per (package, dp) (index one_live_job), so one row per target.
        let mut st = self.c.prepare(
            "SELECT t.dp, t.action, t.version,
                 coalesce(s.state = ?2 AND s.version >= t.version, 0), j.id IS NOT NULL
             FROM package_targets t
             LEFT JOIN package_dp_status s ON s.package = t.package AND s.dp = t.dp
             LEFT JOIN distribution_jobs j ON j.package = t.package AND j.dp = t.dp
                 AND j.state IN (?3, ?4, ?5)
             WHERE t.package = ?1 AND t.action != 'none' ORDER BY t.dp",
        )?;
        let rows = st
            .query_map(
                params![
                    package,
                    DpState::Installed,
                    JobState::Queued,
                    JobState::Running,
                    JobState::Retrying
                ],
                |r| {
                    Ok(TargetRow {
                        dp: r.get(0)?,
                        action: r.get(1)?,
                        version: r.get(2)?,
                        settled: r.get(3)?,
                        live: r.get(4)?,
                    })
                },
            )?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Queues a job: the live job of `package` to `dp` becomes this one (a running job set
    /// back to queued is taken again once its attempt ends, whose result then no longer
    /// matches and is dropped), or a new job is created.
    pub fn queue_job(
        &self,
        package: &str,
        dp: &str,
        version: u32,
        action: Action,
        now_ms: i64,
    ) -> Result<()> {
        let now = now_ms / 1000;
        let updated = self.c.execute(
            "UPDATE distribution_jobs SET version = ?3, action = ?4, state = ?7,
                 attempts = 0, next_attempt = ?5, error = NULL, updated = ?6
             WHERE package = ?1 AND dp = ?2 AND state IN (?7, ?8, ?9)",
            params![
                package,
                dp,
                version,
                action,
                now_ms,
                now,
                JobState::Queued,
                JobState::Running,
                JobState::Retrying
            ],
        )?;
        if updated == 0 {
            self.c.execute(
                "INSERT INTO distribution_jobs (package, version, dp, action, state, next_attempt, created, updated)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)",
                params![package, version, dp, action, JobState::Queued, now_ms, now],
            )?;
        }
        Ok(())
    }

    /// Sets the state of `package` on `dp` (clearing its message).
    pub fn set_dp_state(&self, package: &str, dp: &str, state: DpState, now: i64) -> Result<()> {
        self.c.execute(
            "INSERT INTO package_dp_status (package, dp, state, updated) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (package, dp) DO UPDATE SET state = ?3, message = NULL, updated = ?4",
            params![package, dp, state, now],
        )?;
        Ok(())
    }

    /// Marks every pending action of `package` handled and opens its package thread.
    pub fn targets_planned(&self, package: &str) -> Result<()> {
        self.c.execute(
            "UPDATE package_targets SET action = 'none' WHERE package = ?1 AND action != 'none'",
            [package],
        )?;
        self.c.execute(
            "UPDATE packages SET processing = 1 WHERE id = ?1",
            [package],
        )?;
        Ok(())
    }

    /// Open package threads with no live job left.
    pub fn settled_packages(&self) -> Result<Vec<SettledPackage>> {
        let mut st = self.c.prepare(
            "SELECT p.id, p.name, coalesce((SELECT max(version) FROM package_versions WHERE package = p.id), 0),
                 (SELECT count(*) FROM package_dp_status s WHERE s.package = p.id AND s.state = ?1)
             FROM packages p
             WHERE p.processing = 1 AND NOT EXISTS (
                 SELECT 1 FROM distribution_jobs j WHERE j.package = p.id AND j.state IN (?2, ?3, ?4))
               AND NOT EXISTS (SELECT 1 FROM package_targets t WHERE t.package = p.id AND t.action != 'none')
             ORDER BY p.id",
        )?;
        let rows = st
            .query_map(
                params![
                    DpState::Failed,
                    JobState::Queued,
                    JobState::Running,
                    JobState::Retrying
                ],
                |r| {
                    Ok(SettledPackage {
                        id: r.get(0)?,
                        name: r.get(1)?,
                        version: r.get(2)?,
                        failed: r.get(3)?,
                    })
                },
            )?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Closes a package thread.
    pub fn close_thread(&self, package: &str) -> Result<()> {
        self.c.execute(
            "UPDATE packages SET processing = 0 WHERE id = ?1",
            [package],
        )?;
        Ok(())
    }

    /// At start-up: jobs that were running when the process ended are queued again (their
    /// attempt was counted; a push resumes with what the DP still lacks).
    pub fn requeue_running(&self) -> Result<usize> {
        Ok(self.c.execute(
            "UPDATE distribution_jobs SET state = ?1 WHERE state = ?2",
            params![JobState::Queued, JobState::Running],
        )?)
    }

    /// Whether pull DP `dp` should wait for a source: none of its sources holds `package` at
    /// `version` installed, and one of them has a live (queued, running or retrying) install
    /// job of it.
    pub fn waits_for_source(&self, dp: &str, package: &str, version: u32) -> Result<bool> {
        Ok(self.c.query_row(
            "SELECT EXISTS (SELECT 1 FROM distribution_jobs j JOIN dp_sources s ON s.source = j.dp
                 WHERE s.dp = ?1 AND j.package = ?2 AND j.version = ?3 AND j.action = ?4
                   AND j.state IN (?5, ?6, ?7))
             AND NOT EXISTS (SELECT 1 FROM dp_sources s JOIN package_dp_status st
                 ON st.dp = s.source AND st.package = ?2
                 WHERE s.dp = ?1 AND st.state = ?8 AND st.version = ?3)",
            params![
                dp,
                package,
                version,
                Action::Install,
                JobState::Queued,
                JobState::Running,
                JobState::Retrying,
                DpState::Installed
            ],
            |r| r.get(0),
        )?)
    }

    /// Jobs due at `now_ms`, by priority then age.
    pub fn due_jobs(&self, now_ms: i64) -> Result<Vec<JobRow>> {
        let mut st = self.c.prepare(
            "SELECT j.id, j.package, j.version, j.dp, j.action, j.attempts, p.priority, d.kind, d.throttle
             FROM distribution_jobs j JOIN packages p ON p.id = j.package JOIN dps d ON d.name = j.dp
             WHERE j.state IN (?2, ?3) AND j.next_attempt <= ?1
             ORDER BY CASE p.priority WHEN 'high' THEN 0 WHEN 'medium' THEN 1 ELSE 2 END, j.created, j.id",
        )?;
        let rows = st
            .query_map(params![now_ms, JobState::Queued, JobState::Retrying], |r| {
                Ok(JobRow {
                    id: r.get(0)?,
                    package: r.get(1)?,
                    version: r.get(2)?,
                    dp: r.get(3)?,
                    action: r.get(4)?,
                    attempts: r.get(5)?,
                    priority: r.get::<_, StoredPriority>(6)?.0,
                    kind: r.get(7)?,
                    throttle: r.get(8)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// When the next waiting job falls due (unix ms), if one waits.
    pub fn next_due(&self, now_ms: i64) -> Result<Option<i64>> {
        Ok(self.c.query_row(
            "SELECT min(next_attempt) FROM distribution_jobs WHERE state IN (?2, ?3) AND next_attempt > ?1",
            params![now_ms, JobState::Queued, JobState::Retrying],
            |r| r.get(0),
        )?)
    }

    /// Counts an attempt of job `id` and marks it running; false if it is no longer waiting.
    pub fn mark_running(&self, id: i64, now: i64) -> Result<bool> {
        Ok(self.c.execute(
            "UPDATE distribution_jobs SET state = ?3, attempts = attempts + 1, updated = ?2
             WHERE id = ?1 AND state IN (?4, ?5)",
            params![
                id,
                now,
                JobState::Running,
                JobState::Queued,
                JobState::Retrying
            ],
        )? > 0)
    }

    // ---- PkgXferMgr ----

    /// Adds `bytes` to what job `id` has sent.
    pub fn add_bytes_sent(&self, id: i64, bytes: u64) -> Result<()> {
        self.c.execute(
            "UPDATE distribution_jobs SET bytes_sent = bytes_sent + ?2 WHERE id = ?1",
            params![id, bytes as i64],
        )?;
        Ok(())
    }

    /// The version and action of job `id` if it is still live.
    pub fn live_job(&self, id: i64) -> Result<Option<(u32, Action)>> {
        Ok(self
            .c
            .query_row(
                "SELECT version, action FROM distribution_jobs WHERE id = ?1 AND state IN (?2, ?3, ?4)",
                params![id, JobState::Queued, JobState::Running, JobState::Retrying],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }

    /// The version `dp`'s status row says it holds of `package`.
    pub fn held_version(&self, package: &str, dp: &str) -> Result<Option<u32>> {
        Ok(self
            .c
            .query_row(
                "SELECT version FROM package_dp_status WHERE package = ?1 AND dp = ?2",
                params![package, dp],
                |r| r.get(0),
            )
            .optional()?
            .flatten())
    }

    /// Writes what an attempt's end changes: the job row, the DP's status row and the
    /// messages of `t`, raised by `site` at `now_ms`.
    pub fn apply(
        &self,
        site: &str,
        job: i64,
        package: &str,
        dp: &str,
        t: &Transition,
        now_ms: i64,
    ) -> Result<()> {
        let now = now_ms / 1000;
        let end = |state: JobState, error: Option<&str>| {
            self.c.execute(
                "UPDATE distribution_jobs SET state = ?2, error = ?3, updated = ?4 WHERE id = ?1",
                params![job, state, error, now],
            )
        };
        match &t.job {
            JobEnd::Done => end(JobState::Done, None)?,
            JobEnd::Failed { error } => end(JobState::Failed, Some(error))?,
            JobEnd::Retry { error, after } => self.c.execute(
                "UPDATE distribution_jobs SET state = ?2, error = ?3, next_attempt = ?4, updated = ?5
                 WHERE id = ?1",
                params![
                    job,
                    JobState::Retrying,
                    error,
                    now_ms + after.as_millis() as i64,
                    now
                ],
            )?,
        };
        match &t.status {
            StatusWrite::Set {
                state,
                version,
                message,
                copied,
            } => {
                self.c.execute(
                    "INSERT INTO package_dp_status (package, dp, state, version, last_copied, last_validated, message, updated)
                     VALUES (?1, ?2, ?3, ?4, CASE WHEN ?5 THEN ?7 END, CASE WHEN ?5 THEN ?7 END, ?6, ?7)
                     ON CONFLICT (package, dp) DO UPDATE SET state = ?3, version = ?4,
                         last_copied = CASE WHEN ?5 THEN ?7 ELSE last_copied END,
                         last_validated = CASE WHEN ?5 THEN ?7 ELSE last_validated END,
                         message = ?6, updated = ?7",
                    params![package, dp, state, version, copied, message, now],
                )?;
                if *state == DpState::Installed {
                    self.wake_pull_dps_waiting_for(package, dp, *version, now_ms)?;
                }
            }
            StatusWrite::Validated { failed: None } => {
                self.c.execute(
                    "UPDATE package_dp_status SET last_validated = ?3 WHERE package = ?1 AND dp = ?2",
                    params![package, dp, now],
                )?;
            }
            StatusWrite::Validated { failed: Some(why) } => {
                self.c.execute(
                    "UPDATE package_dp_status SET state = ?4, message = ?3, last_validated = ?5, updated = ?5
                     WHERE package = ?1 AND dp = ?2",
                    params![package, dp, why, DpState::Failed, now],
                )?;
            }
            StatusWrite::Unchanged => {}
        }
        for m in &t.messages {
            self.raise(site, now, m)?;
        }
        Ok(())
    }

    /// `source` now holds `version` of `package`: the pull DPs ranking it as a source whose
    /// job for that version waits because no source held it ([`NO_SOURCE_YET`]) are due now
    /// rather than after their retry delay. Other waits (capacity, failed downloads) keep
    /// their delay: a new source does not change them.
    fn wake_pull_dps_waiting_for(
        &self,
        package: &str,
        source: &str,
        version: Option<u32>,
        now_ms: i64,
    ) -> Result<()> {
        let Some(version) = version else {
            return Ok(());
        };
        self.c.execute(
            "UPDATE distribution_jobs SET next_attempt = ?4
             WHERE package = ?1 AND version = ?2 AND state = ?5 AND error = ?6 AND next_attempt > ?4
               AND dp IN (SELECT dp FROM dp_sources WHERE source = ?3)",
            params![
                package,
                version,
                source,
                now_ms,
                JobState::Retrying,
                NO_SOURCE_YET
            ],
        )?;
        Ok(())
    }
}

use freight_core::text::hex;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_database_reaches_the_latest_version_and_reopens_unchanged() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("site.db");
        let db = Store::open(&path).unwrap();
        assert_eq!(db.version().unwrap(), MIGRATIONS.len() as i64);
        assert_eq!(db.integrity_check().unwrap(), "ok");
        let mode: String = db
            .conn()
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        drop(db);
        let db = Store::open(&path).unwrap();
        assert_eq!(db.version().unwrap(), MIGRATIONS.len() as i64);
        let tables: i64 = db
            .conn()
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(
            tables, 21,
            "12 before the hierarchy, addresses, 7 of sending across sites, and SQLite's sequence table"
        );
    }

    #[test]
    fn a_second_store_on_the_same_file_is_refused_and_the_file_is_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("site.db");
        let first = Store::open(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let e = Store::open(&path).err().unwrap();
        assert!(matches!(e, StoreError::InUse { .. }), "{e}");
        assert!(e.to_string().contains("in use by another freightd"), "{e}");
        drop(first);
        Store::open(&path).unwrap();
    }

    #[test]
    fn a_database_from_a_newer_freight_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("site.db");
        drop(Store::open(&path).unwrap());
        let c = Connection::open(&path).unwrap();
        c.pragma_update(None, "user_version", 99).unwrap();
        drop(c);
        let e = Store::open(&path).err().unwrap();
        assert!(matches!(e, StoreError::TooNew { found: 99, .. }), "{e}");
        assert!(e.to_string().contains("upgrade freight"), "{e}");
    }

    #[test]
    fn the_schema_refuses_duplicate_live_jobs_and_dangling_references() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(&t.path().join("site.db")).unwrap();
        let c = store.conn();
        c.execute_batch(
            "INSERT INTO sites (code, is_self) VALUES ('PS1', 1);
             INSERT INTO dps (name, site, kind, address, key_site, created) VALUES ('dp1', 'PS1', 'standard', '127.0.0.1:1', 'DP1', 0);
             INSERT INTO packages (id, name, source, created) VALUES ('PS100001', 'office', '/src', 0);
             INSERT INTO distribution_jobs (package, version, dp, action, next_attempt, created, updated)
                 VALUES ('PS100001', 1, 'dp1', 'install', 0, 0, 0);",
        )
        .unwrap();
        // A second live job for the same package and DP is refused; a finished one is not.
        let again = "INSERT INTO distribution_jobs (package, version, dp, action, next_attempt, created, updated)
                     VALUES ('PS100001', 2, 'dp1', 'install', 0, 0, 0)";
        assert!(c.execute(again, []).is_err());
        c.execute("UPDATE distribution_jobs SET state = 'done'", [])
            .unwrap();
        c.execute(again, []).unwrap();
        // A job for a DP that does not exist is refused (foreign keys are on).
        assert!(
            c.execute(
                "INSERT INTO distribution_jobs (package, version, dp, action, next_attempt, created, updated)
                 VALUES ('PS100001', 1, 'nope', 'install', 0, 0, 0)",
                [],
            )
            .is_err()
        );
        // Only one site is this site.
        assert!(
            c.execute("INSERT INTO sites (code, is_self) VALUES ('PS2', 1)", [])
                .is_err()
        );
    }

    #[test]
    fn package_ids_are_never_handed_out_twice_and_a_failed_write_rolls_back() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(&t.path().join("site.db")).unwrap();
        let a: Option<String> = store.write(|db| db.reserve_package_id("PS1", 0)).unwrap();
        let b: Option<String> = store.write(|db| db.reserve_package_id("PS1", 0)).unwrap();
        assert_eq!(
            (a.as_deref(), b.as_deref()),
            (Some("PS100001"), Some("PS100002"))
        );
        // A write whose closure fails leaves nothing behind.
        let r: std::result::Result<(), StoreError> = store.write(|db| {
            db.reserve_package_id("PS1", 0)?;
            Err(StoreError::Sql(rusqlite::Error::QueryReturnedNoRows))
        });
        assert!(r.is_err());
        let c: Option<String> = store.write(|db| db.reserve_package_id("PS1", 0)).unwrap();
        assert_eq!(c.as_deref(), Some("PS100003"));
    }
}
