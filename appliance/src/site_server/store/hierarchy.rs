//! The hierarchy's rows: this site's parent and children (table `sites`) and the addresses to
//! the children (table `addresses`), with the route questions the authorization table and
//! the coming Sender and Despooler ask ("is this peer my parent?", "is it my child?").
//!
//! A site row is this site (`is_self`), its parent (the row this site's `parent` names) or a
//! child (a row whose `parent` is this site); parent and children carry the key they were
//! configured with.

use super::types::SenderKind;
use super::{Db, Result};
use rusqlite::{OptionalExtension, params};

/// How a known site relates to this one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relation {
    /// This site.
    This,
    /// This site's parent.
    Parent,
    /// A child of this site.
    Child,
}

impl Relation {
    /// The word users see: `this site`, `parent`, `child`.
    pub fn label(self) -> &'static str {
        match self {
            Relation::This => "this site",
            Relation::Parent => "parent",
            Relation::Child => "child",
        }
    }
}

/// A site this site knows, with the key it was configured with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteRow {
    /// Site code.
    pub code: String,
    /// How it relates to this site.
    pub relation: Relation,
    /// Its Ed25519 public key as configured (none for this site's own row).
    pub key: Option<[u8; 32]>,
    /// Unix seconds it was added (none for this site's own row).
    pub added: Option<i64>,
}

/// An address to record (`address add`).
#[derive(Debug, Clone)]
pub struct NewAddress<'a> {
    /// The child site it sends to.
    pub site: &'a str,
    /// Its sender.
    pub kind: SenderKind,
    /// The child's QUIC endpoint (`host:port`); standard addresses only.
    pub endpoint: Option<&'a str>,
    /// Bandwidth windows, canonical compact text.
    pub throttle: &'a str,
    /// Retries of a failed send; `None`: the site's default.
    pub retries: Option<u32>,
    /// Wait between retries, milliseconds; `None`: the site's default.
    pub retry_delay_ms: Option<u64>,
    /// Sends at once to this site; `None`: the site's default.
    pub max_sends: Option<u32>,
    /// Unix seconds.
    pub created: i64,
}

/// An address as stored; `None` settings follow the site's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressRow {
    /// The child site it sends to.
    pub site: String,
    /// Its sender.
    pub kind: SenderKind,
    /// The child's QUIC endpoint (standard addresses).
    pub endpoint: Option<String>,
    /// Bandwidth windows, canonical compact text.
    pub throttle: String,
    /// Retries of a failed send, if set on the address.
    pub retries: Option<u32>,
    /// Wait between retries (ms), if set on the address.
    pub retry_delay_ms: Option<u64>,
    /// Sends at once to this site, if set on the address.
    pub max_sends: Option<u32>,
    /// Unix seconds.
    pub created: i64,
}

fn key_of(v: Option<Vec<u8>>) -> Option<[u8; 32]> {
    v.and_then(|k| <[u8; 32]>::try_from(k.as_slice()).ok())
}

impl Db<'_> {
    /// The site `code` if this site knows it, with its relation.
    pub fn site(&self, code: &str) -> Result<Option<SiteRow>> {
        Ok(self.sites()?.into_iter().find(|s| s.code == code))
    }

    /// This site, its parent (if any) and its children, in that order (children by code).
    pub fn sites(&self) -> Result<Vec<SiteRow>> {
        let mut st = self.c.prepare(
            "SELECT o.code, o.key, o.added,
                    CASE WHEN o.is_self = 1 THEN 0 WHEN o.code = me.parent THEN 1 ELSE 2 END AS rel
             FROM sites o, sites me
             WHERE me.is_self = 1
               AND (o.is_self = 1 OR o.code = me.parent OR o.parent = me.code)
             ORDER BY rel, o.code",
        )?;
        let rows = st
            .query_map([], |r| {
                Ok(SiteRow {
                    code: r.get(0)?,
                    key: key_of(r.get(1)?),
                    added: r.get(2)?,
                    relation: match r.get::<_, i64>(3)? {
                        0 => Relation::This,
                        1 => Relation::Parent,
                        _ => Relation::Child,
                    },
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// This site's parent.
    pub fn parent(&self) -> Result<Option<SiteRow>> {
        Ok(self
            .sites()?
            .into_iter()
            .find(|s| s.relation == Relation::Parent))
    }

    /// The parent's QUIC endpoint, if one was given.
    pub fn parent_address(&self) -> Result<Option<String>> {
        Ok(self
            .c
            .query_row(
                "SELECT p.address FROM sites p JOIN sites me ON me.is_self = 1 AND me.parent = p.code",
                [],
                |r| r.get(0),
            )
            .optional()?
            .flatten())
    }

    /// This site's children, by code.
    pub fn children(&self) -> Result<Vec<SiteRow>> {
        Ok(self
            .sites()?
            .into_iter()
            .filter(|s| s.relation == Relation::Child)
            .collect())
    }

    /// Whether the peer `code` holding `key` is this site's parent, as configured: content
    /// and instructions are accepted only from it.
    pub fn is_parent(&self, code: &str, key: &[u8; 32]) -> Result<bool> {
        Ok(self
            .parent()?
            .is_some_and(|p| p.code == code && p.key.as_ref() == Some(key)))
    }

    /// Whether the peer `code` holding `key` is a child of this site, as configured: status
    /// is accepted only from children.
    pub fn is_child(&self, code: &str, key: &[u8; 32]) -> Result<bool> {
        Ok(self
            .site(code)?
            .is_some_and(|s| s.relation == Relation::Child && s.key.as_ref() == Some(key)))
    }

    /// Whether any row names `code` (this site, a parent, a child, or a site a row refers to).
    pub fn site_row_exists(&self, code: &str) -> Result<bool> {
        Ok(self
            .c
            .query_row("SELECT 1 FROM sites WHERE code = ?1", [code], |_| Ok(()))
            .optional()?
            .is_some())
    }

    /// Records `code` as a child of this site, configured with `key`.
    pub fn insert_child(&self, code: &str, key: &[u8; 32], added: i64) -> Result<()> {
        self.c.execute(
            "INSERT INTO sites (code, parent, key, added)
             VALUES (?1, (SELECT code FROM sites WHERE is_self = 1), ?2, ?3)",
            params![code, key.as_slice(), added],
        )?;
        Ok(())
    }

    /// Records `code` as this site's parent, configured with `key` (there must be none), at
    /// QUIC endpoint `address` if given.
    pub fn insert_parent(
        &self,
        code: &str,
        key: &[u8; 32],
        address: Option<&str>,
        added: i64,
    ) -> Result<()> {
        self.c.execute(
            "INSERT INTO sites (code, key, added, address) VALUES (?1, ?2, ?3, ?4)",
            params![code, key.as_slice(), added, address],
        )?;
        self.c
            .execute("UPDATE sites SET parent = ?1 WHERE is_self = 1", [code])?;
        Ok(())
    }

    /// Forgets the parent or child `code` (its addresses must be gone).
    pub fn delete_site(&self, code: &str) -> Result<()> {
        self.c.execute(
            "UPDATE sites SET parent = NULL WHERE is_self = 1 AND parent = ?1",
            [code],
        )?;
        self.c
            .execute("DELETE FROM sites WHERE code = ?1 AND is_self = 0", [code])?;
        Ok(())
    }

    /// Sites recorded below `code` (its children, once status rolls up), and DPs recorded at
    /// it: what removing it would orphan.
    pub fn site_dependents(&self, code: &str) -> Result<(u32, u32)> {
        let below = self.c.query_row(
            "SELECT count(*) FROM sites WHERE parent = ?1 AND is_self = 0",
            [code],
            |r| r.get(0),
        )?;
        let dps = self
            .c
            .query_row("SELECT count(*) FROM dps WHERE site = ?1", [code], |r| {
                r.get(0)
            })?;
        Ok((below, dps))
    }

    /// The DP of this site whose key carries site code `code`, if any.
    pub fn dp_with_key_site(&self, code: &str) -> Result<Option<String>> {
        Ok(self
            .c
            .query_row(
                "SELECT name FROM dps WHERE key_site = ?1 ORDER BY name LIMIT 1",
                [code],
                |r| r.get(0),
            )
            .optional()?)
    }

    // ---- addresses ----

    /// Records an address.
    pub fn insert_address(&self, a: &NewAddress) -> Result<()> {
        self.c.execute(
            "INSERT INTO addresses (site, kind, endpoint, throttle, retries, retry_delay_ms,
                                    max_sends, created)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                a.site,
                a.kind,
                a.endpoint,
                a.throttle,
                a.retries,
                a.retry_delay_ms.map(|d| d as i64),
                a.max_sends,
                a.created
            ],
        )?;
        Ok(())
    }

    /// The addresses to `site` (or, with `None`, every address), by site then kind.
    pub fn addresses(&self, site: Option<&str>) -> Result<Vec<AddressRow>> {
        let mut st = self.c.prepare(
            "SELECT site, kind, endpoint, throttle, retries, retry_delay_ms, max_sends, created
             FROM addresses WHERE ?1 IS NULL OR site = ?1 ORDER BY site, kind",
        )?;
        let rows = st
            .query_map([site], |r| {
                Ok(AddressRow {
                    site: r.get(0)?,
                    kind: r.get(1)?,
                    endpoint: r.get(2)?,
                    throttle: r.get(3)?,
                    retries: r.get(4)?,
                    retry_delay_ms: r.get::<_, Option<i64>>(5)?.map(|d| d as u64),
                    max_sends: r.get(6)?,
                    created: r.get(7)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Sets an address's bandwidth windows; false when there is no such address.
    pub fn set_address_throttle(
        &self,
        site: &str,
        kind: SenderKind,
        throttle: &str,
    ) -> Result<bool> {
        Ok(self.c.execute(
            "UPDATE addresses SET throttle = ?3 WHERE site = ?1 AND kind = ?2",
            params![site, kind, throttle],
        )? == 1)
    }

    /// Removes an address; false when there was none.
    pub fn delete_address(&self, site: &str, kind: SenderKind) -> Result<bool> {
        Ok(self.c.execute(
            "DELETE FROM addresses WHERE site = ?1 AND kind = ?2",
            params![site, kind],
        )? == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::site_server::store::Store;
    use crate::site_server::store::schema::MIGRATIONS;

    fn store(dir: &std::path::Path) -> Store {
        let s = Store::open(&dir.join("site.db")).unwrap();
        s.write(|db| db.record_self("PS1")).unwrap();
        s
    }

    #[test]
    fn parent_and_children_are_told_apart_and_keys_must_match() {
        let t = tempfile::tempdir().unwrap();
        let s = store(t.path());
        s.write(|db| {
            db.insert_parent("CAS", &[1; 32], None, 10)?;
            db.insert_child("SS1", &[2; 32], 11)?;
            db.insert_child("SS2", &[3; 32], 12)
        })
        .unwrap();
        let sites = s.read(|db| db.sites()).unwrap();
        let rel: Vec<_> = sites
            .iter()
            .map(|s| (s.code.as_str(), s.relation))
            .collect();
        assert_eq!(
            rel,
            [
                ("PS1", Relation::This),
                ("CAS", Relation::Parent),
                ("SS1", Relation::Child),
                ("SS2", Relation::Child)
            ]
        );
        s.read(|db| {
            assert!(db.is_parent("CAS", &[1; 32])?);
            assert!(
                !db.is_parent("CAS", &[9; 32])?,
                "another key is not the parent"
            );
            assert!(!db.is_parent("SS1", &[2; 32])?);
            assert!(db.is_child("SS1", &[2; 32])?);
            assert!(!db.is_child("SS1", &[9; 32])?);
            assert!(!db.is_child("CAS", &[1; 32])?, "the parent is no child");
            assert!(!db.is_child("PS1", &[0; 32])?);
            assert_eq!(db.children()?.len(), 2);
            Ok::<_, crate::site_server::store::StoreError>(())
        })
        .unwrap();
        // This site's own row names its parent, and is not what would be orphaned.
        assert_eq!(s.read(|db| db.site_dependents("CAS")).unwrap(), (0, 0));
        s.write(|db| db.delete_site("CAS")).unwrap();
        assert_eq!(s.read(|db| db.parent()).unwrap(), None);
        assert!(!s.read(|db| db.site_row_exists("CAS")).unwrap());
        assert_eq!(s.read(|db| db.children()).unwrap().len(), 2);
    }

    #[test]
    fn addresses_belong_to_known_sites_and_hold_a_child_in_place() {
        let t = tempfile::tempdir().unwrap();
        let s = store(t.path());
        s.write(|db| db.insert_child("SS1", &[2; 32], 11)).unwrap();
        let a = NewAddress {
            site: "SS1",
            kind: SenderKind::Standard,
            endpoint: Some("127.0.0.1:4433"),
            throttle: "daily unlimited",
            retries: Some(4),
            retry_delay_ms: None,
            max_sends: None,
            created: 20,
        };
        s.write(|db| db.insert_address(&a)).unwrap();
        // Unknown site, duplicate (site, kind), a standard address without an endpoint and a
        // courier with one: each refused by the schema too.
        let unknown = NewAddress {
            site: "XX1",
            ..a.clone()
        };
        assert!(s.write(|db| db.insert_address(&unknown)).is_err());
        assert!(s.write(|db| db.insert_address(&a)).is_err());
        let no_endpoint = NewAddress {
            endpoint: None,
            ..a.clone()
        };
        s.write(|db| db.delete_address("SS1", SenderKind::Standard))
            .unwrap();
        assert!(s.write(|db| db.insert_address(&no_endpoint)).is_err());
        let courier_with_endpoint = NewAddress {
            kind: SenderKind::Courier,
            ..a.clone()
        };
        assert!(
            s.write(|db| db.insert_address(&courier_with_endpoint))
                .is_err()
        );
        s.write(|db| db.insert_address(&a)).unwrap();
        let courier = NewAddress {
            kind: SenderKind::Courier,
            endpoint: None,
            ..a.clone()
        };
        s.write(|db| db.insert_address(&courier)).unwrap();
        let rows = s.read(|db| db.addresses(Some("SS1"))).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].kind, SenderKind::Courier);
        assert_eq!(rows[1].retries, Some(4));
        assert_eq!(rows[1].retry_delay_ms, None);
        assert!(
            s.write(|db| db.set_address_throttle("SS1", SenderKind::Standard, "Sat-Sun closed"))
                .unwrap()
        );
        assert!(
            !s.write(|db| db.set_address_throttle("SS9", SenderKind::Standard, "daily 1MiB/s"))
                .unwrap()
        );
        assert_eq!(
            s.read(|db| db.addresses(None)).unwrap()[1].throttle,
            "Sat-Sun closed"
        );
        // The child cannot go while an address names it (no cascade).
        assert!(s.write(|db| db.delete_site("SS1")).is_err());
        assert_eq!(s.read(|db| db.children()).unwrap().len(), 1);
    }

    #[test]
    fn a_site_cannot_be_its_own_parent() {
        let t = tempfile::tempdir().unwrap();
        let s = store(t.path());
        let e = s
            .write(|db| {
                db.c.execute("UPDATE sites SET parent = 'PS1' WHERE is_self = 1", [])?;
                Ok::<_, crate::site_server::store::StoreError>(())
            })
            .unwrap_err();
        assert!(e.to_string().contains("own parent"), "{e}");
    }

    /// A database at the schema before the hierarchy (version 3, with its self row, a DP and
    /// a package) migrates: its rows stay, this site has no parent and no children, and the
    /// new tables work.
    #[test]
    fn a_version_3_database_migrates_and_keeps_its_rows() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("site.db");
        {
            let c = rusqlite::Connection::open(&path).unwrap();
            for (i, step) in MIGRATIONS.iter().take(3).enumerate() {
                c.execute_batch(step).unwrap();
                c.pragma_update(None, "user_version", i as i64 + 1).unwrap();
            }
            c.execute_batch(
                "INSERT INTO sites (code, is_self) VALUES ('PS1', 1);
                 INSERT INTO dps (name, site, kind, address, key_site, created)
                     VALUES ('dp1', 'PS1', 'standard', '127.0.0.1:4433', 'DP1', 5);",
            )
            .unwrap();
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(s.version().unwrap(), MIGRATIONS.len() as i64);
        let sites = s.read(|db| db.sites()).unwrap();
        assert_eq!(sites.len(), 1);
        assert_eq!(sites[0].relation, Relation::This);
        assert_eq!(sites[0].key, None);
        assert_eq!(s.read(|db| db.dps(None)).unwrap().len(), 1);
        s.write(|db| {
            db.insert_child("SS1", &[2; 32], 11)?;
            db.insert_address(&NewAddress {
                site: "SS1",
                kind: SenderKind::Courier,
                endpoint: None,
                throttle: "daily unlimited",
                retries: None,
                retry_delay_ms: None,
                max_sends: None,
                created: 1,
            })
        })
        .unwrap();
        assert_eq!(s.read(|db| db.addresses(None)).unwrap().len(), 1);
        assert_eq!(s.integrity_check().unwrap(), "ok");
    }
}
