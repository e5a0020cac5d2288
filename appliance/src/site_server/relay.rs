//! Relaying without waiting (issue 13 item 8): a site passes a package version on to the
//! sites below it and to its own DPs while the version is still arriving from its parent,
//! instead of after the whole version is stored and its instruction acted on.
//!
//! The parent's Sender hands its signed instruction to the child twice: first as `prepare`,
//! just before it pushes the content, then as `despool`, after. On `prepare`, the child runs
//! the Despooler's checks ([`despooler::check`]: signature, destination, the parent it came
//! from) and, for a version newer than it holds, starts one relay push per next hop and per
//! standard DP of its own that the instruction names:
//! - to a child site: its own signed `prepare` for that child, then a push offering the
//!   version by its manifest hash ([`Offer::Relay`]), which sends each chunk once it is stored
//!   and verified here;
//! - to a DP: the same push, without an instruction (a DP acts only on PkgXferMgr's Install).
//!
//! A relay is a head start, never the authority: it writes nothing to the database, and the
//! ordinary path (the `despool`, then DistMgr, the Scheduler, the Sender and PkgXferMgr) still
//! runs in full and finds the content already there, so a relay that fails or is cut changes
//! nothing but the time. Relays obey what a send obeys: the route's window for the package's
//! priority (a closed window means no relay), the route's limiter (shared with the sends),
//! and, to a child site, one of the address's send slots. At most one relay runs per version
//! and destination, and at most [`DP_RELAYS`] to this site's DPs per version.

use super::despooler::{self, Checked, Definition};
use super::peer::{SiteReply, SiteRequest, encode};
use super::statmgr::Msg;
use super::{SiteServer, now, sender};
use crate::model::{DpKind, SenderKind};
use freight_core::instruction::{Instruction, InstructionKind};
use freight_core::{PackageId, PublicIdentity, SiteCode};
use freight_transport::session::{self, Offer, PushOptions, Resume};
use freight_transport::{Priority, RouteLimiter, RouteThrottle, command};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Relays to this site's DPs at once, per version (DistMgr's DP workers per package).
pub const DP_RELAYS: usize = 5;

/// Answers a parent's `prepare`: checks its instruction like the Despooler and starts the
/// relays it calls for.
pub async fn prepare(site: &Arc<SiteServer>, peer: &PublicIdentity, hex: &str) -> SiteReply {
    let Checked { ins, package } = match despooler::check(site, peer, hex) {
        Ok(c) => c,
        Err(r) => return r.into(),
    };
    if !matches!(ins.kind, InstructionKind::Package | InstructionKind::Delta) {
        return SiteReply::Error {
            message: format!(
                "instruction kind {:?} for package {package} cannot be prepared; only content is relayed",
                ins.kind
            ),
            permanent: true,
        };
    }
    let def = match despooler::definition(&ins) {
        Ok(d) => d,
        Err(r) => return r.into(),
    };
    match site.store.read(|db| db.newest_version(&package)) {
        Ok(Some(held)) if ins.version < held => return SiteReply::Dropped { newer: held },
        Ok(_) => {}
        Err(e) => {
            return SiteReply::Error {
                message: e.to_string(),
                permanent: false,
            };
        }
    }
    // Already whole here (the parent's own send after a relay, or a re-delivery): the
    // ordinary path sends it on from the library; a relay would add nothing.
    let (pid, version) = (ins.package.clone(), ins.version);
    let stored = site
        .lib
        .read_async(move |l| l.manifest_dir().open_manifest(&pid, version).is_ok())
        .await;
    if stored.unwrap_or(false) {
        return SiteReply::Relaying { to: Vec::new() };
    }
    SiteReply::Relaying {
        to: start(site, &ins, &def),
    }
}

/// Whether the route's window lets `priority` through now.
fn open(throttle: &RouteThrottle, priority: Priority) -> bool {
    throttle
        .cell_at(jiff::Timestamp::now())
        .cell
        .allowed
        .permits(priority)
}

/// One relay's destination.
struct Relay {
    /// A child site's code or a DP's name (for messages).
    dest: String,
    /// The key under which it counts as running (sites and DPs apart).
    key: String,
    address: SocketAddr,
    code: SiteCode,
    limiter: RouteLimiter,
    /// The child's `prepare` (signed here), or None for a DP.
    prepare: Option<Vec<u8>>,
}

/// Starts the relays `ins` calls for; returns their destinations.
fn start(site: &Arc<SiteServer>, ins: &Instruction, def: &Definition) -> Vec<String> {
    let me = site.code.as_str();
    let mut relays = Vec::new();
    // The sites below, grouped by the child they go through.
    let mut hops: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for s in def.sites.iter().filter(|s| *s != me) {
        if let Ok(Some(hop)) = site.store.read(|db| db.next_hop(s)) {
            hops.entry(hop).or_default().push(s.clone());
        }
    }
    for (hop, sites) in hops {
        let address = site
            .store
            .read(|db| db.addresses(Some(&hop)))
            .ok()
            .and_then(|a| a.into_iter().find(|a| a.kind == SenderKind::Standard));
        let Some(address) = address else { continue };
        let (Ok(throttle), Some(Ok(addr)), Ok(code)) = (
            RouteThrottle::parse(&address.throttle),
            address.endpoint.as_deref().map(str::parse::<SocketAddr>),
            SiteCode::parse(&hop),
        ) else {
            continue;
        };
        if !open(&throttle, def.priority) {
            continue;
        }
        let Some(prepare) = child_prepare(site, ins, def, &hop, sites) else {
            continue;
        };
        let key = format!("site {hop}");
        if !claim(site, ins, &key) {
            continue;
        }
        if !sender::take_slot(site, &hop, &address) {
            release(site, ins, &key);
            continue;
        }
        relays.push(Relay {
            limiter: sender::route_limiter(&site.site_limiters, &hop, throttle),
            dest: hop,
            key,
            address: addr,
            code,
            prepare: Some(prepare),
        });
    }
    if def.sites.iter().any(|s| s == me) {
        let dps = site.store.read(|db| db.dp_names()).unwrap_or_default();
        let mut n = 0;
        for dp in dps {
            if n == DP_RELAYS {
                break;
            }
            let Ok(Some(route)) = site.store.read(|db| db.route(&dp)) else {
                continue;
            };
            // A pull DP fetches for itself, from sources that hold the version.
            if route.kind != DpKind::Standard {
                continue;
            }
            let (Ok(throttle), Ok(addr), Ok(code)) = (
                RouteThrottle::parse(&route.throttle),
                route.address.parse::<SocketAddr>(),
                SiteCode::parse(&route.key_site),
            ) else {
                continue;
            };
            if !open(&throttle, def.priority) {
                continue;
            }
            let key = format!("dp {dp}");
            if !claim(site, ins, &key) {
                continue;
            }
            n += 1;
            relays.push(Relay {
                limiter: sender::route_limiter(&site.dp_limiters, &dp, throttle),
                dest: format!("distribution point {dp}"),
                key,
                address: addr,
                code,
                prepare: None,
            });
        }
    }
    let started = relays.iter().map(|r| r.dest.clone()).collect();
    for r in relays {
        let (site, ins) = (site.clone(), ins.clone());
        let priority = def.priority;
        tokio::spawn(async move {
            run(&site, &ins, &r, priority).await;
            release(&site, &ins, &r.key);
            if r.prepare.is_some() {
                sender::free_slot(&site, &r.dest);
            }
        });
    }
    started
}

/// Marks a relay of `ins`'s version to `key` as running; false when one is running or has
/// ended lately (a second `prepare` of the same version, such as the parent's own send after
/// its relay, starts nothing twice).
fn claim(site: &SiteServer, ins: &Instruction, key: &str) -> bool {
    let k = (ins.package.to_string(), ins.version, key.to_string());
    let mut r = site.relays.lock().unwrap_or_else(|p| p.into_inner());
    if r.1.contains(&k) {
        return false;
    }
    r.0.insert(k)
}

/// Relays remembered as ended, at most (oldest forgotten first).
const ENDED_KEPT: usize = 1024;

fn release(site: &SiteServer, ins: &Instruction, key: &str) {
    let k = (ins.package.to_string(), ins.version, key.to_string());
    let mut r = site.relays.lock().unwrap_or_else(|p| p.into_inner());
    r.0.remove(&k);
    if r.1.len() == ENDED_KEPT {
        r.1.pop_front();
    }
    r.1.push_back(k);
}

/// This site's `prepare` for child `hop`, naming the final `sites` reached through it: the
/// parent's definition and manifest hash, signed here (the child trusts only its parent).
fn child_prepare(
    site: &SiteServer,
    ins: &Instruction,
    def: &Definition,
    hop: &str,
    sites: Vec<String>,
) -> Option<Vec<u8>> {
    let package = ins.package.to_string();
    let base = site
        .store
        .read(|db| db.last_sent(&package, hop))
        .ok()
        .flatten()
        .filter(|b| *b < ins.version);
    let notes = serde_json::to_string(&Definition {
        sites,
        ..def.clone()
    })
    .ok()?;
    let child = Instruction {
        kind: if base.is_some() {
            InstructionKind::Delta
        } else {
            InstructionKind::Package
        },
        origin: site.code,
        destination: SiteCode::parse(hop).ok()?,
        package: ins.package.clone(),
        version: ins.version,
        base_version: base,
        manifest_hash: ins.manifest_hash,
        created_unix: now(),
        sequence: site.home.next_sequence().ok()?,
        notes,
    };
    Some(child.sign(&site.home.key).ok()?.encode())
}

/// One relay: the child's `prepare` (a child that refuses it still gets the content), then
/// the push of the version as it arrives; its end is a message, never a job state.
async fn run(site: &SiteServer, ins: &Instruction, r: &Relay, priority: Priority) {
    let me = site.code.as_str();
    let package = ins.package.to_string();
    if let Some(prep) = &r.prepare {
        let req = SiteRequest::Prepare {
            instruction: despooler::to_hex(prep),
        };
        match ask(site, r.address, r.code, &req).await {
            Ok(reply) => tracing::debug!(to = %r.dest, ?reply, "relay: prepare answered"),
            Err(e) => tracing::debug!(to = %r.dest, error = %e, "relay: prepare not answered"),
        }
    }
    let opts = PushOptions {
        progress: None,
        limiter: Some(r.limiter.clone()),
        priority,
    };
    // One session: a cut relay is not resumed; the ordinary send resumes from what arrived.
    let resume = Resume {
        attempts: 1,
        delay: Duration::from_millis(500),
    };
    let started = Instant::now();
    let pid: &PackageId = &ins.package;
    let (reports, res) = session::push_resuming(
        &site.node,
        r.address,
        r.code,
        &site.lib,
        Offer::Relay(pid, ins.version, ins.manifest_hash),
        &opts,
        &resume,
    )
    .await;
    let bytes: u64 = reports.iter().map(|x| x.bytes_sent).sum();
    let msg = match res {
        Ok(()) => {
            let secs = format!("{:.3}", started.elapsed().as_secs_f64());
            Msg::new(4515, &[&package, &ins.version, &r.dest, &bytes, &secs])
        }
        Err(e) => {
            let line = freight_core::text::printable(&e.to_string());
            Msg::new(4516, &[&package, &ins.version, &r.dest, &bytes, &line])
        }
    };
    let _ = site
        .store
        .write(|db| db.raise(me, now(), &msg.package(&package, ins.version)));
}

/// A site request on a fresh connection, its answer decoded.
pub(super) async fn ask(
    site: &SiteServer,
    address: SocketAddr,
    code: SiteCode,
    req: &SiteRequest,
) -> Result<SiteReply, String> {
    let conn = site
        .node
        .connect(address, code)
        .await
        .map_err(|e| e.to_string())?;
    let r = command::request(&conn, &encode(req)).await;
    conn.close("done");
    let body = r.map_err(|e| e.to_string())?;
    serde_json::from_slice::<SiteReply>(&body).map_err(|e| {
        format!("site {code} sent an answer this site does not understand ({e}); run the same Freight version on both")
    })
}
