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
    // (package, hop, remove) → (version, final sites)
    let mut groups: BTreeMap<(String, String, bool), (u32, Vec<String>)> = BTreeMap::new();
    for t in targets {
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
        // The child already acknowledged this version (another final site through the same
        // child asked for it): it has it and acts on the sites it was told about; a site
        // added later gets the next version's instruction, or a redistribute.
        if t.action == "install"
            && site
                .store
                .read(|db| db.last_sent(&t.package, &hop))?
                .is_some_and(|v| v >= t.version)
            && site
                .store
                .read(|db| db.sent_for(&t.package, &hop, &t.site, t.version))?
        {
            site.store
                .write(|db| db.site_target_planned(&t.package, &t.site))?;
            continue;
        }
        let g = groups
            .entry((t.package, hop, t.action == "remove"))
            .or_insert((t.version, Vec::new()));
        g.0 = g.0.max(t.version);
        g.1.push(t.site);
    }
    let mut queued = false;
    for ((package, hop, remove), (version, sites)) in groups {
        // A removal and a send of the same package to the same child in one round: the
        // removal goes first, the send waits for it (one live request per child).
        if site.store.read(|db| db.live_send(&package, &hop))? {
            continue;
        }
        let Some(job) = mini_job(site, &package, &hop, remove, version, &sites)? else {
            continue;
        };
        let what = match job.ins.kind {
            InstructionKind::Delta => "delta",
            InstructionKind::Remove => "removal",
            _ => "compressed copy",
        };
        let signed = job
            .ins
            .sign(&site.home.key)
            .map_err(|e| SiteError::Invalid(e.to_string()))?
            .encode();
        site.store.write(|db| {
            db.queue_send(
                &package,
                job.ins.version,
                job.ins.base_version,
                &hop,
                &job.sites,
                job.priority,
                &signed,
                now_ms(),
            )?;
            db.raise(
                me,
                now(),
                &Msg::new(
                    2333,
                    &[
                        &what,
                        &package,
                        &job.ins.version,
                        &hop,
                        &job.sites.join(", "),
                    ],
                )
                .package(&package, job.ins.version),
            )?;
            for s in &job.sites {
                db.site_target_planned(&package, s)?;
            }
            Ok::<_, SiteError>(())
        })?;
        queued = true;
    }
    Ok(queued)
}

/// A mini-job's instruction and priority.
struct MiniJob {
    ins: Instruction,
    priority: freight_transport::Priority,
    /// The final sites the instruction names (those that fit its notes).
    sites: Vec<String>,
}

/// The instruction for sending `package` (its newest version: whole, or as a delta from what
/// `hop` acknowledged last) or its removal to `hop`, for `sites`. None when the package is
/// gone (nothing to send).
fn mini_job(
    site: &SiteServer,
    package: &str,
    hop: &str,
    remove: bool,
    version: u32,
    sites: &[String],
) -> SiteResult<Option<MiniJob>> {
    let (def, version, hash, base) = if remove {
        let (name, newest) = site.store.read(|db| {
            Ok::<_, SiteError>((db.package_name(package)?, db.newest_version(package)?))
        })?;
        let (Some(name), Some(newest)) = (name, newest) else {
            return Ok(None);
        };
        let hash = site
            .store
            .read(|db| db.version_hash(package, newest))?
            .unwrap_or_default();
        let def = Definition {
            name,
            priority: freight_transport::Priority::High,
            files: 0,
            bytes: 0,
            sites: sites.to_vec(),
        };
        (def, newest, hash, None)
    } else {
        let Some(info) = site.store.read(|db| db.packages(Some(package)))?.pop() else {
            return Ok(None);
        };
        let version = version.max(info.version);
        let base = site
            .store
            .read(|db| db.last_sent(package, hop))?
            .filter(|b| *b < version);
        let hash = blake3::Hash::from_hex(&info.hash)
            .map_err(|_| SiteError::Invalid(format!("package {package}: bad stored hash")))?
            .as_bytes()
            .to_vec();
        let def = Definition {
            name: info.name,
            priority: info.priority,
            files: info.files,
            bytes: info.bytes,
            sites: sites.to_vec(),
        };
        (def, version, hash, base)
    };
    // As many final sites as the signed notes hold; the rest stay pending and go with the
    // next request to this child (the same version again: a re-delivery that adds sites).
    let mut def = def;
    let mut notes = serde_json::to_string(&def).unwrap_or_default();
    while notes.len() > freight_core::instruction::MAX_NOTES && def.sites.len() > 1 {
        let over = notes.len() - freight_core::instruction::MAX_NOTES;
        let drop = (over / 6 + 1).min(def.sites.len() - 1);
        def.sites.truncate(def.sites.len() - drop);
        notes = serde_json::to_string(&def).unwrap_or_default();
    }
    if notes.len() > freight_core::instruction::MAX_NOTES {
        return Err(SiteError::Invalid(format!(
            "package {package}: its name does not fit an instruction's notes; rename it"
        )));
    }
    let manifest_hash: [u8; 32] = hash
        .try_into()
        .map_err(|_| SiteError::Invalid(format!("package {package}: bad stored hash")))?;
    let ins = Instruction {
        kind: match (remove, base) {
            (true, _) => InstructionKind::Remove,
            (false, Some(_)) => InstructionKind::Delta,
            (false, None) => InstructionKind::Package,
        },
        origin: site.code,
        destination: SiteCode::parse(hop).map_err(|e| SiteError::Invalid(e.to_string()))?,
        package: PackageId::parse(package).map_err(|e| SiteError::Invalid(e.to_string()))?,
        version,
        base_version: base,
        manifest_hash,
        created_unix: now(),
        sequence: site
            .home
            .next_sequence()
            .map_err(|e| SiteError::Invalid(e.to_string()))?,
        notes,
    };
    Ok(Some(MiniJob {
        priority: def.priority,
        sites: def.sites,
        ins,
    }))
}
