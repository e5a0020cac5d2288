//! The authorization table on real `freightd` processes: for each role and request kind, what
//! the table allows happens and what it refuses is refused with its own line, before anything
//! is read or written (issue 10). Hosts: a site server PS1, a standard DP DP1, a pull DP PD1
//! whose source is DP1.

use freight_appliance::dp::command::{DpReply, DpRequest, decode_reply, encode};
use freight_core::{PackageId, Role, SiteCode, SiteKey};
use freight_test_support::bins;
use freight_test_support::dataset::{DatasetSpec, generate};
use freight_tests::hosts::*;
use freight_transport::quic::{Node, NodeConfig};
use freight_transport::session::{self, PushOptions, PushReport};
use freight_transport::store::SharedLibrary;
use freight_transport::tls::SiteTls;
use serde_json::json;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const SETTLE: Duration = Duration::from_secs(90);

fn freight_out(args: &[&str]) -> Output {
    Command::new(bins::appliance("freight"))
        .arg("--quiet")
        .args(args)
        .output()
        .unwrap()
}

/// A QUIC node speaking with `host`'s own key and trust store (what a compromised host could
/// do with its key), on a runtime of its own.
fn node_of(host: &Host, rt: &tokio::runtime::Runtime) -> Node {
    let home = host.home();
    let key = SiteKey::load_or_create(&home.join("site.key"), SiteCode::parse(&host.code).unwrap())
        .unwrap();
    let tls = SiteTls::new(&key, &home.join("trust")).unwrap();
    let _guard = rt.enter();
    Node::bind("127.0.0.1:0".parse().unwrap(), tls, NodeConfig::default()).unwrap()
}

/// Sends one DP command from `node` to `to` and returns the decoded answer.
fn command(rt: &tokio::runtime::Runtime, node: &Node, to: &Host, req: &DpRequest) -> DpReply {
    rt.block_on(async {
        let conn = node
            .connect(to.quic.parse().unwrap(), SiteCode::parse(&to.code).unwrap())
            .await
            .unwrap();
        let reply = freight_transport::command::request(&conn, &encode(req))
            .await
            .unwrap();
        conn.close("done");
        decode_reply(&reply).unwrap()
    })
}

fn refused(reply: &DpReply, what: &str) {
    let DpReply::Error { message, kind } = reply else {
        panic!("expected a refusal, got {reply:?}");
    };
    // No retry changes what the authorization table refuses.
    assert_eq!(
        *kind,
        freight_appliance::dp::command::FailureKind::Permanent,
        "{message}"
    );
    assert!(message.contains(what), "{message}");
    assert!(message.contains("(key "), "names the key: {message}");
    assert!(!message.contains('\n'));
}

fn audit_ids(site: &Host) -> Vec<u64> {
    site.ok("GET", "/v1/messages?audit=true", None)
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_u64().unwrap())
        .collect()
}

#[test]
fn the_authorization_table_holds_on_real_processes() {
    let net = Net::new();
    let mut site = net.site("site", "PS1", "");
    let mut dp1 = net.dp("dp1", "DP1", "standard", "");
    let mut pd1 = net.dp("pd1", "PD1", "pull", "");
    for h in [&mut site, &mut dp1, &mut pd1] {
        h.start();
    }
    pd1.trust(&dp1, "dp");
    dp1.trust(&pd1, "pull-dp");
    site.add_dp(&dp1, "dp1", &[]);
    site.add_dp(&pd1, "pd1", &["dp1"]);

    // Allowed: the site server commands its DPs; the source DP serves its pull DP.
    let src = net.p("src");
    generate(&src, &DatasetSpec::mixed(2 << 20, 3)).unwrap();
    let id = site.create("office", &src);
    site.act(&id, "distribute", json!({"dps": ["dp1"]}));
    site.settle(SETTLE);
    site.act(&id, "distribute", json!({"dps": ["pd1"]}));
    site.settle(SETTLE);
    for (dp, state, v) in site.status(&id) {
        assert_eq!((state.as_str(), v), ("Installed", Some(1)), "{dp}");
    }
    assert_serves(&pd1, &id, "1", &src);

    // 1. A DP may not push into its site server: DP1's key and a package version built
    //    from other files, the version the site would make next.
    let evil = net.p("evil");
    std::fs::create_dir_all(&evil).unwrap();
    for f in files(&src) {
        let p = evil.join(&f);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        let len = std::fs::metadata(src.join(&f)).unwrap().len() as usize;
        std::fs::write(&p, vec![b'X'; len]).unwrap();
    }
    let evil_lib = net.s("evil-lib");
    freight(&[
        "library",
        "-l",
        &evil_lib,
        "ingest",
        "--package",
        &id,
        "--version",
        "2",
        evil.to_str().unwrap(),
    ]);
    // A push of the evil library's version 2 to the site server with the key in `home`.
    let push_v2 = |home: &Path| {
        freight_out(&[
            "transfer",
            "--site",
            home.to_str().unwrap(),
            "--library",
            &evil_lib,
            "send",
            "--to",
            &site.quic,
            "--peer",
            "PS1",
            "--package",
            &id,
            "--version",
            "2",
            "--attempts",
            "1",
        ])
    };
    let out = push_v2(&dp1.home());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the push was accepted");
    assert!(
        err.contains("may not push content into this host's library"),
        "{err}"
    );
    assert!(err.lines().count() == 1, "one line: {err}");
    // The refusal is in the site's audit trail.
    assert!(audit_ids(&site).contains(&9101), "no 9101 audit message");
    // 1b. Nor may a key trusted at the site server as `site-server` by hand: a site server
    //     has no site server over it; only its configured parent pushes into it.
    let rogue = net.host("rogue", "PS9", "");
    site.trust(&rogue, "site-server");
    rogue.trust(&site, "dp");
    // The site's trust view notices the import on its next reload.
    let deadline = Instant::now() + Duration::from_secs(15);
    let (out, err) = loop {
        let out = push_v2(&rogue.home());
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        // Before the reload: not in the trust store. A refused connection may also reach the
        // client as a reset when the close is lost in the race with its first packets; the
        // attempt is then made again (the refusal must be the reason it ends with).
        let transient =
            err.contains("not in the trust store") || err.contains("reset the connection");
        if !transient || Instant::now() > deadline {
            break (out, err);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        !out.status.success(),
        "a site-server key pushed into a site server"
    );
    // Holding no role that counts at a site server, it is refused at the connection.
    assert!(err.contains("no role here"), "{err}");
    assert!(err.lines().count() == 1, "one line: {err}");
    // The site's next update is its own version 2 and every DP serves the site's real bytes.
    let first = files(&src)[0].clone();
    std::fs::write(src.join(&first), b"a real change").unwrap();
    let up = site.ok("POST", &format!("/v1/packages/{id}/update"), None);
    assert_eq!(up["version"], 2);
    site.settle(SETTLE);
    for (dp, state, v) in site.status(&id) {
        assert_eq!((state.as_str(), v), ("Installed", Some(2)), "{dp}");
    }
    assert_serves(&dp1, &id, "2", &src);
    assert_serves(&pd1, &id, "2", &src);

    // 2. A pull DP may read from its source but not command it or push into it.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let as_pd1 = node_of(&pd1, &rt);
    let p = || id.clone();
    for req in [
        DpRequest::Remove { package: p() },
        DpRequest::Repair { package: p() },
        DpRequest::Validate { package: p() },
        DpRequest::Install {
            package: p(),
            version: 2,
            hash: "00".repeat(32),
        },
        DpRequest::Pull {
            package: p(),
            version: 2,
            hash: "00".repeat(32),
            sources: vec![],
        },
        DpRequest::PullStatus {
            package: p(),
            version: 2,
        },
    ] {
        let reply = command(&rt, &as_pd1, &dp1, &req);
        refused(&reply, "may not manage this DP's packages");
    }
    // ... and DP1 still holds and serves the package.
    assert_serves(&dp1, &id, "2", &src);
    // A push from the pull DP into its source is refused with the unauthorized code.
    let pushed = rt.block_on(async {
        let lib = SharedLibrary::new(
            freight_core::Library::open_or_init(Path::new(&evil_lib), None).unwrap(),
        );
        let m = lib
            .read()
            .manifest(&PackageId::parse(&id).unwrap(), 2)
            .unwrap();
        let conn = as_pd1
            .connect(dp1.quic.parse().unwrap(), SiteCode::parse("DP1").unwrap())
            .await
            .unwrap();
        let mut report = PushReport::default();
        session::push(&conn, &lib, &m, &PushOptions::default(), &mut report).await
    });
    let e = pushed
        .expect_err("a pull DP pushed into its source")
        .to_string();
    assert!(
        e.contains("unauthorized") || e.contains("may not push"),
        "{e}"
    );
    assert_serves(&dp1, &id, "2", &src);

    // 3. The source DP's key may not command the pull DP either (it is trusted there as a
    //    DP, a source, not as its site server).
    let as_dp1 = node_of(&dp1, &rt);
    refused(
        &command(&rt, &as_dp1, &pd1, &DpRequest::Remove { package: p() }),
        "may not manage this DP's packages",
    );
    assert_serves(&pd1, &id, "2", &src);

    // 4. A removed DP is refused: dp2 is added, then removed; its key can no longer connect.
    let mut dp2 = net.dp("dp2", "DP2", "standard", "");
    dp2.start();
    site.add_dp(&dp2, "dp2", &[]);
    site.ok("DELETE", "/v1/dps/dp2", None);
    let trusted = freight(&[
        "site",
        "--site",
        site.home().to_str().unwrap(),
        "identity",
        "list",
        "--json",
    ]);
    assert!(!trusted.contains("\"DP2\""), "DP2 still trusted: {trusted}");
    let as_dp2 = node_of(&dp2, &rt);
    let r = rt.block_on(async {
        tokio::time::timeout(
            Duration::from_secs(10),
            as_dp2.connect(site.quic.parse().unwrap(), SiteCode::parse("PS1").unwrap()),
        )
        .await
    });
    assert!(
        !matches!(r, Ok(Ok(_))),
        "a removed DP connected to its old site server"
    );

    // Every admin request that changed something is in the audit trail with its caller.
    let audit = site.ok("GET", "/v1/messages?audit=true", None);
    let uid = nix::unistd::getuid().as_raw().to_string();
    assert!(
        audit.as_array().unwrap().iter().any(|m| m["id"] == 9100
            && m["strings"][0] == uid.as_str()
            && m["strings"][3] == "/v1/dps/dp2"),
        "{audit}"
    );
    // The ordinary message list does not mix the audit trail in.
    assert!(!site.message_ids(&id, None).iter().any(|i| *i >= 9100));
    // The trust store says what each key is for.
    let roles = freight(&[
        "site",
        "--site",
        dp1.home().to_str().unwrap(),
        "identity",
        "list",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&roles).unwrap();
    let role_of = |code: &str| {
        v.as_array()
            .unwrap()
            .iter()
            .find(|e| e["site"] == code)
            .unwrap()["roles"]
            .clone()
    };
    assert_eq!(role_of("PS1"), json!([Role::SiteServer.as_str()]));
    assert_eq!(role_of("PD1"), json!([Role::PullDp.as_str()]));
    drop(rt);
    for h in [&mut site, &mut dp1, &mut pd1, &mut dp2] {
        h.stop();
    }
}

#[test]
fn configs_that_would_destroy_data_and_a_second_site_server_are_refused() {
    let net = Net::new();
    let mut site = net.site("site", "PS1", "");
    site.start();
    let id = site.create("docs", &{
        let src = net.p("src");
        generate(&src, &DatasetSpec::mixed(1 << 20, 5)).unwrap();
        src
    });
    site.stop();
    let db = site.config.parent().unwrap().join("site.db");
    let before = std::fs::read(&db).unwrap();
    let start = |config: &Path| {
        Command::new(bins::appliance("freightd"))
            .arg("--config")
            .arg(config)
            .output()
            .unwrap()
    };
    let base = std::fs::read_to_string(&site.config).unwrap();
    // Relative paths are the config's folder's: variants live beside the original.
    let dir = site.config.parent().unwrap().to_path_buf();
    let with = |from: &str, to: &str| {
        let text = base.replace(from, to);
        assert_ne!(text, base);
        let p = dir.join(format!("cfg-{}.toml", to.len()));
        std::fs::write(&p, text).unwrap();
        p
    };
    // The admin socket pointed at the database: refused by the config check.
    let out = start(&with(
        "admin_socket = \"admin.sock\"",
        "admin_socket = \"site.db\"",
    ));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("are both"), "{err}");
    // The admin socket pointed at another existing regular file: refused, file untouched.
    let precious = site.config.parent().unwrap().join("precious.txt");
    std::fs::write(&precious, b"keep me").unwrap();
    let out = start(&with(
        "admin_socket = \"admin.sock\"",
        "admin_socket = \"precious.txt\"",
    ));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("is not a socket"), "{err}");
    assert_eq!(std::fs::read(&precious).unwrap(), b"keep me");
    assert_eq!(std::fs::read(&db).unwrap(), before, "the database changed");
    // A second site server on the same database (another library, other port) refuses.
    site.start();
    let second = with("library = \"library\"", "library = \"library-two\"");
    let text = std::fs::read_to_string(&second)
        .unwrap()
        .replace(
            &site.quic.rsplit(':').next().unwrap().to_string(),
            &free_port().to_string(),
        )
        .replace("admin.sock", "admin-two.sock");
    std::fs::write(&second, text).unwrap();
    let out = start(&second);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a second site server started");
    assert!(err.contains("in use by another freightd"), "{err}");
    // The first one still works and the database is owner-only.
    assert_eq!(
        site.ok("GET", &format!("/v1/packages/{id}"), None)["package"]["id"],
        id.as_str()
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&db).unwrap().permissions().mode() & 0o777,
        0o600
    );
    site.stop();
}

#[test]
fn the_admin_api_is_strict_and_answers_every_error_in_json() {
    let net = Net::new();
    let mut site = net.site("site", "PS1", "");
    site.start();
    let src = net.p("src");
    generate(&src, &DatasetSpec::mixed(1 << 20, 9)).unwrap();
    let s = src.to_str().unwrap();
    let refused =
        |method: &str, path: &str, body: Option<serde_json::Value>, code: u16, has: &str| {
            let (c, v) = site.api(method, path, body);
            assert_eq!(c, code, "{method} {path}: {v}");
            let e = v["error"]
                .as_str()
                .unwrap_or_else(|| panic!("{method} {path}: not a JSON error: {v}"));
            assert!(e.contains(has), "{method} {path}: {e}");
            assert!(!e.contains('\n'));
        };
    // A typo is refused by name, never defaulted.
    refused(
        "POST",
        "/v1/packages",
        Some(json!({"name": "a", "source": s, "priorty": "high"})),
        400,
        "priorty",
    );
    refused(
        "POST",
        "/v1/packages",
        Some(json!({"name": "", "source": s})),
        400,
        "package name",
    );
    refused(
        "POST",
        "/v1/packages",
        Some(json!({"name": "a\u{1b}[31mred", "source": s})),
        400,
        "control characters",
    );
    refused(
        "POST",
        "/v1/dpgroups",
        Some(json!({"name": ""})),
        400,
        "DP group name",
    );
    refused(
        "POST",
        "/v1/dpgroups",
        Some(json!({"name": "a\nb"})),
        400,
        "DP group name",
    );
    refused(
        "POST",
        "/v1/dps",
        Some(json!({"name": "dp1"})),
        400,
        "request body",
    );
    refused("GET", "/v1/messages?sinse=3", None, 400, "sinse");
    refused(
        "DELETE",
        "/v1/status",
        None,
        405,
        "does not take that method",
    );
    refused("GET", "/v1/nope", None, 404, "no such admin API path");
    // Not JSON at all.
    let out = Command::new("curl")
        .args(["-s", "--unix-socket"])
        .arg(site.admin.as_ref().unwrap())
        .args([
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "-d",
            "{not json",
        ])
        .arg("http://freightd/v1/packages")
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["error"].as_str().unwrap().contains("request body"), "{v}");
    // Nothing was created by any of these.
    assert_eq!(site.ok("GET", "/v1/packages", None), json!([]));
    site.stop();
}

#[test]
fn a_package_create_killed_midway_leaves_no_ghost_and_its_id_is_not_reused() {
    let net = Net::new();
    let mut site = net.site("site", "PS1", "");
    site.start();
    let src = net.p("src");
    // Large enough that the snapshot is still running when the site server is killed.
    generate(&src, &DatasetSpec::mixed(96 << 20, 11)).unwrap();
    let sock = site.admin.clone().unwrap();
    let body = json!({"name": "big", "source": src}).to_string();
    let create = Command::new("curl")
        .args(["-s", "--unix-socket"])
        .arg(&sock)
        .args([
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "-d",
            &body,
        ])
        .arg("http://freightd/v1/packages")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Kill once the snapshot has started writing packs.
    let packs = site.library.join("store").join("packs");
    let started = std::time::Instant::now();
    while std::fs::read_dir(&packs).map_or(0, |d| d.count()) == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the snapshot never started"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    site.kill();
    let out = create.wait_with_output().unwrap();
    assert!(
        out.stdout.is_empty() || !String::from_utf8_lossy(&out.stdout).contains("\"id\""),
        "the create finished before the kill; make the source larger"
    );
    site.start();
    // Nothing lists a package without a version, and nothing is half there.
    assert_eq!(site.ok("GET", "/v1/packages", None), json!([]));
    let db = rusqlite::Connection::open_with_flags(
        site.config.parent().unwrap().join("site.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let ghosts: i64 = db
        .query_row(
            "SELECT count(*) FROM packages p WHERE p.deleted = 0 AND NOT EXISTS
                 (SELECT 1 FROM package_versions v WHERE v.package = p.id)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(ghosts, 0);
    // The next create works and does not reuse the killed one's ID.
    let small = net.p("small");
    generate(&small, &DatasetSpec::mixed(1 << 20, 12)).unwrap();
    let id = site.create("small", &small);
    assert_eq!(id, "PS100002");
    let list = site.ok("GET", "/v1/packages", None);
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    site.stop();
}
