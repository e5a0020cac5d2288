//! End to end: packages down a three-tier hierarchy and status back up (issue 13, items 2–5
//! and 7) on real `freightd` processes: CAS → PS1 → SS1, a DP at each site. A package made at
//! the CAS and distributed to its own DP and to the sites below reaches every DP through the
//! Sender and the Despooler of each hop; the CAS's status shows every DP with its site; an
//! update moves only new chunks on each hop; a removal at the CAS removes the package from
//! every DP of the hierarchy; the Sender retries and obeys windows; the Despooler refuses what
//! it must, each with one line.

use freight_appliance::site_server::peer::{SiteReply, SiteRequest, encode};
use freight_test_support::dataset::{DatasetSpec, generate};
use freight_tests::hosts::*;
use serde_json::{Value, json};
use std::time::Duration;

const SETTLE: Duration = Duration::from_secs(120);

/// Makes `child` a child of `parent` with a standard address, and `parent` the parent of
/// `child` (reporting to its QUIC endpoint).
fn link(parent: &Host, child: &Host, extra: Value) {
    parent.ok(
        "POST",
        "/v1/sites/children",
        Some(json!({"code": child.code, "identity": child.identity()})),
    );
    let mut addr = json!({"site": child.code, "kind": "standard", "endpoint": child.quic});
    if let (Value::Object(a), Value::Object(e)) = (&mut addr, extra) {
        a.extend(e);
    }
    parent.ok("POST", "/v1/addresses", Some(addr));
    child.ok(
        "PUT",
        "/v1/sites/parent",
        Some(json!({"code": parent.code, "identity": parent.identity(), "address": parent.quic})),
    );
}

/// Running site servers CAS and PS1 (not yet linked) and a standard DP of PS1, "dpp".
fn cas_and_ps1_with_a_dp(net: &Net) -> (Host, Host, Host) {
    let mut cas = net.site("cas", "CAS", "");
    let mut ps1 = net.site("ps1", "PS1", "");
    let mut dpp = net.dp("dpp", "DPP", "standard", "");
    for h in [&mut cas, &mut ps1, &mut dpp] {
        h.start();
    }
    ps1.add_dp(&dpp, "dpp", &[]);
    (cas, ps1, dpp)
}

/// Status rows of `package` at `site`: (site or "", dp, state, version).
fn rows(site: &Host, package: &str) -> Vec<(String, String, String, Option<u64>)> {
    let v = site.ok("GET", &format!("/v1/status?package={package}"), None);
    let mut out: Vec<_> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["site"].as_str().unwrap_or("").to_string(),
                s["dp"].as_str().unwrap().to_string(),
                s["state"].as_str().unwrap().to_string(),
                s["version"].as_u64(),
            )
        })
        .collect();
    out.sort();
    out
}

/// The Sender's outbox at `site`.
fn sends(site: &Host) -> Vec<Value> {
    site.ok("GET", "/v1/sends", None)
        .as_array()
        .unwrap()
        .clone()
}

/// Waits until every row of `package` at `site` names `want` DPs Installed at `version`.
fn wait_installed(site: &Host, package: &str, want: usize, version: u64) {
    site.wait_for(&format!("{want} DPs Installed v{version}"), SETTLE, |s| {
        let r = rows(s, package);
        r.len() == want
            && r.iter()
                .all(|(_, _, st, v)| st == "Installed" && *v == Some(version))
    });
}

/// The position of the first message `id` in `ids`, panicking with them all when absent.
fn at(ids: &[u64], id: u64, who: &str) -> usize {
    ids.iter()
        .position(|i| *i == id)
        .unwrap_or_else(|| panic!("{who}: no message {id} in {ids:?}"))
}

#[test]
fn a_package_made_at_the_cas_reaches_dps_at_three_tiers_and_status_rolls_up() {
    let net = Net::new();
    let mut cas = net.site("cas", "CAS", "");
    let mut ps1 = net.site("ps1", "PS1", "");
    let mut ss1 = net.site("ss1", "SS1", "");
    let mut dpc = net.dp("dpc", "DPC", "standard", "");
    let mut dpp = net.dp("dpp", "DPP", "standard", "");
    let mut dps = net.dp("dps", "DPS", "standard", "");
    for h in [&mut cas, &mut ps1, &mut ss1, &mut dpc, &mut dpp, &mut dps] {
        h.start();
    }
    cas.add_dp(&dpc, "dpc", &[]);
    ps1.add_dp(&dpp, "dpp", &[]);
    ss1.add_dp(&dps, "dps", &[]);
    link(&cas, &ps1, json!({}));
    link(&ps1, &ss1, json!({}));

    // The CAS learns of SS1 from PS1's report.
    let src = net.p("src");
    generate(&src, &DatasetSpec::mixed(6 << 20, 11)).unwrap();
    let id = cas.create("office", &src);
    let body = json!({"dps": ["dpc"], "sites": ["PS1", "SS1"]});
    cas.wait_for("SS1 known through PS1's report", SETTLE, |c| {
        c.api(
            "POST",
            &format!("/v1/packages/{id}/distribute"),
            Some(body.clone()),
        )
        .0 == 200
    });

    // Every DP of the hierarchy, at the CAS, in its status and its package summary.
    wait_installed(&cas, &id, 3, 1);
    let below = cas.ok("GET", "/v1/sites/below", None);
    assert_eq!(below, json!([["PS1", "CAS"], ["SS1", "PS1"]]));
    let summary = &cas.ok("GET", &format!("/v1/packages/{id}"), None)["package"]["summary"];
    assert_eq!(
        (&summary["targeted"], &summary["installed"]),
        (&json!(3), &json!(3)),
        "{summary}"
    );
    let r = rows(&cas, &id);
    let names: Vec<(&str, &str)> = r.iter().map(|x| (x.0.as_str(), x.1.as_str())).collect();
    assert_eq!(names, [("", "dpc"), ("PS1", "dpp"), ("SS1", "dps")]);
    for dp in [&dpc, &dpp, &dps] {
        assert_serves(dp, &id, "1", &src);
    }
    // A child shows the package it was sent, with its definition.
    let pkg = ss1.ok("GET", &format!("/v1/packages/{id}"), None);
    assert_eq!(pkg["package"]["name"], "office");
    assert_eq!(pkg["package"]["version"], 1);

    // The messages of each hop, in order.
    let c = cas.message_ids(&id, None);
    assert!(at(&c, 2333, "CAS") > at(&c, 2376, "CAS"), "{c:?}");
    assert!(c.contains(&4510), "CAS: {c:?}");
    let p = ps1.message_ids(&id, None);
    assert!(at(&p, 4400, "PS1") < at(&p, 2333, "PS1"), "{p:?}");
    assert!(at(&p, 4400, "PS1") < at(&p, 2330, "PS1"), "{p:?}");
    let s = ss1.message_ids(&id, None);
    assert!(at(&s, 4400, "SS1") < at(&s, 2330, "SS1"), "{s:?}");
    assert!(!s.contains(&2333), "SS1 sends nothing on: {s:?}");
    // CAS → PS1 carries both sites; PS1 → SS1 only SS1.
    let first = sends(&cas);
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(first[0]["dest"], "PS1");
    assert_eq!(first[0]["sites"], json!(["PS1", "SS1"]));
    assert_eq!(first[0]["state"], "sent");
    let hop2 = sends(&ps1);
    assert_eq!(hop2[0]["dest"], "SS1");
    assert_eq!(hop2[0]["sites"], json!(["SS1"]));
    let full = first[0]["bytes_sent"].as_u64().unwrap();
    assert!(full > 1 << 20, "{first:?}");
    // PS1 relayed the version to SS1 and to its DP while it arrived (4515), and SS1 to its
    // DP; the Sender's own send from PS1 then found SS1 holding it.
    let relays = |site: &Host, v| {
        let mut r = site.relayed(&id, v);
        r.sort();
        r
    };
    let r1 = relays(&ps1, 1);
    assert_eq!(
        r1.iter().map(|x| x.0.as_str()).collect::<Vec<_>>(),
        ["SS1", "distribution point dpp"],
        "{r1:?} {:?}",
        ps1.messages(&id)
    );
    let r1s = relays(&ss1, 1);
    assert_eq!(r1s.len(), 1, "{r1s:?}");
    assert_eq!(r1s[0].0, "distribution point dps");
    let relayed_to_ss1 = r1[0].1;
    let sent_to_ss1 = hop2[0]["bytes_sent"].as_u64().unwrap();
    // The version crossed the hop about once (relay and send together), not twice.
    assert!(
        relayed_to_ss1 + sent_to_ss1 < full + full / 10,
        "PS1 → SS1: relayed {relayed_to_ss1}, sent {sent_to_ss1}, the version {full}"
    );

    // An update: one new small file; each hop moves only the new chunks.
    std::fs::write(src.join("new-note.txt"), vec![b'n'; 20_000]).unwrap();
    cas.ok("POST", &format!("/v1/packages/{id}/update"), None);
    wait_installed(&cas, &id, 3, 2);
    for dp in [&dpc, &dpp, &dps] {
        assert_serves(dp, &id, "2", &src);
    }
    for (who, site) in [("CAS", &cas), ("PS1", &ps1)] {
        let s = sends(site);
        let v2 = s.iter().find(|r| r["version"] == 2).unwrap();
        assert_eq!(v2["state"], "sent", "{who}: {v2}");
        assert_eq!(v2["base_version"], 1, "{who}: a delta: {v2}");
        // What a relay moved on this hop counts too.
        let relayed: u64 = match who {
            "PS1" => ps1
                .relayed(&id, 2)
                .iter()
                .filter(|r| r.0 == "SS1")
                .map(|r| r.1)
                .sum(),
            _ => 0,
        };
        let bytes = v2["bytes_sent"].as_u64().unwrap() + relayed;
        assert!(
            bytes < 64 << 10,
            "{who}: the update sent {bytes} bytes (the first version {full})"
        );
    }

    // An update made at a child is refused: the package belongs to the CAS.
    let (code, v) = ps1.api("POST", &format!("/v1/packages/{id}/update"), None);
    assert_eq!(code, 409, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("came from site CAS"),
        "{v}"
    );
    // A removal at a child of a package its parent sent is refused; at the CAS it removes
    // the package from every DP in the hierarchy.
    let (code, v) = ss1.api("DELETE", &format!("/v1/packages/{id}"), None);
    assert_eq!(code, 409, "{v}");
    cas.ok("DELETE", &format!("/v1/packages/{id}"), None);
    cas.wait_for("every DP Removed", SETTLE, |c| {
        let r = rows(c, &id);
        r.len() == 3 && r.iter().all(|x| x.2 == "Removed")
    });
    let probe = files(&src)[0].clone();
    for dp in [&dpc, &dpp, &dps] {
        assert_eq!(
            fetch(dp.http.as_ref().unwrap(), &id, "latest", &probe),
            None,
            "{} still serves the package",
            dp.name
        );
    }
    for (who, site) in [("PS1", &ps1), ("SS1", &ss1)] {
        assert!(
            site.message_ids(&id, None).contains(&4403),
            "{who}: no 4403"
        );
        site.wait_for("the package deleted", SETTLE, |s| {
            s.api("GET", &format!("/v1/packages/{id}"), None).0 == 404
        });
    }
    for h in [&mut cas, &mut ps1, &mut ss1, &mut dpc, &mut dpp, &mut dps] {
        h.stop();
    }
}

/// The state of the newest send request of `package` at `site`.
fn send_state(site: &Host, package: &str) -> Option<Value> {
    sends(site).into_iter().find(|r| r["package"] == package)
}

#[test]
fn the_sender_retries_a_child_that_is_down_then_fails_and_a_closed_window_holds_medium_while_high_goes()
 {
    let net = Net::new();
    let (mut cas, mut ps1, mut dpp) = cas_and_ps1_with_a_dp(&net);
    link(&cas, &ps1, json!({"retries": 2, "retry_delay": "1s"}));

    // PS1 is down: two retries a second apart, then the send fails with its message.
    ps1.kill();
    let src = net.p("src");
    generate(&src, &DatasetSpec::mixed(1 << 20, 5)).unwrap();
    let id = cas.create("tools", &src);
    cas.act(&id, "distribute", json!({"sites": ["PS1"]}));
    cas.wait_for("the send failed", SETTLE, |c| {
        send_state(c, &id).is_some_and(|s| s["state"] == "failed")
    });
    let s = send_state(&cas, &id).unwrap();
    assert_eq!(s["attempts"], 3, "{s}");
    let ids = cas.message_ids(&id, None);
    assert_eq!(ids.iter().filter(|i| **i == 4511).count(), 2, "{ids:?}");
    assert_eq!(ids.iter().filter(|i| **i == 4512).count(), 1, "{ids:?}");
    let failed = cas
        .messages(&id)
        .into_iter()
        .find(|m| m["id"] == 4512)
        .unwrap();
    let text = failed["text"].as_str().unwrap_or_default().to_string();
    assert!(
        text.contains("site PS1") && !text.contains('\n'),
        "{failed}"
    );

    // PS1 returns; distributing again sends the package.
    ps1.start();
    cas.act(&id, "distribute", json!({"sites": ["PS1"]}));
    wait_installed(&cas, &id, 1, 1);
    assert_serves(&dpp, &id, "1", &src);

    // A window closed to medium: a high-priority package goes, a medium one waits in the
    // outbox until the window opens.
    cas.ok(
        "PUT",
        "/v1/addresses/PS1/schedule?kind=standard",
        Some(json!({"text": "daily high"})),
    );
    let (lo, hi) = (net.p("lo"), net.p("hi"));
    generate(&lo, &DatasetSpec::mixed(1 << 20, 6)).unwrap();
    generate(&hi, &DatasetSpec::mixed(1 << 20, 7)).unwrap();
    let medium = cas.create_with(json!({"name": "medium", "source": lo, "priority": "medium"}));
    let high = cas.create_with(json!({"name": "high", "source": hi, "priority": "high"}));
    cas.act(&medium, "distribute", json!({"sites": ["PS1"]}));
    cas.act(&high, "distribute", json!({"sites": ["PS1"]}));
    wait_installed(&cas, &high, 1, 1);
    std::thread::sleep(Duration::from_secs(2));
    let held = send_state(&cas, &medium).unwrap();
    assert_eq!(held["state"], "queued", "the medium package went: {held}");
    assert_eq!(held["attempts"], 0, "{held}");
    cas.ok(
        "PUT",
        "/v1/addresses/PS1/schedule?kind=standard",
        Some(json!({"text": "daily all"})),
    );
    wait_installed(&cas, &medium, 1, 1);
    assert_serves(&dpp, &medium, "1", &lo);
    for h in [&mut cas, &mut ps1, &mut dpp] {
        h.stop();
    }
}

/// A QUIC node speaking with `host`'s own key and trust store (what that site, or someone
/// holding its key, could send), on `rt`.
fn node_of(host: &Host, rt: &tokio::runtime::Runtime) -> freight_transport::quic::Node {
    let home = host.home();
    let key = freight_core::SiteKey::load_or_create(
        &home.join("site.key"),
        freight_core::SiteCode::parse(&host.code).unwrap(),
    )
    .unwrap();
    let tls = freight_transport::tls::SiteTls::new(&key, &home.join("trust")).unwrap();
    let _g = rt.enter();
    freight_transport::quic::Node::bind(
        "127.0.0.1:0".parse().unwrap(),
        tls,
        freight_transport::quic::NodeConfig::default(),
    )
    .unwrap()
}

/// Sends `req` from `node` to site server `to` and returns its answer.
fn site_request(
    rt: &tokio::runtime::Runtime,
    node: &freight_transport::quic::Node,
    to: &Host,
    req: &SiteRequest,
) -> SiteReply {
    rt.block_on(async {
        let conn = node
            .connect(
                to.quic.parse().unwrap(),
                freight_core::SiteCode::parse(&to.code).unwrap(),
            )
            .await
            .unwrap();
        let reply = freight_transport::command::request(&conn, &encode(req))
            .await
            .unwrap();
        conn.close("done");
        serde_json::from_slice(&reply).unwrap()
    })
}

/// Sends `ins` signed by `key` to `to` as a Despool request from `node` and returns the
/// answer.
fn despool(
    rt: &tokio::runtime::Runtime,
    node: &freight_transport::quic::Node,
    to: &Host,
    ins: &freight_core::instruction::Instruction,
    key: &freight_core::SiteKey,
) -> SiteReply {
    let signed = ins.sign(key).unwrap().encode();
    let instruction = freight_core::text::hex(&signed);
    site_request(rt, node, to, &SiteRequest::Despool { instruction })
}

fn refused_with(reply: &SiteReply, what: &str, permanent: bool) {
    match reply {
        SiteReply::Error {
            message,
            permanent: p,
        } => {
            assert!(message.contains(what), "{message}");
            assert!(!message.contains('\n'), "{message}");
            assert_eq!(*p, permanent, "{message}");
        }
        other => panic!("expected a refusal ({what}), got {other:?}"),
    }
}

#[test]
fn the_despooler_refuses_forged_foreign_and_misdirected_instructions_and_drops_older_versions() {
    use freight_core::instruction::{Instruction, InstructionKind};
    use freight_core::{PackageId, Role, SiteCode, SiteKey, TrustStore};
    let net = Net::new();
    let mut cas = net.site("cas", "CAS", "");
    let mut ps1 = net.site("ps1", "PS1", "");
    for h in [&mut cas, &mut ps1] {
        h.start();
    }
    link(&cas, &ps1, json!({}));
    // A package at PS1 in versions 1 and 2, the real way.
    let src = net.p("src");
    generate(&src, &DatasetSpec::mixed(1 << 20, 8)).unwrap();
    let id = cas.create("kit", &src);
    cas.act(&id, "distribute", json!({"sites": ["PS1"]}));
    std::fs::write(src.join("v2.txt"), b"two").unwrap();
    cas.ok("POST", &format!("/v1/packages/{id}/update"), None);
    ps1.wait_for("version 2 at PS1", SETTLE, |s| {
        s.api("GET", &format!("/v1/packages/{id}"), None).1["package"]["version"] == 2
    });
    let v1_hash = {
        let v = ps1.ok("GET", &format!("/v1/packages/{id}"), None);
        let h = v["versions"][0]["hash"].as_str().unwrap().to_string();
        let b = blake3::Hash::from_hex(&h).unwrap();
        *b.as_bytes()
    };

    // The parent's own key, as a compromised or confused parent would use it.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let cas_key = SiteKey::load_or_create(
        &cas.home().join("site.key"),
        SiteCode::parse("CAS").unwrap(),
    )
    .unwrap();
    let node = node_of(&cas, &rt);
    let base = Instruction {
        kind: InstructionKind::Package,
        origin: SiteCode::parse("CAS").unwrap(),
        destination: SiteCode::parse("PS1").unwrap(),
        package: PackageId::parse(&id).unwrap(),
        version: 1,
        base_version: None,
        manifest_hash: v1_hash,
        created_unix: 1_700_000_000,
        sequence: 1,
        notes:
            json!({"name": "kit", "priority": "medium", "files": 1, "bytes": 1, "sites": ["PS1"]})
                .to_string(),
    };

    // An older version than PS1 holds: dropped, informational, not an error.
    assert_eq!(
        despool(&rt, &node, &ps1, &base, &cas_key),
        SiteReply::Dropped { newer: 2 }
    );
    assert!(ps1.message_ids(&id, None).contains(&4402));

    // Forged: claims to come from CAS, signed by another key.
    let t = net.p("keys");
    std::fs::create_dir_all(&t).unwrap();
    let forger =
        SiteKey::load_or_create(&t.join("forged.key"), SiteCode::parse("CAS").unwrap()).unwrap();
    refused_with(
        &despool(&rt, &node, &ps1, &base, &forger),
        "signature",
        true,
    );
    // Meant for another site.
    let other = Instruction {
        destination: SiteCode::parse("SS9").unwrap(),
        ..base.clone()
    };
    refused_with(&despool(&rt, &node, &ps1, &other, &cas_key), "SS9", true);
    // Signed by a site PS1 does not know.
    let stranger =
        SiteKey::load_or_create(&t.join("xx9.key"), SiteCode::parse("XX9").unwrap()).unwrap();
    let foreign = Instruction {
        origin: SiteCode::parse("XX9").unwrap(),
        ..base.clone()
    };
    refused_with(&despool(&rt, &node, &ps1, &foreign, &stranger), "XX9", true);
    // Signed by a site whose key PS1 revoked.
    let old = SiteKey::load_or_create(&t.join("rv1.key"), SiteCode::parse("RV1").unwrap()).unwrap();
    let trust = TrustStore::open(&ps1.home().join("trust")).unwrap();
    trust.import(&old.identity(), Role::Child).unwrap();
    trust.revoke(SiteCode::parse("RV1").unwrap()).unwrap();
    let revoked = Instruction {
        origin: SiteCode::parse("RV1").unwrap(),
        ..base.clone()
    };
    refused_with(&despool(&rt, &node, &ps1, &revoked, &old), "revoked", true);
    // A version whose content never arrived: transient, the sender pushes it again.
    let early = Instruction {
        version: 9,
        ..base.clone()
    };
    refused_with(
        &despool(&rt, &node, &ps1, &early, &cas_key),
        "has not arrived",
        false,
    );
    // A package PS1 made itself may not be replaced from above.
    let own = Instruction {
        package: PackageId::parse("PS100001").unwrap(),
        ..base.clone()
    };
    refused_with(
        &despool(&rt, &node, &ps1, &own, &cas_key),
        "created at this site",
        true,
    );
    // By route: the child may not send its parent instructions, and the parent may not
    // report status to its child (the authorization table, before anything is read).
    let as_ps1 = node_of(&ps1, &rt);
    refused_with(
        &despool(&rt, &as_ps1, &cas, &base, &cas_key),
        "may not send instructions",
        true,
    );
    let report = SiteRequest::Report {
        sites: vec![("XX1".into(), "CAS".into())],
        changes: vec![],
        received: vec![],
    };
    refused_with(
        &site_request(&rt, &node, &ps1, &report),
        "may not report package status",
        true,
    );
    // A child's report naming a site that is not below it is refused whole.
    let lying = SiteRequest::Report {
        sites: vec![("PS1".into(), "CAS".into())],
        changes: vec![freight_appliance::site_server::store::sends::StatusChange {
            seq: 1,
            package: id.clone(),
            site: "SS7".into(),
            dp: "dp".into(),
            state: "installed".into(),
            version: Some(1),
            message: None,
        }],
        received: vec![],
    };
    refused_with(
        &site_request(&rt, &as_ps1, &cas, &lying),
        "not below it",
        true,
    );
    // Every permanent refusal is in PS1's messages (4401), one per refusal.
    let all = ps1.ok("GET", "/v1/messages", None);
    let n = all
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["id"] == 4401)
        .count();
    assert_eq!(n, 5, "{all}");
    // A `prepare` (the relay's head start) passes the same checks: not from a child, not
    // forged, not for another site; an older version is dropped.
    let prepare = |node: &freight_transport::quic::Node, to: &Host, ins: &Instruction, key| {
        let instruction = freight_core::text::hex(&ins.sign(key).unwrap().encode());
        site_request(&rt, node, to, &SiteRequest::Prepare { instruction })
    };
    refused_with(
        &prepare(&as_ps1, &cas, &base, &cas_key),
        "may not send instructions",
        true,
    );
    refused_with(&prepare(&node, &ps1, &base, &forger), "signature", true);
    refused_with(&prepare(&node, &ps1, &other, &cas_key), "SS9", true);
    assert_eq!(
        prepare(&node, &ps1, &base, &cas_key),
        SiteReply::Dropped { newer: 2 }
    );
    // PS1 still holds version 2 and nothing else changed.
    let v = ps1.ok("GET", &format!("/v1/packages/{id}"), None);
    assert_eq!(v["package"]["version"], 2);
    assert_eq!(v["versions"].as_array().unwrap().len(), 2);
    drop(rt);
    for h in [&mut cas, &mut ps1] {
        h.stop();
    }
}

#[test]
fn eight_packages_to_three_child_sites_never_run_more_than_three_sends_to_one_site_or_five_in_all()
{
    let net = Net::new();
    let mut cas = net.site("cas", "CAS", "");
    let mut kids: Vec<Host> = ["PS1", "PS2", "PS3"]
        .iter()
        .map(|c| net.site(&c.to_lowercase(), c, ""))
        .collect();
    cas.start();
    for k in kids.iter_mut() {
        k.start();
        // Slow routes, so that sends overlap long enough to be counted.
        link(&cas, k, json!({"schedule": {"text": "daily 4MiB/s"}}));
    }
    let mut ids = Vec::new();
    for i in 0..8 {
        let src = net.p(&format!("src{i}"));
        generate(&src, &DatasetSpec::mixed(3 << 20, 20 + i)).unwrap();
        ids.push(cas.create(&format!("pkg{i}"), &src));
    }
    for id in &ids {
        cas.act(id, "distribute", json!({"sites": ["PS1", "PS2", "PS3"]}));
    }
    let (mut max_site, mut max_all) = (0usize, 0usize);
    cas.wait_for("24 sends done", SETTLE, |c| {
        let s = sends(c);
        let running: Vec<&Value> = s.iter().filter(|r| r["state"] == "sending").collect();
        max_all = max_all.max(running.len());
        for k in ["PS1", "PS2", "PS3"] {
            max_site = max_site.max(running.iter().filter(|r| r["dest"] == k).count());
        }
        s.len() == 24 && s.iter().all(|r| r["state"] == "sent")
    });
    assert!(max_site <= 3, "{max_site} sends at once to one site");
    assert!(max_all <= 5, "{max_all} sends at once in all");
    // The limits were reached, not merely respected by sends that never overlapped.
    assert_eq!(max_all, 5, "the Sender never ran 5 sends at once");
    for k in kids.iter() {
        for id in &ids {
            assert_eq!(
                k.ok("GET", &format!("/v1/packages/{id}"), None)["package"]["version"],
                1
            );
        }
    }
    cas.stop();
    for k in kids.iter_mut() {
        k.stop();
    }
}

/// `freight ARGS --admin SOCKET` on `site`: (success, stdout, stderr).
fn cli(site: &Host, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(freight_test_support::bins::appliance("freight"))
        .arg("--quiet")
        .args(args)
        .args(["--admin", site.admin.as_ref().unwrap().to_str().unwrap()])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn a_courier_route_moves_a_package_as_a_parcel_and_refuses_tampered_and_foreign_ones() {
    let net = Net::new();
    let (mut cas, mut ps1, mut dpp) = cas_and_ps1_with_a_dp(&net);
    // The route down is a courier; status still comes up over the network.
    cas.ok(
        "POST",
        "/v1/sites/children",
        Some(json!({"code": "PS1", "identity": ps1.identity()})),
    );
    cas.ok(
        "POST",
        "/v1/addresses",
        Some(json!({"site": "PS1", "kind": "courier"})),
    );
    ps1.ok(
        "PUT",
        "/v1/sites/parent",
        Some(json!({"code": "CAS", "identity": cas.identity(), "address": cas.quic})),
    );
    let src = net.p("src");
    generate(&src, &DatasetSpec::mixed(2 << 20, 9)).unwrap();
    let id = cas.create("maps", &src);
    cas.act(&id, "distribute", json!({"sites": ["PS1"]}));
    cas.wait_for("a courier request", SETTLE, |c| {
        c.ok("GET", "/v1/courier", None).as_array().unwrap().len() == 1
    });
    // The Sender leaves it to the administrator.
    std::thread::sleep(Duration::from_secs(1));
    let req = cas.ok("GET", "/v1/courier", None)[0].clone();
    assert_eq!(req["state"], "queued", "{req}");
    assert_eq!(req["attempts"], 0, "{req}");
    let (ok, table, err) = cli(&cas, &["courier", "list"]);
    assert!(ok, "{err}");
    assert!(table.contains(&id) && table.contains("queued"), "{table}");

    let parcel = net.p("ps1.parcel");
    let rid = req["id"].to_string();
    let (ok, out, err) = cli(
        &cas,
        &[
            "courier",
            "create-outgoing",
            &rid,
            "--out",
            parcel.to_str().unwrap(),
        ],
    );
    assert!(ok, "{err}");
    assert!(out.contains("carry it to PS1"), "{out}");
    assert_eq!(send_state(&cas, &id).unwrap()["state"], "pending");

    // A tampered copy is refused whole, in one line; PS1 stores nothing.
    let mut bytes = std::fs::read(&parcel).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    let bad = net.p("tampered.parcel");
    std::fs::write(&bad, &bytes).unwrap();
    let (ok, _, err) = cli(&ps1, &["courier", "receive", bad.to_str().unwrap()]);
    assert!(!ok, "a tampered parcel was received");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert_eq!(ps1.api("GET", &format!("/v1/packages/{id}"), None).0, 404);

    // A parcel signed by a site PS1 trusts, but not its parent, is refused.
    let rogue = net.host("rogue", "XX7", "");
    ps1.trust(&rogue, "child");
    let rogue_lib = net.s("rogue-lib");
    freight(&[
        "library",
        "--library",
        &rogue_lib,
        "ingest",
        "-p",
        &id,
        "-v",
        "1",
        src.to_str().unwrap(),
    ]);
    let foreign = net.p("foreign.parcel");
    freight(&[
        "parcel",
        "--site",
        rogue.home().to_str().unwrap(),
        "--library",
        &rogue_lib,
        "create",
        "-p",
        &id,
        "-v",
        "1",
        "--to",
        "PS1",
        "--out",
        foreign.to_str().unwrap(),
    ]);
    let (ok, _, err) = cli(&ps1, &["courier", "receive", foreign.to_str().unwrap()]);
    assert!(!ok, "a foreign parcel was received");
    assert!(err.contains("XX7"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert_eq!(ps1.api("GET", &format!("/v1/packages/{id}"), None).0, 404);

    // The real one: PS1's DP installs it, and the CAS sees the request confirmed and the DP
    // Installed once PS1 reports.
    let (ok, out, err) = cli(&ps1, &["courier", "receive", parcel.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.contains("received"), "{out}");
    wait_installed(&cas, &id, 1, 1);
    assert_serves(&dpp, &id, "1", &src);
    cas.wait_for("the request confirmed", SETTLE, |c| {
        send_state(c, &id).is_some_and(|s| s["state"] == "confirmed")
    });
    assert!(cas.message_ids(&id, None).contains(&4514));
    assert!(ps1.message_ids(&id, None).contains(&4400));
    for h in [&mut cas, &mut ps1, &mut dpp] {
        h.stop();
    }
}

/// Writes `len` incompressible bytes to `path` (xorshift from `seed`).
fn random_file(path: &std::path::Path, len: usize, seed: u64) {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    std::fs::write(path, out).unwrap();
}

/// `PRAGMA integrity_check` of a stopped site server's database.
fn integrity(site: &Host) -> String {
    let db = net_db(site);
    let c = rusqlite::Connection::open(&db).unwrap();
    c.query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap()
}

fn net_db(site: &Host) -> std::path::PathBuf {
    site.library.parent().unwrap().join("site.db")
}

/// Heavy tier: ten SIGKILLs of the sending site server, the receiving one or both while
/// versions cross a paced route; more than a minute on 2 cores.
#[test]
fn heavy_sigkill_of_either_site_server_at_ten_moments_loses_no_send_and_installs_each_version_once()
{
    let net = Net::new();
    let (mut cas, mut ps1, mut dpp) = cas_and_ps1_with_a_dp(&net);
    // A paced route, so that a kill lands in the middle of a send, and retries for the
    // seconds a site is down.
    link(
        &cas,
        &ps1,
        json!({"schedule": {"text": "daily 4MiB/s"}, "retries": 1000, "retry_delay": "1s"}),
    );
    let src = net.p("src");
    std::fs::create_dir_all(&src).unwrap();
    random_file(&src.join("base.bin"), 24 << 20, 1);
    let id = cas.create("big", &src);
    cas.act(&id, "distribute", json!({"sites": ["PS1"]}));
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut next = |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let mut version = 1u64;
    let mut mid_send = 0;
    for round in 0..10u64 {
        // Into the send of this version, at a random moment.
        std::thread::sleep(Duration::from_millis(100 + next(800)));
        if sends(&cas).iter().any(|s| s["state"] == "sending") {
            mid_send += 1;
        }
        let victims: Vec<&mut Host> = match round % 3 {
            0 => vec![&mut cas],
            1 => vec![&mut ps1],
            _ => vec![&mut cas, &mut ps1],
        };
        for v in victims {
            v.kill();
            std::thread::sleep(Duration::from_millis(200));
            v.start();
        }
        wait_installed(&cas, &id, 1, version);
        // The next version: 4 MiB more.
        random_file(&src.join(format!("add-{round}.bin")), 4 << 20, 100 + round);
        cas.ok("POST", &format!("/v1/packages/{id}/update"), None);
        version += 1;
    }
    wait_installed(&cas, &id, 1, version);
    assert_serves(&dpp, &id, &version.to_string(), &src);
    assert!(
        mid_send >= 3,
        "only {mid_send} of 10 kills landed during a send"
    );

    // Every send ended sent; none failed; each version's bytes stay near what it added (a
    // cut resends at most what was in flight; a killed sender records no bytes for the
    // attempt it lost, so this bounds the recorded resends).
    let all = sends(&cas);
    for s in &all {
        assert_eq!(s["state"], "sent", "{s}");
        let bytes = s["bytes_sent"].as_u64().unwrap();
        let new = if s["version"] == 1 { 24 << 20 } else { 4 << 20 };
        assert!(
            bytes <= new + (8 << 20),
            "v{} sent {bytes} bytes for {new} new: {s}",
            s["version"]
        );
    }
    // Each version was installed on the DP once.
    let msgs = ps1.messages(&id);
    for v in 1..=version {
        let n = msgs
            .iter()
            .filter(|m| m["id"] == 2330 && m["version"] == v)
            .count();
        assert!(n <= 1, "v{v} installed {n} times");
    }
    // The DP verifies.
    ps1.act(&id, "validate", json!({"dps": ["dpp"]}));
    ps1.wait_for("validation", SETTLE, |s| {
        s.message_ids(&id, None).contains(&2384)
    });
    assert!(!ps1.message_ids(&id, None).contains(&2386));
    for h in [&mut cas, &mut ps1, &mut dpp] {
        h.stop();
    }
    assert_eq!(integrity(&cas), "ok");
    assert_eq!(integrity(&ps1), "ok");
}

#[test]
fn a_rate_limited_address_sends_within_3_percent_of_its_rate() {
    let net = Net::new();
    let mut cas = net.site("cas", "CAS", "");
    let mut ps1 = net.site("ps1", "PS1", "");
    for h in [&mut cas, &mut ps1] {
        h.start();
    }
    let rate = 2u64 << 20;
    link(&cas, &ps1, json!({"schedule": {"text": "daily 2MiB/s"}}));
    let src = net.p("src");
    std::fs::create_dir_all(&src).unwrap();
    random_file(&src.join("blob.bin"), 16 << 20, 42);
    let id = cas.create("blob", &src);
    cas.act(&id, "distribute", json!({"sites": ["PS1"]}));
    cas.wait_for("the send", SETTLE, |c| {
        send_state(c, &id).is_some_and(|s| s["state"] == "sent")
    });
    let bytes = send_state(&cas, &id).unwrap()["bytes_sent"]
        .as_u64()
        .unwrap();
    let sent = cas
        .messages(&id)
        .into_iter()
        .find(|m| m["id"] == 4510)
        .unwrap();
    // Seconds of the push sessions (the instruction's handover after them is not paced).
    let secs: f64 = sent["strings"][4].as_str().unwrap().parse().unwrap();
    let got = bytes as f64 / secs;
    assert!(bytes >= 16 << 20, "{bytes}");
    assert!(
        (got / rate as f64 - 1.0).abs() <= 0.03,
        "{got:.0} B/s against {rate} B/s ({bytes} bytes in {secs} s)"
    );
    for h in [&mut cas, &mut ps1] {
        h.stop();
    }
}
