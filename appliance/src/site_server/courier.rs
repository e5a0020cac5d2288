//! The courier sender (SPEC §4 "Courier sender", seed 000): a child reached only through a
//! courier address gets its send requests as parcel files an administrator carries.
//!
//! At the sending site, `freight courier list` shows the requests and `create-outgoing` writes
//! one as a parcel (the package version or the delta since what the child confirmed, with the
//! request's signed instruction inside); the request shows `pending`. At the receiving site,
//! `freight courier receive` imports the parcel all or nothing after checking that its
//! instruction is signed by this site's configured parent, is for this site and describes
//! exactly the content carried, then hands the instruction to the Despooler exactly as a
//! network send does. The arrival travels up with the next status report, and the request
//! shows `confirmed` at the sender.

use super::despooler;
use super::error::{SiteError, SiteResult};
use super::peer::SiteReply;
use super::statmgr::Msg;
use super::{SiteServer, now, now_ms};
use crate::api::Done;
use freight_core::instruction::SignedInstruction;
use freight_core::{PackageId, Progress, PublicIdentity, SiteCode, TrustStore, parcel};
use std::path::PathBuf;

impl SiteServer {
    /// `courier list`: the send requests of children reached by courier, newest first.
    pub fn courier_list(&self) -> SiteResult<Vec<serde_json::Value>> {
        Ok(self.store.read(|db| db.sends(true))?)
    }

    /// `courier create-outgoing`: writes send request `id` as a parcel at `out` (an absolute
    /// path the daemon may write; the file appears whole or not at all).
    pub async fn create_outgoing(&self, id: i64, out: &str) -> SiteResult<Done> {
        let out = absolute(out, "parcel file")?;
        let (row, base, state) = self.store.read(|db| db.send(id))?.ok_or_else(|| {
            SiteError::Invalid(format!(
                "no send request {id}; list them with `freight courier list`"
            ))
        })?;
        if !self.store.read(|db| db.courier_only(&row.dest))? {
            return Err(SiteError::Conflict(format!(
                "send request {id} goes to site {} over the network; the Sender sends it (a courier parcel is for a site with only a courier address)",
                row.dest
            )));
        }
        if !matches!(state.as_str(), "queued" | "pending") {
            return Err(SiteError::Conflict(format!(
                "send request {id} is {state}; only a queued or pending one is written as a parcel"
            )));
        }
        let pid = PackageId::parse(&row.package).map_err(|e| SiteError::Invalid(e.to_string()))?;
        let (version, instruction, path) = (row.version, row.instruction.clone(), out.clone());
        let r = self
            .lib
            .read_async(move |lib| {
                let md = lib.manifest_dir();
                let m = md.open_manifest(&pid, version)?;
                let bm = base.map(|b| md.open_manifest(&pid, b)).transpose()?;
                parcel::create(
                    lib,
                    &m,
                    bm.as_ref(),
                    &instruction,
                    &path,
                    &Progress::default(),
                )
            })
            .await?
            .map_err(|e| SiteError::Invalid(format!("send request {id}: {e}")))?;
        let me = self.code.as_str();
        let shown = out.display().to_string();
        self.store.write(|db| {
            db.end_send(id, "pending", None, r.bytes, now_ms(), now_ms())?;
            db.raise(
                me,
                now(),
                &Msg::new(4513, &[&row.package, &row.version, &row.dest, &shown])
                    .package(&row.package, row.version),
            )
        })?;
        Ok(Done {
            done: format!(
                "{} of {} v{} for site {}: {} chunks, {} -> {shown}; carry it to {} and run `freight courier receive FILE` there",
                if r.delta { "delta parcel" } else { "parcel" },
                row.package,
                row.version,
                row.dest,
                r.chunks,
                freight_core::units::human(r.bytes),
                row.dest
            ),
        })
    }

    /// `courier receive`: imports the parcel at `path` from this site's parent and hands its
    /// instruction to the Despooler.
    pub async fn receive_incoming(&self, path: &str) -> SiteResult<Done> {
        let path = absolute(path, "parcel file")?;
        let parent = self.store.read(|db| db.parent())?.ok_or_else(|| {
            SiteError::Conflict(
                "this site has no parent; parcels come from the parent (`freight site set-parent`)"
                    .into(),
            )
        })?;
        let parent_id = PublicIdentity {
            code: SiteCode::parse(&parent.code).map_err(|e| SiteError::Invalid(e.to_string()))?,
            key: parent.key.ok_or_else(|| {
                SiteError::Invalid(format!("parent {} has no key recorded", parent.code))
            })?,
        };
        let (trust_dir, me, p) = (self.trust_dir.clone(), self.code, path.clone());
        let (report, instruction) = self
            .lib
            .exclusive(move |lib| {
                let trust = TrustStore::open(&trust_dir)?;
                let mut instruction = Vec::new();
                let r = parcel::import(
                    lib,
                    &p,
                    |h| {
                        let signed = SignedInstruction::decode(&h.instruction)
                            .map_err(|e| parcel::instruction_mismatch(&p, e.to_string()))?;
                        let i = signed.verify(&trust, &me, None)?;
                        // Only the configured parent's key: a parcel signed by any other
                        // trusted site is refused before anything is stored.
                        if i.origin != parent_id.code
                            || trust.lookup(i.origin)?.key != parent_id.key
                        {
                            return Err(freight_core::Error::NotFromParent {
                                site: i.origin.to_string(),
                                roles: "not this site's configured parent".into(),
                            });
                        }
                        parcel::check_instruction(&p, &i, h)?;
                        instruction = h.instruction.clone();
                        Ok(())
                    },
                    &Progress::default(),
                )?;
                Ok::<_, freight_core::Error>((r, instruction))
            })
            .await?
            .map_err(|e| SiteError::Invalid(e.to_string()))?;
        let shown = path.display();
        match despooler::despool(self, &parent_id, &despooler::to_hex(&instruction)).await {
            SiteReply::Stored => {
                self.store
                    .write(|db| db.courier_arrived(report.package.as_str(), report.version))?;
                self.report_wake.notify_one();
                Ok(Done {
                    done: format!(
                        "received {} v{} from site {} ({} chunks, {} new) from {shown}; handed to Distribution Manager",
                        report.package,
                        report.version,
                        parent_id.code,
                        report.chunks,
                        report.new_chunks
                    ),
                })
            }
            SiteReply::Dropped { newer } => Ok(Done {
                done: format!(
                    "{} v{} from {shown} dropped: this site already holds version {newer}",
                    report.package, report.version
                ),
            }),
            SiteReply::Error { message, .. } => Err(SiteError::Conflict(message)),
            SiteReply::Acked { .. } | SiteReply::Relaying { .. } => {
                Err(SiteError::Invalid("unexpected answer".into()))
            }
        }
    }
}

fn absolute(path: &str, what: &str) -> SiteResult<PathBuf> {
    super::actions::check_text(what, path, 4096)?;
    let p = PathBuf::from(path);
    if !p.is_absolute() {
        return Err(SiteError::Invalid(format!(
            "{what} {path:?} is not an absolute path; give the daemon a full path"
        )));
    }
    Ok(p)
}
