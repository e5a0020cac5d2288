//! Status flows up (SPEC §4 "Across sites", step 5): each site sends its parent the package
//! status changes of its own DPs and of the sites below it, and the list of those sites, so the
//! top of the hierarchy shows every copy and knows the route to every site.
//!
//! Changes are logged in the site database as they happen (`status_log`, by triggers) while the
//! site has a parent. The reporter sends them in order, in batches of at most [`BATCH`], and
//! drops them once the parent acknowledged them; a parent that was away gets what it missed
//! when it returns, and a restart resumes after the last acknowledged change.

use super::peer::{SiteReply, SiteRequest, encode};
use super::store::sends::StatusChange;
use super::{SiteServer, now};
use freight_core::{PublicIdentity, SiteCode};
use freight_transport::command;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Most status changes per report.
pub const BATCH: usize = 500;

/// Applies a child's report (the peer is an authorized child).
pub fn receive(
    site: &SiteServer,
    peer: &PublicIdentity,
    sites: &[(String, String)],
    changes: &[StatusChange],
    received: &[(String, u32)],
) -> SiteReply {
    let child = peer.code.as_str();
    if changes.len() > BATCH || received.len() > BATCH || sites.len() > 100_000 {
        return SiteReply::Error {
            message: format!(
                "report from site {child} is larger than {BATCH} changes; run the same Freight version on both"
            ),
            permanent: true,
        };
    }
    // A child speaks only for itself and what is below it: a change for this site, or a site
    // it lists as below another site, is refused whole.
    let mut below: std::collections::HashSet<&str> =
        sites.iter().map(|(c, _)| c.as_str()).collect();
    below.insert(child);
    let me = site.code.as_str();
    for (code, parent) in sites {
        if SiteCode::parse(code).is_err() || SiteCode::parse(parent).is_err() || code == me {
            return bad(child, format!("names site {code:?} under {parent:?}"));
        }
    }
    for c in changes {
        if !below.contains(c.site.as_str()) || c.site == me {
            return bad(
                child,
                format!("reports a DP of site {} which is not below it", c.site),
            );
        }
        if freight_core::PackageId::parse(&c.package).is_err()
            || c.dp.len() > 64
            || c.state.len() > 32
            || c.message.as_ref().is_some_and(|m| m.len() > 4096)
        {
            return bad(child, format!("has a malformed change (#{})", c.seq));
        }
    }
    let seq = changes.iter().map(|c| c.seq).max().unwrap_or(0);
    match site.store.write(|db| {
        db.apply_report(child, sites, changes, now())?;
        // Courier parcels the child received: their requests are confirmed.
        for (p, v) in db.confirm_courier(child, received, super::now_ms())? {
            db.raise(
                site.code.as_str(),
                now(),
                &super::statmgr::Msg::new(4514, &[&p, &v, &child]).package(&p, v),
            )?;
        }
        Ok::<_, super::store::StoreError>(())
    }) {
        Ok(()) => SiteReply::Acked { seq },
        Err(e) => SiteReply::Error {
            message: e.to_string(),
            permanent: false,
        },
    }
}

fn bad(child: &str, what: String) -> SiteReply {
    SiteReply::Error {
        message: format!("report from site {child} {what}; refused whole"),
        permanent: true,
    }
}

/// Sends status changes to the parent until the process ends: whenever DistMgr's work may
/// have changed a status and at least every `every`.
pub async fn run(site: Arc<SiteServer>, every: Duration) {
    loop {
        match report_once(&site).await {
            Ok(true) => continue, // more to send
            Ok(false) => {}
            Err(e) => tracing::warn!("status report to the parent: {e}; retrying"),
        }
        tokio::select! {
            _ = site.report_wake.notified() => {}
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// Sends one batch; true when more are waiting.
async fn report_once(site: &SiteServer) -> Result<bool, String> {
    let (parent, address, sites, changes, received) = {
        let r = site.store.read(|db| {
            let parent = db.parent()?;
            let Some(parent) = parent else {
                return Ok::<_, super::store::StoreError>(None);
            };
            let address = db.parent_address()?;
            let acked = db.report_acked()?;
            let changes = db.status_changes(acked, BATCH)?;
            let received = db.courier_unreported()?;
            let mut sites = db.sites_below()?;
            sites.push((site.code.to_string(), parent.code.clone()));
            Ok(Some((parent, address, sites, changes, received)))
        });
        match r.map_err(|e| e.to_string())? {
            Some(x) => x,
            None => return Ok(false),
        }
    };
    let Some(address) = address else {
        return Ok(false);
    };
    let sites_known = site
        .reported_sites
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        == Some(&sites);
    if changes.is_empty() && received.is_empty() && sites_known {
        return Ok(false);
    }
    let addr: SocketAddr = address
        .parse()
        .map_err(|_| format!("parent {}: bad address {address:?}", parent.code))?;
    let code = SiteCode::parse(&parent.code).map_err(|e| e.to_string())?;
    // A batch is also bounded by its bytes: a command request is at most
    // `command::MAX_REQUEST`, and 500 changes with long failure lines would not fit.
    let mut changes = changes;
    let budget = command::MAX_REQUEST as usize / 2;
    let mut size = serde_json::to_vec(&sites).map_or(0, |v| v.len());
    let fit = changes
        .iter()
        .position(|c| {
            size += serde_json::to_vec(c).map_or(0, |v| v.len()) + 1;
            size > budget
        })
        .unwrap_or(changes.len())
        .max(1);
    let more = fit < changes.len();
    changes.truncate(fit);
    let n = changes.len();
    let req = SiteRequest::Report {
        sites: sites.clone(),
        changes,
        received: received.clone(),
    };
    let conn = site
        .node
        .connect(addr, code)
        .await
        .map_err(|e| e.to_string())?;
    let reply = command::request(&conn, &encode(&req)).await;
    conn.close("done");
    let reply: SiteReply =
        serde_json::from_slice(&reply.map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    match reply {
        SiteReply::Acked { seq } => {
            site.store
                .write(|db| {
                    db.ack_report(seq)?;
                    db.courier_reported(&received)
                })
                .map_err(|e| e.to_string())?;
            *site
                .reported_sites
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(sites);
            Ok(more || n == BATCH)
        }
        SiteReply::Error { message, .. } => Err(format!("parent {}: {message}", parent.code)),
        other => Err(format!("parent {} answered {other:?}", parent.code)),
    }
}
