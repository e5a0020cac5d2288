//! The Despooler: acts on the signed instructions the parent site sends after the content
//! they name (SPEC §4 "Across sites", step 4). At most [`WORKERS`] run at once. Each one:
//! 1. verifies the instruction's signature against the sending site's key in the trust store,
//!    that it is for this site and that the signer is the parent it came from (unknown,
//!    revoked, forged, another destination: refused with 4401, each with its own line);
//! 2. drops an older version than the site holds (4402, informational);
//! 3. checks that the library holds the version's manifest with the instruction's hash (the
//!    Sender pushes the content first and the instruction last);
//! 4. in one transaction: records the package definition (first time) and the version, raises
//!    4400, targets every DP of this site if the instruction names it and queues the other
//!    named sites for DistMgr to send on; then wakes DistMgr.

use super::peer::SiteReply;
use super::statmgr::Msg;
use super::store::StoreError;
use super::{SiteServer, now};
use crate::model::Action;
use freight_core::instruction::{InstructionKind, SignedInstruction};
use freight_core::{PublicIdentity, TrustStore};
use freight_transport::Priority;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

/// Instructions acted on at once (SPEC §6).
pub const WORKERS: usize = 3;

static SLOTS: Semaphore = Semaphore::const_new(WORKERS);

/// The package definition and routing an instruction carries in its signed notes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Definition {
    /// Package name.
    pub name: String,
    /// Priority on bandwidth windows.
    pub priority: Priority,
    /// Files and bytes of the version.
    pub files: u64,
    /// Bytes of the version.
    pub bytes: u64,
    /// The sites the package is for, this one or below it.
    pub sites: Vec<String>,
}

/// Acts on one signed instruction from `peer` (hex of its encoding).
pub async fn despool(site: &SiteServer, peer: &PublicIdentity, hex: &str) -> SiteReply {
    let _slot = SLOTS.acquire().await;
    match despool_now(site, peer, hex).await {
        Ok(r) => r,
        Err(Refusal { line, permanent }) => {
            if permanent {
                let _ = site.store.write(|db| {
                    db.raise(
                        site.code.as_str(),
                        now(),
                        &Msg::new(4401, &[&peer.code, &line]),
                    )
                });
            }
            tracing::warn!(peer = %peer.code, "despooler: {line}");
            SiteReply::Error {
                message: line,
                permanent,
            }
        }
    }
}

/// Why an instruction is not acted on: one line, and whether sending it again can help.
pub(super) struct Refusal {
    pub line: String,
    pub permanent: bool,
}

fn refuse(line: impl Into<String>) -> Refusal {
    Refusal {
        line: line.into(),
        permanent: true,
    }
}

impl From<StoreError> for Refusal {
    fn from(e: StoreError) -> Refusal {
        Refusal {
            line: e.to_string(),
            permanent: false,
        }
    }
}

/// An instruction that passed [`check`]: signed by the parent it came from, for this site.
pub(super) struct Checked {
    /// The instruction.
    pub ins: freight_core::instruction::Instruction,
    /// Its package, as text.
    pub package: String,
}

/// The checks every instruction from a parent passes before anything acts on it: hex of a
/// bounded length, a valid signature by a trusted key, for this site, signed by the site it
/// came from, and not for a package made here.
pub(super) fn check(
    site: &SiteServer,
    peer: &PublicIdentity,
    hex: &str,
) -> Result<Checked, Refusal> {
    // A signed instruction is at most a few KiB: longer text is refused before decoding.
    let bytes = (hex.len() <= 2 * freight_core::instruction::MAX_ENCODED + 256)
        .then(|| freight_core::text::unhex(hex))
        .flatten()
        .ok_or_else(|| refuse(format!("instruction from {} is not hex", peer.code)))?;
    let signed = SignedInstruction::decode(&bytes).map_err(|e| refuse(e.to_string()))?;
    let trust = TrustStore::open(&site.trust_dir).map_err(|e| Refusal {
        line: e.to_string(),
        permanent: false,
    })?;
    // The version rule is checked by the caller, against the database, so that an older
    // version is dropped informationally rather than refused.
    let ins = signed
        .verify(&trust, &site.code, None)
        .map_err(|e| refuse(format!("{e}")))?;
    if ins.origin != peer.code {
        return Err(refuse(format!(
            "instruction signed by site {} arrived from site {}; a site relays only its own instructions",
            ins.origin, peer.code
        )));
    }
    let package = ins.package.to_string();
    if ins.package.as_str().starts_with(site.code.as_str()) {
        return Err(refuse(format!(
            "package {package} was created at this site; another site may not replace it"
        )));
    }
    Ok(Checked { ins, package })
}

/// The package definition in a Package or Delta instruction's signed notes, checked.
pub(super) fn definition(
    ins: &freight_core::instruction::Instruction,
) -> Result<Definition, Refusal> {
    let package = &ins.package;
    let def: Definition = serde_json::from_str(&ins.notes).map_err(|e| {
        refuse(format!(
            "instruction for package {package} carries no package definition ({e})"
        ))
    })?;
    crate::site_server::actions::check_text("package name", &def.name, 200)
        .map_err(|e| refuse(e.to_string()))?;
    for s in &def.sites {
        if freight_core::SiteCode::parse(s).is_err() {
            return Err(refuse(format!(
                "instruction for package {package} names site {s:?}, not a site code"
            )));
        }
    }
    Ok(def)
}

async fn despool_now(
    site: &SiteServer,
    peer: &PublicIdentity,
    hex: &str,
) -> Result<SiteReply, Refusal> {
    let me = site.code.as_str();
    let Checked { ins, package } = check(site, peer, hex)?;
    match ins.kind {
        InstructionKind::Package | InstructionKind::Delta => {}
        InstructionKind::Remove => return remove(site, peer, &package, ins.version),
        other => {
            return Err(refuse(format!(
                "instruction kind {other:?} for package {package} is not handled by this site's Despooler"
            )));
        }
    }
    let def = definition(&ins)?;
    // What the site holds decides whether the version is new.
    if let Some(held) = site.store.read(|db| db.newest_version(&package))?
        && ins.version < held
    {
        site.store.write(|db| {
            db.raise(
                me,
                now(),
                &Msg::new(4402, &[&package, &ins.version, &peer.code, &held])
                    .package(&package, ins.version),
            )
        })?;
        return Ok(SiteReply::Dropped { newer: held });
    }
    // The content came first: its manifest is in the library with the signed hash.
    let (pid, version) = (ins.package.clone(), ins.version);
    let stored = site
        .lib
        .read_async(move |l| -> freight_core::Result<Option<[u8; 32]>> {
            match l.manifest_dir().open_manifest(&pid, version) {
                Ok(m) => Ok(Some(*m.hash()?.as_bytes())),
                Err(freight_core::Error::NoSuchVersion { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        })
        .await
        .map_err(|e| Refusal {
            line: e.to_string(),
            permanent: false,
        })?
        .map_err(|e| Refusal {
            line: e.to_string(),
            permanent: false,
        })?;
    match stored {
        None => {
            return Err(Refusal {
                line: format!(
                    "package {package} version {version}: its content has not arrived at site {me}; the sender pushes it again"
                ),
                permanent: false,
            });
        }
        Some(h) if h != ins.manifest_hash => {
            return Err(refuse(format!(
                "package {package} version {version}: the stored content hashes to {}, the instruction says {}",
                freight_core::text::hex(&h),
                freight_core::text::hex(&ins.manifest_hash)
            )));
        }
        Some(_) => {}
    }
    let t = now();
    site.store.write(|db| -> Result<(), Refusal> {
        match db.package_origin(&package)? {
            Some(_) => {}
            None if db.packages(Some(&package))?.is_empty() => {
                db.insert_received_package(&package, &def.name, def.priority, peer.code.as_str(), t)?
            }
            None => {
                return Err(refuse(format!(
                    "package {package} exists at this site and was not sent by a parent"
                )));
            }
        }
        match db.version_hash(&package, version)? {
            Some(h) if h == ins.manifest_hash => {} // a re-delivery
            Some(_) => {
                return Err(refuse(format!(
                    "package {package} version {version} is recorded here with another hash; the parent must make a new version"
                )));
            }
            None => {
                db.insert_version(&package, version, &ins.manifest_hash, def.files, def.bytes, t)?;
                db.raise(
                    me,
                    t,
                    &Msg::new(4400, &[&package, &version, &peer.code]).package(&package, version),
                )?;
            }
        }
        let (here, below): (Vec<String>, Vec<String>) =
            def.sites.iter().cloned().partition(|s| s == me);
        if !here.is_empty() {
            let dps = db.dp_names()?;
            db.set_targets(&package, &dps, Action::Install, version, t)?;
        }
        db.set_site_targets(&package, &below, "install", version, t)?;
        Ok(())
    })?;
    site.distmgr_wake.notify_one();
    tracing::info!(package = %package, version, from = %peer.code, "despooler: stored and handed to DistMgr");
    Ok(SiteReply::Stored)
}

/// A removal from the parent: every DP here that holds the package drops it, the sites below
/// that were sent it are told the same, and the package is deleted here (DistMgr drops its
/// copy in the library once its DPs are done).
fn remove(
    site: &SiteServer,
    peer: &PublicIdentity,
    package: &str,
    version: u32,
) -> Result<SiteReply, Refusal> {
    let t = now();
    site.store.write(|db| -> Result<(), Refusal> {
        match db.package_origin(package)? {
            Some(o) if o == peer.code.as_str() => {}
            Some(o) => {
                return Err(refuse(format!(
                    "package {package} came from site {o}, not from site {}; only its sender may remove it",
                    peer.code
                )));
            }
            // Never held here (or already gone): nothing to remove, not an error.
            None if db.packages(Some(package))?.is_empty() => return Ok(()),
            None => {
                return Err(refuse(format!(
                    "package {package} was not sent by a parent; only this site removes it"
                )));
            }
        }
        let dps = db.package_dps(package, |s| s != crate::model::DpState::Removed)?;
        db.set_targets(package, &dps, Action::Remove, 0, t)?;
        db.mark_deleted(package)?;
        db.remove_site_targets(package, t)?;
        db.raise(
            site.code.as_str(),
            t,
            &Msg::new(4403, &[&package, &peer.code, &dps.len()]).package(package, version),
        )?;
        Ok(())
    })?;
    site.distmgr_wake.notify_one();
    Ok(SiteReply::Stored)
}

/// Hex of a signed instruction's bytes, as [`despool`] reads it.
pub fn to_hex(b: &[u8]) -> String {
    freight_core::text::hex(b)
}

impl From<Refusal> for SiteReply {
    fn from(r: Refusal) -> SiteReply {
        SiteReply::Error {
            message: r.line,
            permanent: r.permanent,
        }
    }
}
