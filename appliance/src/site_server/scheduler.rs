//! DistMgr's mini-jobs and the Scheduler (SPEC §4 "Across sites", steps 1–2): a package
//! targeted at a site below this one becomes, per next hop, one send request in the Sender's
//! outbox, carrying a signed instruction. The instruction holds the package definition and the
//! final sites in its signed notes, so the child can record the package, install it on its own
//! DPs and send it on without trusting anything unsigned.
//!
//! A site target waits while a send of the same package to the same child is live; the round
//! after it ends plans the newest version (one send, never two racing ones).

use super::despooler::Definition;
use super::error::{SiteError, SiteResult};
use super::statmgr::Msg;
use super::{SiteServer, now, now_ms};
use freight_core::instruction::{Instruction, InstructionKind};
use freight_core::{PackageId, SiteCode};
use std::collections::BTreeMap;

/// Plans pending site targets into send requests; true when any was queued.
pub fn plan(site: &SiteServer) -> SiteResult<bool> {
    let me = site.code.as_str();
    let targets = site.store.read(|db| db.pending_site_targets())?;
    // (package, hop) → (version, final sites)
    let mut groups: BTreeMap<(String, String), (u32, Vec<String>)> = BTreeMap::new();
    for t in targets {
        if t.action != "install" {
            continue;
        }
        let hop = site.store.read(|db| db.next_hop(&t.site))?;
        let Some(hop) = hop else {
            site.store.write(|db| {
                db.raise(
                    me,
                    now(),
                    &Msg::new(2334, &[&t.site, &t.package]).package(&t.package, t.version),
                )?;
                db.site_target_planned(&t.package, &t.site)
            })?;
            continue;
        };
        if site.store.read(|db| db.live_send(&t.package, &hop))? {
            continue;
        }
        let g = groups
            .entry((t.package, hop))
            .or_insert((t.version, Vec::new()));
        g.0 = g.0.max(t.version);
        g.1.push(t.site);
    }
    let mut queued = false;
    for ((package, hop), (version, sites)) in groups {
        let info = site.store.read(|db| db.packages(Some(&package)))?;
        let Some(info) = info.into_iter().next() else {
            continue;
        };
        let version = version.max(info.version);
        let base = site
            .store
            .read(|db| db.last_sent(&package, &hop))?
            .filter(|b| *b < version);
        let def = Definition {
            name: info.name.clone(),
            priority: info.priority,
            files: info.files,
            bytes: info.bytes,
            sites: sites.clone(),
        };
        let notes = serde_json::to_string(&def).unwrap_or_default();
        if notes.len() > freight_core::instruction::MAX_NOTES {
            return Err(SiteError::Invalid(format!(
                "package {package}: {} target sites do not fit one instruction; distribute to fewer sites at once",
                sites.len()
            )));
        }
        let hash = blake3::Hash::from_hex(&info.hash)
            .map_err(|_| SiteError::Invalid(format!("package {package}: bad stored hash")))?;
        let ins = Instruction {
            kind: if base.is_some() {
                InstructionKind::Delta
            } else {
                InstructionKind::Package
            },
            origin: site.code,
            destination: SiteCode::parse(&hop).map_err(|e| SiteError::Invalid(e.to_string()))?,
            package: PackageId::parse(&package).map_err(|e| SiteError::Invalid(e.to_string()))?,
            version,
            base_version: base,
            manifest_hash: *hash.as_bytes(),
            created_unix: now(),
            sequence: site
                .home
                .next_sequence()
                .map_err(|e| SiteError::Invalid(e.to_string()))?,
            notes,
        };
        let signed = ins
            .sign(&site.home.key)
            .map_err(|e| SiteError::Invalid(e.to_string()))?
            .encode();
        let what = if base.is_some() {
            "delta"
        } else {
            "compressed copy"
        };
        site.store.write(|db| {
            db.queue_send(
                &package,
                version,
                base,
                &hop,
                &sites,
                info.priority,
                &signed,
                now_ms(),
            )?;
            db.raise(
                me,
                now(),
                &Msg::new(2333, &[&what, &package, &version, &hop, &sites.join(", ")])
                    .package(&package, version),
            )?;
            for s in &sites {
                db.site_target_planned(&package, s)?;
            }
            Ok::<_, SiteError>(())
        })?;
        queued = true;
    }
    Ok(queued)
}
