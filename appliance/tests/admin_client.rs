//! The admin client and the `freight` admin commands over a real Unix socket.
//!
//! The axum server below is a test fixture for the client's transport only: it answers a few
//! paths with fixed JSON. It is not freightd and checks nothing about freightd's behaviour.

use axum::extract::{Path, Query};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use freight_appliance::admin::client::ClientError;
use freight_appliance::admin::client::{AdminClient, segment, with_query};
use freight_appliance::api::{
    AddDp, ApiError, DpInfo, JobProgress, PackageInfo, PackageStatus, StatusMessage, Summary,
};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Output;

fn dp(name: &str) -> DpInfo {
    DpInfo {
        name: name.into(),
        kind: "standard".into(),
        address: "10.0.0.5:4433".into(),
        http: None,
        key_site: "DP1".into(),
        fingerprint: "ABCD".into(),
        throttle: "always".into(),
        sources: vec![],
        groups: vec!["east".into()],
    }
}

fn status(package: &str, dp: &str, state: &str) -> PackageStatus {
    PackageStatus {
        package: package.into(),
        site: None,
        dp: dp.into(),
        state: state.into(),
        version: Some(1),
        last_copied: Some(1_700_000_000),
        message: None,
        last_bytes: None,
    }
}

type Q = Query<HashMap<String, String>>;

/// Serves the fixture on `DIR/admin.sock` until the test's runtime ends.
fn serve(dir: &std::path::Path) -> PathBuf {
    let sock = dir.join("admin.sock");
    let listener = tokio::net::UnixListener::bind(&sock).unwrap();
    let app = Router::new()
        .route(
            "/v1/dps",
            get(|| async { Json(vec![dp("dp1"), dp("dp2")]) }).post(
                |Json(a): Json<AddDp>| async move {
                    let mut d = dp(&a.name);
                    d.kind = a.kind;
                    d.address = a.address;
                    d.sources = a.sources;
                    d.throttle = a.throttle.unwrap_or_default();
                    Json(d)
                },
            ),
        )
        .route(
            "/v1/dps/{name}",
            get(|Path(name): Path<String>| async move {
                let error =
                    format!("DP {name} does not exist;\n  list the DPs with `freight dp list`");
                (StatusCode::NOT_FOUND, Json(ApiError { error }))
            }),
        )
        .route(
            "/v1/messages",
            get(|Query(q): Q| async move {
                Json(vec![StatusMessage {
                    seq: 7,
                    id: 2330,
                    severity: "info".into(),
                    component: "DistMgr".into(),
                    site: "PS1".into(),
                    time: 0,
                    package: q.get("package").cloned(),
                    dp: None,
                    version: None,
                    strings: vec![],
                    text: format!("package={:?} since={:?}", q.get("package"), q.get("since")),
                }])
            }),
        )
        .route(
            "/v1/progress",
            get(|| async { Json(Vec::<JobProgress>::new()) }),
        )
        .route(
            "/v1/status",
            get(|Query(q): Q| async move {
                let all = vec![
                    status("OK1", "dp1", "Installed"),
                    status("BAD1", "dp1", "Installed"),
                    status("BAD1", "dp2", "Failed"),
                ];
                Json(match q.get("package") {
                    Some(p) => all.into_iter().filter(|s| &s.package == p).collect(),
                    None => all,
                })
            }),
        )
        .route(
            "/v1/packages",
            get(|| async {
                Json(vec![PackageInfo {
                    id: "OK1".into(),
                    name: "tools".into(),
                    source: "/srv/tools".into(),
                    priority: freight_appliance::api::Priority::Medium,
                    version: 1,
                    hash: "00".repeat(32),
                    files: 3,
                    bytes: 1024,
                    summary: Summary {
                        targeted: 1,
                        installed: 1,
                        retrying: 0,
                        failed: 0,
                    },
                }])
            }),
        )
        .route(
            "/v1/teapot",
            get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "boom\nboom") }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    sock
}

#[tokio::test]
async fn json_round_trips_and_queries_are_encoded() {
    let dir = tempfile::tempdir().unwrap();
    let c = AdminClient::new(serve(dir.path()));
    let dps: Vec<DpInfo> = c.get("/dps").await.unwrap();
    assert_eq!(dps, [dp("dp1"), dp("dp2")]);
    let add = AddDp {
        name: "br".into(),
        kind: "pull".into(),
        address: "h:1".into(),
        http: None,
        identity: "text".into(),
        sources: vec!["dp1".into()],
        throttle: Some("closed".into()),
    };
    let got: DpInfo = c.post("/dps", &add).await.unwrap();
    assert_eq!((got.name.as_str(), got.kind.as_str()), ("br", "pull"));
    assert_eq!(
        (got.sources, got.throttle),
        (vec!["dp1".to_string()], "closed".into())
    );
    let path = with_query(
        "/messages",
        &[
            ("package", Some("P 1&x=2".into())),
            ("since", Some("41".into())),
        ],
    );
    let msgs: Vec<StatusMessage> = c.get(&path).await.unwrap();
    assert_eq!(msgs[0].text, r#"package=Some("P 1&x=2") since=Some("41")"#);
}

#[tokio::test]
async fn an_api_error_is_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let c = AdminClient::new(serve(dir.path()));
    let e = c
        .get::<DpInfo>(&format!("/dps/{}", segment("no such/dp")))
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::Refused(_)), "{e:?}");
    assert_eq!(
        e.to_string(),
        "DP no such/dp does not exist; list the DPs with `freight dp list`"
    );
    let e = c.delete::<DpInfo>("/teapot").await.unwrap_err().to_string();
    assert!(
        e.starts_with("DELETE /v1/teapot: freightd answered 405"),
        "{e}"
    );
    let e = c.get::<DpInfo>("/teapot").await.unwrap_err().to_string();
    assert_eq!(
        e,
        "GET /v1/teapot: freightd answered 500 Internal Server Error (boom boom); use a freight \
         CLI of the same version as freightd"
    );
    // A 2xx answer of the wrong shape.
    let e = c.get::<DpInfo>("/dps").await.unwrap_err().to_string();
    assert!(
        e.starts_with("GET /v1/dps: freightd's answer does not match"),
        "{e}"
    );
    assert!(!e.contains('\n'));
}

#[tokio::test]
async fn a_dead_socket_names_the_remedy() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("admin.sock");
    let e = AdminClient::new(missing.clone())
        .get::<Vec<DpInfo>>("/dps")
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        format!(
            "{}: cannot reach freightd (No such file or directory); start freightd with its \
             site role or pass --admin SOCKET",
            missing.display()
        )
    );
    // A socket file left behind by a freightd that is gone.
    drop(tokio::net::UnixListener::bind(&missing).unwrap());
    let e = AdminClient::new(missing.clone())
        .get::<Vec<DpInfo>>("/dps")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cannot reach freightd (Connection refused); start freightd"),
        "{e}"
    );
}

/// Runs the real `freight` binary (off the runtime, so the fixture keeps serving).
async fn freight(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_freight"))
            .env("TZ", "UTC")
            .args(&args)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8(b.to_vec()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_commands_print_tables_json_and_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let sock = serve(dir.path());
    let s = sock.to_str().unwrap();
    let out = freight(&["dp", "list", "--admin", s]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "NAME  KIND      ADDRESS        HTTP  SITE  THROTTLE  SOURCES  GROUPS\n\
         dp1   standard  10.0.0.5:4433  -     DP1   always    -        east\n\
         dp2   standard  10.0.0.5:4433  -     DP1   always    -        east\n"
    );
    let out = freight(&["dp", "list", "--json", "--admin", s]).await;
    let v: Vec<DpInfo> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.len(), 2);

    let out = freight(&["dp", "show", "ghost", "--admin", s]).await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "freight: DP ghost does not exist; list the DPs with `freight dp list`\n"
    );

    let out = freight(&["status", "--admin", s]).await;
    let o = text(&out.stdout);
    assert!(o.contains("BAD1     dp2  Failed"), "{o}");
    assert!(o.contains("2023-11-14 22:13:20"), "{o}");
    assert!(o.contains("PACKAGE  NAME   VERSION  TARGETED"), "{o}");

    let out = freight(&["messages", "--package", "OK1", "--since", "3", "--admin", s]).await;
    assert!(text(&out.stdout).contains(r#"package=Some("OK1") since=Some("3")"#));

    let dead = dir.path().join("nobody.sock");
    let out = freight(&["package", "list", "--admin", dead.to_str().unwrap()]).await;
    let e = text(&out.stderr);
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(
        e.ends_with("start freightd with its site role or pass --admin SOCKET\n"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_until_settled_exits_by_the_packages_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let sock = serve(dir.path());
    let s = sock.to_str().unwrap();
    let out = freight(&["watch", "OK1", "--until-settled", "--admin", s]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let o = text(&out.stdout);
    // The message backlog, then the final status.
    assert!(o.contains("2330  info     DistMgr"), "{o}");
    assert!(o.contains("OK1      dp1  Installed"), "{o}");

    let out = freight(&["watch", "BAD1", "--until-settled", "--admin", s]).await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "freight: failed: BAD1 on dp2; see why with `freight messages --package BAD1`, fix it, \
         then `freight redistribute BAD1 --dp DP`\n"
    );
    assert!(text(&out.stdout).contains("BAD1     dp2  Failed"));
}
