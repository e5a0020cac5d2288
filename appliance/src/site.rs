//! The site server's state and the admin interface's actions (SPEC §3): each action checks its
//! input, writes its rows and status messages in one transaction, and wakes DistMgr.
//!
//! The admin API ([`crate::admin`]) maps HTTP requests onto these functions; DistMgr
//! ([`crate::distmgr`]) and PkgXferMgr ([`crate::pkgxfer`]) work from the rows they write.

use crate::api::{
    AddDp, AddGroup, CreatePackage, DpDetail, DpInfo, GroupInfo, JobProgress, PackageDetail,
    PackageInfo, PackageStatus, StatusMessage, Summary, Targets, VersionInfo,
};
use crate::config::SiteRole;
use crate::db::SiteDb;
use crate::dp::drop_package;
use crate::statmgr::{self, Msg};
use freight_core::ingest::{IngestOptions, ingest};
use freight_core::{PackageId, Progress, PublicIdentity, SiteCode, TrustStore};
use freight_transport::RouteThrottle;
use freight_transport::quic::Node;
use freight_transport::store::SharedLibrary;
use rusqlite::{OptionalExtension, params};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::Notify;

/// An action's failure: HTTP status and one line naming the object and the fix.
#[derive(Debug)]
pub struct ActionError {
    /// 400, 404, 409 or 500.
    pub status: u16,
    /// The line.
    pub message: String,
}

impl ActionError {
    fn bad(message: impl Into<String>) -> ActionError {
        ActionError {
            status: 400,
            message: message.into(),
        }
    }
    fn missing(message: impl Into<String>) -> ActionError {
        ActionError {
            status: 404,
            message: message.into(),
        }
    }
    fn conflict(message: impl Into<String>) -> ActionError {
        ActionError {
            status: 409,
            message: message.into(),
        }
    }
}

impl From<rusqlite::Error> for ActionError {
    fn from(e: rusqlite::Error) -> ActionError {
        ActionError {
            status: 500,
            message: format!("site database: {e}; check the disk and the log"),
        }
    }
}

/// Result of an action.
pub type ActionResult<T> = Result<T, ActionError>;

/// Unix seconds now.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The site server: database, library, QUIC node, settings and the wake-up of DistMgr.
pub struct Site {
    /// This site's code.
    pub code: SiteCode,
    /// The one writer connection (short transactions).
    db: Mutex<SiteDb>,
    /// The site's content library.
    pub lib: SharedLibrary,
    /// The site's QUIC endpoint (pushes to DPs).
    pub node: Node,
    /// The trust store (DP keys are imported here).
    pub trust_dir: PathBuf,
    /// Settings.
    pub cfg: SiteRole,
    /// Wakes DistMgr and PkgXferMgr.
    pub wake: Notify,
    /// Progress of running copies, by job ID.
    pub progress: Mutex<HashMap<i64, Arc<Progress>>>,
}

impl Site {
    /// Assembles the site server; records this site in its database.
    pub fn new(
        code: SiteCode,
        mut db: SiteDb,
        lib: SharedLibrary,
        node: Node,
        trust_dir: PathBuf,
        cfg: SiteRole,
    ) -> ActionResult<Arc<Site>> {
        db.conn().execute(
            "INSERT OR IGNORE INTO sites (code, is_self) VALUES (?1, 1)",
            [code.as_str()],
        )?;
        Ok(Arc::new(Site {
            code,
            db: Mutex::new(db),
            lib,
            node,
            trust_dir,
            cfg,
            wake: Notify::new(),
            progress: Mutex::new(HashMap::new()),
        }))
    }

    /// The database (one writer; hold it briefly).
    pub fn db(&self) -> MutexGuard<'_, SiteDb> {
        self.db.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts counting the bytes of a running job (for `watch`); dropped when the job ends.
    pub fn track(&self, job: i64) -> Arc<Progress> {
        let p = Arc::new(Progress::default());
        self.progress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(job, p.clone());
        p
    }

    // ---- DPs ----

    /// `dp add`: records the DP and trusts its key.
    pub fn add_dp(&self, a: AddDp) -> ActionResult<DpInfo> {
        if a.name.is_empty()
            || a.name.len() > 64
            || !a
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(ActionError::bad(format!(
                "DP name {:?}: use 1-64 letters, digits, '-', '_' or '.'",
                a.name
            )));
        }
        if a.kind != "standard" && a.kind != "pull" {
            return Err(ActionError::bad(format!(
                "DP kind {:?}: use standard or pull",
                a.kind
            )));
        }
        a.address.parse::<std::net::SocketAddr>().map_err(|_| {
            ActionError::bad(format!(
                "DP {}: address {:?} is not host:port (e.g. 10.0.0.5:4433)",
                a.name, a.address
            ))
        })?;
        let identity = PublicIdentity::from_text(&a.identity).map_err(|e| {
            ActionError::bad(format!(
                "DP {}: identity not readable ({e}); export it on the DP with `freight site identity export`",
                a.name
            ))
        })?;
        let throttle = a
            .throttle
            .clone()
            .unwrap_or_else(|| "daily unlimited".into());
        RouteThrottle::parse(&throttle)
            .map_err(|e| ActionError::bad(format!("DP {}: throttle: {e}", a.name)))?;
        if a.kind == "standard" && !a.sources.is_empty() {
            return Err(ActionError::bad(format!(
                "DP {}: only a pull DP has sources; add --pull or drop --source",
                a.name
            )));
        }
        if a.kind == "pull" && a.sources.is_empty() {
            return Err(ActionError::bad(format!(
                "pull DP {}: name at least one source DP (--source)",
                a.name
            )));
        }
        {
            let mut db = self.db();
            let tx = db.conn().transaction()?;
            if dp_exists(&tx, &a.name)? {
                return Err(ActionError::conflict(format!(
                    "DP {} exists already; remove it first or choose another name",
                    a.name
                )));
            }
            tx.execute(
                "INSERT INTO dps (name, site, kind, address, key_site, throttle, created, http, fingerprint)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    a.name,
                    self.code.as_str(),
                    a.kind,
                    a.address,
                    identity.code.as_str(),
                    throttle,
                    now(),
                    a.http,
                    identity.fingerprint()
                ],
            )?;
            for (rank, s) in a.sources.iter().enumerate() {
                if !dp_exists(&tx, s)? {
                    return Err(ActionError::missing(format!(
                        "source DP {s} of pull DP {} is not known; add it first (`freight dp add`)",
                        a.name
                    )));
                }
                tx.execute(
                    "INSERT INTO dp_sources (dp, source, rank) VALUES (?1, ?2, ?3)",
                    params![a.name, s, rank as i64],
                )?;
            }
            TrustStore::open(&self.trust_dir)
                .and_then(|t| t.import(&identity))
                .map_err(|e| ActionError::bad(format!("DP {}: {e}", a.name)))?;
            tx.commit()?;
        }
        self.dp(&a.name)
    }

    /// One DP.
    pub fn dp(&self, name: &str) -> ActionResult<DpInfo> {
        self.dps_named(Some(name))?.pop().ok_or_else(|| no_dp(name))
    }

    /// Every DP.
    pub fn dps(&self) -> ActionResult<Vec<DpInfo>> {
        self.dps_named(None)
    }

    /// The DP called `name`, or (None) every DP.
    fn dps_named(&self, name: Option<&str>) -> ActionResult<Vec<DpInfo>> {
        let mut db = self.db();
        let c = db.conn();
        let mut st = c.prepare(
            "SELECT name, kind, address, http, key_site, fingerprint, throttle FROM dps
             WHERE ?1 IS NULL OR name = ?1 ORDER BY name",
        )?;
        let mut dps: Vec<DpInfo> = st
            .query_map([name], |r| {
                Ok(DpInfo {
                    name: r.get(0)?,
                    kind: r.get(1)?,
                    address: r.get(2)?,
                    http: r.get(3)?,
                    key_site: r.get(4)?,
                    fingerprint: r.get(5)?,
                    throttle: r.get(6)?,
                    sources: Vec::new(),
                    groups: Vec::new(),
                })
            })?
            .collect::<Result<_, _>>()?;
        let mut sources = c.prepare("SELECT source FROM dp_sources WHERE dp = ?1 ORDER BY rank")?;
        let mut groups =
            c.prepare("SELECT grp FROM dp_group_members WHERE dp = ?1 ORDER BY grp")?;
        for d in &mut dps {
            d.sources = sources
                .query_map([&d.name], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            d.groups = groups
                .query_map([&d.name], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
        }
        Ok(dps)
    }

    /// `dp show`.
    pub fn dp_detail(&self, name: &str) -> ActionResult<DpDetail> {
        let dp = self.dp(name)?;
        let packages = self.status_of(None, Some(name))?;
        Ok(DpDetail { dp, packages })
    }

    /// `dp remove`: refused while the DP holds or is getting packages.
    pub fn remove_dp(&self, name: &str) -> ActionResult<()> {
        let mut db = self.db();
        let c = db.conn();
        require_dp(c, name)?;
        let held: i64 = c.query_row(
            "SELECT count(*) FROM package_dp_status WHERE dp = ?1 AND state != 'removed'",
            [name],
            |r| r.get(0),
        )?;
        if held > 0 {
            return Err(ActionError::conflict(format!(
                "DP {name} still holds or is getting {held} package(s); remove them from it first (`freight package remove ID --dp {name}`)"
            )));
        }
        let used: i64 = c.query_row(
            "SELECT count(*) FROM dp_sources WHERE source = ?1",
            [name],
            |r| r.get(0),
        )?;
        if used > 0 {
            return Err(ActionError::conflict(format!(
                "DP {name} is a source of {used} pull DP(s); change their sources first"
            )));
        }
        c.execute("DELETE FROM dps WHERE name = ?1", [name])?;
        Ok(())
    }

    /// `dp schedule`: the route's bandwidth windows (running copies pick them up within a
    /// round of PkgXferMgr's loop).
    pub fn set_schedule(&self, name: &str, throttle: &str) -> ActionResult<DpInfo> {
        RouteThrottle::parse(throttle)
            .map_err(|e| ActionError::bad(format!("DP {name}: throttle: {e}")))?;
        let n = self.db().conn().execute(
            "UPDATE dps SET throttle = ?2 WHERE name = ?1",
            params![name, throttle],
        )?;
        if n == 0 {
            return Err(no_dp(name));
        }
        self.wake.notify_one();
        self.dp(name)
    }

    // ---- DP groups ----

    /// `dpgroup create`.
    pub fn add_group(&self, g: AddGroup) -> ActionResult<GroupInfo> {
        if g.name.is_empty() {
            return Err(ActionError::bad("a DP group needs a name"));
        }
        {
            let mut db = self.db();
            let tx = db.conn().transaction()?;
            if tx.execute(
                "INSERT OR IGNORE INTO dp_groups (name) VALUES (?1)",
                [&g.name],
            )? == 0
            {
                return Err(ActionError::conflict(format!(
                    "DP group {} exists already; add members with `freight dpgroup add`",
                    g.name
                )));
            }
            add_members(&tx, &g.name, &g.members)?;
            tx.commit()?;
        }
        self.group(&g.name)
    }

    /// `dpgroup add`.
    pub fn add_group_members(&self, name: &str, dps: &[String]) -> ActionResult<GroupInfo> {
        self.group(name)?;
        {
            let mut db = self.db();
            let tx = db.conn().transaction()?;
            add_members(&tx, name, dps)?;
            tx.commit()?;
        }
        self.group(name)
    }

    /// `dpgroup remove`.
    pub fn remove_group_member(&self, name: &str, dp: &str) -> ActionResult<GroupInfo> {
        self.group(name)?;
        self.db().conn().execute(
            "DELETE FROM dp_group_members WHERE grp = ?1 AND dp = ?2",
            params![name, dp],
        )?;
        self.group(name)
    }

    /// `dpgroup delete`.
    pub fn delete_group(&self, name: &str) -> ActionResult<()> {
        if self
            .db()
            .conn()
            .execute("DELETE FROM dp_groups WHERE name = ?1", [name])?
            == 0
        {
            return Err(no_group(name));
        }
        Ok(())
    }

    /// One group.
    pub fn group(&self, name: &str) -> ActionResult<GroupInfo> {
        self.groups_named(Some(name))?
            .pop()
            .ok_or_else(|| no_group(name))
    }

    /// Every group.
    pub fn groups(&self) -> ActionResult<Vec<GroupInfo>> {
        self.groups_named(None)
    }

    fn groups_named(&self, name: Option<&str>) -> ActionResult<Vec<GroupInfo>> {
        let mut db = self.db();
        let c = db.conn();
        let names: Vec<String> = c
            .prepare("SELECT name FROM dp_groups WHERE ?1 IS NULL OR name = ?1 ORDER BY name")?
            .query_map([name], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let mut members_of =
            c.prepare("SELECT dp FROM dp_group_members WHERE grp = ?1 ORDER BY dp")?;
        let mut out = Vec::new();
        for name in names {
            let members = members_of
                .query_map([&name], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            out.push(GroupInfo { name, members });
        }
        Ok(out)
    }

    // ---- packages ----

    /// `package create`: snapshots the source into the library as version 1.
    pub async fn create_package(&self, p: CreatePackage) -> ActionResult<PackageInfo> {
        let priority = p.priority.clone().unwrap_or_else(|| "medium".into());
        priority
            .parse::<freight_transport::Priority>()
            .map_err(|e| ActionError::bad(e.to_string()))?;
        let source = PathBuf::from(&p.source);
        check_source(&source)?;
        let id = {
            let mut db = self.db();
            let c = db.conn();
            let ids: Vec<String> = c
                .prepare("SELECT id FROM packages WHERE id LIKE ?1 || '%'")?
                .query_map([self.code.as_str()], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            let next = ids
                .iter()
                .filter_map(|i| u32::from_str_radix(&i[3..], 16).ok())
                .max()
                .map_or(1, |n| n + 1);
            if next > 0xFFFFF {
                return Err(ActionError::conflict(
                    "this site has used every package ID (FFFFF); no more packages can be created",
                ));
            }
            let id = format!("{}{next:05X}", self.code);
            c.execute(
                "INSERT INTO packages (id, name, source, priority, created) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![id, p.name, p.source, priority, now()],
            )?;
            id
        };
        // The row exists before the snapshot so the ID is never handed out twice; a failed
        // snapshot removes it again.
        match self.snapshot(&id, &p.name, &source).await {
            Ok(()) => self.package(&id),
            Err(e) => {
                let _ = self
                    .db()
                    .conn()
                    .execute("DELETE FROM packages WHERE id = ?1", [&id]);
                Err(e)
            }
        }
    }

    /// `package update`: a new version from the package's source; every DP that holds or is
    /// getting the package gets it.
    pub async fn update_package(&self, id: &str) -> ActionResult<PackageInfo> {
        let (source, name) = self.package_source(id)?;
        check_source(&source)?;
        self.snapshot(id, &name, &source).await?;
        let info = self.package(id)?;
        let dps = self.package_dps(id, "state NOT IN ('removed', 'removal_pending')")?;
        self.set_targets(id, &dps, "install", info.version)?;
        Ok(info)
    }

    async fn snapshot(&self, id: &str, name: &str, source: &std::path::Path) -> ActionResult<()> {
        let pid = PackageId::parse(id).map_err(|e| ActionError::bad(e.to_string()))?;
        let src = source.to_path_buf();
        let report = self
            .lib
            .exclusive(move |lib| {
                ingest(
                    lib,
                    &src,
                    &IngestOptions {
                        package: pid,
                        version: None,
                        // Like rsync: an update reads only files whose size or mtime changed.
                        quick_check: true,
                    },
                    &Progress::default(),
                )
            })
            .await
            .map_err(|e| ActionError {
                status: 500,
                message: e.to_string(),
            })?
            .map_err(|e| ActionError::bad(format!("package {id}: {e}")))?;
        let hash = blake3::Hash::from_hex(&report.hash)
            .map(|h| h.as_bytes().to_vec())
            .unwrap_or_default();
        let mut db = self.db();
        let tx = db.conn().transaction()?;
        tx.execute(
            "INSERT INTO package_versions (package, version, manifest_hash, created, files, bytes)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                id,
                report.version,
                hash,
                now(),
                report.files as i64,
                report.bytes as i64
            ],
        )?;
        let site = self.code.as_str();
        statmgr::raise(
            &tx,
            site,
            now(),
            &Msg::new(
                2376,
                &[
                    &id,
                    &report.version,
                    &report.files,
                    &freight_core::units::human(report.bytes),
                    &report.hash,
                ],
            )
            .package(id, report.version),
        )?;
        statmgr::raise(
            &tx,
            site,
            now(),
            &Msg::new(2311, &[&id, &report.version, &name]).package(id, report.version),
        )?;
        tx.commit()?;
        Ok(())
    }

    fn package_source(&self, id: &str) -> ActionResult<(PathBuf, String)> {
        self.db()
            .conn()
            .query_row(
                "SELECT source, name FROM packages WHERE id = ?1 AND deleted = 0",
                [id],
                |r| Ok((PathBuf::from(r.get::<_, String>(0)?), r.get(1)?)),
            )
            .optional()?
            .ok_or_else(|| no_package(id))
    }

    /// One package (not deleted).
    pub fn package(&self, id: &str) -> ActionResult<PackageInfo> {
        self.packages_with(Some(id))?
            .pop()
            .ok_or_else(|| no_package(id))
    }

    /// Every package not deleted, with its DP summary.
    pub fn packages(&self) -> ActionResult<Vec<PackageInfo>> {
        self.packages_with(None)
    }

    fn packages_with(&self, id: Option<&str>) -> ActionResult<Vec<PackageInfo>> {
        let mut db = self.db();
        let c = db.conn();
        let mut st = c.prepare(
            "SELECT p.id, p.name, p.source, p.priority, v.version, v.manifest_hash, v.files, v.bytes
             FROM packages p JOIN package_versions v ON v.package = p.id
             WHERE p.deleted = 0 AND (?1 IS NULL OR p.id = ?1)
               AND v.version = (SELECT max(version) FROM package_versions WHERE package = p.id)
             ORDER BY p.id",
        )?;
        let mut out: Vec<PackageInfo> = st
            .query_map([id], |r| {
                let hash: Vec<u8> = r.get(5)?;
                Ok(PackageInfo {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    source: r.get(2)?,
                    priority: r.get(3)?,
                    version: r.get(4)?,
                    hash: hex(&hash),
                    files: r.get::<_, i64>(6)? as u64,
                    bytes: r.get::<_, i64>(7)? as u64,
                    summary: Summary::default(),
                })
            })?
            .collect::<Result<_, _>>()?;
        let mut st = c.prepare(
            "SELECT state, version FROM package_dp_status WHERE package = ?1 AND state != 'removed'",
        )?;
        for p in &mut out {
            let rows: Vec<(String, Option<u32>)> = st
                .query_map([&p.id], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            let s = &mut p.summary;
            for (state, version) in rows {
                s.targeted += 1;
                match state.as_str() {
                    "installed" if version == Some(p.version) => s.installed += 1,
                    "failed" => s.failed += 1,
                    "install_pending" | "retrying" | "installed" => s.retrying += 1,
                    _ => {}
                }
            }
        }
        Ok(out)
    }

    /// `package show`.
    pub fn package_detail(&self, id: &str) -> ActionResult<PackageDetail> {
        let package = self.package(id)?;
        let versions = {
            let mut db = self.db();
            let c = db.conn();
            let mut st = c.prepare(
                "SELECT version, manifest_hash, files, bytes, created FROM package_versions
                 WHERE package = ?1 ORDER BY version",
            )?;
            st.query_map([id], |r| {
                let hash: Vec<u8> = r.get(1)?;
                Ok(VersionInfo {
                    version: r.get(0)?,
                    hash: hex(&hash),
                    files: r.get::<_, i64>(2)? as u64,
                    bytes: r.get::<_, i64>(3)? as u64,
                    created: r.get(4)?,
                })
            })?
            .collect::<Result<_, _>>()?
        };
        let status = self.status(Some(id))?;
        Ok(PackageDetail {
            package,
            versions,
            status,
        })
    }

    /// `distribute`: targets DPs and the members of DP groups with the newest version.
    pub fn distribute(&self, id: &str, t: &Targets) -> ActionResult<usize> {
        let info = self.package(id)?;
        let mut dps: Vec<String> = Vec::new();
        for d in &t.dps {
            require_dp(self.db().conn(), d)?;
            dps.push(d.clone());
        }
        for g in &t.groups {
            dps.extend(self.group(g)?.members);
        }
        dps.sort();
        dps.dedup();
        if dps.is_empty() {
            return Err(ActionError::bad(format!(
                "distribute {id}: name a DP (--dp) or a DP group (--group) with members"
            )));
        }
        self.set_targets(id, &dps, "install", info.version)?;
        Ok(dps.len())
    }

    /// `redistribute`: one DP gets everything again, overwriting what it holds.
    pub fn redistribute(&self, id: &str, t: &Targets) -> ActionResult<()> {
        let info = self.package(id)?;
        let [dp] = t.dps.as_slice() else {
            return Err(ActionError::bad(format!(
                "redistribute {id}: name exactly one DP (--dp NAME)"
            )));
        };
        require_dp(self.db().conn(), dp)?;
        self.set_targets(id, std::slice::from_ref(dp), "redistribute", info.version)
    }

    /// `validate`: the named DPs, or every DP holding the package, re-hash its content.
    pub fn validate(&self, id: &str, t: &Targets) -> ActionResult<usize> {
        let info = self.package(id)?;
        let holding = self.package_dps(id, "state IN ('installed', 'failed')")?;
        let dps = if t.dps.is_empty() {
            holding
        } else {
            for d in &t.dps {
                require_dp(self.db().conn(), d)?;
                if !holding.contains(d) {
                    return Err(ActionError::conflict(format!(
                        "DP {d} does not hold {id}; distribute it there first"
                    )));
                }
            }
            t.dps.clone()
        };
        if dps.is_empty() {
            return Err(ActionError::conflict(format!(
                "no DP holds {id} yet; distribute it first"
            )));
        }
        self.set_targets(id, &dps, "validate", info.version)?;
        Ok(dps.len())
    }

    /// `package remove`: from one DP, or (no DP) from every DP and then the package itself.
    pub fn remove_package(&self, id: &str, dp: Option<&str>) -> ActionResult<usize> {
        self.package(id)?;
        let dps: Vec<String> = match dp {
            Some(d) => {
                require_dp(self.db().conn(), d)?;
                vec![d.to_string()]
            }
            None => self.package_dps(id, "state != 'removed'")?,
        };
        if !dps.is_empty() {
            self.set_targets(id, &dps, "remove", 0)?;
        }
        if dp.is_none() {
            self.db()
                .conn()
                .execute("UPDATE packages SET deleted = 1 WHERE id = ?1", [id])?;
            // The site's own copy goes too; DPs drop theirs as their jobs run.
            let pid = PackageId::parse(id).map_err(|e| ActionError::bad(e.to_string()))?;
            let lib = self.lib.clone();
            tokio::spawn(async move {
                let r = lib
                    .exclusive(move |l| drop_package(l, &pid, &HashSet::new(), None))
                    .await;
                let failed = match r {
                    Err(e) => Some(e.to_string()),
                    Ok(Err(e)) => Some(e),
                    Ok(Ok(_)) => None,
                };
                if let Some(e) = failed {
                    tracing::warn!(error = %e, "removing the site's copy of a package failed");
                }
            });
        }
        Ok(dps.len())
    }

    /// The DPs of package `id` whose status row meets `state` (an SQL condition on its
    /// state), by name.
    fn package_dps(&self, id: &str, state: &'static str) -> ActionResult<Vec<String>> {
        let mut db = self.db();
        let dps = db
            .conn()
            .prepare(&format!(
                "SELECT dp FROM package_dp_status WHERE package = ?1 AND {state} ORDER BY dp"
            ))?
            .query_map([id], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(dps)
    }

    /// Records a pending action per DP; DistMgr turns them into jobs.
    fn set_targets(
        &self,
        id: &str,
        dps: &[String],
        action: &str,
        version: u32,
    ) -> ActionResult<()> {
        {
            let mut db = self.db();
            let tx = db.conn().transaction()?;
            for dp in dps {
                tx.execute(
                    "INSERT INTO package_targets (package, dp, action, version, updated)
                     VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (package, dp) DO UPDATE SET action = ?3, version = ?4, updated = ?5",
                    params![id, dp, action, version, now()],
                )?;
            }
            tx.commit()?;
        }
        self.wake.notify_one();
        Ok(())
    }

    // ---- status ----

    /// Package status per DP, optionally of one package.
    pub fn status(&self, package: Option<&str>) -> ActionResult<Vec<PackageStatus>> {
        self.status_of(package, None)
    }

    /// Package status per DP, optionally of one package and of one DP.
    fn status_of(
        &self,
        package: Option<&str>,
        dp: Option<&str>,
    ) -> ActionResult<Vec<PackageStatus>> {
        let mut db = self.db();
        let c = db.conn();
        let mut st = c.prepare(
            "SELECT package, dp, state, version, last_copied, message,
                 (SELECT bytes_sent FROM distribution_jobs j WHERE j.package = s.package
                  AND j.dp = s.dp AND j.state = 'done' AND j.action IN ('install', 'redistribute')
                  ORDER BY j.id DESC LIMIT 1)
             FROM package_dp_status s WHERE (?1 IS NULL OR package = ?1) AND (?2 IS NULL OR dp = ?2)
             ORDER BY package, dp",
        )?;
        let rows = st
            .query_map([package, dp], |r| {
                let state: String = r.get(2)?;
                Ok(PackageStatus {
                    package: r.get(0)?,
                    dp: r.get(1)?,
                    state: state_label(&state).to_string(),
                    version: r.get(3)?,
                    last_copied: r.get(4)?,
                    message: r.get(5)?,
                    last_bytes: r.get::<_, Option<i64>>(6)?.map(|b| b as u64),
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Status messages after `since`.
    pub fn messages(&self, package: Option<&str>, since: i64) -> ActionResult<Vec<StatusMessage>> {
        Ok(statmgr::read(self.db().conn(), package, since)?)
    }

    /// Live jobs with their progress.
    pub fn jobs(&self) -> ActionResult<Vec<JobProgress>> {
        let rows: Vec<(i64, JobProgress)> = {
            let mut db = self.db();
            let c = db.conn();
            // Requests DistMgr has not turned into jobs yet count too (as `requested`), so a
            // caller never sees a calm moment between asking and the job appearing.
            let mut st = c.prepare(
                "SELECT id, package, version, dp, action, state, attempts FROM distribution_jobs
                 WHERE state IN ('queued', 'running', 'retrying')
                 UNION ALL
                 SELECT -1, package, version, dp, action, 'requested', 0 FROM package_targets
                 WHERE action != 'none'
                 ORDER BY 1",
            )?;
            st.query_map([], |r| {
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
            })?
            .collect::<Result<_, _>>()?
        };
        let progress = self.progress.lock().unwrap_or_else(|p| p.into_inner());
        Ok(rows
            .into_iter()
            .map(|(id, mut j)| {
                if let Some(p) = progress.get(&id) {
                    (j.done, j.total) = p.bytes();
                }
                j
            })
            .collect())
    }
}

/// The label users see for a stored state.
pub fn state_label(state: &str) -> &'static str {
    match state {
        "install_pending" => "Install Pending",
        "retrying" => "Retrying",
        "installed" => "Installed",
        "failed" => "Failed",
        "removal_pending" => "Removal Pending",
        "removed" => "Removed",
        _ => "Unknown",
    }
}

fn add_members(tx: &rusqlite::Transaction, group: &str, dps: &[String]) -> ActionResult<()> {
    for dp in dps {
        require_dp(tx, dp)?;
        tx.execute(
            "INSERT OR IGNORE INTO dp_group_members (grp, dp) VALUES (?1, ?2)",
            params![group, dp],
        )?;
    }
    Ok(())
}

/// Whether a DP called `name` is known.
fn dp_exists(c: &rusqlite::Connection, name: &str) -> rusqlite::Result<bool> {
    c.query_row("SELECT 1 FROM dps WHERE name = ?1", [name], |_| Ok(()))
        .optional()
        .map(|r| r.is_some())
}

/// The DP called `name` must be known: otherwise [`no_dp`].
fn require_dp(c: &rusqlite::Connection, name: &str) -> ActionResult<()> {
    if dp_exists(c, name)? {
        Ok(())
    } else {
        Err(no_dp(name))
    }
}

fn check_source(source: &std::path::Path) -> ActionResult<()> {
    if !source.is_absolute() {
        return Err(ActionError::bad(format!(
            "source folder {} is not absolute; give the full path",
            source.display()
        )));
    }
    match std::fs::metadata(source) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(ActionError::bad(format!(
            "source {} is not a folder; point the package at a folder",
            source.display()
        ))),
        Err(e) => Err(ActionError::missing(format!(
            "source folder {} cannot be read ({e}); check the path and that freightd may read it",
            source.display()
        ))),
    }
}

fn hex(b: &[u8]) -> String {
    blake3::Hash::from_slice(b).map_or_else(|_| String::new(), |h| h.to_hex().to_string())
}

fn no_dp(name: &str) -> ActionError {
    ActionError::missing(format!(
        "no DP named {name}; list them with `freight dp list` or add it with `freight dp add`"
    ))
}

fn no_group(name: &str) -> ActionError {
    ActionError::missing(format!(
        "no DP group named {name}; list them with `freight dpgroup list`"
    ))
}

fn no_package(id: &str) -> ActionError {
    ActionError::missing(format!(
        "no package {id} at this site; list them with `freight package list`"
    ))
}
