//! End to end: a site server's place in the hierarchy (issue 13, items 1 and 9) on a real
//! `freightd`: `freight site add-child|set-parent|list|show|remove` and `freight address
//! add|list|show|schedule|remove` through the admin socket, the week's grid, every refusal as
//! one line, and the transport's authorization by route (a parent or child key holds its role
//! only as the site database configures it).

use freight_test_support::dataset::{DatasetSpec, generate};
use freight_tests::hosts::*;
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;

/// `freight ARGS --admin SOCKET`: standard output, asserting success.
fn adm(site: &Host, args: &[&str]) -> String {
    let mut all = args.to_vec();
    all.extend(["--admin", site.admin.as_ref().unwrap().to_str().unwrap()]);
    freight(&all)
}

/// `freight ARGS --admin SOCKET --json`, parsed.
fn adm_json(site: &Host, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let out = adm(site, &all);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
}

/// `freight ARGS --admin SOCKET` that must fail with one line; returns it.
fn adm_fail(net: &Net, site: &Host, args: &[&str]) -> String {
    let mut all = args.to_vec();
    all.extend(["--admin", site.admin.as_ref().unwrap().to_str().unwrap()]);
    net.fail(&all)
}

/// Writes `host`'s identity to `NAME.id` in the net's folder and returns the path.
fn identity_file(net: &Net, host: &Host) -> String {
    let f = net.s(&format!("{}.id", host.name));
    std::fs::write(&f, host.identity()).unwrap();
    f
}

/// `freight site --site HOME identity ARGS` on `host`'s home (offline; a running freightd
/// reads its trust store again within a second).
fn identity(host: &Host, args: &[&str]) -> String {
    let home = host.home();
    let mut all = vec!["site", "--site", home.to_str().unwrap(), "identity"];
    all.extend(args);
    freight(&all)
}

/// The roles `host`'s trust store gives `code` (none when it is not trusted).
fn roles(host: &Host, code: &str) -> Vec<String> {
    let list: Value = serde_json::from_str(&identity(host, &["list", "--json"])).unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .filter(|e| e["site"] == code && e["revoked"] == false)
        .flat_map(|e| e["roles"].as_array().unwrap().clone())
        .map(|r| r.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn site_verbs_configure_the_parent_and_children_and_refuse_bad_input_in_one_line() {
    let net = Net::new();
    let mut ps1 = net.site("ps1", "PS1", "");
    let cas = net.host("cas", "CAS", "");
    let ss1 = net.host("ss1", "SS1", "");
    let ss2 = net.host("ss2", "SS2", "");
    ps1.start();
    let (cas_id, ss1_id, ss2_id, ps1_id) = (
        identity_file(&net, &cas),
        identity_file(&net, &ss1),
        identity_file(&net, &ss2),
        identity_file(&net, &ps1),
    );
    let fail = |args: &[&str]| adm_fail(&net, &ps1, args);

    let out = adm(&ps1, &["site", "list"]);
    assert!(out.contains("PS1   this site  own key"), "{out}");
    let out = adm(&ps1, &["site", "add-child", "SS1", "--identity", &ss1_id]);
    assert!(
        out.starts_with("site SS1 is now the child of this site (key trusted, fingerprint "),
        "{out}"
    );
    let out = adm(&ps1, &["site", "set-parent", "CAS", "--identity", &cas_id]);
    assert!(
        out.starts_with("site CAS is now the parent of this site"),
        "{out}"
    );
    assert_eq!(roles(&ps1, "SS1"), ["child"]);
    assert_eq!(roles(&ps1, "CAS"), ["parent"]);

    // Hostile and mistaken input: one line each, naming the object and the remedy.
    let e = fail(&["site", "add-child", "SS1", "--identity", &ss1_id]);
    assert!(
        e.contains("site SS1 is already a child of PS1") && e.contains("freight site remove SS1"),
        "{e}"
    );
    let e = fail(&["site", "add-child", "PS1", "--identity", &ps1_id]);
    assert!(
        e.contains("site PS1 is this site; a site cannot be its own child"),
        "{e}"
    );
    let e = fail(&["site", "add-child", "CAS", "--identity", &cas_id]);
    assert!(
        e.contains("site CAS is the parent of PS1; it cannot also be its child (no cycles)"),
        "{e}"
    );
    let e = fail(&["site", "set-parent", "SS1"]);
    assert!(
        e.contains("site SS1 is a child of PS1; it cannot also be its parent (no cycles)"),
        "{e}"
    );
    let e = fail(&["site", "set-parent", "SS2", "--identity", &ss2_id]);
    assert!(
        e.contains("site PS1 already has parent CAS; remove it first"),
        "{e}"
    );
    let e = fail(&["site", "add-child", "SS2"]);
    assert!(
        e.contains(
            "child site SS2: no identity given and none in the trust store; pass --identity FILE"
        ),
        "{e}"
    );
    let e = fail(&["site", "add-child", "SS2", "--identity", &ss1_id]);
    assert!(
        e.contains("child site SS2: the identity is site SS1's"),
        "{e}"
    );
    let e = fail(&["site", "add-child", "ss2"]);
    assert!(e.contains("site code \"ss2\": use 3 upper-case"), "{e}");
    let big = net.s("big.id");
    std::fs::write(&big, "x".repeat(1 << 20)).unwrap();
    let e = fail(&["site", "add-child", "SS2", "--identity", &big]);
    assert!(
        e.contains("more than 4096 bytes, not a site identity"),
        "{e}"
    );
    // The API refuses an oversized identity too, whatever client sends it.
    let (code, v) = ps1.api(
        "POST",
        "/v1/sites/children",
        Some(json!({"code": "SS2", "identity": "y".repeat(100_000)})),
    );
    assert_eq!(code, 400, "{v}");
    let line = v["error"].as_str().unwrap();
    assert!(
        line.contains("the identity is 100000 bytes, more than 4096") && line.len() < 200,
        "{line}"
    );
    // A revoked key: refused with the identity file and without it.
    identity(&ps1, &["import", &ss2_id, "--role", "agent"]);
    identity(&ps1, &["revoke", "SS2"]);
    let e = fail(&["site", "add-child", "SS2", "--identity", &ss2_id]);
    assert!(
        e.contains("child site SS2: key ") && e.contains(" is revoked here"),
        "{e}"
    );
    let e = fail(&["site", "add-child", "SS2"]);
    assert!(
        e.contains("child site SS2: its key ") && e.contains("is revoked here"),
        "{e}"
    );
    let e = fail(&["site", "show", "XX1"]);
    assert!(
        e.contains(
            "no site XX1 is this site's parent or child; list them with `freight site list`"
        ),
        "{e}"
    );
    let e = fail(&["site", "remove", "PS1"]);
    assert!(
        e.contains("site PS1 is this site; only its parent or a child can be removed"),
        "{e}"
    );

    let sites = adm_json(&ps1, &["site", "list"]);
    let rel: Vec<(&str, &str, &str)> = sites
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["code"].as_str().unwrap(),
                s["relation"].as_str().unwrap(),
                s["key"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rel,
        [
            ("PS1", "this site", "own key"),
            ("CAS", "parent", "trusted"),
            ("SS1", "child", "trusted")
        ]
    );

    // Addresses: both forms of the schedule, the week drawn as a grid.
    let week = "Mon-Fri 08:00-18:00 high 2MiB/s; Sat-Sun closed";
    let out = adm(
        &ps1,
        &[
            "address",
            "add",
            "SS1",
            "--endpoint",
            "127.0.0.1:4999",
            "--throttle",
            week,
        ],
    );
    assert!(
        out.contains("standard address to site SS1 added (127.0.0.1:4999)"),
        "{out}"
    );
    let toml = net.p("week.toml");
    std::fs::write(
        &toml,
        "[[window]]\ndays = \"Mon-Fri\"\nhours = \"08:00-18:00\"\nallowed = \"high\"\nrate = \"2MiB/s\"\n\
         [[window]]\ndays = \"Sat-Sun\"\nallowed = \"closed\"\n",
    )
    .unwrap();
    adm(
        &ps1,
        &[
            "address",
            "add",
            "SS1",
            "--kind",
            "courier",
            "--file",
            toml.to_str().unwrap(),
            "--retries",
            "5",
            "--retry-delay",
            "90s",
        ],
    );
    let e = fail(&["address", "show", "SS1"]);
    assert!(
        e.contains(
            "site SS1 has a standard and a courier address; pass --kind standard or --kind courier"
        ),
        "{e}"
    );
    let shown = adm(&ps1, &["address", "show", "SS1", "--kind", "standard"]);
    let lines: Vec<&str> = shown.lines().collect();
    assert!(shown.contains("retries        2 (site default)"), "{shown}");
    assert!(
        shown.contains("retry delay    1m (site default)"),
        "{shown}"
    );
    assert!(shown.contains(&format!("schedule       {week}")), "{shown}");
    let grid_at = lines
        .iter()
        .position(|l| l.starts_with("week in UTC"))
        .unwrap();
    assert!(lines[grid_at + 1].starts_with("     00 01 02"), "{shown}");
    let cells = |day: &str| -> Vec<String> {
        let l = lines.iter().find(|l| l.starts_with(day)).unwrap();
        l.split_whitespace().skip(1).map(String::from).collect()
    };
    let mut monday = vec!["A."; 8];
    monday.extend(["H1"; 10]);
    monday.extend(["A."; 6]);
    assert_eq!(cells("Mon"), monday, "{shown}");
    assert_eq!(cells("Fri"), monday, "{shown}");
    assert_eq!(cells("Sun"), vec!["--"; 24], "{shown}");
    assert!(
        shown.contains("who:  A all   M medium and high   H high only   -- closed"),
        "{shown}"
    );
    assert!(shown.contains("rate: . unlimited   1 2MiB/s"), "{shown}");
    // The TOML form gave the same week.
    let courier = adm(&ps1, &["address", "show", "SS1", "--kind", "courier"]);
    assert!(
        courier.contains("endpoint       - (parcels on media)"),
        "{courier}"
    );
    assert!(courier.contains("retries        5\n"), "{courier}");
    assert!(courier.contains("retry delay    90s\n"), "{courier}");
    let grid = |s: &str| s[s.find("week in").unwrap()..].to_string();
    assert_eq!(grid(&courier), grid(&shown));
    let json = adm_json(&ps1, &["address", "show", "SS1", "--kind", "courier"]);
    assert_eq!(json["schedule"], week, "{json}");
    assert_eq!(json["retry_delay_ms"], 90_000, "{json}");
    assert_eq!(json["defaults"], json!(["max_sends"]), "{json}");
    let out = adm(
        &ps1,
        &[
            "address",
            "schedule",
            "SS1",
            "--kind",
            "standard",
            "--throttle",
            "link 100Mbit/s; daily medium 50%",
        ],
    );
    assert!(out.contains("week in UTC, link 100Mbit/s"), "{out}");
    assert_eq!(out.matches(" M1").count(), 168, "{out}");
    assert!(out.contains("1 50% of the link"), "{out}");
    let list = adm(&ps1, &["address", "list"]);
    assert!(
        list.contains("SS1   courier") && list.contains("SS1   standard"),
        "{list}"
    );

    // Bad addresses and schedules.
    let e = fail(&["address", "add", "XX1", "--endpoint", "127.0.0.1:1"]);
    assert!(
        e.contains("no site XX1 is this site's parent or child"),
        "{e}"
    );
    let e = fail(&["address", "add", "CAS", "--endpoint", "127.0.0.1:1"]);
    assert!(
        e.contains("site CAS is this site's parent; addresses lead down, to children only"),
        "{e}"
    );
    let e = fail(&["address", "add", "SS1", "--endpoint", "127.0.0.1:1"]);
    assert!(e.contains("site SS1 already has a standard address"), "{e}");
    let sched = |text: &str| {
        fail(&[
            "address",
            "schedule",
            "SS1",
            "--kind",
            "standard",
            "--throttle",
            text,
        ])
    };
    let e = sched("Mon 08:00-18:30 high");
    assert!(
        e.contains("standard address to SS1: schedule: ") && e.contains("18:30"),
        "{e}"
    );
    let e = sched("daily 0MiB/s");
    assert!(e.contains("\"0MiB/s\""), "{e}");
    let e = sched("daily 150%");
    assert!(e.contains("150%"), "{e}");
    let e = sched("Mon-Fri,Day8 closed");
    assert!(e.contains("unknown day"), "{e}");
    let bad_toml = net.p("bad.toml");
    std::fs::write(
        &bad_toml,
        "[[window]]\ndays = \"Mon-Sun,Mon-Sun\"\nallowed = \"sometimes\"\n",
    )
    .unwrap();
    let e = fail(&[
        "address",
        "schedule",
        "SS1",
        "--kind",
        "courier",
        "--file",
        bad_toml.to_str().unwrap(),
    ]);
    assert!(
        e.contains("courier address to SS1: schedule: ") && e.contains("sometimes"),
        "{e}"
    );
    let huge = net.p("huge.toml");
    std::fs::write(&huge, "#".repeat(1 << 20)).unwrap();
    let e = fail(&[
        "address",
        "schedule",
        "SS1",
        "--kind",
        "courier",
        "--file",
        huge.to_str().unwrap(),
    ]);
    assert!(e.contains("a schedule is at most 65536 bytes"), "{e}");
    let (code, v) = ps1.api(
        "PUT",
        "/v1/addresses/SS1/schedule?kind=standard",
        Some(json!({"text": "daily closed; ".repeat(8_000)})),
    );
    assert_eq!(code, 400, "{v}");
    let line = v["error"].as_str().unwrap();
    assert!(
        line.contains("more than 65536") && line.len() < 300,
        "{line}"
    );
    let e = fail(&[
        "address",
        "add",
        "SS1",
        "--kind",
        "courier",
        "--endpoint",
        "127.0.0.1:1",
    ]);
    assert!(e.contains("a courier address has no endpoint"), "{e}");
    let e = fail(&["address", "add", "SS1", "--kind", "standard"]);
    assert!(
        e.contains("a standard address needs the child's QUIC endpoint"),
        "{e}"
    );

    // A child with addresses is not removed (no cascade); without them it is, and its key
    // loses its role.
    let e = fail(&["site", "remove", "SS1"]);
    assert!(
        e.contains("child site SS1 still has its courier and standard address; remove it first"),
        "{e}"
    );
    adm(&ps1, &["address", "remove", "SS1", "--kind", "courier"]);
    // One address left: the kind may be left out.
    let out = adm(&ps1, &["address", "remove", "SS1"]);
    assert_eq!(out, "removed the standard address to site SS1\n");
    let e = fail(&["address", "show", "SS1"]);
    assert!(
        e.contains("no address to site SS1; list them with `freight address list`"),
        "{e}"
    );
    let out = adm(&ps1, &["site", "remove", "SS1"]);
    assert_eq!(out, "removed child site SS1\n");
    assert!(roles(&ps1, "SS1").is_empty());
    assert_eq!(
        adm(&ps1, &["address", "list"]),
        "no addresses; add one with `freight address add SITE --endpoint HOST:PORT`\n"
    );

    // What was configured survives a restart.
    ps1.stop();
    ps1.start();
    let shown = adm(&ps1, &["site", "show", "CAS"]);
    assert!(shown.contains("site         CAS (parent)"), "{shown}");
    assert!(shown.contains("key          trusted"), "{shown}");
}

/// Ingests `src` as `package` into `host`'s library (the host is not running).
fn ingest(host: &Host, package: &str, src: &Path) {
    host.library_cmd(&["ingest", "-p", package, src.to_str().unwrap()]);
}

/// `freight transfer send` of `package` from `from` (not running) to the running `to`.
fn send(net: &Net, from: &Host, to: &Host, package: &str) -> std::process::Output {
    let home = from.home();
    net.run(&[
        "transfer",
        "--site",
        home.to_str().unwrap(),
        "--library",
        from.library.to_str().unwrap(),
        "send",
        "--to",
        &to.quic,
        "--peer",
        &to.code,
        "-p",
        package,
        "--attempts",
        "1",
    ])
}

/// The audit trail's refusals (9101) of peer `code`, as their sentences.
fn refusals(site: &Host, code: &str) -> Vec<String> {
    site.ok("GET", "/v1/messages?audit=true", None)
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["id"] == 9101 && m["strings"][0] == code)
        .map(|m| m["text"].as_str().unwrap().to_string())
        .collect()
}

/// Item 9 at the data level, on the wire: a key imported by hand with the `parent` or
/// `child` role holds it at a site server only once `freight site` configures that site, and
/// loses it when the site is removed; content comes only from the parent, never from a child.
#[test]
fn parent_and_child_roles_hold_only_as_the_site_database_configures_them() {
    let net = Net::new();
    let mut ps1 = net.site("ps1", "PS1", "");
    let cas = net.host("cas", "CAS", "");
    let ss1 = net.host("ss1", "SS1", "");
    let src = net.p("src");
    generate(&src, &DatasetSpec::mixed(1 << 20, 7)).unwrap();
    ingest(&cas, "CAS00001", &src);
    ingest(&ss1, "SS100001", &src);
    // The senders trust PS1 (they only connect out); PS1 trusts both by hand, as parent and
    // as child, before anything is configured.
    cas.trust(&ps1, "child");
    ss1.trust(&ps1, "parent");
    ps1.trust(&cas, "parent");
    ps1.trust(&ss1, "child");
    ps1.start();

    // Not configured: the roles imported by hand grant nothing, so neither may connect.
    for (from, pkg) in [(&cas, "CAS00001"), (&ss1, "SS100001")] {
        let out = send(&net, from, &ps1, pkg);
        assert!(!out.status.success(), "{} pushed unconfigured", from.code);
    }
    ps1.wait_for(
        "the refusals in the audit trail",
        Duration::from_secs(10),
        |h| !refusals(h, "CAS").is_empty() && !refusals(h, "SS1").is_empty(),
    );
    let r = refusals(&ps1, "CAS");
    assert!(r[0].contains("may not connect"), "{r:?}");

    // Configured (the keys the trust store holds): the parent pushes content, the child may
    // connect but not push content up.
    adm(&ps1, &["site", "set-parent", "CAS"]);
    adm(&ps1, &["site", "add-child", "SS1"]);
    let out = send(&net, &cas, &ps1, "CAS00001");
    assert!(
        out.status.success(),
        "the parent's push: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("sent CAS00001 v1 to PS1"));
    let out = send(&net, &ss1, &ps1, "SS100001");
    assert!(!out.status.success(), "a child pushed content up");
    ps1.wait_for("the child's refused push", Duration::from_secs(10), |h| {
        refusals(h, "SS1")
            .iter()
            .any(|t| t.contains("may not push content into this host's library"))
    });

    // Removed: the parent's key loses its role and is refused again.
    adm(&ps1, &["site", "remove", "CAS"]);
    assert!(roles(&ps1, "CAS").is_empty());
    let out = send(&net, &cas, &ps1, "CAS00001");
    assert!(!out.status.success(), "a removed parent pushed");
}
