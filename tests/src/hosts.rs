//! Real `freightd` processes on loopback for the end-to-end tests: a site server and DPs, each
//! with its own folder, key, library and fixed ports (so a restarted process keeps its address),
//! driven through the admin API with `curl` and checked over HTTP with `curl`.

use freight_appliance::daemon::ready_fields;
use rand::RngExt;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::world::World;
pub use crate::world::freight;
use freight_test_support::bins;

/// A folder of hosts: a [`World`] (its paths and `freight` runs) with host builders.
pub struct Net(World);

impl std::ops::Deref for Net {
    type Target = World;
    fn deref(&self) -> &World {
        &self.0
    }
}

/// One freightd process and what it announced.
pub struct Host {
    /// The host's folder name in the [`Net`].
    pub name: String,
    /// Its site code (the key's site).
    pub code: String,
    /// Its `freightd.toml`.
    pub config: PathBuf,
    /// The running process, if started.
    pub child: Option<Child>,
    /// The QUIC address from the readiness line.
    pub quic: String,
    /// The DP's HTTP address from the readiness line.
    pub http: Option<String>,
    /// The site server's admin socket from the readiness line.
    pub admin: Option<PathBuf>,
    /// Its content library's folder.
    pub library: PathBuf,
}

/// A free loopback port (UDP and TCP probed) below the kernel's ephemeral range, so that no
/// outgoing connection of another process takes it while a host is down between a stop and a
/// restart. Tests run as concurrent processes, each choosing ports long before its daemons
/// bind them: a port is claimed with a lock file held until this test process exits, so two
/// tests never choose the same one (a daemon of one test answering another's site looks
/// like an untrusted peer).
pub fn free_port() -> u16 {
    static CLAIMED: std::sync::Mutex<Vec<std::fs::File>> = std::sync::Mutex::new(Vec::new());
    let first_ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let claims = std::env::temp_dir().join("freight-test-ports");
    std::fs::create_dir_all(&claims).unwrap();
    let mut rng = rand::rng();
    loop {
        let port = rng.random_range(10_000..first_ephemeral.max(10_001));
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(claims.join(port.to_string()))
            .unwrap();
        if lock.try_lock().is_err() {
            continue;
        }
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
            && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
        {
            CLAIMED.lock().unwrap_or_else(|p| p.into_inner()).push(lock);
            return port;
        }
    }
}

impl Default for Net {
    fn default() -> Net {
        Net::new()
    }
}

impl Net {
    /// A new, empty folder of hosts.
    pub fn new() -> Net {
        Net(World::new())
    }

    /// A new folder of hosts in `dir`, on a file system the test throws away whole
    /// ([`World::in_scratch`]).
    pub fn in_scratch(dir: &std::path::Path) -> Net {
        Net(World::in_scratch(dir))
    }

    /// Creates a host folder with its key; `extra` is appended to the config (role sections).
    pub fn host(&self, name: &str, code: &str, extra: &str) -> Host {
        let dir = self.p(name);
        std::fs::create_dir_all(&dir).unwrap();
        freight(&[
            "site",
            "--site",
            dir.join("home").to_str().unwrap(),
            "init",
            "--code",
            code,
        ]);
        let config = dir.join("freightd.toml");
        let text = format!(
            "home = \"home\"\nlibrary = \"library\"\nlisten = \"127.0.0.1:{}\"\nidle_timeout = \"3s\"\n{extra}",
            free_port()
        );
        std::fs::write(&config, text).unwrap();
        Host {
            name: name.into(),
            code: code.into(),
            config,
            child: None,
            quic: String::new(),
            http: None,
            admin: None,
            library: dir.join("library"),
        }
    }

    /// A site server host (fast retries for tests).
    pub fn site(&self, name: &str, code: &str, extra: &str) -> Host {
        self.host(
            name,
            code,
            &format!(
                "[site]\ndatabase = \"site.db\"\nadmin_socket = \"admin.sock\"\ndp_attempts = 3\ndp_retry_delay = \"1s\"\npull_attempts = 30\npull_retry_delay = \"1s\"\npoll_interval = \"200ms\"\nresume_sessions = 1\n{extra}"
            ),
        )
    }

    /// A running site server "site" (PS1, with `site_extra` config) and a running standard DP
    /// "dp" (DP1) registered with it as dp1.
    pub fn site_and_dp(&self, site_extra: &str) -> (Host, Host) {
        let mut site = self.site("site", "PS1", site_extra);
        let mut dp = self.dp("dp", "DP1", "standard", "");
        site.start();
        dp.start();
        site.add_dp(&dp, "dp1", &[]);
        (site, dp)
    }

    /// A DP host.
    pub fn dp(&self, name: &str, code: &str, kind: &str, extra: &str) -> Host {
        self.host(
            name,
            code,
            &format!(
                "[dp]\nkind = \"{kind}\"\nhttp = \"127.0.0.1:{}\"\n{extra}",
                free_port()
            ),
        )
    }
}

impl Host {
    /// Its site folder (key and trust store).
    pub fn home(&self) -> PathBuf {
        self.config.parent().unwrap().join("home")
    }

    /// Its public identity text.
    pub fn identity(&self) -> String {
        freight(&[
            "site",
            "--site",
            self.home().to_str().unwrap(),
            "identity",
            "export",
        ])
    }

    /// This host trusts `other` in `role` (`site-server`, `dp`, `pull-dp`, ...).
    pub fn trust(&self, other: &Host, role: &str) {
        let f = self
            .config
            .parent()
            .unwrap()
            .join(format!("{}.id", other.name));
        std::fs::write(&f, other.identity()).unwrap();
        freight(&[
            "site",
            "--site",
            self.home().to_str().unwrap(),
            "identity",
            "import",
            f.to_str().unwrap(),
            "--role",
            role,
        ]);
        // A running daemon rereads its trust store within its poll interval (500 ms,
        // `freight_transport::quic`): wait it out, so a test's next step meets the new trust.
        if self.child.is_some() {
            std::thread::sleep(Duration::from_millis(700));
        }
    }

    /// Starts freightd and waits for its readiness line.
    pub fn start(&mut self) {
        self.start_with(&[]);
    }

    /// [`Host::start`] with more environment variables (test hooks such as
    /// `FREIGHT_TEST_PAUSE`, see `freight_appliance::test_pause`).
    pub fn start_with(&mut self, env: &[(&str, &str)]) {
        let mut child = Command::new(bins::appliance("freightd"))
            .envs(env.iter().copied())
            .arg("--config")
            .arg(&self.config)
            .env(
                "FREIGHT_LOG",
                std::env::var("FREIGHT_LOG").unwrap_or("warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let fields = loop {
            match rx.recv_timeout(Duration::from_secs(60)) {
                Ok(l) => {
                    if let Some((_, fields)) = ready_fields(&l) {
                        break fields;
                    }
                }
                Err(_) => panic!("{}: freightd did not become ready", self.name),
            }
        };
        let field = |k: &str| {
            fields
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        self.quic = field("quic").expect("quic address");
        self.http = field("http");
        self.admin = field("admin").map(PathBuf::from);
        self.child = Some(child);
    }

    /// SIGKILL, no warning.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `freight library --library LIBRARY ARGS` on this host's library (the host must be
    /// stopped); asserts success and returns standard output.
    pub fn library_cmd(&self, args: &[&str]) -> String {
        let mut all = vec!["library", "--library", self.library.to_str().unwrap()];
        all.extend(args);
        freight(&all)
    }

    /// `freight library stats --json` of this host's library (the host must be stopped).
    pub fn library_stats(&self) -> Value {
        serde_json::from_str(&self.library_cmd(&["stats", "--json"])).unwrap()
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            )
            .unwrap();
            let st = c.wait().unwrap();
            assert!(st.success(), "{} exited with {st}", self.name);
        }
    }

    /// The process ID of the running freightd.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    /// An admin API call: (HTTP status, JSON body).
    pub fn api(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let sock = self.admin.as_ref().expect("a site server");
        let mut c = Command::new("curl");
        c.args(["-s", "-S", "--unix-socket"]).arg(sock).args([
            "-X",
            method,
            "-w",
            "\n%{http_code}",
        ]);
        if let Some(b) = body {
            c.args(["-H", "content-type: application/json", "-d", &b.to_string()]);
        }
        let out = c.arg(format!("http://freightd{path}")).output().unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (
            code.trim().parse().unwrap_or(0),
            serde_json::from_str(body).unwrap_or(Value::Null),
        )
    }

    /// An admin call that must succeed.
    pub fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (code, v) = self.api(method, path, body.clone());
        assert_eq!(code, 200, "{method} {path} {body:?}: {v}");
        v
    }

    /// `package create`: returns the new package's ID.
    pub fn create(&self, name: &str, source: &Path) -> String {
        self.create_with(json!({"name": name, "source": source}))
    }

    /// `package create` with this body (name, source, more): returns the new package's ID.
    pub fn create_with(&self, body: Value) -> String {
        let v = self.ok("POST", "/v1/packages", Some(body));
        v["id"].as_str().unwrap().to_string()
    }

    /// A package action (`distribute`, `redistribute`, `validate`, `update`) that must succeed.
    pub fn act(&self, id: &str, action: &str, targets: Value) -> Value {
        self.ok(
            "POST",
            &format!("/v1/packages/{id}/{action}"),
            Some(targets),
        )
    }

    /// Makes this pull DP and its source DP trust each other in their roles (the pull DP
    /// fetches from `source`).
    pub fn pull_from(&self, source: &Host) {
        self.trust(source, "dp");
        source.trust(self, "pull-dp");
    }

    /// Registers `dp` at this site (and makes them trust each other).
    pub fn add_dp(&self, dp: &Host, name: &str, sources: &[&str]) {
        dp.trust(self, "site-server");
        let kind = if sources.is_empty() {
            "standard"
        } else {
            "pull"
        };
        self.ok(
            "POST",
            "/v1/dps",
            Some(
                json!({"name": name, "kind": kind, "address": dp.quic, "http": dp.http,
                        "identity": dp.identity(), "sources": sources}),
            ),
        );
    }

    /// Package status rows of `package`: dp → (state, version).
    pub fn status(&self, package: &str) -> Vec<(String, String, Option<u64>)> {
        let v = self.ok("GET", &format!("/v1/status?package={package}"), None);
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["dp"].as_str().unwrap().to_string(),
                    s["state"].as_str().unwrap().to_string(),
                    s["version"].as_u64(),
                )
            })
            .collect()
    }

    /// Waits until no job is live (every distribution settled).
    pub fn settle(&self, within: Duration) {
        let end = Instant::now() + within;
        loop {
            let v = self.ok("GET", "/v1/progress", None);
            if v.as_array().unwrap().is_empty() {
                return;
            }
            assert!(Instant::now() < end, "{}: jobs still live: {v}", self.name);
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until `f` holds.
    pub fn wait_for(&self, what: &str, within: Duration, mut f: impl FnMut(&Host) -> bool) {
        let end = Instant::now() + within;
        while !f(self) {
            assert!(
                Instant::now() < end,
                "{}: timed out waiting for {what}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Messages of `package` as JSON.
    pub fn messages(&self, package: &str) -> Vec<Value> {
        self.ok("GET", &format!("/v1/messages?package={package}"), None)
            .as_array()
            .unwrap()
            .clone()
    }

    /// Message IDs of `package` (optionally of one DP), in order.
    pub fn message_ids(&self, package: &str, dp: Option<&str>) -> Vec<u64> {
        self.messages(package)
            .iter()
            .filter(|m| dp.is_none() || m["dp"].as_str() == dp || m["dp"].is_null())
            .map(|m| m["id"].as_u64().unwrap())
            .collect()
    }

    /// The relays of `package` at `version` this site ran (message 4515): destination and
    /// bytes, from the site database.
    pub fn relayed(&self, package: &str, version: u32) -> Vec<(String, u64)> {
        let db = self.config.parent().unwrap().join("site.db");
        let c =
            rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .unwrap();
        let mut st = c
            .prepare(
                "SELECT strings FROM status_messages WHERE message_id = 4515 AND package = ?1 AND version = ?2 ORDER BY id",
            )
            .unwrap();
        st.query_map(rusqlite::params![package, version], |r| {
            r.get::<_, String>(0)
        })
        .unwrap()
        .map(|s| {
            let v: Vec<String> = serde_json::from_str(&s.unwrap()).unwrap();
            (v[2].clone(), v[3].parse().unwrap())
        })
        .collect()
    }

    /// Bytes sent by the jobs of `package` at `version` to `dp` (from the site database).
    pub fn bytes_sent(&self, package: &str, version: u32, dp: &str, action: &str) -> u64 {
        let db = self.config.parent().unwrap().join("site.db");
        let c =
            rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .unwrap();
        c.query_row(
            "SELECT coalesce(sum(bytes_sent), 0) FROM distribution_jobs WHERE package = ?1 AND version = ?2 AND dp = ?3 AND action = ?4",
            rusqlite::params![package, version, dp, action],
            |r| r.get::<_, i64>(0),
        )
        .unwrap() as u64
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `curl` GET of a DP file: body bytes, or None when curl fails or the status is not 200.
pub fn fetch(http: &str, package: &str, version: &str, path: &str) -> Option<Vec<u8>> {
    let out = Command::new("curl")
        .args(["-s", "-f"])
        .arg(format!(
            "http://{http}/packages/{package}/{version}/files/{path}"
        ))
        .output()
        .unwrap();
    out.status.success().then_some(out.stdout)
}

/// Every regular file under `dir`, relative, sorted.
pub fn files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                out.push(
                    e.path()
                        .strip_prefix(dir)
                        .unwrap()
                        .to_str()
                        .unwrap()
                        .to_string(),
                );
            }
        }
    }
    out.sort();
    out
}

/// Asserts the DP serves every file of `src` byte-identical as `package` `version`.
pub fn assert_serves(dp: &Host, package: &str, version: &str, src: &Path) {
    let http = dp.http.as_deref().expect("a DP");
    for f in files(src) {
        let got = fetch(http, package, version, &f)
            .unwrap_or_else(|| panic!("{}: {package} {version} {f} not served", dp.name));
        assert!(
            got == std::fs::read(src.join(&f)).unwrap(),
            "{}: {package} {version} {f} differs",
            dp.name
        );
    }
}
