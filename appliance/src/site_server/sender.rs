//! The Sender (SPEC §4 "Across sites", step 3): takes send requests from its outbox by
//! priority then age, at most the address's sends at once per child site (3 by default) and
//! [`MAX_SENDS`] in all, each only while the address's window lets its priority through. A send
//! pushes the package version's missing chunks to the child over QUIC, paced by the address's
//! rate limits (one limiter per address, shared by its sends), then hands over the signed
//! instruction last, so the child never acts on content that has not fully arrived. A failed
//! send is retried after the address's delay (2 retries, 1 minute apart, by default); a send
//! cut by a crash is queued again at start-up and resumes from what the child stored.

use super::peer::{SiteReply, SiteRequest};
use super::statmgr::Msg;
use super::store::hierarchy::AddressRow;
use super::store::sends::SendRow;
use super::{SiteServer, now, now_ms};
use crate::model::SenderKind;
use freight_core::instruction::{Instruction, InstructionKind, SignedInstruction};
use freight_core::{PackageId, SiteCode};
use freight_transport::session::{self, Offer, PushOptions, Resume};
use freight_transport::{RouteLimiter, RouteThrottle, SystemClock};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Sends at once to all child sites (SPEC §6).
pub const MAX_SENDS: usize = 5;

/// Runs the Sender until the process ends.
pub async fn run(site: Arc<SiteServer>) {
    match site.store.write(|db| db.requeue_sending()) {
        Ok(0) => {}
        Ok(n) => tracing::info!(sends = n, "interrupted sends queued again"),
        Err(e) => tracing::error!(error = %e, "cannot requeue interrupted sends"),
    }
    loop {
        let wait = match admit(&site) {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(error = %e, "Sender could not read its outbox");
                Duration::from_secs(1)
            }
        };
        tokio::select! {
            _ = site.sender_wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Starts every due send the limits allow; returns how long to wait before looking again.
fn admit(site: &Arc<SiteServer>) -> Result<Duration, super::store::StoreError> {
    let due = site.store.read(|db| db.due_sends(now_ms()))?;
    // A due request held back (limits, a closed window) is looked at again when a send ends
    // (which wakes the Sender) and at least every second, for windows that open.
    let mut held = false;
    for s in due {
        let address = site
            .store
            .read(|db| db.addresses(Some(&s.dest)))?
            .into_iter()
            .find(|a| a.kind == SenderKind::Standard);
        let Some(address) = address else {
            // The address went since the query: `freight address add` wakes the Sender.
            continue;
        };
        let Ok(throttle) = RouteThrottle::parse(&address.throttle) else {
            continue;
        };
        if !throttle
            .cell_at(jiff::Timestamp::now())
            .cell
            .allowed
            .permits(s.priority)
        {
            held = true;
            continue;
        }
        if !take_slot(site, &s.dest, &address) {
            held = true;
            continue;
        }
        let limiter = route_limiter(&site.site_limiters, &s.dest, throttle);
        if let Err(e) = site.store.write(|db| db.mark_sending(s.id, now_ms())) {
            free_slot(site, &s.dest);
            return Err(e);
        }
        let site = site.clone();
        tokio::spawn(async move {
            let mut pushing = Duration::ZERO;
            let (bytes, res) = send(&site, &s, &address, limiter, &mut pushing).await;
            if let Err(e) = finish(&site, &s, &address, bytes, pushing, res) {
                tracing::error!(send = s.id, error = %e, "could not record a send's result; it runs again");
            }
            free_slot(&site, &s.dest);
        });
    }
    if held {
        return Ok(Duration::from_secs(1));
    }
    let next = site.store.read(|db| db.next_send_due())?;
    Ok(next.map_or(Duration::from_secs(5), |t| {
        Duration::from_millis((t - now_ms()).clamp(10, 5000) as u64)
    }))
}

/// Takes one of the pushes to `dest` its address allows (and one of [`MAX_SENDS`]) if free.
pub(super) fn take_slot(site: &SiteServer, dest: &str, address: &AddressRow) -> bool {
    let per_site = address
        .max_sends
        .unwrap_or(site.cfg.sender_sends_per_site)
        .max(1) as usize;
    let mut r = site.sends_running.lock().unwrap_or_else(|p| p.into_inner());
    let total: usize = r.values().sum();
    if total >= MAX_SENDS || r.get(dest).copied().unwrap_or(0) >= per_site {
        return false;
    }
    *r.entry(dest.to_string()).or_default() += 1;
    true
}

/// Gives back a slot [`take_slot`] took, and lets the Sender look at what it held.
pub(super) fn free_slot(site: &SiteServer, dest: &str) {
    if let Some(n) = site
        .sends_running
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get_mut(dest)
    {
        *n = n.saturating_sub(1);
    }
    site.sender_wake.notify_one();
}

/// The limiter of the route to `dest` in `limiters`, with the route's current windows.
pub(super) fn route_limiter(
    limiters: &super::Limiters,
    dest: &str,
    throttle: RouteThrottle,
) -> RouteLimiter {
    let mut l = limiters.lock().unwrap_or_else(|p| p.into_inner());
    let lim = l
        .entry(dest.to_string())
        .or_insert_with(|| RouteLimiter::new(throttle.clone(), Arc::new(SystemClock)));
    if lim.throttle() != throttle {
        lim.set_throttle(throttle);
    }
    lim.clone()
}

/// One attempt: the content, then the instruction. Returns the bytes pushed and the result.
async fn send(
    site: &SiteServer,
    s: &SendRow,
    address: &AddressRow,
    limiter: RouteLimiter,
    pushing: &mut Duration,
) -> (u64, Result<SiteReply, String>) {
    let target = match parse_target(s, address) {
        Ok(t) => t,
        Err(e) => return (0, Err(e)),
    };
    let Ok(pid) = PackageId::parse(&s.package) else {
        return (0, Err(format!("package {}: bad ID", s.package)));
    };
    // A removal carries no content: the instruction alone.
    let removal = SignedInstruction::decode(&s.instruction)
        .and_then(|si| Instruction::decode(&si.body))
        .is_ok_and(|i| i.kind == InstructionKind::Remove);
    if removal {
        return (0, instruct(site, s, target).await);
    }
    // The instruction first as `prepare`, so the child can pass the content on while it
    // arrives (a child that cannot, or an older Freight, still gets it the ordinary way).
    let prepare = SiteRequest::Prepare {
        instruction: super::despooler::to_hex(&s.instruction),
    };
    match super::relay::ask(site, target.0, target.1, &prepare).await {
        Ok(SiteReply::Relaying { to }) if !to.is_empty() => {
            tracing::info!(send = s.id, to = %s.dest, relays = ?to, "child relays while it receives")
        }
        Ok(_) => {}
        Err(e) => tracing::debug!(send = s.id, error = %e, "prepare not answered"),
    }
    let opts = PushOptions {
        progress: None,
        limiter: Some(limiter),
        priority: s.priority,
    };
    let resume = Resume {
        attempts: site.cfg.resume_sessions.max(1),
        delay: Duration::from_millis(500),
    };
    let (reports, res) = session::push_resuming(
        &site.node,
        target.0,
        target.1,
        &site.lib,
        Offer::Stored(&pid, s.version),
        &opts,
        &resume,
    )
    .await;
    let bytes: u64 = reports.iter().map(|r| r.bytes_sent).sum();
    *pushing = reports.iter().map(|r| r.elapsed).sum();
    if let Err(e) = res {
        return (bytes, Err(e.to_string()));
    }
    // The instruction last: the child acts only on content it holds whole.
    (bytes, instruct(site, s, target).await)
}

/// Hands the signed instruction to the child and reads its answer.
async fn instruct(
    site: &SiteServer,
    s: &SendRow,
    target: (SocketAddr, SiteCode),
) -> Result<SiteReply, String> {
    let req = SiteRequest::Despool {
        instruction: super::despooler::to_hex(&s.instruction),
    };
    super::relay::ask(site, target.0, target.1, &req).await
}

fn parse_target(s: &SendRow, a: &AddressRow) -> Result<(SocketAddr, SiteCode), String> {
    let endpoint = a.endpoint.as_deref().unwrap_or_default();
    let addr = endpoint.parse().map_err(|_| {
        format!(
            "address of site {}: bad endpoint {endpoint:?}; fix it with `freight address remove` and `address add`",
            s.dest
        )
    })?;
    let code = SiteCode::parse(&s.dest).map_err(|e| e.to_string())?;
    Ok((addr, code))
}

/// Records an attempt's end: sent (4510, or 4402's drop at the child), retrying (4511) or
/// failed (4512).
fn finish(
    site: &SiteServer,
    s: &SendRow,
    address: &AddressRow,
    bytes: u64,
    pushing: Duration,
    res: Result<SiteReply, String>,
) -> Result<(), super::store::StoreError> {
    let me = site.code.as_str();
    let attempt = s.attempts + 1;
    let retries = address.retries.unwrap_or(site.cfg.sender_retries);
    let delay = address
        .retry_delay_ms
        .map(Duration::from_millis)
        .unwrap_or(site.cfg.sender_retry_delay);
    let (failure, permanent) = match res {
        Ok(SiteReply::Stored) | Ok(SiteReply::Dropped { .. }) => {
            let human = freight_core::units::human(bytes);
            // The push's own time (its sessions), what the address's rate paces.
            let secs = format!("{:.3}", pushing.as_secs_f64());
            return site.store.write(|db| {
                db.end_send(s.id, "sent", None, bytes, now_ms(), now_ms())?;
                db.raise(
                    me,
                    now(),
                    &Msg::new(4510, &[&s.package, &s.version, &s.dest, &human, &secs])
                        .package(&s.package, s.version),
                )
            });
        }
        Ok(SiteReply::Error { message, permanent }) => {
            (format!("site {}: {message}", s.dest), permanent)
        }
        Ok(other) => (
            format!("site {} answered {other:?} to an instruction", s.dest),
            true,
        ),
        Err(e) => (e, false),
    };
    let failure = freight_core::text::printable(&failure);
    let total = retries + 1;
    site.store.write(|db| {
        if permanent || attempt >= total {
            db.end_send(s.id, "failed", Some(&failure), bytes, now_ms(), now_ms())?;
            db.raise(
                me,
                now(),
                &Msg::new(4512, &[&s.package, &s.version, &s.dest, &attempt, &failure])
                    .package(&s.package, s.version),
            )
        } else {
            let next = now_ms() + delay.as_millis() as i64;
            db.end_send(s.id, "retrying", Some(&failure), bytes, next, now_ms())?;
            let wait = super::job::human_delay(delay);
            db.raise(
                me,
                now(),
                &Msg::new(
                    4511,
                    &[
                        &s.package, &s.version, &s.dest, &attempt, &total, &failure, &wait,
                    ],
                )
                .package(&s.package, s.version),
            )
        }
    })
}
