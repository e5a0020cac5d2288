//! Hostile peers against real `freightd` processes (issue 18): a test client built on the
//! transport that misbehaves on purpose, with a key the daemon trusts (a compromised peer) or
//! with none. Every wait on a peer ends within its deadline and the job follows its retry
//! policy; what a peer can cost is bounded; a revoked key loses its connection.

use freight_core::{Manifest, SiteCode, SiteKey};
use freight_test_support::dataset::{DatasetSpec, generate};
use freight_tests::hosts::*;
use freight_transport::protocol::{
    FLAG_ZSTD, FrameDecoder, MAX_MANIFEST_PART, Message, VERSION_MAX, VERSION_MIN, chunk_header,
    encode,
};
use freight_transport::quic::{Conn, Node, NodeConfig};
use freight_transport::tls::SiteTls;
use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};

const SETTLE: Duration = Duration::from_secs(120);

/// The home folder `home` trusts the site of the home folder `other` in `role`.
fn trust_folder(home: &Path, other: &Path, role: &str) {
    let id = other.with_extension("id");
    freight(&[
        "site",
        "--site",
        other.to_str().unwrap(),
        "identity",
        "export",
        "--out",
        id.to_str().unwrap(),
    ]);
    freight(&[
        "site",
        "--site",
        home.to_str().unwrap(),
        "identity",
        "import",
        id.to_str().unwrap(),
        "--role",
        role,
    ]);
}

/// Short deadlines for the daemon under test (top-level keys of its config).
const TIGHT: &str = "handshake_timeout = \"2s\"\nstep_timeout = \"1s\"\nprogress_timeout = \"2s\"\ncommand_timeout = \"3s\"\n";

/// Puts top-level `keys` into `host`'s config (before its role sections).
fn tighten(host: &Host, keys: &str) {
    let text = std::fs::read_to_string(&host.config).unwrap();
    let (head, roles) = text.split_at(text.find('[').unwrap());
    std::fs::write(&host.config, format!("{head}{keys}{roles}")).unwrap();
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A QUIC node speaking with the key and trust store of the home folder `home` of site `code`.
fn node_with(home: &Path, code: &str, rt: &tokio::runtime::Runtime) -> Node {
    let key =
        SiteKey::load_or_create(&home.join("site.key"), SiteCode::parse(code).unwrap()).unwrap();
    let tls = SiteTls::new(&key, &home.join("trust")).unwrap();
    let _g = rt.enter();
    Node::bind("127.0.0.1:0".parse().unwrap(), tls, NodeConfig::default()).unwrap()
}

async fn connect(node: &Node, to: &Host) -> Conn {
    node.connect(to.quic.parse().unwrap(), SiteCode::parse(&to.code).unwrap())
        .await
        .unwrap()
}

/// Reads control frames until an Abort or the end of the stream; returns the abort's reason
/// (None if the stream just ended) and how long it took.
async fn until_abort(recv: &mut quinn::RecvStream) -> (Option<String>, Duration) {
    let start = Instant::now();
    let mut dec = FrameDecoder::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match recv.read(&mut buf).await {
            Ok(Some(n)) => n,
            Ok(None) | Err(_) => return (None, start.elapsed()),
        };
        dec.push(&buf[..n]);
        while let Ok(Some(m)) = dec.next_message() {
            if let Message::Abort { reason, .. } = m {
                return (Some(reason), start.elapsed());
            }
        }
    }
}

/// Reads control frames until the end of the receiver's Need; returns the chunk IDs its
/// parts ask for.
async fn until_need(recv: &mut quinn::RecvStream) -> Vec<freight_core::ChunkId> {
    let mut dec = FrameDecoder::new();
    let mut buf = vec![0u8; 64 << 10];
    let mut need = Vec::new();
    loop {
        let n = recv.read(&mut buf).await.unwrap().expect("stream open");
        dec.push(&buf[..n]);
        while let Some(m) = dec.next_message().unwrap() {
            match m {
                Message::Need { chunks } => need.extend(chunks),
                Message::NeedEnd => return need,
                Message::Abort { reason, .. } => panic!("aborted: {reason}"),
                _ => {}
            }
        }
    }
}

/// Opens a push session on `conn` announcing `streams` data streams.
async fn open_session(conn: &Conn, streams: u16) -> (quinn::SendStream, quinn::RecvStream, u64) {
    let (mut send, recv) = conn.connection().open_bi().await.unwrap();
    let id = quinn::VarInt::from(send.id()).into_inner();
    let mut pre = vec![1u8];
    pre.extend_from_slice(&streams.to_le_bytes());
    send.write_all(&pre).await.unwrap();
    (send, recv, id)
}

/// Hello, the Offer of `m` and its manifest in parts, as a sender writes them.
fn hello_offer(m: &Manifest) -> Vec<u8> {
    let bytes = m.encode();
    let mut out = [
        encode(&Message::Hello {
            version_min: VERSION_MIN,
            version_max: VERSION_MAX,
        }),
        encode(&Message::Offer {
            package: m.package.clone(),
            version: m.version,
            manifest_len: bytes.len() as u64,
            manifest_hash: *m.hash().as_bytes(),
        }),
    ]
    .concat();
    for (i, part) in bytes.chunks(MAX_MANIFEST_PART).enumerate() {
        out.extend(encode(&Message::ManifestPart {
            offset: (i * MAX_MANIFEST_PART) as u64,
            data: part.to_vec(),
        }));
    }
    out
}

/// A package of `bytes` at `net.p(name)`, ingested into a scratch library as `pkg` v1.
fn package(net: &Net, name: &str, pkg: &str, bytes: u64) -> Manifest {
    let src = net.p(name);
    generate(&src, &DatasetSpec::mixed(bytes, 21)).unwrap();
    let lib = net.s(&format!("{name}-lib"));
    freight(&[
        "library",
        "-l",
        &lib,
        "ingest",
        "--package",
        pkg,
        "--version",
        "1",
        src.to_str().unwrap(),
    ]);
    let l = freight_core::Library::open(Path::new(&lib), freight_core::library::Access::Read, None)
        .unwrap();
    l.manifest(&freight_core::PackageId::parse(pkg).unwrap(), 1)
        .unwrap()
}

#[test]
fn a_peer_that_stalls_at_any_step_is_given_up_within_its_deadline() {
    let net = Net::new();
    let mut dp = net.dp("dp", "DP1", "standard", "");
    tighten(&dp, TIGHT);
    // The hostile client holds a key the DP trusts as its site server.
    let evil_home = net.p("evil-home");
    freight(&[
        "site",
        "--site",
        evil_home.to_str().unwrap(),
        "init",
        "--code",
        "PS9",
    ]);
    dp.start();
    trust_folder(&dp.home(), &evil_home, "site-server");
    trust_folder(&evil_home, &dp.home(), "dp");
    // The DP's trust store is re-read within a second.
    std::thread::sleep(Duration::from_millis(1200));
    let m = package(&net, "src", "PS900001", 1 << 20);
    let rt = runtime();
    let node = node_with(&evil_home, "PS9", &rt);
    rt.block_on(async {
        let conn = connect(&node, &dp).await;
        // 1. A session whose sender never says Hello: aborted after step_timeout (1 s).
        let (_send, mut recv, _) = open_session(&conn, 1).await;
        let (why, took) = until_abort(&mut recv).await;
        let why = why.expect("an abort");
        assert!(
            why.contains("no Hello and Offer from the sender within 1.0 s"),
            "{why}"
        );
        assert!(took < Duration::from_secs(4), "{took:?}");
        // 2. Hello and Offer, then silence after Need: aborted after progress_timeout (2 s).
        let (mut send, mut recv, _) = open_session(&conn, 1).await;
        send.write_all(&hello_offer(&m)).await.unwrap();
        let need = until_need(&mut recv).await;
        assert!(!need.is_empty());
        let (why, took) = until_abort(&mut recv).await;
        let why = why.expect("an abort");
        assert!(
            why.contains("no data from the sender within 2.0 s"),
            "{why}"
        );
        assert!(took < Duration::from_secs(5), "{took:?}");
        // 3. A data stream that stops inside a chunk: its session is aborted, the DP serves on.
        let (mut send, mut recv, id) = open_session(&conn, 1).await;
        send.write_all(&hello_offer(&m)).await.unwrap();
        let need = until_need(&mut recv).await;
        let mut data = conn.connection().open_uni().await.unwrap();
        let mut head = vec![2u8];
        head.extend_from_slice(&id.to_le_bytes());
        head.extend_from_slice(&0u16.to_le_bytes());
        head.extend_from_slice(&chunk_header(&need[0], 1 << 20, 0, 1 << 20));
        head.extend_from_slice(&[0u8; 1000]);
        data.write_all(&head).await.unwrap();
        let (why, took) = until_abort(&mut recv).await;
        assert!(why.expect("an abort").contains("within 2.0 s"));
        assert!(took < Duration::from_secs(6), "{took:?}");
        // 4. A command stream with half a request: dropped after step_timeout.
        let (mut csend, mut crecv) = conn.connection().open_bi().await.unwrap();
        csend.write_all(&[4u8, 100, 0, 0, 0, b'{']).await.unwrap();
        let start = Instant::now();
        let mut b = [0u8; 16];
        let r = tokio::time::timeout(Duration::from_secs(10), crecv.read(&mut b)).await;
        assert!(r.is_ok(), "the half request was held past the deadline");
        assert!(
            start.elapsed() < Duration::from_secs(4),
            "{:?}",
            start.elapsed()
        );
        // The connection and the DP still work: a real request is answered.
        let reply = freight_transport::command::request(
            &conn,
            &freight_appliance::dp::command::encode(
                &freight_appliance::dp::command::DpRequest::PullStatus {
                    package: "PS900001".into(),
                    version: 1,
                },
            ),
        )
        .await
        .unwrap();
        assert!(
            String::from_utf8_lossy(&reply).contains("unknown"),
            "{}",
            String::from_utf8_lossy(&reply)
        );
    });
    drop(rt);
    dp.stop();
}

#[test]
fn a_dp_that_stalls_or_stops_reading_sends_the_job_to_retry_and_frees_the_sender() {
    let net = Net::new();
    let mut site = net.site("site", "PS1", "");
    tighten(&site, TIGHT);
    site.start();
    // A hostile DP: it completes TLS as DP1, then answers nothing.
    let mut dp = net.dp("dp", "DP1", "standard", "");
    let rt = runtime();
    let hostile = node_with(&dp.home(), "DP1", &rt);
    dp.quic = hostile.local_addr().unwrap().to_string();
    dp.http = Some("127.0.0.1:9".into());
    site.add_dp(&dp, "dp1", &[]);
    // It trusts the site server (add_dp made it), reloaded now.
    hostile.reload_trust().unwrap();
    let mode = std::sync::Arc::new(std::sync::Mutex::new("silent"));
    let mode2 = mode.clone();
    let serving = hostile.clone();
    rt.spawn(async move {
        while let Some(a) = serving.accept().await {
            let mode = mode2.clone();
            tokio::spawn(async move {
                let Ok(conn) = a.establish().await else {
                    return;
                };
                loop {
                    let Ok((mut send, mut recv)) = conn.connection().accept_bi().await else {
                        return;
                    };
                    let m = *mode.lock().unwrap();
                    tokio::spawn(async move {
                        if m == "silent" {
                            // Hold the session open and say nothing.
                            tokio::time::sleep(Duration::from_secs(60)).await;
                            drop((send, recv));
                            return;
                        }
                        // "no reading": ask for every chunk, then never read a data stream.
                        let mut buf = vec![0u8; 1 << 16];
                        let mut dec = FrameDecoder::new();
                        let mut pre = [0u8; 3];
                        if recv.read_exact(&mut pre).await.is_err() {
                            return;
                        }
                        let (mut manifest, mut len) = (Vec::new(), 0);
                        loop {
                            let Ok(Some(n)) = recv.read(&mut buf).await else {
                                return;
                            };
                            dec.push(&buf[..n]);
                            while let Ok(Some(msg)) = dec.next_message() {
                                match msg {
                                    Message::Hello { .. } => {
                                        let hello = encode(&Message::Hello {
                                            version_min: VERSION_MIN,
                                            version_max: VERSION_MAX,
                                        });
                                        let _ = send.write_all(&hello).await;
                                    }
                                    Message::Offer { manifest_len, .. } => len = manifest_len,
                                    Message::ManifestPart { data, .. } => {
                                        manifest.extend_from_slice(&data);
                                        if manifest.len() as u64 != len {
                                            continue;
                                        }
                                        let m = freight_core::Manifest::decode(&manifest, "offer")
                                            .unwrap();
                                        let ids: Vec<_> = m.chunks().into_keys().collect();
                                        let need = [
                                            encode(&Message::Need { chunks: ids }),
                                            encode(&Message::NeedEnd),
                                        ]
                                        .concat();
                                        let _ = send.write_all(&need).await;
                                    }
                                    _ => {}
                                }
                            }
                        }
                    });
                }
            });
        }
    });
    let src = net.p("src");
    generate(&src, &DatasetSpec::mixed(48 << 20, 4)).unwrap();
    let id = site.create("big", &src);
    // A DP that never answers Hello: the job retries with the stalled step named.
    site.act(&id, "distribute", json!({"dps": ["dp1"]}));
    let start = Instant::now();
    site.wait_for("a retry", Duration::from_secs(30), |s| {
        s.status(&id).iter().any(|(_, st, _)| st == "Retrying")
    });
    let first = start.elapsed();
    let msgs = site.messages(&id);
    let why = msgs.iter().find(|m| m["id"] == 8201).expect("8201")["text"].to_string();
    assert!(why.contains("no Hello or Need from the receiver"), "{why}");
    assert!(first < Duration::from_secs(15), "{first:?}");
    // A DP that asks for everything and never reads: the sender gives up once its writes
    // stall (progress_timeout), and the next attempt says why.
    *mode.lock().unwrap() = "no reading";
    // (The first job may have spent its attempts by now: ask again.)
    site.act(&id, "distribute", json!({"dps": ["dp1"]}));
    site.wait_for(
        "a retry after a stalled write",
        Duration::from_secs(60),
        |s| {
            s.messages(&id).iter().any(|m| {
                m["id"] == 8201
                    && m["text"]
                        .as_str()
                        .unwrap_or("")
                        .contains("no reading by the receiver")
            })
        },
    );
    // The site server still answers and holds no growing memory for it.
    let rss = vm_hwm(site.pid());
    println!("site server peak RSS {} MiB", rss >> 20);
    assert!(rss < 200 << 20, "{} MiB", rss >> 20);
    drop(rt);
    site.stop();
}

/// Peak resident memory (VmHWM) of process `pid`, bytes.
fn vm_hwm(pid: i32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
        .unwrap()
        << 10
}

/// CPU seconds (user + system) of process `pid` so far.
fn cpu_secs(pid: i32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &s[s.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / 100.0
}

#[test]
fn a_revoked_key_loses_its_connection_mid_session() {
    let net = Net::new();
    let mut site = net.site("site", "PS1", "");
    let mut dp = net.dp("dp", "DP1", "standard", "");
    site.start();
    dp.start();
    site.add_dp(&dp, "dp1", &[]);
    // A slow route (2 MiB/s) so the push is still running when the key is revoked.
    site.ok(
        "PUT",
        "/v1/dps/dp1/schedule",
        Some(json!({"throttle": "daily 2MiB/s"})),
    );
    let src = net.p("src");
    generate(&src, &DatasetSpec::mixed(40 << 20, 8)).unwrap();
    let id = site.create("slow", &src);
    site.act(&id, "distribute", json!({"dps": ["dp1"]}));
    site.wait_for("bytes moving", Duration::from_secs(30), |s| {
        s.ok("GET", "/v1/progress", None)
            .as_array()
            .unwrap()
            .iter()
            .any(|j| j["done"].as_u64().unwrap_or(0) > 0)
    });
    let start = Instant::now();
    freight(&[
        "site",
        "--site",
        dp.home().to_str().unwrap(),
        "identity",
        "revoke",
        "PS1",
    ]);
    site.wait_for("the push to fail", Duration::from_secs(20), |s| {
        s.status(&id)
            .iter()
            .any(|(_, st, _)| st == "Retrying" || st == "Failed")
    });
    let took = start.elapsed();
    println!("connection closed {took:?} after the revocation");
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert!(!site.status(&id).iter().any(|(_, st, _)| st == "Installed"));
    let why = site
        .messages(&id)
        .iter()
        .find(|m| m["id"] == 8201 || m["id"] == 8202)
        .map(|m| m["text"].to_string())
        .unwrap();
    // The live connection is closed as untrusted; the retry that follows is refused at the
    // handshake, and either one-line reason names the trust store's decision.
    assert!(
        why.contains("no longer trusted")
            || why.contains("revoked")
            || why.contains("not in the trust store"),
        "{why}"
    );
    site.stop();
    dp.stop();
}

/// Heavy tier: over 30 s (1,000 decompression bombs, a real distribution beside them).
#[test]
fn heavy_decompression_bombs_from_a_trusted_peer_cost_bounded_memory() {
    let net = Net::new();
    let mut site = net.site("site", "PS1", "");
    let mut dp = net.dp("dp", "DP1", "standard", "");
    site.start();
    dp.start();
    site.add_dp(&dp, "dp1", &[]);
    // A second key the DP trusts as a site server, compromised.
    let evil_home = net.p("evil-home");
    freight(&[
        "site",
        "--site",
        evil_home.to_str().unwrap(),
        "init",
        "--code",
        "PS9",
    ]);
    trust_folder(&dp.home(), &evil_home, "site-server");
    trust_folder(&evil_home, &dp.home(), "dp");
    std::thread::sleep(Duration::from_millis(1200));
    // The bomb: a manifest naming one 64 MiB chunk, and a few KiB of zstd that inflate to
    // 64 MiB of zeros (which do not hash to that chunk).
    let big = net.p("big");
    std::fs::create_dir_all(&big).unwrap();
    std::fs::write(
        big.join("big.bin"),
        freight_test_support::noise("big0", 64 << 20),
    )
    .unwrap();
    let lib = net.s("big-lib");
    freight(&["library", "-l", &lib, "init"]);
    let cfg = std::path::Path::new(&lib).join("library.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let text = text
        .lines()
        .map(|l| {
            if l.starts_with("min =") {
                "min = 16777216".into()
            } else if l.starts_with("avg =") {
                "avg = 33554432".into()
            } else if l.starts_with("max =") {
                "max = 67108864".into()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&cfg, text + "\n").unwrap();
    freight(&[
        "library",
        "-l",
        &lib,
        "ingest",
        "--package",
        "PS900001",
        "--version",
        "1",
        big.to_str().unwrap(),
    ]);
    let m = freight_core::Library::open(Path::new(&lib), freight_core::library::Access::Read, None)
        .unwrap()
        .manifest(&freight_core::PackageId::parse("PS900001").unwrap(), 1)
        .unwrap();
    let chunk = *m.chunks().keys().next().unwrap();
    assert_eq!(m.chunks()[&chunk], 64 << 20, "the bomb's chunk is 64 MiB");
    assert_eq!(m.chunks().len(), 1);
    let bomb = zstd::bulk::compress(&vec![0u8; 64 << 20], 19).unwrap();
    assert!(bomb.len() < 64 << 10);

    // A real distribution runs beside the bombs.
    let src = net.p("src");
    generate(&src, &DatasetSpec::mixed(64 << 20, 6)).unwrap();
    let id = site.create("real", &src);
    site.act(&id, "distribute", json!({"dps": ["dp1"]}));

    let rt = runtime();
    let node = node_with(&evil_home, "PS9", &rt);
    let cpu0 = cpu_secs(dp.pid());
    let sent = rt.block_on(async {
        let mut sent = 0u32;
        let conn = connect(&node, &dp).await;
        while sent < 1000 {
            // Each session announces 8 data streams and sends the bomb on each.
            let (mut send, mut recv, sid) = open_session(&conn, 8).await;
            send.write_all(&hello_offer(&m)).await.unwrap();
            let _ = until_need(&mut recv).await;
            let mut streams = Vec::new();
            for i in 0..8u16 {
                let Ok(mut s) = conn.connection().open_uni().await else {
                    break;
                };
                let mut f = vec![2u8];
                f.extend_from_slice(&sid.to_le_bytes());
                f.extend_from_slice(&i.to_le_bytes());
                f.extend_from_slice(&chunk_header(&chunk, 64 << 20, FLAG_ZSTD, bomb.len()));
                f.extend_from_slice(&bomb);
                let _ = s.write_all(&f).await;
                streams.push(s);
                sent += 1;
            }
            let (why, _) = until_abort(&mut recv).await;
            assert!(
                why.unwrap_or_default().contains("bad"),
                "the bomb was not refused as bad"
            );
        }
        sent
    });
    let cpu = cpu_secs(dp.pid()) - cpu0;
    site.settle(SETTLE);
    assert_eq!(site.status(&id)[0].1, "Installed");
    assert_serves(&dp, &id, "1", &src);
    let rss = vm_hwm(dp.pid());
    println!(
        "{sent} bomb streams: DP peak RSS {} MiB, {cpu:.1} CPU-seconds",
        rss >> 20
    );
    assert!(rss <= 200 << 20, "DP peak RSS {} MiB", rss >> 20);
    drop(rt);
    site.stop();
    dp.stop();
}

/// Heavy tier: over 30 s (10,000 handshakes).
#[test]
fn heavy_ten_thousand_unauthenticated_handshakes_during_a_real_transfer() {
    let net = Net::new();
    let mut site = net.site("site", "PS1", "");
    let mut dp = net.dp("dp", "DP1", "standard", "");
    site.start();
    dp.start();
    site.add_dp(&dp, "dp1", &[]);
    let src = net.p("src");
    generate(&src, &DatasetSpec::mixed(256 << 20, 9)).unwrap();
    let id = site.create("real", &src);
    // A key the DP does not trust; it trusts the DP, so its own side of each handshake passes.
    let evil_home = net.p("evil-home");
    freight(&[
        "site",
        "--site",
        evil_home.to_str().unwrap(),
        "init",
        "--code",
        "EVL",
    ]);
    trust_folder(&evil_home, &dp.home(), "dp");
    let (cpu0, pid) = (cpu_secs(dp.pid()), dp.pid());
    site.act(&id, "distribute", json!({"dps": ["dp1"]}));
    let rt = runtime();
    let node = node_with(&evil_home, "EVL", &rt);
    let start = Instant::now();
    let (refused, connected) = rt.block_on(async {
        let addr: std::net::SocketAddr = dp.quic.parse().unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        let (mut refused, mut connected) = (0u32, 0u32);
        for _ in 0..10_000 {
            while tasks.len() >= 64 {
                match tasks.join_next().await.unwrap().unwrap() {
                    true => connected += 1,
                    false => refused += 1,
                }
            }
            let node = node.clone();
            tasks.spawn(async move {
                node.connect(addr, SiteCode::parse("DP1").unwrap())
                    .await
                    .is_ok()
            });
        }
        while let Some(r) = tasks.join_next().await {
            match r.unwrap() {
                true => connected += 1,
                false => refused += 1,
            }
        }
        (refused, connected)
    });
    let flood = start.elapsed();
    let cpu = cpu_secs(pid) - cpu0;
    site.settle(SETTLE);
    assert_eq!(site.status(&id)[0].1, "Installed");
    assert_serves(&dp, &id, "1", &src);
    let rss = vm_hwm(pid);
    println!(
        "10,000 handshakes in {flood:?}: {refused} refused, {connected} accepted; DP: {cpu:.1} CPU-seconds during the flood and the transfer, peak RSS {} MiB",
        rss >> 20
    );
    assert_eq!(connected, 0, "an untrusted key connected");
    assert!(rss <= 200 << 20);
    drop(rt);
    site.stop();
    dp.stop();
}
