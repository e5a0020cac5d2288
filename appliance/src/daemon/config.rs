//! `freightd.toml`: which roles a host runs and where its state lives.
//!
//! ```toml
//! home = "host"                 # site folder (`freight site init`): code, key, trust store
//! library = "library"           # content library (created on first start)
//! listen = "127.0.0.1:4433"     # QUIC (port 0 picks one; the readiness line shows it)
//! unfinished_per_peer = "256GiB" # chunks one peer's unfinished transfers may hold here
//!
//! [site]                        # role: site server
//! database = "site.db"
//! admin_socket = "admin.sock"
//! dp_attempts = 100             # SPEC §6 defaults; durations like "30m", "5s", "500ms"
//! dp_retry_delay = "30m"
//! sender_retries = 2            # an address's defaults, where it sets none (SPEC §6)
//! sender_retry_delay = "1m"
//! sender_sends_per_site = 3
//!
//! [dp]                          # role: distribution point
//! kind = "standard"             # or "pull"
//! http = "127.0.0.1:8080"
//! # The HTTP content server's limits (defaults shown; see `dp::http_server`):
//! http_header_timeout = "10s"   # a request head must arrive whole within this
//! http_idle_timeout = "30s"     # a kept-alive connection without a request is closed after this
//! http_send_timeout = "30s"     # a response write stuck this long (a client not reading) closes it
//! http_max_connections = 4096   # connections at once; lowered to (RLIMIT_NOFILE - 512) / 2
//! http_max_per_address = 64     # connections at once from one client address (raise behind NAT)
//! http_max_listings = 4         # package listings sent at once; more wait up to 10 s, then 503
//!
//! [health]                      # optional: monitoring over plain HTTP (see `crate::health`)
//! listen = "0.0.0.0:9100"       # GET /health (JSON; 503 until ready), GET /metrics (Prometheus)
//! ```
//! The health listener is separate from the DP's content server and the admin socket: it says
//! nothing a monitoring system should not see (counts, free space, versions), takes no
//! input, and can be firewalled apart. Without a `[health]` section there is none.
//! Relative paths are taken from the config file's folder. Unknown keys are refused, so a
//! typo never silently falls back to a default.

use crate::dp::http_server::Limits;
use crate::model::DpKind;
// Durations read like every other duration in Freight: "30m", "5s", "500ms", "1h 30m".
use freight_core::units::{parse_duration, parse_size};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A config that cannot be used: one line naming the file, the key and the fix.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    /// The host's site folder (code, key, trust store).
    pub home: PathBuf,
    /// The content library.
    pub library: PathBuf,
    /// QUIC listening address.
    pub listen: SocketAddr,
    /// Seconds without a packet before a connection counts as cut.
    #[serde(default = "default_idle", with = "duration")]
    pub idle_timeout: Duration,
    /// Deadlines for peers (every wait on a peer ends; the job then follows its retry
    /// policy): a handshake must end within `handshake_timeout`; each message a session or
    /// command exchange waits for within `step_timeout`; a session whose peer sends nothing
    /// for `progress_timeout` is abandoned; a command's reply must come within
    /// `command_timeout`.
    #[serde(default = "d10s", with = "duration")]
    pub handshake_timeout: Duration,
    /// See `handshake_timeout`.
    #[serde(default = "d2m", with = "duration")]
    pub step_timeout: Duration,
    /// See `handshake_timeout`.
    #[serde(default = "d10m", with = "duration")]
    pub progress_timeout: Duration,
    /// See `handshake_timeout`.
    #[serde(default = "d10m", with = "duration")]
    pub command_timeout: Duration,
    /// Bytes of chunks a peer's unfinished transfers may leave in this host's library (kept
    /// for a resumption until they commit or 24 h pass) before its other transfers are
    /// aborted; one transfer alone (a resumption included) is never limited by it. Written
    /// like `256GiB`.
    #[serde(default = "d256gib", with = "size")]
    pub unfinished_per_peer: u64,
    /// The site server role.
    pub site: Option<SiteRole>,
    /// The DP role.
    pub dp: Option<DpRole>,
    /// The health endpoint and Prometheus metrics.
    pub health: Option<HealthRole>,
}

/// Settings of the health and metrics listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthRole {
    /// Plain HTTP address of `GET /health` and `GET /metrics`.
    pub listen: SocketAddr,
}

/// Settings of the site server role (SPEC §6 defaults).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteRole {
    /// The site database file.
    pub database: PathBuf,
    /// The admin API's Unix socket.
    pub admin_socket: PathBuf,
    /// DistMgr: packages processed at once.
    #[serde(default = "d3")]
    pub packages_parallel: usize,
    /// DistMgr: DP workers per package.
    #[serde(default = "d5")]
    pub dp_workers: usize,
    /// PkgXferMgr: attempts of a DP copy before it fails.
    #[serde(default = "d100")]
    pub dp_attempts: u32,
    /// PkgXferMgr: wait between attempts.
    #[serde(default = "d30m", with = "duration")]
    pub dp_retry_delay: Duration,
    /// Pull DPs: notification attempts before the job fails.
    #[serde(default = "d30")]
    pub pull_attempts: u32,
    /// Pull DPs: wait before notifying again (no source, at capacity).
    #[serde(default = "d30m", with = "duration")]
    pub pull_retry_delay: Duration,
    /// How often a pull DP is polled for its progress.
    #[serde(default = "d2s", with = "duration")]
    pub poll_interval: Duration,
    /// A pull DP's job fails (and follows its retry policy) once it has run this long, or
    /// once its bytes have not moved for the node's `progress_timeout`.
    #[serde(default = "d24h", with = "duration")]
    pub pull_deadline: Duration,
    /// Validate every installed copy this often (off when absent).
    #[serde(default, with = "opt_duration")]
    pub validate_every: Option<Duration>,
    /// Sessions per push attempt before it counts as failed (cuts resume within an attempt).
    #[serde(default = "d3u")]
    pub resume_sessions: u32,
    /// Sender: retries of a failed send to a child site, for addresses that set none.
    #[serde(default = "d2u")]
    pub sender_retries: u32,
    /// Sender: wait between those retries, for addresses that set none.
    #[serde(default = "d1m", with = "duration")]
    pub sender_retry_delay: Duration,
    /// Sender: sends at once to one child site, for addresses that set none.
    #[serde(default = "d3u")]
    pub sender_sends_per_site: u32,
}

/// Settings of the DP role.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DpRole {
    /// `standard` (the site server pushes) or `pull` (fetches from source DPs).
    #[serde(default = "standard", deserialize_with = "dp_kind")]
    pub kind: DpKind,
    /// HTTP content server address.
    pub http: SocketAddr,
    /// Pull DP: jobs at once (SPEC §6: 50).
    #[serde(default = "d50")]
    pub pull_capacity: usize,
    /// Pull DP: a fetch from one source gives up after this long (a stalled session ends
    /// sooner, at the node's `progress_timeout`).
    #[serde(default = "d24h", with = "duration")]
    pub pull_deadline: Duration,
    /// Materialise installed packages under this folder (`SHARE/PKG/`), optional.
    pub share: Option<PathBuf>,
    /// HTTP: a request head must arrive whole within this.
    #[serde(default = "http_header_timeout", with = "duration")]
    pub http_header_timeout: Duration,
    /// HTTP: a kept-alive connection without a new request is closed after this.
    #[serde(default = "http_idle_timeout", with = "duration")]
    pub http_idle_timeout: Duration,
    /// HTTP: a response write that makes no progress this long closes the connection.
    #[serde(default = "http_send_timeout", with = "duration")]
    pub http_send_timeout: Duration,
    /// HTTP: connections at once (lowered to fit the descriptor limit).
    #[serde(default = "http_max_connections")]
    pub http_max_connections: usize,
    /// HTTP: connections at once from one client address.
    #[serde(default = "http_max_per_address")]
    pub http_max_per_address: usize,
    /// HTTP: package listings sent at once.
    #[serde(default = "http_max_listings")]
    pub http_max_listings: usize,
}

impl DpRole {
    /// The HTTP content server's limits as configured.
    pub fn http_limits(&self) -> Limits {
        Limits {
            header_timeout: self.http_header_timeout,
            idle_timeout: self.http_idle_timeout,
            send_timeout: self.http_send_timeout,
            max_connections: self.http_max_connections,
            max_per_address: self.http_max_per_address,
            max_listings: self.http_max_listings,
        }
    }
}

fn http_header_timeout() -> Duration {
    Limits::default().header_timeout
}
fn http_idle_timeout() -> Duration {
    Limits::default().idle_timeout
}
fn http_send_timeout() -> Duration {
    Limits::default().send_timeout
}
fn http_max_connections() -> usize {
    Limits::default().max_connections
}
fn http_max_per_address() -> usize {
    Limits::default().max_per_address
}
fn http_max_listings() -> usize {
    Limits::default().max_listings
}

fn default_idle() -> Duration {
    Duration::from_secs(30)
}
fn d10s() -> Duration {
    Duration::from_secs(10)
}
fn d2m() -> Duration {
    Duration::from_secs(120)
}
fn d10m() -> Duration {
    Duration::from_secs(600)
}
fn d24h() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn d3() -> usize {
    3
}
fn d5() -> usize {
    5
}
fn d50() -> usize {
    50
}
fn d100() -> u32 {
    100
}
fn d30() -> u32 {
    30
}
fn d3u() -> u32 {
    3
}
fn d2u() -> u32 {
    2
}
fn d1m() -> Duration {
    Duration::from_secs(60)
}
fn d30m() -> Duration {
    Duration::from_secs(30 * 60)
}
fn d2s() -> Duration {
    Duration::from_secs(2)
}
fn standard() -> DpKind {
    DpKind::Standard
}

fn dp_kind<'de, D: serde::Deserializer<'de>>(d: D) -> Result<DpKind, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map_err(|_| {
        serde::de::Error::custom(format!("[dp] kind = {s:?}; write \"standard\" or \"pull\""))
    })
}

mod duration {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

mod size {
    use serde::{Deserialize, Deserializer};
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_size(&s).map_err(serde::de::Error::custom)
    }
}

fn d256gib() -> u64 {
    freight_transport::quic::NodeConfig::default().unfinished_per_peer
}

mod opt_duration {
    use serde::Deserializer;
    use std::time::Duration;
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        super::duration::deserialize(d).map(Some)
    }
}

impl DaemonConfig {
    /// Reads and checks the file; relative paths become relative to its folder.
    pub fn load(path: &Path) -> Result<DaemonConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError(format!(
                "{}: cannot read the config ({e}); pass --config FILE",
                path.display()
            ))
        })?;
        let mut c: DaemonConfig = toml::from_str(&text).map_err(|e| {
            // The line the error is on names the setting (the message alone may not).
            let at = e
                .span()
                .map(|span| {
                    let start = span.start.min(text.len());
                    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
                    let line = text[line_start..].lines().next().unwrap_or("").trim();
                    let n = text[..start].matches('\n').count() + 1;
                    format!(" at line {n} ({})", freight_core::text::printable(line))
                })
                .unwrap_or_default();
            ConfigError(format!(
                "{}: bad config{at}: {}; fix the file (see `freightd --help`)",
                path.display(),
                e.message().trim()
            ))
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let abs = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        abs(&mut c.home);
        abs(&mut c.library);
        if let Some(s) = &mut c.site {
            abs(&mut s.database);
            abs(&mut s.admin_socket);
        }
        if let Some(share) = c.dp.as_mut().and_then(|d| d.share.as_mut()) {
            abs(share);
        }
        // Two roles of one file would destroy each other (a socket bound over the database,
        // a library inside the home's trust store, ...): every configured path is its own.
        let mut paths: Vec<(&str, &Path)> = vec![("home", &c.home), ("library", &c.library)];
        if let Some(s) = &c.site {
            paths.push(("[site] database", &s.database));
            paths.push(("[site] admin_socket", &s.admin_socket));
        }
        if let Some(share) = c.dp.as_ref().and_then(|d| d.share.as_ref()) {
            paths.push(("[dp] share", share));
        }
        for (i, (a, pa)) in paths.iter().enumerate() {
            if let Some((b, _)) = paths[..i].iter().find(|(_, pb)| pb == pa) {
                return Err(ConfigError(format!(
                    "{}: {b} and {a} are both {}; give each its own path",
                    path.display(),
                    pa.display()
                )));
            }
        }
        if let Some(d) = &c.dp {
            let zero = [
                ("http_header_timeout", d.http_header_timeout.is_zero()),
                ("http_idle_timeout", d.http_idle_timeout.is_zero()),
                ("http_send_timeout", d.http_send_timeout.is_zero()),
                ("http_max_connections", d.http_max_connections == 0),
                ("http_max_per_address", d.http_max_per_address == 0),
                ("http_max_listings", d.http_max_listings == 0),
            ];
            if let Some((key, _)) = zero.iter().find(|(_, z)| *z) {
                return Err(ConfigError(format!(
                    "{}: [dp] {key} is zero, which would refuse every client; leave it out for the default or give a positive value",
                    path.display()
                )));
            }
        }
        if c.site.is_none() && c.dp.is_none() {
            return Err(ConfigError(format!(
                "{}: no role configured; add a [site] or a [dp] section (or both)",
                path.display()
            )));
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<DaemonConfig, String> {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("freightd.toml");
        std::fs::write(&p, text).unwrap();
        DaemonConfig::load(&p).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_the_specs_and_paths_are_relative_to_the_file() {
        let c = load(
            "home = \"h\"\nlibrary = \"l\"\nlisten = \"127.0.0.1:0\"\n[site]\ndatabase = \"s.db\"\nadmin_socket = \"a.sock\"\n[dp]\nhttp = \"127.0.0.1:0\"\n",
        )
        .unwrap();
        let d = c.dp.unwrap();
        assert_eq!((d.kind, d.pull_capacity), (DpKind::Standard, 50));
        assert_eq!(d.http_limits(), Limits::default());
        let s = c.site.unwrap();
        assert_eq!(
            (s.packages_parallel, s.dp_workers, s.dp_attempts),
            (3, 5, 100)
        );
        assert_eq!(s.dp_retry_delay, Duration::from_secs(1800));
        assert_eq!(s.pull_attempts, 30);
        assert!(c.home.is_absolute() && c.home.ends_with("h"));
        assert_eq!(c.unfinished_per_peer, 256 << 30);
        let c = load(
            "home = \"h\"\nlibrary = \"l\"\nlisten = \"127.0.0.1:0\"\nunfinished_per_peer = \"2GiB\"\n[dp]\nhttp = \"127.0.0.1:0\"\n",
        )
        .unwrap();
        assert_eq!(c.unfinished_per_peer, 2 << 30);
    }

    #[test]
    fn bad_configs_are_refused_with_one_line() {
        let base = "home = \"h\"\nlibrary = \"l\"\nlisten = \"127.0.0.1:0\"\n";
        for (text, want) in [
            (base.to_string(), "no role configured"),
            (
                format!("{base}[dp]\nhttp = \"127.0.0.1:0\"\nkind = \"branch\"\n"),
                "write \"standard\" or \"pull\"",
            ),
            (
                format!("{base}[dp]\nhttp = \"127.0.0.1:0\"\ncolour = 1\n"),
                "unknown field",
            ),
            (
                format!(
                    "{base}[site]\ndatabase = \"d\"\nadmin_socket = \"a\"\ndp_retry_delay = \"soon\"\n"
                ),
                "not a duration",
            ),
            ("home = 1".to_string(), "bad config"),
            (
                format!("unfinished_per_peer = \"lots\"\n{base}[dp]\nhttp = \"127.0.0.1:0\"\n"),
                "unfinished_per_peer",
            ),
            (
                format!("{base}[site]\ndatabase = \"s.db\"\nadmin_socket = \"s.db\"\n"),
                "[site] database and [site] admin_socket are both",
            ),
            (
                format!("{base}[dp]\nhttp = \"127.0.0.1:0\"\nshare = \"l\"\n"),
                "library and [dp] share are both",
            ),
            (
                format!("{base}[dp]\nhttp = \"127.0.0.1:0\"\nhttp_max_per_address = 0\n"),
                "[dp] http_max_per_address is zero",
            ),
            (
                format!("{base}[dp]\nhttp = \"127.0.0.1:0\"\nhttp_header_timeout = \"0s\"\n"),
                "[dp] http_header_timeout is zero",
            ),
        ] {
            let e = load(&text).unwrap_err();
            assert!(e.contains(want), "{e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn durations_read_like_people_write_them() {
        assert_eq!(parse_duration("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1h 30m").unwrap(), Duration::from_secs(5400));
        assert!(parse_duration("-5s").is_err());
    }
}
