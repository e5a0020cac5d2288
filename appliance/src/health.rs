//! The health endpoint and Prometheus metrics of `freightd` (`[health] listen` in
//! `freightd.toml`): plain HTTP, read only, no input but the path.
//!
//! - `GET /health`: JSON with `status` (`ready`, or `starting` before the readiness line),
//!   `version`, the site database's `schema_version` (and the newest this build knows), the
//!   roles and site code, `uptime_s`, `free_space` (bytes free and total of the library, the
//!   site folder and the database's folder) and, on a site server, the queue depths.
//!   Status 200 when ready, 503 otherwise (starting, or the database cannot be read), so a
//!   load balancer or a monitoring probe needs only the status code.
//! - `GET /metrics`: the same numbers in Prometheus' text format, with the distribution jobs
//!   and send requests by state, the bytes sent per route (to each DP, to each child site, as
//!   recorded in the site database, so they survive a restart) and the chunks that failed
//!   verification in this process (`freight_core::counters`).
//!
//! Every number is read when asked (the database in one read transaction, `statvfs` of the
//! folders): nothing is cached, so a scrape never shows a stale value.

use crate::site_server::store::health::HealthCounts;
use crate::site_server::store::{Store, schema::MIGRATIONS};
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// The health listener's limits: a few monitoring clients at once, short deadlines (a probe
/// asks and goes), served by the DP content server's accept loop (`dp::http_server`).
pub const LIMITS: crate::dp::http_server::Limits = crate::dp::http_server::Limits {
    header_timeout: std::time::Duration::from_secs(5),
    idle_timeout: std::time::Duration::from_secs(10),
    send_timeout: std::time::Duration::from_secs(10),
    max_connections: 32,
    max_per_address: 8,
    max_listings: 1,
};

/// What the endpoint reports on: the host's identity, its folders and its site database.
pub struct Health {
    ready: AtomicBool,
    started: Instant,
    roles: String,
    code: String,
    /// Named folders whose file system's free space is reported (`library`, `home`, ...).
    paths: Vec<(&'static str, PathBuf)>,
    /// The site database, on a site server.
    store: Option<Arc<dyn StoreView>>,
}

/// Read access to the site database's counts: a [`Store`], or a site server holding one.
pub trait StoreView: Send + Sync {
    /// The counts of one read transaction and the schema version.
    fn counts(&self) -> Result<(HealthCounts, i64), String>;
}

impl StoreView for Store {
    fn counts(&self) -> Result<(HealthCounts, i64), String> {
        let counts = self
            .read(|db| db.health_counts())
            .map_err(|e| e.to_string())?;
        let version = self.version().map_err(|e| e.to_string())?;
        Ok((counts, version))
    }
}

impl StoreView for crate::site_server::SiteServer {
    fn counts(&self) -> Result<(HealthCounts, i64), String> {
        self.store.counts()
    }
}

/// Free and total bytes of the file system holding `path`.
fn space(path: &std::path::Path) -> Option<(u64, u64)> {
    let st = nix::sys::statvfs::statvfs(path).ok()?;
    let frag = st.fragment_size() as u64;
    Some((
        st.blocks_available() as u64 * frag,
        st.blocks() as u64 * frag,
    ))
}

impl Health {
    /// A report for a host of `roles` at site `code`; `paths` are the folders whose free
    /// space counts, `store` the site database on a site server.
    pub fn new(
        roles: &str,
        code: &str,
        paths: Vec<(&'static str, PathBuf)>,
        store: Option<Arc<dyn StoreView>>,
    ) -> Arc<Health> {
        Arc::new(Health {
            ready: AtomicBool::new(false),
            started: Instant::now(),
            roles: roles.into(),
            code: code.into(),
            paths,
            store,
        })
    }

    /// Marks the host ready (after its readiness line): `/health` answers 200 from now on.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Reads the database's counts off the runtime's threads (SQLite blocks).
    async fn counts(self: &Arc<Self>) -> Option<Result<(HealthCounts, i64), String>> {
        let store = self.store.clone()?;
        Some(
            tokio::task::spawn_blocking(move || store.counts())
                .await
                .unwrap_or_else(|e| Err(format!("health count task failed: {e}"))),
        )
    }
}

/// The routes: `GET /health` and `GET /metrics`.
pub fn router(health: Arc<Health>) -> Router {
    Router::new()
        .route("/health", get(health_json))
        .route("/metrics", get(metrics))
        .with_state(health)
}

async fn health_json(State(h): State<Arc<Health>>) -> Response {
    let counts = h.counts().await;
    let free: Vec<_> = h
        .paths
        .iter()
        .map(|(name, p)| {
            let (free, total) = space(p).unzip();
            json!({"name": name, "path": p, "free_bytes": free, "total_bytes": total})
        })
        .collect();
    let mut ok = h.is_ready();
    let mut body = json!({
        "status": if ok { "ready" } else { "starting" },
        "version": env!("CARGO_PKG_VERSION"),
        "roles": h.roles,
        "site": h.code,
        "uptime_s": h.started.elapsed().as_secs(),
        "free_space": free,
    });
    match counts {
        None => {}
        Some(Ok((c, version))) => {
            let waiting = |rows: &[(&str, u64)], states: &[&str]| -> u64 {
                rows.iter()
                    .filter(|(s, _)| states.contains(s))
                    .map(|(_, n)| n)
                    .sum()
            };
            body["schema_version"] = json!(version);
            body["schema_version_known"] = json!(MIGRATIONS.len());
            body["queues"] = json!({
                "dp_targets": c.dp_targets_pending,
                "site_targets": c.site_targets_pending,
                "jobs_waiting": waiting(&c.jobs, &["queued", "retrying"]),
                "jobs_running": waiting(&c.jobs, &["running"]),
                "sends_waiting": waiting(&c.sends, &["queued", "retrying", "pending"]),
                "sends_running": waiting(&c.sends, &["sending"]),
            });
            body["packages"] = json!(c.packages);
            body["installed_copies"] = json!(c.installed_copies);
        }
        Some(Err(e)) => {
            ok = false;
            body["status"] = json!("database unreadable");
            body["error"] = json!(e);
        }
    }
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(body)).into_response()
}

/// A metric family's HELP and TYPE lines.
fn family(m: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(m, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A label value in Prometheus' text format: backslash, quote and newline escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

async fn metrics(State(h): State<Arc<Health>>) -> Response {
    let counts = h.counts().await;
    let mut m = String::new();
    family(
        &mut m,
        "freight_ready",
        "gauge",
        "1 once freightd is ready.",
    );
    let _ = writeln!(m, "freight_ready {}", u8::from(h.is_ready()));
    family(
        &mut m,
        "freight_build_info",
        "gauge",
        "This freightd's version, roles and site.",
    );
    let _ = writeln!(
        m,
        "freight_build_info{{version=\"{}\",roles=\"{}\",site=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION"),
        label(&h.roles),
        label(&h.code)
    );
    family(
        &mut m,
        "freight_uptime_seconds",
        "gauge",
        "Seconds since freightd started.",
    );
    let _ = writeln!(
        m,
        "freight_uptime_seconds {}",
        h.started.elapsed().as_secs()
    );
    family(
        &mut m,
        "freight_free_bytes",
        "gauge",
        "Bytes free for freightd on the file system of each of its folders.",
    );
    for (name, p) in &h.paths {
        if let Some((free, _)) = space(p) {
            let _ = writeln!(m, "freight_free_bytes{{folder=\"{name}\"}} {free}");
        }
    }
    family(
        &mut m,
        "freight_chunk_verify_failures_total",
        "counter",
        "Chunks that failed verification (hash or decoding) in this process.",
    );
    let _ = writeln!(
        m,
        "freight_chunk_verify_failures_total {}",
        freight_core::counters::chunk_verify_failures()
    );
    match counts {
        None => {}
        Some(Err(e)) => {
            let body = format!("{m}# site database unreadable: {}\n", label(&e));
            return (StatusCode::SERVICE_UNAVAILABLE, body).into_response();
        }
        Some(Ok((c, version))) => {
            family(
                &mut m,
                "freight_schema_version",
                "gauge",
                "The site database's schema version.",
            );
            let _ = writeln!(m, "freight_schema_version {version}");
            family(
                &mut m,
                "freight_jobs",
                "gauge",
                "Distribution jobs (PkgXferMgr to a DP) by state.",
            );
            for (state, n) in &c.jobs {
                let _ = writeln!(m, "freight_jobs{{state=\"{state}\"}} {n}");
            }
            family(
                &mut m,
                "freight_sends",
                "gauge",
                "Send requests (Sender to a child site) by state.",
            );
            for (state, n) in &c.sends {
                let _ = writeln!(m, "freight_sends{{state=\"{state}\"}} {n}");
            }
            family(
                &mut m,
                "freight_queue_depth",
                "gauge",
                "Targets in DistMgr's inbox not planned yet.",
            );
            let _ = writeln!(
                m,
                "freight_queue_depth{{queue=\"dp_targets\"}} {}\nfreight_queue_depth{{queue=\"site_targets\"}} {}",
                c.dp_targets_pending, c.site_targets_pending
            );
            family(
                &mut m,
                "freight_route_sent_bytes_total",
                "counter",
                "Bytes sent per route: to a DP by its distribution jobs, to a child site by its send requests.",
            );
            for (dp, n) in &c.bytes_to_dps {
                let _ = writeln!(
                    m,
                    "freight_route_sent_bytes_total{{route=\"dp\",to=\"{}\"}} {n}",
                    label(dp)
                );
            }
            for (site, n) in &c.bytes_to_sites {
                let _ = writeln!(
                    m,
                    "freight_route_sent_bytes_total{{route=\"site\",to=\"{}\"}} {n}",
                    label(site)
                );
            }
            family(
                &mut m,
                "freight_packages",
                "gauge",
                "Packages at this site.",
            );
            let _ = writeln!(m, "freight_packages {}", c.packages);
            family(
                &mut m,
                "freight_installed_copies",
                "gauge",
                "DP copies whose status is Installed.",
            );
            let _ = writeln!(m, "freight_installed_copies {}", c.installed_copies);
        }
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], m).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// Serves `h` on a loopback port and returns (status, body) of a GET of `path`.
    fn get(h: &Arc<Health>, path: &str) -> (u16, String) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let app = router(h.clone());
        let path = path.to_string();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(listener).unwrap();
            tokio::spawn(async move { axum::serve(l, app).await });
            tokio::task::spawn_blocking(move || {
                let mut s = std::net::TcpStream::connect(addr).unwrap();
                write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
                let mut out = String::new();
                s.read_to_string(&mut out).unwrap();
                let status = out[9..12].parse().unwrap();
                let body = out.split_once("\r\n\r\n").unwrap().1.to_string();
                (status, body)
            })
            .await
            .unwrap()
        })
    }

    #[test]
    fn health_is_503_until_ready_and_reports_free_space_and_queues() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(&t.path().join("site.db")).unwrap();
        let h = Health::new(
            "site server",
            "PS1",
            vec![("library", t.path().to_path_buf())],
            Some(Arc::new(store) as Arc<dyn StoreView>),
        );
        let (status, body) = get(&h, "/health");
        assert_eq!(status, 503, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["status"], "starting");
        h.set_ready();
        let (status, body) = get(&h, "/health");
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["status"], "ready");
        assert_eq!(v["site"], "PS1");
        assert_eq!(v["schema_version"], MIGRATIONS.len());
        assert_eq!(v["queues"]["jobs_waiting"], 0);
        let free = v["free_space"][0]["free_bytes"].as_u64().unwrap();
        let total = v["free_space"][0]["total_bytes"].as_u64().unwrap();
        assert!(free > 0 && free <= total, "{body}");
    }

    #[test]
    fn metrics_read_the_database_and_the_verification_counter() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(&t.path().join("site.db")).unwrap();
        store.write_sql_for_tests(
            "INSERT INTO sites (code, is_self) VALUES ('PS1', 1);
             INSERT INTO dps (name, site, kind, address, key_site, created)
                 VALUES ('dp \"1\"', 'PS1', 'standard', '127.0.0.1:1', 'DP1', 0),
                        ('dp2', 'PS1', 'standard', '127.0.0.1:2', 'DP2', 0);
             INSERT INTO packages (id, name, source, created) VALUES ('PS100001', 'p', '/s', 0);
             INSERT INTO package_versions (package, version, manifest_hash, created)
                 VALUES ('PS100001', 1, zeroblob(32), 0);
             INSERT INTO distribution_jobs (package, version, dp, action, state, next_attempt,
                 created, updated, bytes_sent)
                 VALUES ('PS100001', 1, 'dp \"1\"', 'install', 'done', 0, 0, 0, 1000),
                        ('PS100001', 1, 'dp2', 'install', 'retrying', 0, 0, 0, 24);
             INSERT INTO package_targets (package, dp, action, version, updated)
                 VALUES ('PS100001', 'dp2', 'install', 1, 0);",
        );
        let h = Health::new(
            "site server",
            "PS1",
            vec![],
            Some(Arc::new(store) as Arc<dyn StoreView>),
        );
        h.set_ready();
        let before = freight_core::counters::chunk_verify_failures();
        // A real check of bad bytes: the counter moves where the check fails.
        let id = freight_core::id::ChunkId::of(b"good");
        let loc = freight_core::pack::Loc {
            pack: 0,
            offset: 0,
            clen: 3,
            ulen: 3,
            flags: 0,
        };
        assert!(freight_core::library::check_chunk(&id, &loc, b"bad").is_err());
        let (status, m) = get(&h, "/metrics");
        assert_eq!(status, 200, "{m}");
        assert!(m.contains("freight_ready 1\n"), "{m}");
        assert!(m.contains("freight_jobs{state=\"done\"} 1\n"), "{m}");
        assert!(m.contains("freight_jobs{state=\"retrying\"} 1\n"), "{m}");
        assert!(m.contains("freight_jobs{state=\"failed\"} 0\n"), "{m}");
        assert!(
            m.contains("freight_route_sent_bytes_total{route=\"dp\",to=\"dp \\\"1\\\"\"} 1000\n"),
            "{m}"
        );
        assert!(
            m.contains("freight_route_sent_bytes_total{route=\"dp\",to=\"dp2\"} 24\n"),
            "{m}"
        );
        assert!(
            m.contains("freight_queue_depth{queue=\"dp_targets\"} 1\n"),
            "{m}"
        );
        let failures: u64 = m
            .lines()
            .find_map(|l| l.strip_prefix("freight_chunk_verify_failures_total "))
            .unwrap()
            .parse()
            .unwrap();
        assert!(failures > before, "{m}");
    }
}
