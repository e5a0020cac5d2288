//! The trust store as the transport reads it: a snapshot in memory, so that a handshake or an
//! authorization check never touches the file system on the async runtime (a flood of
//! handshakes naming trusted sites costs no disk reads), reloaded when the store changes.
//!
//! The store's directory is watched by modification time: every change the trust store makes
//! (import, role change, revoke) renames or removes a file in it, which updates the time.
//! [`TrustView::reload_if_changed`] is cheap to call often; the node calls it from its own
//! thread and, after a change, closes connections whose peer is no longer trusted.
//!
//! On a site server the trust store is not the last word on the hierarchy's roles: the site
//! database says which site is its parent and which are its children, with the key each was
//! configured with ([`Relations`]). Once the site server has set them
//! ([`TrustView::set_relations`]), a key holds the `parent` role only if it is the configured
//! parent's key and `child` only if it is a configured child's key, whatever the trust store
//! says (an identity imported by hand with `--role child` grants nothing until
//! `freight site add-child` configures it). Hosts without a site server (DPs, `freight
//! transfer`) set none and use the trust store's roles as they are.

use crate::error::Result;
use freight_core::{PublicIdentity, Role, Roles, SiteCode, TrustStore};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

/// What the store held when it was last read.
#[derive(Debug, Default)]
struct Snapshot {
    /// Trusted keys and their roles.
    active: HashMap<SiteCode, (PublicIdentity, Roles)>,
    /// Revoked keys per site, oldest first.
    revoked: HashMap<SiteCode, Vec<PublicIdentity>>,
}

/// A site server's place in the hierarchy as its database configures it: the parent and the
/// children, each with the key it was configured with. What the authorization table's
/// `parent` and `child` roles are limited to (see the module documentation).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Relations {
    /// This site's parent.
    pub parent: Option<PublicIdentity>,
    /// This site's children.
    pub children: Vec<PublicIdentity>,
}

impl Relations {
    /// `roles` without `parent` unless `peer` is the configured parent, and without `child`
    /// unless it is a configured child (same site code and same key); never `site-server`:
    /// a site server has no site server over it (its parent is `parent`), so a key trusted as
    /// one by hand may neither push into its library nor manage it.
    pub fn limit(&self, peer: &PublicIdentity, roles: Roles) -> Roles {
        let mut roles = roles.without(Role::SiteServer);
        if self.parent.as_ref() != Some(peer) {
            roles = roles.without(Role::Parent);
        }
        if !self.children.contains(peer) {
            roles = roles.without(Role::Child);
        }
        roles
    }
}

/// An in-memory view of one trust store.
#[derive(Debug)]
pub struct TrustView {
    dir: PathBuf,
    snap: RwLock<Arc<Snapshot>>,
    /// The site server's configured relations; `None` on hosts without one.
    relations: RwLock<Option<Arc<Relations>>>,
    /// Modification times of the store's folder and its `revoked/` folder at the last read.
    stamp: Mutex<Option<(SystemTime, SystemTime)>>,
}

impl TrustView {
    /// Reads the trust store at `dir` (creating it if needed).
    pub fn load(dir: &Path) -> Result<Arc<TrustView>> {
        TrustStore::open(dir)?;
        let view = TrustView {
            dir: dir.to_path_buf(),
            snap: RwLock::default(),
            relations: RwLock::default(),
            stamp: Mutex::new(None),
        };
        view.reload()?;
        Ok(Arc::new(view))
    }

    /// The trust store's folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn stamp(&self) -> Option<(SystemTime, SystemTime)> {
        let m = |p: PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        Some((m(self.dir.clone())?, m(self.dir.join("revoked"))?))
    }

    /// Reads the store again (blocking file reads: call it off the async runtime).
    pub fn reload(&self) -> Result<()> {
        // The stamp is taken before reading, so a change made during the read is seen by the
        // next check.
        let stamp = self.stamp();
        let store = TrustStore::open(&self.dir)?;
        let mut snap = Snapshot::default();
        for e in store.list()? {
            if e.revoked {
                snap.revoked
                    .entry(e.identity.code)
                    .or_default()
                    .push(e.identity);
            } else {
                snap.active.insert(e.identity.code, (e.identity, e.roles));
            }
        }
        *self.snap.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(snap);
        *self.stamp.lock().unwrap_or_else(|p| p.into_inner()) = stamp;
        Ok(())
    }

    /// Reloads if the store changed since the last read; returns whether it did.
    pub fn reload_if_changed(&self) -> Result<bool> {
        let now = self.stamp();
        let last = *self.stamp.lock().unwrap_or_else(|p| p.into_inner());
        if now.is_some() && now == last {
            return Ok(false);
        }
        self.reload()?;
        Ok(true)
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        self.snap.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Checks that `key` is the trusted key of site `code`, with the errors of
    /// [`TrustStore::authenticate`].
    pub fn authenticate(
        &self,
        code: SiteCode,
        key: &[u8; 32],
    ) -> freight_core::Result<PublicIdentity> {
        let snap = self.snapshot();
        let presented = PublicIdentity { code, key: *key };
        let revoked = |fingerprint| freight_core::Error::RevokedKey {
            site: code.to_string(),
            fingerprint,
        };
        let revoked_keys = snap.revoked.get(&code);
        if revoked_keys.is_some_and(|r| r.iter().any(|id| id.key == *key)) {
            return Err(revoked(presented.fingerprint()));
        }
        match (snap.active.get(&code), revoked_keys) {
            (Some((id, _)), _) if id.key == *key => Ok(*id),
            (Some((id, _)), _) => Err(freight_core::Error::WrongKey {
                site: code.to_string(),
                presented: presented.fingerprint(),
                trusted: id.fingerprint(),
            }),
            (None, Some(_)) => Err(revoked(presented.fingerprint())),
            (None, None) => Err(freight_core::Error::UnknownSite(code.to_string())),
        }
    }

    /// The roles of `peer`'s key here: none unless it is the site's trusted key; `parent` and
    /// `child` only as the [`Relations`] allow, once they are set.
    pub fn roles(&self, peer: &PublicIdentity) -> Roles {
        let roles = match self.snapshot().active.get(&peer.code) {
            Some((id, roles)) if id.key == peer.key => *roles,
            _ => return Roles::NONE,
        };
        match &*self.relations.read().unwrap_or_else(|p| p.into_inner()) {
            Some(rel) => rel.limit(peer, roles),
            None => roles,
        }
    }

    /// Limits the `parent` and `child` roles to `relations` from now on (a site server sets
    /// them at start-up and after every change of its parent or children).
    pub fn set_relations(&self, relations: Relations) {
        *self.relations.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(relations));
    }

    /// Trusted entries that hold no role (written before roles existed), for start-up notices.
    pub fn without_roles(&self) -> Vec<PublicIdentity> {
        let mut out: Vec<PublicIdentity> = self
            .snapshot()
            .active
            .values()
            .filter(|(_, r)| r.is_empty())
            .map(|(id, _)| *id)
            .collect();
        out.sort_by_key(|id| id.code);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use freight_core::{Role, SiteKey};

    fn key(dir: &Path, code: &str) -> SiteKey {
        SiteKey::load_or_create(
            &dir.join(format!("{code}.key")),
            SiteCode::parse(code).unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn the_view_follows_imports_role_changes_and_revocations() {
        let t = tempfile::tempdir().unwrap();
        let trust_dir = t.path().join("trust");
        let store = TrustStore::open(&trust_dir).unwrap();
        let view = TrustView::load(&trust_dir).unwrap();
        let dp1 = key(t.path(), "DP1").identity();
        assert!(matches!(
            view.authenticate(dp1.code, &dp1.key),
            Err(freight_core::Error::UnknownSite(_))
        ));
        store.import(&dp1, Role::Dp).unwrap();
        assert!(view.reload_if_changed().unwrap());
        assert_eq!(view.authenticate(dp1.code, &dp1.key).unwrap(), dp1);
        assert_eq!(view.roles(&dp1), Roles::of(Role::Dp));
        assert!(!view.reload_if_changed().unwrap(), "nothing changed");
        store.add_role(dp1.code, Role::PullDp).unwrap();
        assert!(view.reload_if_changed().unwrap());
        assert!(view.roles(&dp1).contains(Role::PullDp));
        // Another key claiming DP1 holds no role and does not authenticate.
        std::fs::create_dir(t.path().join("x")).unwrap();
        let other = key(&t.path().join("x"), "DP1").identity();
        assert_eq!(view.roles(&other), Roles::NONE);
        assert!(matches!(
            view.authenticate(other.code, &other.key),
            Err(freight_core::Error::WrongKey { .. })
        ));
        store.revoke(dp1.code).unwrap();
        assert!(view.reload_if_changed().unwrap());
        assert_eq!(view.roles(&dp1), Roles::NONE);
        assert!(matches!(
            view.authenticate(dp1.code, &dp1.key),
            Err(freight_core::Error::RevokedKey { .. })
        ));
        assert_eq!(view.roles(&dp1), Roles::NONE);
    }

    #[test]
    fn parent_and_child_roles_hold_only_for_the_configured_keys_once_relations_are_set() {
        let t = tempfile::tempdir().unwrap();
        let trust_dir = t.path().join("trust");
        let store = TrustStore::open(&trust_dir).unwrap();
        let cas = key(t.path(), "CAS").identity();
        let ss1 = key(t.path(), "SS1").identity();
        let ss2 = key(t.path(), "SS2").identity();
        store.import(&cas, Role::Parent).unwrap();
        store.import(&ss1, Role::Child).unwrap();
        // SS2 was imported by hand as a child and as an agent, but is not configured.
        store.import(&ss2, Role::Child).unwrap();
        store.add_role(ss2.code, Role::Agent).unwrap();
        let view = TrustView::load(&trust_dir).unwrap();
        // No relations set (a DP, `freight transfer`): the store's roles as they are.
        assert_eq!(view.roles(&ss2), Roles::of(Role::Child).with(Role::Agent));
        view.set_relations(Relations {
            parent: Some(cas),
            children: vec![ss1],
        });
        assert_eq!(view.roles(&cas), Roles::of(Role::Parent));
        assert_eq!(view.roles(&ss1), Roles::of(Role::Child));
        assert_eq!(
            view.roles(&ss2),
            Roles::of(Role::Agent),
            "child only as configured"
        );
        // The parent's code with another key configured: no parent role.
        std::fs::create_dir(t.path().join("x")).unwrap();
        let other_cas = key(&t.path().join("x"), "CAS").identity();
        view.set_relations(Relations {
            parent: Some(other_cas),
            children: vec![],
        });
        assert_eq!(view.roles(&cas), Roles::NONE);
        assert_eq!(view.roles(&ss1), Roles::NONE);
    }

    /// On a site server no key is a site server over it: one trusted as `site-server` by hand
    /// may not push into its library (only the configured parent may) nor manage it.
    #[test]
    fn a_site_servers_peers_never_hold_the_site_server_role() {
        let t = tempfile::tempdir().unwrap();
        let trust_dir = t.path().join("trust");
        let store = TrustStore::open(&trust_dir).unwrap();
        let cas = key(t.path(), "CAS").identity();
        let ps2 = key(t.path(), "PS2").identity();
        store.import(&cas, Role::Parent).unwrap();
        store.add_role(cas.code, Role::SiteServer).unwrap();
        store.import(&ps2, Role::SiteServer).unwrap();
        let view = TrustView::load(&trust_dir).unwrap();
        // A DP's view: its site server may push.
        assert!(crate::authz::check(&ps2, view.roles(&ps2), crate::authz::Request::Push).is_ok());
        view.set_relations(Relations {
            parent: Some(cas),
            children: vec![],
        });
        assert_eq!(view.roles(&ps2), Roles::NONE);
        assert_eq!(view.roles(&cas), Roles::of(Role::Parent));
        for req in [crate::authz::Request::Push, crate::authz::Request::ManageDp] {
            assert!(
                crate::authz::check(&ps2, view.roles(&ps2), req).is_err(),
                "{req:?}"
            );
        }
        assert!(crate::authz::check(&cas, view.roles(&cas), crate::authz::Request::Push).is_ok());
    }
}
