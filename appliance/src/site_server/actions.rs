//! The admin interface's actions (SPEC §3): each checks its input, writes its rows and status
//! messages in one transaction of the store, and wakes DistMgr, whose inbox is
//! `package_targets`. Reads answer from one consistent view.
//!
//! Called by the admin API server ([`crate::admin`]); calls only the store and the library.

use super::error::{SiteError, SiteResult};
use super::statmgr::Msg;
use super::store::NewDp;
use super::store::types::{Action, DpKind, DpState};
use super::{SiteServer, now};
use crate::api::{
    AddDp, AddGroup, CreatePackage, DpDetail, DpInfo, GroupInfo, JobProgress, PackageDetail,
    PackageInfo, PackageStatus, StatusMessage, Targets,
};
use freight_core::ingest::{IngestOptions, ingest};
use freight_core::{PackageId, Progress, PublicIdentity, Role, SiteCode, TrustStore};
use freight_transport::RouteThrottle;
use std::path::{Path, PathBuf};

impl SiteServer {
    // ---- DPs ----

    /// `dp add`: records the DP and trusts its key.
    pub fn add_dp(&self, a: AddDp) -> SiteResult<DpInfo> {
        check_name("DP", &a.name)?;
        let kind: DpKind = a.kind.parse().map_err(|_| {
            SiteError::Invalid(format!("DP kind {:?}: use standard or pull", a.kind))
        })?;
        a.address.parse::<std::net::SocketAddr>().map_err(|_| {
            SiteError::Invalid(format!(
                "DP {}: address {:?} is not host:port (e.g. 10.0.0.5:4433)",
                a.name, a.address
            ))
        })?;
        let identity = PublicIdentity::from_text(&a.identity).map_err(|e| {
            SiteError::Invalid(format!(
                "DP {}: identity not readable ({e}); export it on the DP with `freight site identity export`",
                a.name
            ))
        })?;
        let throttle = a.throttle.as_deref().unwrap_or("daily unlimited");
        RouteThrottle::parse(throttle)
            .map_err(|e| SiteError::Invalid(format!("DP {}: throttle: {e}", a.name)))?;
        match (kind, a.sources.is_empty()) {
            (DpKind::Standard, false) => {
                return Err(SiteError::Invalid(format!(
                    "DP {}: only a pull DP has sources; add --pull or drop --source",
                    a.name
                )));
            }
            (DpKind::Pull, true) => {
                return Err(SiteError::Invalid(format!(
                    "pull DP {}: name at least one source DP (--source)",
                    a.name
                )));
            }
            _ => {}
        }
        self.store.write(|db| {
            if db.dp_exists(&a.name)? {
                return Err(SiteError::Conflict(format!(
                    "DP {} exists already; remove it first or choose another name",
                    a.name
                )));
            }
            db.insert_dp(&NewDp {
                name: &a.name,
                site: self.code.as_str(),
                kind,
                address: &a.address,
                http: a.http.as_deref(),
                key_site: identity.code.as_str(),
                fingerprint: &identity.fingerprint(),
                throttle,
                created: now(),
            })?;
            for (rank, s) in a.sources.iter().enumerate() {
                if !db.dp_exists(s)? {
                    return Err(SiteError::NoSourceDp {
                        missing: s.clone(),
                        dp: a.name.clone(),
                    });
                }
                db.add_source(&a.name, s, rank)?;
            }
            // Trusted inside the transaction: a refused import leaves no DP row behind.
            TrustStore::open(&self.trust_dir)
                .and_then(|t| t.import(&identity, Role::Dp))
                .map_err(|e| SiteError::Invalid(format!("DP {}: {e}", a.name)))?;
            Ok(())
        })?;
        self.trust_changed();
        self.dp(&a.name)
    }

    /// One DP.
    pub fn dp(&self, name: &str) -> SiteResult<DpInfo> {
        self.store
            .read(|db| Ok::<_, SiteError>(db.dps(Some(name))?))?
            .pop()
            .ok_or_else(|| SiteError::NoDp(name.to_string()))
    }

    /// Every DP.
    pub fn dps(&self) -> SiteResult<Vec<DpInfo>> {
        Ok(self.store.read(|db| db.dps(None))?)
    }

    /// `dp show`.
    pub fn dp_detail(&self, name: &str) -> SiteResult<DpDetail> {
        let dp = self.dp(name)?;
        let packages = self.store.read(|db| db.status(None, Some(name)))?;
        Ok(DpDetail { dp, packages })
    }

    /// `dp remove`: refused while the DP holds or is getting packages, or is a source.
    pub fn remove_dp(&self, name: &str) -> SiteResult<()> {
        self.store.write(|db| {
            require_dp(db, name)?;
            let held = db.dp_holdings(name)?;
            if held > 0 {
                return Err(SiteError::Conflict(format!(
                    "DP {name} still holds or is getting {held} package(s); remove them from it first (`freight package remove ID --dp {name}`)"
                )));
            }
            let used = db.dp_source_uses(name)?;
            if used > 0 {
                return Err(SiteError::Conflict(format!(
                    "DP {name} is a source of {used} pull DP(s); change their sources first"
                )));
            }
            let key_site = db.route(name)?.map(|r| r.key_site);
            db.delete_dp(name)?;
            // A removed DP's key loses its role here, and so its trust unless another role
            // still needs it: it can no longer connect.
            if let Some(code) = key_site.and_then(|c| SiteCode::parse(&c).ok()) {
                TrustStore::open(&self.trust_dir)
                    .and_then(|t| t.remove_role(code, Role::Dp))
                    .map_err(|e| SiteError::Invalid(format!("DP {name}: {e}")))?;
            }
            Ok(())
        })?;
        self.trust_changed();
        Ok(())
    }

    /// Makes a trust store change count now: the node reads the store again and closes the
    /// connections of keys it no longer trusts (it would also notice within a second).
    pub(super) fn trust_changed(&self) {
        if let Err(e) = self.node.reload_trust() {
            tracing::warn!(error = %e, "cannot read the trust store again; the change applies within a second");
        }
    }

    /// `dp schedule`: the route's bandwidth windows (running copies pick them up at once).
    pub fn set_schedule(&self, name: &str, throttle: &str) -> SiteResult<DpInfo> {
        RouteThrottle::parse(throttle)
            .map_err(|e| SiteError::Invalid(format!("DP {name}: throttle: {e}")))?;
        if !self.store.write(|db| db.set_throttle(name, throttle))? {
            return Err(SiteError::NoDp(name.to_string()));
        }
        self.routes_changed.notify_one();
        self.distmgr_wake.notify_one();
        self.dp(name)
    }

    // ---- DP groups ----

    /// `dpgroup create`.
    pub fn add_group(&self, g: AddGroup) -> SiteResult<GroupInfo> {
        check_name("DP group", &g.name)?;
        self.store.write(|db| {
            if !db.insert_group(&g.name)? {
                return Err(SiteError::Conflict(format!(
                    "DP group {} exists already; add members with `freight dpgroup add`",
                    g.name
                )));
            }
            add_members(db, &g.name, &g.members)
        })?;
        self.group(&g.name)
    }

    /// `dpgroup add`.
    pub fn add_group_members(&self, name: &str, dps: &[String]) -> SiteResult<GroupInfo> {
        self.store.write(|db| {
            require_group(db, name)?;
            add_members(db, name, dps)
        })?;
        self.group(name)
    }

    /// `dpgroup remove`.
    pub fn remove_group_member(&self, name: &str, dp: &str) -> SiteResult<GroupInfo> {
        self.store.write(|db| {
            require_group(db, name)?;
            Ok::<_, SiteError>(db.remove_member(name, dp)?)
        })?;
        self.group(name)
    }

    /// `dpgroup delete`.
    pub fn delete_group(&self, name: &str) -> SiteResult<()> {
        if !self.store.write(|db| db.delete_group(name))? {
            return Err(SiteError::NoGroup(name.to_string()));
        }
        Ok(())
    }

    /// One group.
    pub fn group(&self, name: &str) -> SiteResult<GroupInfo> {
        self.store.read(|db| require_group(db, name))
    }

    /// Every group.
    pub fn groups(&self) -> SiteResult<Vec<GroupInfo>> {
        Ok(self.store.read(|db| db.groups(None))?)
    }

    // ---- packages ----

    /// `package create`: snapshots the source into the library as version 1. The package row
    /// and its first version are written in one transaction after the snapshot, so a crash
    /// leaves no package without a version; the reserved ID is never handed out again.
    pub async fn create_package(&self, p: CreatePackage) -> SiteResult<PackageInfo> {
        let priority = p.priority.unwrap_or_default();
        check_text("package name", &p.name, 200)?;
        check_text("source folder", &p.source, 4096)?;
        let source = PathBuf::from(&p.source);
        check_source(&source)?;
        let id = self
            .store
            .write(|db| db.reserve_package_id(self.code.as_str(), now()))?
            .ok_or_else(|| {
                SiteError::Conflict(
                    "this site has used every package ID (FFFFF); no more packages can be created"
                        .into(),
                )
            })?;
        let snap = self.snapshot(&id, &source, None).await?;
        self.store.write(|db| {
            db.insert_package(&id, &p.name, &p.source, priority, now())?;
            record_snapshot(db, self.code.as_str(), &id, &p.name, &snap)
        })?;
        self.package(&id)
    }

    /// `package update`: a new version from the package's source; every DP that holds or is
    /// getting the package gets it.
    pub async fn update_package(&self, id: &str) -> SiteResult<PackageInfo> {
        let (source, name) = self
            .store
            .read(|db| db.package_source(id))?
            .ok_or_else(|| SiteError::NoPackage(id.to_string()))?;
        if let Some(origin) = self.store.read(|db| db.package_origin(id))? {
            return Err(SiteError::Conflict(format!(
                "package {id} came from site {origin}; update it there and distribute it again"
            )));
        }
        let source = PathBuf::from(source);
        check_source(&source)?;
        // The newest version this site recorded itself: the only one the quick check may
        // trust (the library may hold versions others put there) and the one an unchanged
        // source is compared with.
        let base = self
            .store
            .read(|db| db.versions(id))?
            .last()
            .map(|v| v.version);
        let snap = self.snapshot(id, &source, base).await?;
        if let Some(n) = snap.unchanged_from {
            return Err(SiteError::Conflict(format!(
                "package {id}: nothing changed since version {n}; no version made"
            )));
        }
        self.store.write(|db| {
            record_snapshot(db, self.code.as_str(), id, &name, &snap)?;
            let dps = db.package_dps(id, |s| {
                !matches!(s, DpState::Removed | DpState::RemovalPending)
            })?;
            db.set_targets(id, &dps, Action::Install, snap.version, now())?;
            // Sites below that were sent the package get the new version too.
            db.retarget_sites(id, snap.version, now())?;
            Ok::<_, SiteError>(())
        })?;
        self.distmgr_wake.notify_one();
        self.package(id)
    }

    /// Snapshots `source` into the library as the next version of `id`; with a `base`
    /// version, unchanged files are taken from it unread and a source equal to it makes no
    /// version (`Snapshot::unchanged_from`).
    async fn snapshot(&self, id: &str, source: &Path, base: Option<u32>) -> SiteResult<Snapshot> {
        let pid = PackageId::parse(id).map_err(|e| SiteError::Invalid(e.to_string()))?;
        let src = source.to_path_buf();
        let report = self
            .lib
            .exclusive(move |lib| {
                let before = lib.chunk_count();
                let result = ingest(
                    lib,
                    &src,
                    &IngestOptions {
                        package: pid.clone(),
                        version: None,
                        // Like rsync: an update reads only files whose size or mtime changed.
                        quick_check: base,
                        skip_if_unchanged_from: base,
                    },
                    &Progress::default(),
                );
                // A large snapshot commits its chunks in steps; one that fails after a step
                // leaves chunks no version names. Nobody runs gc on an unattended site
                // server, so they are reclaimed here, in the same exclusive hold: the disk a
                // failed snapshot (a full disk, a bad file at the end of the tree) took is
                // given back before anything else writes.
                if result.is_err() && lib.chunk_count() > before {
                    match freight_core::gc::gc_partial(lib, 0.25, &Progress::default()) {
                        Ok(r) => tracing::info!(
                            package = %pid,
                            chunks = r.chunks_removed,
                            bytes = r.bytes_freed,
                            "reclaimed the chunks of a failed snapshot"
                        ),
                        Err(e) => tracing::warn!(
                            package = %pid,
                            error = %e,
                            "could not reclaim the chunks of a failed snapshot; run freight library gc when freightd is stopped"
                        ),
                    }
                }
                result
            })
            .await?
            .map_err(|source| SiteError::Snapshot {
                package: id.to_string(),
                source,
            })?;
        Ok(Snapshot {
            version: report.version,
            hash: blake3::Hash::from_hex(&report.hash)
                .map(|h| *h.as_bytes())
                .map_err(|_| SiteError::Invalid(format!("package {id}: bad snapshot hash")))?,
            hex: report.hash,
            files: report.files,
            bytes: report.bytes,
            unchanged_from: report.unchanged_from,
        })
    }

    /// One package (not deleted).
    pub fn package(&self, id: &str) -> SiteResult<PackageInfo> {
        self.store.read(|db| require_package(db, id))
    }

    /// Every package not deleted, with its DP summary.
    pub fn packages(&self) -> SiteResult<Vec<PackageInfo>> {
        Ok(self.store.read(|db| db.packages(None))?)
    }

    /// `package show`.
    pub fn package_detail(&self, id: &str) -> SiteResult<PackageDetail> {
        self.store.read(|db| {
            Ok(PackageDetail {
                package: require_package(db, id)?,
                versions: db.versions(id)?,
                status: db.status(Some(id), None)?,
            })
        })
    }

    /// `distribute`: targets DPs, the members of DP groups and sites below this one with the
    /// newest version. A site is a child or a site a child reports; a package that came from
    /// the parent is distributed here by the parent's instruction, not by hand.
    pub fn distribute(&self, id: &str, t: &Targets) -> SiteResult<usize> {
        let n = self.store.write(|db| {
            let info = require_package(db, id)?;
            let mut dps: Vec<String> = Vec::new();
            for d in &t.dps {
                require_dp(db, d)?;
                dps.push(d.clone());
            }
            for g in &t.groups {
                dps.extend(require_group(db, g)?.members);
            }
            dps.sort();
            dps.dedup();
            let mut sites: Vec<String> = Vec::new();
            for s in &t.sites {
                let code = freight_core::SiteCode::parse(s)
                    .map_err(|e| SiteError::Invalid(format!("distribute {id}: {e}")))?;
                if code == self.code {
                    return Err(SiteError::Invalid(format!(
                        "distribute {id}: site {code} is this site; name its DPs (--dp) instead"
                    )));
                }
                if db.next_hop(code.as_str())?.is_none() {
                    return Err(SiteError::Invalid(format!(
                        "distribute {id}: site {code} is not below this site (not a child, and no child reports it); add it with `freight site add-child`"
                    )));
                }
                sites.push(code.to_string());
            }
            sites.sort();
            sites.dedup();
            if dps.is_empty() && sites.is_empty() {
                return Err(SiteError::Invalid(format!(
                    "distribute {id}: name a DP (--dp), a DP group (--group) with members or a site below this one (--site)"
                )));
            }
            db.set_targets(id, &dps, Action::Install, info.version, now())?;
            db.set_site_targets(id, &sites, "install", info.version, now())?;
            Ok(dps.len() + sites.len())
        })?;
        self.distmgr_wake.notify_one();
        Ok(n)
    }

    /// `redistribute`: one DP gets the current version again: what fails verification there
    /// is sent again and the copy is installed anew, while the DP keeps serving what it holds.
    pub fn redistribute(&self, id: &str, t: &Targets) -> SiteResult<()> {
        self.store.write(|db| {
            let info = require_package(db, id)?;
            let [dp] = t.dps.as_slice() else {
                return Err(SiteError::Invalid(format!(
                    "redistribute {id}: name exactly one DP (--dp NAME)"
                )));
            };
            require_dp(db, dp)?;
            Ok(db.set_targets(
                id,
                std::slice::from_ref(dp),
                Action::Redistribute,
                info.version,
                now(),
            )?)
        })?;
        self.distmgr_wake.notify_one();
        Ok(())
    }

    /// `validate`: the named DPs, or every DP holding the package, re-hash its content.
    pub fn validate(&self, id: &str, t: &Targets) -> SiteResult<usize> {
        let n = self.store.write(|db| {
            let info = require_package(db, id)?;
            let holding =
                db.package_dps(id, |s| matches!(s, DpState::Installed | DpState::Failed))?;
            let dps = if t.dps.is_empty() {
                holding
            } else {
                for d in &t.dps {
                    require_dp(db, d)?;
                    if !holding.contains(d) {
                        return Err(SiteError::Conflict(format!(
                            "DP {d} does not hold {id}; distribute it there first"
                        )));
                    }
                }
                t.dps.clone()
            };
            if dps.is_empty() {
                return Err(SiteError::Conflict(format!(
                    "no DP holds {id} yet; distribute it first"
                )));
            }
            db.set_targets(id, &dps, Action::Validate, info.version, now())?;
            Ok(dps.len())
        })?;
        self.distmgr_wake.notify_one();
        Ok(n)
    }

    /// `package remove`: from one DP, or (no DP) from every DP and then the package itself,
    /// whose copy in the site's library DistMgr drops (a queued task, so a crash loses it not).
    pub fn remove_package(&self, id: &str, dp: Option<&str>) -> SiteResult<usize> {
        let n = self.store.write(|db| {
            require_package(db, id)?;
            if dp.is_none()
                && let Some(origin) = db.package_origin(id)?
            {
                return Err(SiteError::Conflict(format!(
                    "package {id} came from site {origin}; remove it there (or from one DP here with --dp)"
                )));
            }
            let dps: Vec<String> = match dp {
                Some(d) => {
                    require_dp(db, d)?;
                    vec![d.to_string()]
                }
                None => db.package_dps(id, |s| s != DpState::Removed)?,
            };
            db.set_targets(id, &dps, Action::Remove, 0, now())?;
            if dp.is_none() {
                db.mark_deleted(id)?;
                // And from every site below that was sent it.
                db.remove_site_targets(id, now())?;
            }
            Ok::<_, SiteError>(dps.len())
        })?;
        self.distmgr_wake.notify_one();
        Ok(n)
    }

    // ---- status ----

    /// The sites below this one as `(code, parent)`: its children and what they reported.
    pub fn sites_below(&self) -> SiteResult<Vec<(String, String)>> {
        Ok(self.store.read(|db| db.sites_below())?)
    }

    /// The Sender's outbox, newest first: each send request with its state.
    pub fn sends(&self) -> SiteResult<Vec<serde_json::Value>> {
        Ok(self.store.read(|db| db.sends(false))?)
    }

    /// Package status per DP, optionally of one package.
    pub fn status(&self, package: Option<&str>) -> SiteResult<Vec<PackageStatus>> {
        Ok(self.store.read(|db| {
            let mut rows = db.status(package, None)?;
            // Then every DP of the sites below, as their reports give it.
            rows.extend(db.remote_status(package)?);
            Ok::<_, super::store::StoreError>(rows)
        })?)
    }

    /// Status messages after `since`: the audit trail (`audit`) or everything else.
    pub fn messages(
        &self,
        package: Option<&str>,
        since: i64,
        audit: bool,
    ) -> SiteResult<Vec<StatusMessage>> {
        Ok(self.store.read(|db| db.messages(package, since, audit))?)
    }

    /// Records an administrator's request on the admin socket in the audit trail (9100).
    pub fn audit_admin(&self, uid: u32, pid: Option<i32>, method: &str, path: &str, answer: u16) {
        let pid = pid.map_or("?".to_string(), |p| p.to_string());
        let m = Msg::new(9100, &[&uid, &pid, &method, &path, &answer]);
        if let Err(e) = self
            .store
            .write(|db| db.raise(self.code.as_str(), now(), &m))
        {
            tracing::error!(error = %e, "cannot record an admin request in the audit trail");
        }
    }

    /// Records a peer request the authorization table refused in the audit trail (9101).
    pub fn audit_refusal(&self, r: &freight_transport::authz::Refused, from: &str) {
        let m = Msg::new(9101, &[&r.peer.code, &r.peer.fingerprint(), &from, &r]);
        if let Err(e) = self
            .store
            .write(|db| db.raise(self.code.as_str(), now(), &m))
        {
            tracing::error!(error = %e, "cannot record a refused request in the audit trail");
        }
    }

    /// Live jobs with the progress of running copies.
    pub fn jobs(&self) -> SiteResult<Vec<JobProgress>> {
        let rows = self.store.read(|db| db.live_jobs())?;
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

/// A finished snapshot.
struct Snapshot {
    version: u32,
    hash: [u8; 32],
    hex: String,
    files: u64,
    bytes: u64,
    /// Set when the source equals this version: nothing was stored.
    unchanged_from: Option<u32>,
}

/// Records a snapshot as a version with its messages (2376, 2311).
fn record_snapshot(
    db: &super::store::Db,
    site: &str,
    id: &str,
    name: &str,
    s: &Snapshot,
) -> SiteResult<()> {
    let t = now();
    db.insert_version(id, s.version, &s.hash, s.files, s.bytes, t)?;
    let bytes = freight_core::units::human(s.bytes);
    db.raise(
        site,
        t,
        &Msg::new(2376, &[&id, &s.version, &s.files, &bytes, &s.hex]).package(id, s.version),
    )?;
    db.raise(
        site,
        t,
        &Msg::new(2311, &[&id, &s.version, &name]).package(id, s.version),
    )?;
    Ok(())
}

fn add_members(db: &super::store::Db, group: &str, dps: &[String]) -> SiteResult<()> {
    for dp in dps {
        require_dp(db, dp)?;
        db.add_member(group, dp)?;
    }
    Ok(())
}

/// The DP called `name` must be known.
fn require_dp(db: &super::store::Db, name: &str) -> SiteResult<()> {
    if db.dp_exists(name)? {
        Ok(())
    } else {
        Err(SiteError::NoDp(name.to_string()))
    }
}

/// The group called `name`, which must exist.
fn require_group(db: &super::store::Db, name: &str) -> SiteResult<GroupInfo> {
    db.groups(Some(name))?
        .pop()
        .ok_or_else(|| SiteError::NoGroup(name.to_string()))
}

/// The package `id`, which must exist and not be deleted.
fn require_package(db: &super::store::Db, id: &str) -> SiteResult<PackageInfo> {
    db.packages(Some(id))?
        .pop()
        .ok_or_else(|| SiteError::NoPackage(id.to_string()))
}

/// A DP or group name: 1-64 letters, digits, '-', '_' or '.' (they appear in paths, tables
/// and messages).
fn check_name(what: &str, name: &str) -> SiteResult<()> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(SiteError::Invalid(format!(
            "{what} name {name:?}: use 1-64 letters, digits, '-', '_' or '.'"
        )));
    }
    Ok(())
}

/// Free text (a display name, a path): not empty, at most `max` bytes, no control characters.
pub(crate) fn check_text(what: &str, text: &str, max: usize) -> SiteResult<()> {
    if text.trim().is_empty() || text.len() > max || text.chars().any(char::is_control) {
        return Err(SiteError::Invalid(format!(
            "{what} {text:?}: give 1-{max} bytes of text without control characters"
        )));
    }
    Ok(())
}

fn check_source(source: &Path) -> SiteResult<()> {
    if !source.is_absolute() {
        return Err(SiteError::Invalid(format!(
            "source folder {} is not absolute; give the full path",
            source.display()
        )));
    }
    match std::fs::metadata(source) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(SiteError::Invalid(format!(
            "source {} is not a folder; point the package at a folder",
            source.display()
        ))),
        Err(reason) => Err(SiteError::SourceUnreadable {
            path: source.to_path_buf(),
            reason,
        }),
    }
}
