//! The site database: one SQLite file (WAL) holding the site's objects and every queue, so
//! that a restart loses no job and duplicates none (SPEC §4, DESIGN "Site database").
//!
//! # Migrations
//! The schema is a list of SQL steps ([`MIGRATIONS`]); `PRAGMA user_version` records how many
//! have been applied. Opening applies the missing ones, each in its own transaction together
//! with the version bump, so a crash leaves the database at one version or the next, never in
//! between. A database written by a newer Freight (a higher version than this build knows) is
//! refused rather than guessed at.
//!
//! # Tables (version 1)
//! ```text
//! sites                 this site and the others it knows: code, parent
//! dps                   distribution points: name, kind (standard | pull), address, site,
//!                       their key's site code, throttle (compact text), created
//! dp_groups, dp_group_members
//! packages              ID, name, source folder, priority, preferred sender, delta flag
//! package_versions      (package, version): manifest hash, source version, created
//! package_targets       (package, dp): the pending action (install, redistribute, remove,
//!                       validate) and the version it is for
//! distribution_jobs     the PkgXferMgr queue: package, version, dp, action, state,
//!                       attempts, next attempt time, last error
//! package_dp_status     (package, dp): state (Install Pending ... Removed), version held,
//!                       last copied, message
//! status_messages       ID, severity, component, site, time, package, dp, version,
//!                       insertion strings (JSON)
//! ```
//!
//! # Version 2
//! `dp_sources` (a pull DP's ranked sources); DPs gain their HTTP address and key fingerprint;
//! packages a `deleted` mark (their status rows stay readable); versions their file and byte
//! counts; jobs the bytes sent so far; statuses the time of the last validation.
//! `distribution_jobs.next_attempt` is in unix milliseconds (retry delays may be short in
//! tests); every other time is in unix seconds.
//!
//! Sites reference their parent and DPs their site, so the hierarchy of the next issue fits
//! without a migration of these tables.

use rusqlite::{Connection, OpenFlags};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The schema, one step per version: `MIGRATIONS[i]` takes a database from version `i` to
/// `i + 1`. Steps are never edited once released; changes come as new steps.
pub const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE sites (
    code        TEXT PRIMARY KEY CHECK (length(code) = 3),
    parent      TEXT REFERENCES sites(code),
    is_self     INTEGER NOT NULL DEFAULT 0 CHECK (is_self IN (0, 1))
);
CREATE UNIQUE INDEX one_self_site ON sites(is_self) WHERE is_self = 1;

CREATE TABLE dps (
    name        TEXT PRIMARY KEY,
    site        TEXT NOT NULL REFERENCES sites(code),
    kind        TEXT NOT NULL CHECK (kind IN ('standard', 'pull')),
    address     TEXT NOT NULL,
    key_site    TEXT NOT NULL,
    throttle    TEXT NOT NULL DEFAULT 'daily unlimited',
    created     INTEGER NOT NULL
);

CREATE TABLE dp_groups (
    name        TEXT PRIMARY KEY
);
CREATE TABLE dp_group_members (
    grp         TEXT NOT NULL REFERENCES dp_groups(name) ON DELETE CASCADE,
    dp          TEXT NOT NULL REFERENCES dps(name) ON DELETE CASCADE,
    PRIMARY KEY (grp, dp)
);

CREATE TABLE packages (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    source      TEXT NOT NULL,
    priority    TEXT NOT NULL DEFAULT 'medium' CHECK (priority IN ('low', 'medium', 'high')),
    sender      TEXT NOT NULL DEFAULT 'any' CHECK (sender IN ('any', 'standard', 'courier')),
    delta       INTEGER NOT NULL DEFAULT 1 CHECK (delta IN (0, 1)),
    created     INTEGER NOT NULL
);
CREATE TABLE package_versions (
    package         TEXT NOT NULL REFERENCES packages(id) ON DELETE CASCADE,
    version         INTEGER NOT NULL CHECK (version > 0),
    manifest_hash   BLOB NOT NULL CHECK (length(manifest_hash) = 32),
    created         INTEGER NOT NULL,
    PRIMARY KEY (package, version)
);

CREATE TABLE package_targets (
    package     TEXT NOT NULL REFERENCES packages(id) ON DELETE CASCADE,
    dp          TEXT NOT NULL REFERENCES dps(name) ON DELETE CASCADE,
    action      TEXT NOT NULL CHECK (action IN ('install', 'redistribute', 'remove', 'validate', 'none')),
    version     INTEGER NOT NULL,
    updated     INTEGER NOT NULL,
    PRIMARY KEY (package, dp)
);

CREATE TABLE distribution_jobs (
    id              INTEGER PRIMARY KEY,
    package         TEXT NOT NULL REFERENCES packages(id) ON DELETE CASCADE,
    version         INTEGER NOT NULL,
    dp              TEXT NOT NULL REFERENCES dps(name) ON DELETE CASCADE,
    action          TEXT NOT NULL CHECK (action IN ('install', 'redistribute', 'remove', 'validate')),
    state           TEXT NOT NULL DEFAULT 'queued'
                    CHECK (state IN ('queued', 'running', 'retrying', 'done', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt    INTEGER NOT NULL,
    error           TEXT,
    created         INTEGER NOT NULL,
    updated         INTEGER NOT NULL
);
-- One live job per (package, dp): a second request updates it instead of duplicating it.
CREATE UNIQUE INDEX one_live_job ON distribution_jobs(package, dp)
    WHERE state IN ('queued', 'running', 'retrying');
CREATE INDEX jobs_due ON distribution_jobs(state, next_attempt);

CREATE TABLE package_dp_status (
    package     TEXT NOT NULL REFERENCES packages(id) ON DELETE CASCADE,
    dp          TEXT NOT NULL REFERENCES dps(name) ON DELETE CASCADE,
    state       TEXT NOT NULL CHECK (state IN ('install_pending', 'retrying', 'installed',
                    'failed', 'removal_pending', 'removed')),
    version     INTEGER,
    last_copied INTEGER,
    message     TEXT,
    updated     INTEGER NOT NULL,
    PRIMARY KEY (package, dp)
);

CREATE TABLE status_messages (
    id          INTEGER PRIMARY KEY,
    message_id  INTEGER NOT NULL,
    severity    TEXT NOT NULL CHECK (severity IN ('info', 'warning', 'error')),
    component   TEXT NOT NULL,
    site        TEXT NOT NULL,
    time        INTEGER NOT NULL,
    package     TEXT,
    dp          TEXT,
    version     INTEGER,
    strings     TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX messages_by_package ON status_messages(package, id);
"#,
    r#"
CREATE TABLE dp_sources (
    dp          TEXT NOT NULL REFERENCES dps(name) ON DELETE CASCADE,
    source      TEXT NOT NULL REFERENCES dps(name),
    rank        INTEGER NOT NULL,
    PRIMARY KEY (dp, source)
);
ALTER TABLE dps ADD COLUMN http TEXT;
ALTER TABLE dps ADD COLUMN fingerprint TEXT NOT NULL DEFAULT '';
ALTER TABLE packages ADD COLUMN deleted INTEGER NOT NULL DEFAULT 0;
ALTER TABLE package_versions ADD COLUMN files INTEGER NOT NULL DEFAULT 0;
ALTER TABLE package_versions ADD COLUMN bytes INTEGER NOT NULL DEFAULT 0;
ALTER TABLE distribution_jobs ADD COLUMN bytes_sent INTEGER NOT NULL DEFAULT 0;
ALTER TABLE package_dp_status ADD COLUMN last_validated INTEGER;
"#,
];

/// Errors of the site database, each naming the file and the fix.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// SQLite failed.
    #[error("{path}: site database: {source}; {remedy}")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
        /// What to do.
        remedy: &'static str,
    },
    /// The file was written by a newer Freight.
    #[error(
        "{path}: site database is at schema version {found}, this freight knows up to {known}; upgrade freight (never downgrade a site)"
    )]
    TooNew {
        /// The database file.
        path: PathBuf,
        /// Its schema version.
        found: i64,
        /// The newest this build knows.
        known: i64,
    },
}

/// An open site database.
pub struct SiteDb {
    conn: Connection,
    path: PathBuf,
}

impl SiteDb {
    /// Opens (creating if needed) the database at `path`, in WAL mode with foreign keys on,
    /// and brings its schema up to date.
    pub fn open(path: &Path) -> Result<SiteDb, DbError> {
        let sql = |source| DbError::Sqlite {
            path: path.to_path_buf(),
            source,
            remedy: "check the file and its folder are writable and not damaged",
        };
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sql)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(sql)?;
        // WAL: readers never block the writer. FULL sync: a commit that returned survives a
        // power cut too, which the queues rely on (a job is never lost once accepted).
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sql)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(sql)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(sql)?;
        let mut db = SiteDb {
            conn,
            path: path.to_path_buf(),
        };
        db.migrate()?;
        Ok(db)
    }

    /// The schema version the database is at.
    pub fn version(&self) -> Result<i64, DbError> {
        self.conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(|source| self.err(source))
    }

    fn err(&self, source: rusqlite::Error) -> DbError {
        DbError::Sqlite {
            path: self.path.clone(),
            source,
            remedy: "check the file and its folder are writable and not damaged",
        }
    }

    fn migrate(&mut self) -> Result<(), DbError> {
        let known = MIGRATIONS.len() as i64;
        let found = self.version()?;
        if found > known {
            return Err(DbError::TooNew {
                path: self.path.clone(),
                found,
                known,
            });
        }
        for (i, step) in MIGRATIONS.iter().enumerate().skip(found as usize) {
            let applied = self.conn.transaction().and_then(|tx| {
                tx.execute_batch(step)?;
                tx.pragma_update(None, "user_version", i as i64 + 1)?;
                tx.commit()
            });
            applied.map_err(|e| self.err(e))?;
            tracing::info!(path = %self.path.display(), version = i + 1, "site database migrated");
        }
        Ok(())
    }

    /// SQLite's own consistency check: `ok`, or what it found.
    pub fn integrity_check(&self) -> Result<String, DbError> {
        self.conn
            .query_row("PRAGMA integrity_check", [], |r| r.get::<_, String>(0))
            .map_err(|e| self.err(e))
    }

    /// The connection, for the components' queries.
    pub fn conn(&mut self) -> &mut Connection {
        &mut self.conn
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_database_reaches_the_latest_version_and_reopens_unchanged() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("site.db");
        let db = SiteDb::open(&path).unwrap();
        assert_eq!(db.version().unwrap(), MIGRATIONS.len() as i64);
        assert_eq!(db.integrity_check().unwrap(), "ok");
        let mode: String = db
            .conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        drop(db);
        let mut db = SiteDb::open(&path).unwrap();
        assert_eq!(db.version().unwrap(), MIGRATIONS.len() as i64);
        let tables: i64 = db
            .conn()
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(tables, 11);
    }

    #[test]
    fn a_database_from_a_newer_freight_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("site.db");
        drop(SiteDb::open(&path).unwrap());
        let c = Connection::open(&path).unwrap();
        c.pragma_update(None, "user_version", 99).unwrap();
        drop(c);
        let e = SiteDb::open(&path).err().unwrap();
        assert!(matches!(e, DbError::TooNew { found: 99, .. }), "{e}");
        assert!(e.to_string().contains("upgrade freight"), "{e}");
    }

    #[test]
    fn the_schema_refuses_duplicate_live_jobs_and_dangling_references() {
        let t = tempfile::tempdir().unwrap();
        let mut db = SiteDb::open(&t.path().join("site.db")).unwrap();
        let c = db.conn();
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
}
