//! The site's place in the hierarchy (issue 13, item 1): its parent, its children (each with
//! the exported identity it was configured with) and the addresses that lead to the children.
//! Each change is one store transaction together with its trust store change, then the
//! transport's authorization is told the new relations ([`SiteServer::apply_relations`]):
//! a key holds the `parent` or `child` role only as configured here (item 9).
//!
//! Decisions:
//! - A site knows only its own parent and children, so "no cycles" is checked where it can
//!   be: a child is never this site nor its parent, a parent never this site nor a child.
//!   Deeper cycles (a grandchild configured as the parent) need the hierarchy's view that
//!   status roll-up (item 7) brings.
//! - Removing a child that still has addresses is refused, not cascaded: the addresses hold
//!   the administrator's schedules, and the Sender's queued sends will name them.
//! - Addresses lead down, to children only. A site has at most one address per sender kind
//!   to a child (standard over QUIC, courier on media); the kind may be left out where the
//!   child has only one.
//! - Configuration has no status message of its own in the seeds; every change is in the
//!   audit trail (`freight messages --audit`) with its caller.
//!
//! Called by the admin API server; calls the store and the trust store.

use super::error::{SiteError, SiteResult};
use super::store::hierarchy::{AddressRow, NewAddress, Relation, SiteRow};
use super::store::types::SenderKind;
use super::store::{Store, StoreError};
use super::{SiteServer, now};
use crate::api::{AddAddress, AddSite, AddressInfo, AddressSchedule, SiteDetail, SiteInfo};
use freight_core::units::parse_duration;
use freight_core::{PublicIdentity, Role, SiteCode, TrustStore};
use freight_transport::RouteThrottle;
use freight_transport::trust::Relations;
use std::time::Duration;

/// Longest identity text taken (an exported identity is under 200 bytes).
pub const MAX_IDENTITY: usize = 4096;
/// Longest schedule taken, in either form (a week has 168 cells; any real schedule, even one
/// rule per cell, is far shorter).
pub const MAX_SCHEDULE: usize = 64 * 1024;
/// Longest endpoint (`host:port`): a DNS name is at most 253 bytes.
const MAX_ENDPOINT: usize = 260;
/// Most retries or sends at once an address may set.
const MAX_COUNT: u32 = 1000;
/// Longest wait between retries an address may set.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(24 * 3600);

impl Relation {
    /// The trust store role that goes with the relation (none for this site).
    fn role(self) -> Option<Role> {
        match self {
            Relation::Parent => Some(Role::Parent),
            Relation::Child => Some(Role::Child),
            Relation::This => None,
        }
    }
}

impl SiteServer {
    // ---- sites ----

    /// `site add-child`: records `code` as a child with its identity and trusts its key as
    /// `child`.
    pub fn add_child(&self, a: AddSite) -> SiteResult<SiteInfo> {
        self.configure(a, Relation::Child)
    }

    /// `site set-parent`: records `code` as this site's parent with its identity and trusts
    /// its key as `parent`.
    pub fn set_parent(&self, a: AddSite) -> SiteResult<SiteInfo> {
        self.configure(a, Relation::Parent)
    }

    fn configure(&self, a: AddSite, rel: Relation) -> SiteResult<SiteInfo> {
        let what = rel.label();
        let role = rel.role().expect("a parent or a child");
        let code = parse_code(&a.code)?;
        if code == self.code {
            return Err(SiteError::Invalid(format!(
                "site {code} is this site; a site cannot be its own {what}"
            )));
        }
        let address = match (&a.address, rel) {
            (None, _) => None,
            (Some(t), Relation::Parent) => {
                t.parse::<std::net::SocketAddr>().map_err(|_| {
                    SiteError::Invalid(format!(
                        "parent site {code}: address {t:?} is not HOST:PORT (e.g. 10.0.0.1:4433)"
                    ))
                })?;
                Some(t.clone())
            }
            (Some(_), _) => {
                return Err(SiteError::Invalid(format!(
                    "child site {code}: give its endpoint with `freight address add`, not here"
                )));
            }
        };
        let trust = self.trust()?;
        // The key: from the identity given, or the one the trust store holds for the code.
        let identity = match &a.identity {
            Some(text) => {
                let id = parse_identity(&code, what, text)?;
                if id.key == self.node.identity().key {
                    return Err(SiteError::Invalid(format!(
                        "{what} site {code}: the identity carries this site's own key; export the identity on site {code} itself"
                    )));
                }
                Some(id)
            }
            None => None,
        };
        let key = match identity {
            Some(id) => id,
            None => trust.lookup(code).map_err(|e| match e {
                freight_core::Error::RevokedKey { fingerprint, .. } => SiteError::Invalid(format!(
                    "{what} site {code}: its key {fingerprint} is revoked here; pass its new identity (--identity FILE, written on {code} by `freight site identity export`)"
                )),
                freight_core::Error::UnknownSite(_) => SiteError::Invalid(format!(
                    "{what} site {code}: no identity given and none in the trust store; pass --identity FILE (written on {code} by `freight site identity export`)"
                )),
                e => SiteError::Invalid(format!("{what} site {code}: {e}")),
            })?,
        };
        self.store.write(|db| {
            let me = self.code.as_str();
            if let Some(s) = db.site(code.as_str())? {
                return Err(SiteError::Conflict(match (s.relation, rel) {
                    (Relation::Child, Relation::Child) => format!(
                        "site {code} is already a child of {me}; to change its key, remove it first (`freight site remove {code}`)"
                    ),
                    (Relation::Parent, Relation::Parent) => format!(
                        "site {code} is already the parent of {me}; to change its key, remove it first (`freight site remove {code}`)"
                    ),
                    (Relation::Parent, _) => format!(
                        "site {code} is the parent of {me}; it cannot also be its child (no cycles)"
                    ),
                    _ => format!(
                        "site {code} is a child of {me}; it cannot also be its parent (no cycles)"
                    ),
                }));
            }
            if rel == Relation::Parent
                && let Some(p) = db.parent()?
            {
                return Err(SiteError::Conflict(format!(
                    "site {me} already has parent {}; remove it first (`freight site remove {}`)",
                    p.code, p.code
                )));
            }
            if db.site_row_exists(code.as_str())? {
                return Err(SiteError::Conflict(format!(
                    "site {code} is recorded below a child of {me}; it cannot be its {what} too (no cycles)"
                )));
            }
            if let Some(dp) = db.dp_with_key_site(code.as_str())? {
                return Err(SiteError::Conflict(format!(
                    "site code {code} is the key of DP {dp} of this site; a {what} site has its own site code and key"
                )));
            }
            match rel {
                Relation::Child => db.insert_child(code.as_str(), &key.key, now())?,
                _ => {
                    db.insert_parent(code.as_str(), &key.key, address.as_deref(), now())?;
                    // The new parent hears of everything already here at the first report.
                    db.log_all_status()?;
                }
            }
            // Trusted inside the transaction: a refused import leaves no row behind.
            trust
                .import(&key, role)
                .map_err(|e| trust_refusal(what, code, e))?;
            Ok(())
        })?;
        self.trust_and_relations_changed();
        tracing::info!(site = %code, fingerprint = %key.fingerprint(), relation = what, "hierarchy: site configured");
        self.site_info(code.as_str())
    }

    /// This site, its parent and its children.
    pub fn sites(&self) -> SiteResult<Vec<SiteInfo>> {
        let (rows, addrs) = self
            .store
            .read(|db| Ok::<_, StoreError>((db.sites()?, db.addresses(None)?)))?;
        let trust = self.trust()?;
        rows.iter()
            .map(|r| self.describe(r, &addrs, &trust))
            .collect()
    }

    fn site_info(&self, code: &str) -> SiteResult<SiteInfo> {
        self.sites()?
            .into_iter()
            .find(|s| s.code == code)
            .ok_or_else(|| SiteError::NoSite(code.to_string()))
    }

    /// `site show`: a site and its addresses.
    pub fn site_detail(&self, code: &str) -> SiteResult<SiteDetail> {
        let site = self.site_info(code)?;
        let addresses = self
            .store
            .read(|db| db.addresses(Some(code)))?
            .into_iter()
            .map(|a| self.address_info(a))
            .collect();
        Ok(SiteDetail { site, addresses })
    }

    fn describe(
        &self,
        r: &SiteRow,
        addrs: &[AddressRow],
        trust: &TrustStore,
    ) -> SiteResult<SiteInfo> {
        let configured = match (r.key, SiteCode::parse(&r.code)) {
            (Some(key), Ok(code)) => Some(PublicIdentity { code, key }),
            _ => None,
        };
        let key = match (&configured, r.relation.role()) {
            (_, None) => "own key".to_string(),
            (None, Some(_)) => "missing".to_string(),
            (Some(id), Some(role)) => key_state(trust, id, role)?,
        };
        Ok(SiteInfo {
            code: r.code.clone(),
            relation: r.relation.label().to_string(),
            fingerprint: configured.map(|id| id.fingerprint()),
            key,
            added: r.added,
            addresses: addrs
                .iter()
                .filter(|a| a.site == r.code)
                .map(|a| a.kind)
                .collect(),
        })
    }

    /// `site remove`: forgets the parent or a child and takes the role from its key. A child
    /// with addresses is refused (remove them first). Returns how it related to this site.
    pub fn remove_site(&self, code: &str) -> SiteResult<Relation> {
        let trust = self.trust()?;
        let rel = self.store.write(|db| {
            let s = db
                .site(code)?
                .ok_or_else(|| SiteError::NoSite(code.to_string()))?;
            let Some(role) = s.relation.role() else {
                return Err(SiteError::Invalid(format!(
                    "site {code} is this site; only its parent or a child can be removed"
                )));
            };
            let addrs = db.addresses(Some(code))?;
            if !addrs.is_empty() {
                let kinds: Vec<&str> = addrs.iter().map(|a| a.kind.as_str()).collect();
                return Err(SiteError::Conflict(format!(
                    "child site {code} still has its {} address; remove it first (`freight address remove {code} --kind {}`)",
                    kinds.join(" and "),
                    kinds[0]
                )));
            }
            let (below, dps) = db.site_dependents(code)?;
            if below + dps > 0 {
                return Err(SiteError::Conflict(format!(
                    "site {code} has {below} site(s) and {dps} DP(s) recorded under it; they go first"
                )));
            }
            db.delete_site(code)?;
            // The role goes with the relation, but only from the key it was configured with:
            // a key the administrator imported since (a replaced key) keeps its roles.
            if let (Some(key), Ok(c)) = (s.key, SiteCode::parse(code))
                && trust.lookup(c).is_ok_and(|id| id.key == key)
            {
                trust
                    .remove_role(c, role)
                    .map_err(|e| SiteError::Invalid(format!("site {code}: {e}")))?;
            }
            Ok(s.relation)
        })?;
        self.trust_and_relations_changed();
        tracing::info!(
            site = code,
            relation = rel.label(),
            "hierarchy: site removed"
        );
        Ok(rel)
    }

    /// The parent and children with their configured keys, for the transport's authorization
    /// table (and the Sender and Despooler to come).
    pub fn relations(&self) -> SiteResult<Relations> {
        relations(&self.store)
    }

    /// Tells the QUIC node the configured relations: from now on `parent` and `child` hold
    /// only for their keys, and connections left with no role are closed. Called at start-up
    /// and after every change.
    pub fn apply_relations(&self) -> SiteResult<()> {
        let rel = self.relations()?;
        self.node.set_relations(rel);
        Ok(())
    }

    fn trust_and_relations_changed(&self) {
        self.trust_changed();
        // A new parent hears what is here at once.
        self.report_wake.notify_one();
        if let Err(e) = self.apply_relations() {
            tracing::error!(error = %e, "cannot read the hierarchy back; parent and child roles apply after a restart");
        }
    }

    fn trust(&self) -> SiteResult<TrustStore> {
        TrustStore::open(&self.trust_dir)
            .map_err(|e| SiteError::Invalid(format!("this site's trust store: {e}")))
    }

    // ---- addresses ----

    /// `address add`: how this site sends to one of its children.
    pub fn add_address(&self, a: AddAddress) -> SiteResult<AddressInfo> {
        let code = parse_code(&a.site)?;
        let throttle = parse_schedule(&code, a.kind, &a.schedule)?
            .unwrap_or_default()
            .to_text();
        match (a.kind, &a.endpoint) {
            (SenderKind::Standard, None) => {
                return Err(SiteError::Invalid(format!(
                    "address to {code}: a standard address needs the child's QUIC endpoint (--endpoint HOST:PORT)"
                )));
            }
            (SenderKind::Courier, Some(_)) => {
                return Err(SiteError::Invalid(format!(
                    "address to {code}: a courier address has no endpoint (parcels travel on media); drop --endpoint"
                )));
            }
            (_, Some(e)) => check_endpoint(&code, e)?,
            _ => {}
        }
        for (what, v) in [("retries", a.retries), ("max sends", a.max_sends)] {
            if v.is_some_and(|v| v > MAX_COUNT) || (what == "max sends" && v == Some(0)) {
                return Err(SiteError::Invalid(format!(
                    "address to {code}: {what} {} is out of range; give {}-{MAX_COUNT}",
                    v.unwrap_or(0),
                    if what == "retries" { 0 } else { 1 }
                )));
            }
        }
        let retry_delay_ms = a
            .retry_delay
            .as_deref()
            .map(|d| check_retry_delay(&code, d))
            .transpose()?;
        self.store.write(|db| {
            require_child(db, &code)?;
            if db.addresses(Some(code.as_str()))?.iter().any(|x| x.kind == a.kind) {
                return Err(SiteError::Conflict(format!(
                    "site {code} already has a {} address; change its schedule with `freight address schedule {code} --kind {}` or remove it first",
                    a.kind, a.kind
                )));
            }
            db.insert_address(&NewAddress {
                site: code.as_str(),
                kind: a.kind,
                endpoint: a.endpoint.as_deref(),
                throttle: &throttle,
                retries: a.retries,
                retry_delay_ms,
                max_sends: a.max_sends,
                created: now(),
            })?;
            Ok(())
        })?;
        // Requests waiting for a route to this child may go now.
        self.sender_wake.notify_one();
        self.address(code.as_str(), Some(a.kind))
    }

    /// Every address.
    pub fn addresses(&self) -> SiteResult<Vec<AddressInfo>> {
        Ok(self
            .store
            .read(|db| db.addresses(None))?
            .into_iter()
            .map(|a| self.address_info(a))
            .collect())
    }

    /// The address to child `site` of `kind` (left out: its only one).
    pub fn address(&self, site: &str, kind: Option<SenderKind>) -> SiteResult<AddressInfo> {
        let row = self.store.read(|db| pick_address(db, site, kind))?;
        Ok(self.address_info(row))
    }

    /// `address schedule`: new bandwidth windows, in the text or the TOML form.
    pub fn set_address_schedule(
        &self,
        site: &str,
        kind: Option<SenderKind>,
        schedule: &AddressSchedule,
    ) -> SiteResult<AddressInfo> {
        let code = parse_code(site)?;
        let throttle = self.store.write(|db| {
            let row = pick_address(db, code.as_str(), kind)?;
            let throttle = parse_schedule(&code, row.kind, schedule)?.ok_or_else(|| {
                SiteError::Invalid(format!(
                    "address to {code}: no schedule given; pass the text form (--throttle TEXT) or a TOML file (--file FILE)"
                ))
            })?;
            db.set_address_throttle(code.as_str(), row.kind, &throttle.to_text())?;
            Ok::<_, SiteError>(row.kind)
        })?;
        // A window that opened lets held requests go.
        self.sender_wake.notify_one();
        self.address(code.as_str(), Some(throttle))
    }

    /// `address remove`; returns the kind removed.
    pub fn remove_address(&self, site: &str, kind: Option<SenderKind>) -> SiteResult<SenderKind> {
        self.store.write(|db| {
            let row = pick_address(db, site, kind)?;
            db.delete_address(site, row.kind)?;
            Ok(row.kind)
        })
    }

    /// An address as the API shows it: settings it leaves unset take the site's defaults.
    fn address_info(&self, a: AddressRow) -> AddressInfo {
        let mut defaults = Vec::new();
        let mut or_default = |v: Option<u64>, name: &str, d: u64| {
            v.unwrap_or_else(|| {
                defaults.push(name.to_string());
                d
            })
        };
        let retries = or_default(
            a.retries.map(u64::from),
            "retries",
            self.cfg.sender_retries.into(),
        );
        let retry_delay_ms = or_default(
            a.retry_delay_ms,
            "retry_delay",
            self.cfg.sender_retry_delay.as_millis() as u64,
        );
        let max_sends = or_default(
            a.max_sends.map(u64::from),
            "max_sends",
            self.cfg.sender_sends_per_site.into(),
        );
        AddressInfo {
            site: a.site,
            kind: a.kind,
            endpoint: a.endpoint,
            schedule: a.throttle,
            retries: retries as u32,
            retry_delay_ms,
            max_sends: max_sends as u32,
            defaults,
        }
    }
}

/// The parent and children `store` configures, with their keys: what the transport's
/// authorization table limits the `parent` and `child` roles to.
pub fn relations(store: &Store) -> SiteResult<Relations> {
    let rows = store.read(|db| db.sites())?;
    let id = |r: &SiteRow| {
        Some(PublicIdentity {
            code: SiteCode::parse(&r.code).ok()?,
            key: r.key?,
        })
    };
    Ok(Relations {
        parent: rows
            .iter()
            .find(|r| r.relation == Relation::Parent)
            .and_then(id),
        children: rows
            .iter()
            .filter(|r| r.relation == Relation::Child)
            .filter_map(id)
            .collect(),
    })
}

/// A site code from the API, refused in one line that never echoes more than a code's worth.
fn parse_code(text: &str) -> SiteResult<SiteCode> {
    SiteCode::parse(text).map_err(|_| {
        let shown = if text.len() > 16 {
            format!("of {} bytes", text.len())
        } else {
            format!("{text:?}")
        };
        SiteError::Invalid(format!(
            "site code {shown}: use 3 upper-case letters or digits, e.g. PS1"
        ))
    })
}

fn parse_identity(code: &SiteCode, what: &str, text: &str) -> SiteResult<PublicIdentity> {
    if text.len() > MAX_IDENTITY {
        return Err(SiteError::Invalid(format!(
            "{what} site {code}: the identity is {} bytes, more than {MAX_IDENTITY}; pass the file `freight site identity export` wrote on {code}",
            text.len()
        )));
    }
    let id = PublicIdentity::from_text(text).map_err(|e| {
        SiteError::Invalid(format!(
            "{what} site {code}: identity not readable ({e}); export it on {code} with `freight site identity export`"
        ))
    })?;
    if id.code != *code {
        return Err(SiteError::Invalid(format!(
            "{what} site {code}: the identity is site {}'s; export the identity on site {code}",
            id.code
        )));
    }
    Ok(id)
}

/// The trust store's refusal of a configured key, as one line saying what to do.
fn trust_refusal(what: &str, code: SiteCode, e: freight_core::Error) -> SiteError {
    match e {
        freight_core::Error::RevokedKey { fingerprint, .. } => SiteError::Invalid(format!(
            "{what} site {code}: key {fingerprint} is revoked here; export {code}'s new identity and pass that"
        )),
        freight_core::Error::KeyConflict {
            trusted, offered, ..
        } => SiteError::Conflict(format!(
            "{what} site {code}: the trust store holds key {trusted} for {code}, not {offered}; if {code} has a new key, revoke the old one first (`freight site identity revoke {code}`)"
        )),
        e => SiteError::Invalid(format!("{what} site {code}: {e}")),
    }
}

/// What the trust store holds now for a configured key.
fn key_state(trust: &TrustStore, id: &PublicIdentity, role: Role) -> SiteResult<String> {
    let err = |e: freight_core::Error| SiteError::Invalid(format!("trust store: {e}"));
    Ok(match trust.lookup(id.code) {
        Ok(t) if t.key == id.key => {
            if trust.roles(id.code).map_err(err)?.contains(role) {
                "trusted".into()
            } else {
                format!("no role {role}")
            }
        }
        Ok(_) => "replaced".into(),
        Err(freight_core::Error::RevokedKey { .. }) => "revoked".into(),
        Err(freight_core::Error::UnknownSite(_)) => "missing".into(),
        Err(e) => return Err(err(e)),
    })
}

/// The address's schedule from the form given; `None` when neither is.
fn parse_schedule(
    code: &SiteCode,
    kind: SenderKind,
    s: &AddressSchedule,
) -> SiteResult<Option<RouteThrottle>> {
    let bad = |e: freight_transport::Error| {
        SiteError::Invalid(format!("{kind} address to {code}: schedule: {e}"))
    };
    let too_long = |form: &str, len: usize| {
        SiteError::Invalid(format!(
            "{kind} address to {code}: the {form} schedule is {len} bytes, more than {MAX_SCHEDULE}; a week has 168 hours, write it with day and hour ranges"
        ))
    };
    match (&s.text, &s.toml) {
        (Some(_), Some(_)) => Err(SiteError::Invalid(format!(
            "{kind} address to {code}: give the schedule as text or as TOML, not both"
        ))),
        (Some(t), None) if t.len() > MAX_SCHEDULE => Err(too_long("text", t.len())),
        (None, Some(t)) if t.len() > MAX_SCHEDULE => Err(too_long("TOML", t.len())),
        (Some(t), None) => RouteThrottle::parse(t).map(Some).map_err(bad),
        (None, Some(t)) => RouteThrottle::from_toml(t).map(Some).map_err(bad),
        (None, None) => Ok(None),
    }
}

/// `host:port`: a port 1-65535 and a host that is an IP address (IPv6 in brackets) or a DNS
/// name. Names are resolved when a send connects, so a child can move without a change here.
fn check_endpoint(code: &SiteCode, e: &str) -> SiteResult<()> {
    let bad = || {
        let shown = if e.len() > 64 {
            format!("of {} bytes", e.len())
        } else {
            format!("{e:?}")
        };
        SiteError::Invalid(format!(
            "address to {code}: endpoint {shown} is not host:port (e.g. 10.0.0.5:4433 or ss1.example.net:4433)"
        ))
    };
    if e.len() > MAX_ENDPOINT {
        return Err(bad());
    }
    if let Ok(addr) = e.parse::<std::net::SocketAddr>() {
        return if addr.port() == 0 { Err(bad()) } else { Ok(()) };
    }
    let (host, port) = e.rsplit_once(':').ok_or_else(bad)?;
    let port_ok = port.parse::<u16>().is_ok_and(|p| p > 0);
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if port_ok && host_ok {
        Ok(())
    } else {
        Err(bad())
    }
}

fn check_retry_delay(code: &SiteCode, d: &str) -> SiteResult<u64> {
    let delay = parse_duration(d)
        .map_err(|e| SiteError::Invalid(format!("address to {code}: retry delay: {e}")))?;
    if delay.is_zero() || delay > MAX_RETRY_DELAY {
        return Err(SiteError::Invalid(format!(
            "address to {code}: retry delay {d:?} is out of range; give 1ms to 24h, e.g. 1m"
        )));
    }
    Ok(delay.as_millis() as u64)
}

/// Refuses an address to anything but a child of this site.
fn require_child(db: &super::store::Db, code: &SiteCode) -> SiteResult<()> {
    match db.site(code.as_str())?.map(|s| s.relation) {
        Some(Relation::Child) => Ok(()),
        Some(Relation::Parent) => Err(SiteError::Invalid(format!(
            "site {code} is this site's parent; addresses lead down, to children only"
        ))),
        Some(Relation::This) => Err(SiteError::Invalid(format!(
            "site {code} is this site; addresses lead to its children"
        ))),
        None => Err(SiteError::NoSite(code.to_string())),
    }
}

/// The address to `site` of `kind`, or its only one when `kind` is left out.
fn pick_address(
    db: &super::store::Db,
    site: &str,
    kind: Option<SenderKind>,
) -> SiteResult<AddressRow> {
    let code = parse_code(site)?;
    require_child(db, &code)?;
    let mut rows = db.addresses(Some(site))?;
    if let Some(k) = kind {
        rows.retain(|a| a.kind == k);
    }
    match rows.len() {
        1 => Ok(rows.remove(0)),
        0 => Err(SiteError::NoAddress {
            site: site.to_string(),
            kind,
        }),
        _ => Err(SiteError::Invalid(format!(
            "site {site} has a standard and a courier address; pass --kind standard or --kind courier"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(s: &str) -> SiteCode {
        SiteCode::parse(s).unwrap()
    }

    #[test]
    fn endpoints_are_host_and_port() {
        let c = code("SS1");
        for ok in [
            "10.0.0.5:4433",
            "[::1]:4433",
            "ss1.example.net:4433",
            "localhost:1",
        ] {
            check_endpoint(&c, ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "10.0.0.5",
            "10.0.0.5:0",
            "10.0.0.5:70000",
            ":4433",
            "bad host:4433",
            "-x.net:4433",
            "a..b:4433",
            "::1:4433",
        ] {
            let e = check_endpoint(&c, bad).unwrap_err().to_string();
            assert!(e.contains("is not host:port"), "{bad}: {e}");
        }
        let long = format!("{}:4433", "a".repeat(5000));
        let e = check_endpoint(&c, &long).unwrap_err().to_string();
        assert!(e.contains("of 5005 bytes") && e.len() < 200, "{e}");
    }

    #[test]
    fn schedules_come_in_either_form_and_bad_ones_say_where() {
        let c = code("SS1");
        let text = AddressSchedule {
            text: Some("Mon-Fri 08:00-18:00 high 2MiB/s; Sat-Sun closed".into()),
            toml: None,
        };
        let toml = AddressSchedule {
            text: None,
            toml: Some(
                "[[window]]\ndays = \"Mon-Fri\"\nhours = \"08:00-18:00\"\nallowed = \"high\"\nrate = \"2MiB/s\"\n[[window]]\ndays = \"Sat-Sun\"\nallowed = \"closed\"\n".into(),
            ),
        };
        let a = parse_schedule(&c, SenderKind::Standard, &text)
            .unwrap()
            .unwrap();
        let b = parse_schedule(&c, SenderKind::Standard, &toml)
            .unwrap()
            .unwrap();
        assert_eq!(a, b);
        assert_eq!(
            parse_schedule(&c, SenderKind::Standard, &AddressSchedule::default()).unwrap(),
            None
        );
        let both = AddressSchedule {
            text: text.text.clone(),
            toml: toml.toml.clone(),
        };
        let cases = [
            (both, "not both"),
            (
                AddressSchedule {
                    text: Some("Mon-Fri 08:00-18:30 high".into()),
                    toml: None,
                },
                "18:30",
            ),
            (
                AddressSchedule {
                    text: Some("daily 0MiB/s".into()),
                    toml: None,
                },
                "0MiB/s",
            ),
            (
                AddressSchedule {
                    text: Some("Mon-Fri,Day8 closed".into()),
                    toml: None,
                },
                "unknown day",
            ),
            (
                AddressSchedule {
                    text: Some("daily 50%".into()),
                    toml: None,
                },
                "link",
            ),
            (
                AddressSchedule {
                    text: None,
                    toml: Some("[[window]]\ndays = \"Mon\"\nallowed = \"sometimes\"\n".into()),
                },
                "sometimes",
            ),
            (
                AddressSchedule {
                    text: Some("daily closed; ".repeat(6000)),
                    toml: None,
                },
                "more than 65536",
            ),
        ];
        for (s, want) in cases {
            let e = parse_schedule(&c, SenderKind::Standard, &s)
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{want}: {e}");
            assert!(e.starts_with("standard address to SS1: "), "{e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn codes_and_identities_are_checked_before_anything_is_written() {
        let e = parse_code(&"X".repeat(10_000)).unwrap_err().to_string();
        assert!(e.contains("of 10000 bytes") && e.len() < 120, "{e}");
        let e = parse_code("ps1").unwrap_err().to_string();
        assert!(e.contains("\"ps1\""), "{e}");
        let t = tempfile::tempdir().unwrap();
        let other = freight_core::SiteKey::load_or_create(&t.path().join("k"), code("SS2"))
            .unwrap()
            .identity();
        let e = parse_identity(&code("SS1"), "child", &other.to_text())
            .unwrap_err()
            .to_string();
        assert!(e.contains("the identity is site SS2's"), "{e}");
        let e = parse_identity(&code("SS1"), "child", "garbage")
            .unwrap_err()
            .to_string();
        assert!(e.contains("identity not readable"), "{e}");
        let e = parse_identity(&code("SS1"), "child", &"x".repeat(MAX_IDENTITY + 1))
            .unwrap_err()
            .to_string();
        assert!(e.contains("more than 4096"), "{e}");
        assert_eq!(
            check_retry_delay(&code("SS1"), "1m").unwrap(),
            60_000,
            "durations as everywhere"
        );
        assert!(check_retry_delay(&code("SS1"), "0s").is_err());
        assert!(check_retry_delay(&code("SS1"), "2d").is_err());
    }
}
