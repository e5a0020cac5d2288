//! `freightd`: starts the roles of its config, says when it is ready, and stops cleanly on
//! SIGTERM. Everything that can be wrong with the host (config, key, library lock, ports) is
//! checked before the readiness line, so a bad start is one line and exit status
//! [`EXIT_START_REFUSED`] (78); a failure after readiness exits with status 1.

pub mod config;

use crate::dp::Dp;
use crate::home::{Home, HomeError};
use crate::site_server::SiteServer;
use crate::site_server::error::SiteError;
use crate::site_server::store::{Store, StoreError};
use config::{ConfigError, DaemonConfig};
use freight_core::{IoMode, Library, Role};
use freight_transport::command::CommandHandler;
use freight_transport::quic::{Node, NodeConfig};
use freight_transport::session;
use freight_transport::store::SharedLibrary;
use freight_transport::tls::SiteTls;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The start of the readiness line; `ROLES CODE; quic ADDR[; http ADDR][; health ADDR][; admin SOCKET]`
/// follows.
pub const READY_PREFIX: &str = "freightd ready: ";

/// Exit status of a start refused before readiness (sysexits' `EX_CONFIG`): the config, the
/// site folder, the library or the database must change before a new start can succeed, so
/// the appliance's unit does not restart on it (`RestartPreventExitStatus=78`) and the one
/// line naming the fix stays the last thing on the console.
pub const EXIT_START_REFUSED: i32 = 78;

static READY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The exit status for an error [`run`] returned: [`EXIT_START_REFUSED`] before readiness,
/// 1 after it (a runtime failure a restart may cure).
pub fn exit_status() -> i32 {
    if READY.load(std::sync::atomic::Ordering::Acquire) {
        1
    } else {
        EXIT_START_REFUSED
    }
}

/// Reads a readiness line: what follows [`READY_PREFIX`] and its `key value` fields (`quic`,
/// `http`, `admin`, after the roles); None if `line` is not the readiness line.
pub fn ready_fields(line: &str) -> Option<(&str, Vec<(String, String)>)> {
    let rest = line.trim().strip_prefix(READY_PREFIX)?;
    let fields = rest
        .split("; ")
        .filter_map(|p| p.split_once(' '))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Some((rest, fields))
}

/// Why `freightd` could not start or stopped: one line naming the object and the fix.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The config file.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The home folder (site code, key, trust store).
    #[error(transparent)]
    Home(#[from] HomeError),
    /// The content library.
    #[error(transparent)]
    Library(#[from] freight_core::Error),
    /// The QUIC node or the library's store thread.
    #[error(transparent)]
    Transport(#[from] freight_transport::Error),
    /// The site database.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The site server could not be assembled.
    #[error(transparent)]
    Site(#[from] SiteError),
    /// A listener could not be set up.
    #[error("{0}")]
    Listen(String),
    /// Standard output, signals or the runtime failed.
    #[error("freightd: {0}")]
    Io(#[from] std::io::Error),
}

/// Raises this process's `RLIMIT_NOFILE` soft limit to its hard limit and returns the limit
/// then in force. Ingest and materialise keep many files open at once, and the DP's HTTP
/// connection cap is a share of this limit (`dp::http_server::connection_cap`). Used by
/// `freightd` and by every `freight` verb.
pub fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
    }
    lim.rlim_cur
}

/// Runs the daemon until SIGTERM or Ctrl-C.
pub fn run(config: &Path, io: Option<IoMode>) -> Result<(), DaemonError> {
    let nofile = raise_fd_limit();
    // glibc gives every thread that allocates under contention an arena of its own (up to 8
    // per core) and keeps what is freed in each: with the runtime's and the library's threads
    // that alone took a DP tens of megabytes over its memory budget after a large receive.
    // Two arenas cost no measurable speed here.
    // And a fixed mmap threshold: glibc's default one rises to the size of the largest
    // mmapped block freed (up to 32 MiB), after which the per-transfer tables of a large
    // package (a million chunks: tens of MiB each) come from the arenas and stay resident once
    // freed, adding up across transfers. Fixed at 4 MiB, every block larger than a chunk is
    // mapped and given back whole when freed; chunk buffers stay in the arenas.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes the allocator; called before any thread is started.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
    }
    let cfg = DaemonConfig::load(config)?;
    let home = Home::open(&cfg.home)?;
    // The site database first: it is locked by its daemon, so a second site server on the
    // same database stops here, before it creates or opens anything else.
    let store = cfg
        .site
        .as_ref()
        .map(|s| Store::open(&s.database))
        .transpose()?;
    let lib = Library::open_or_init(&cfg.library, io)?;
    let tls = SiteTls::new(&home.key, &home.trust_dir())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(serve(cfg, home, store, lib, tls, nofile))
}

async fn serve(
    cfg: DaemonConfig,
    home: Home,
    store: Option<Store>,
    lib: Library,
    tls: SiteTls,
    nofile: u64,
) -> Result<(), DaemonError> {
    let node_cfg = NodeConfig {
        idle_timeout: cfg.idle_timeout,
        keep_alive: (cfg.idle_timeout / 4).min(Duration::from_secs(5)),
        handshake_timeout: cfg.handshake_timeout,
        step_timeout: cfg.step_timeout,
        progress_timeout: cfg.progress_timeout,
        command_timeout: cfg.command_timeout,
        unfinished_per_peer: cfg.unfinished_per_peer,
        ..NodeConfig::default()
    };
    let node = Node::bind(cfg.listen, tls, node_cfg)?;
    let lib = SharedLibrary::new(lib);
    let mut ready = vec![
        format!("{} {}", roles(&cfg), home.code),
        format!("quic {}", node.local_addr()?),
    ];

    let handler: Option<Arc<dyn CommandHandler>> = match &cfg.dp {
        Some(d) => Some(Arc::new(Dp::new(
            lib.clone(),
            node.clone(),
            d.kind == crate::model::DpKind::Pull,
            d.pull_capacity,
            d.pull_deadline,
            d.share.clone(),
        ))),
        None => None,
    };
    if let Some(d) = &cfg.dp {
        let listener = http_listener(d.http).map_err(|e| {
            DaemonError::Listen(format!(
                "DP content server: cannot listen on {} ({e}); choose a free [dp] http address",
                d.http
            ))
        })?;
        ready.push(format!("http {}", listener.local_addr()?));
        // Our own accept loop, not axum::serve: connection caps and timeouts (see
        // dp::http_server), so HTTP clients can never starve the QUIC side of descriptors.
        let limits = d.http_limits();
        // A DP serves only what it installed (see `Served::Installed`).
        let app = crate::dp::http::router_serving(
            lib.clone(),
            &limits,
            crate::dp::http::Served::Installed,
        );
        tokio::spawn(crate::dp::http_server::serve(listener, app, limits, nofile));
    }
    // A site server's parent and child roles hold only as its database configures them,
    // from the first connection on (the site server sets them again after every change).
    if let Some(store) = &store {
        node.set_relations(crate::site_server::hierarchy::relations(store)?);
    }
    give_roles(&home, store.as_ref())?;
    let home = Arc::new(home);
    let mut socket = None;
    let mut site_server = None;
    if let (Some(s), Some(store)) = (&cfg.site, store) {
        site_server = Some(SiteServer::new(
            home.clone(),
            store,
            lib.clone(),
            node.clone(),
            s.clone(),
        )?);
    }
    // Health and metrics: bound before readiness like every other port, answering 503 until
    // the readiness line.
    let mut health = None;
    if let Some(hc) = &cfg.health {
        let listener = std::net::TcpListener::bind(hc.listen)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .and_then(tokio::net::TcpListener::from_std)
            .map_err(|e| {
                DaemonError::Listen(format!(
                    "health endpoint: cannot listen on {} ({e}); choose a free [health] listen address",
                    hc.listen
                ))
            })?;
        ready.push(format!("health {}", listener.local_addr()?));
        let mut paths = vec![("library", cfg.library.clone()), ("home", cfg.home.clone())];
        if let Some(db) = cfg.site.as_ref().and_then(|s| s.database.parent()) {
            paths.push(("database", db.to_path_buf()));
        }
        let view = site_server
            .clone()
            .map(|s| s as Arc<dyn crate::health::StoreView>);
        let h = crate::health::Health::new(roles(&cfg), home.code.as_str(), paths, view);
        let app = crate::health::router(h.clone());
        // The content server's accept loop, with a small share of the descriptors: an idle or
        // slow client of the monitoring port is timed out and evicted like one of the DP's,
        // and can never take the descriptors the rest of freightd needs.
        tokio::spawn(crate::dp::http_server::serve(
            listener,
            app,
            crate::health::LIMITS,
            nofile,
        ));
        health = Some(h);
    }
    // Command streams: a site server answers its parent's instructions and its children's
    // reports (and passes DP commands on when the host is a DP too).
    let handler: Option<Arc<dyn CommandHandler>> = match &site_server {
        Some(site) => Some(Arc::new(crate::site_server::peer::SiteHandler {
            site: site.clone(),
            dp: handler,
        })),
        None => handler,
    };
    tokio::spawn(session::serve(node.clone(), lib.clone(), None, handler));

    if let (Some(s), Some(site)) = (&cfg.site, site_server) {
        let listener = bind_socket(&s.admin_socket)?;
        ready.push(format!("admin {}", s.admin_socket.display()));
        socket = Some(s.admin_socket.clone());
        let app = crate::admin::server::router(site.clone())
            .into_make_service_with_connect_info::<crate::admin::server::Caller>();
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "admin API stopped");
            }
        });
        // Every peer request the authorization table refuses joins the audit trail.
        let mut refusals = node.refusals();
        let audited = site.clone();
        tokio::spawn(async move {
            loop {
                match refusals.recv().await {
                    Ok((r, from)) => audited.audit_refusal(&r, &from.to_string()),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(
                            missed = n,
                            "refused requests came faster than the audit trail recorded them"
                        );
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        site.start();
    }

    // Readiness: systemd hears it through sd_notify; tests and scripts wait for this line.
    READY.store(true, std::sync::atomic::Ordering::Release);
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    println!("{READY_PREFIX}{}", ready.join("; "));
    std::io::stdout().flush()?;
    if let Some(h) = &health {
        h.set_ready();
    }

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    node.close();
    lib.flush().await?;
    if let Some(s) = socket {
        let _ = std::fs::remove_file(s);
    }
    println!("freightd stopped");
    Ok(())
}

/// Trust store entries written before roles existed hold none, and the authorization table
/// refuses them everything. Where the site database knows what a key is (a DP's key at its
/// site server), the entry gets that role; every other such entry is named once, with the
/// command that gives it one.
fn give_roles(home: &Home, store: Option<&Store>) -> Result<(), DaemonError> {
    let dps = match store {
        Some(s) => s.read(|db| db.dps(None))?,
        None => Vec::new(),
    };
    for e in home.trust.list()? {
        if e.revoked || !e.roles.is_empty() {
            continue;
        }
        let (code, fp) = (e.identity.code, e.identity.fingerprint());
        if dps
            .iter()
            .any(|d| d.key_site == code.as_str() && d.fingerprint == fp)
        {
            home.trust.add_role(code, Role::Dp)?;
            tracing::warn!(
                "trust store: {code} (key {fp}) was trusted before roles existed; it is a DP of this site, so it gets role dp"
            );
        } else {
            tracing::warn!(
                "trust store: {code} (key {fp}) was trusted before roles existed and has no role, so it is refused; give it one with `freight site identity role {code} --add ROLE`"
            );
        }
    }
    Ok(())
}

fn roles(cfg: &DaemonConfig) -> &'static str {
    match (cfg.site.is_some(), cfg.dp.is_some()) {
        (true, true) => "site server and DP",
        (true, false) => "site server",
        _ => "DP",
    }
}

/// Binds the admin socket (owner only). A socket file left by a killed daemon is replaced; one
/// that answers belongs to a running daemon and is refused.
fn bind_socket(path: &Path) -> Result<tokio::net::UnixListener, DaemonError> {
    use std::os::unix::fs::FileTypeExt;
    if let Ok(m) = std::fs::symlink_metadata(path) {
        // Never remove what is not a socket: a config pointing the socket at a database or
        // any other file must not destroy it.
        if !m.file_type().is_socket() {
            return Err(DaemonError::Listen(format!(
                "{}: exists and is not a socket; point admin_socket at a free path (nothing was changed)",
                path.display()
            )));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(DaemonError::Listen(format!(
                "{}: another freightd serves this admin socket; stop it or choose another admin_socket",
                path.display()
            )));
        }
        let _ = std::fs::remove_file(path);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let l = tokio::net::UnixListener::bind(path).map_err(|e| {
        DaemonError::Listen(format!(
            "{}: cannot create the admin socket ({e}); check the folder",
            path.display()
        ))
    })?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// The DP content server's listening socket, with a backlog of [`HTTP_BACKLOG`] (tokio's
/// `bind` takes 1,024): under a flood of connections a full backlog drops the SYNs of real
/// clients, who then wait a whole second for the retransmission.
fn http_listener(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(HTTP_BACKLOG)
}

/// Connections the kernel completes for the DP's HTTP listener before it accepts them (the
/// kernel caps it at `net.core.somaxconn`, 4,096 by default).
const HTTP_BACKLOG: u32 = 4096;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readiness_line_reads_back_into_its_fields() {
        let line = format!("{READY_PREFIX}DP DP1; quic 127.0.0.1:4433; http 127.0.0.1:8080\n");
        let (rest, fields) = ready_fields(&line).unwrap();
        assert_eq!(rest, "DP DP1; quic 127.0.0.1:4433; http 127.0.0.1:8080");
        let get = |k: &str| {
            fields
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("quic"), Some("127.0.0.1:4433"));
        assert_eq!(get("http"), Some("127.0.0.1:8080"));
        assert_eq!(get("admin"), None);
        assert!(ready_fields("freightd stopped").is_none());
    }
}
