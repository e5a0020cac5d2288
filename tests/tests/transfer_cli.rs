//! `freight transfer` between real processes on loopback: a push that survives SIGKILL of the
//! receiving process at random moments, re-sending at most the in-flight window per kill, and
//! the refusals an administrator sees on the command line.

use freight_core::library::Access;
use freight_core::{IoMode, Library, PackageId, Progress};
use freight_test_support::{DatasetSpec, generate};
use rand::{RngExt, SeedableRng, rngs::StdRng};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use freight_tests::World;

/// The transfer steps of these tests, on a [`World`].
trait Transfers {
    /// Starts `freight transfer serve` for site folder `site` on `port` and waits for its
    /// readiness line.
    fn serve(&self, site: &str, lib: &str, port: u16) -> Child;
    /// The arguments of `freight transfer send` from site `cas` to PS1 at `port`.
    fn send_args(&self, port: u16) -> Vec<String>;
}

impl Transfers for World {
    fn serve(&self, site: &str, lib: &str, port: u16) -> Child {
        let mut child = self
            .cmd(&[
                "transfer",
                "--site",
                &self.s(site),
                "--library",
                &self.s(lib),
                "--idle-timeout",
                "1",
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        out.read_line(&mut line).unwrap();
        assert!(line.starts_with("serving site"), "{line:?}");
        // Keep draining its output so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in out.lines() {});
        child
    }
    fn send_args(&self, port: u16) -> Vec<String> {
        [
            "transfer",
            "--site",
            &self.s("cas"),
            "--library",
            &self.s("cas-lib"),
            "--idle-timeout",
            "1",
            "send",
            "--to",
            &format!("127.0.0.1:{port}"),
            "--peer",
            "PS1",
            "-p",
            "CAS00001",
            "--attempts",
            "40",
            "--retry-delay",
            "0.1",
            "--json",
        ]
        .map(String::from)
        .to_vec()
    }
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn setup(bytes: u64) -> World {
    let w = World::new();
    w.site("cas", "CAS");
    w.site("ps1", "PS1");
    w.trust("cas", "ps1");
    w.trust("ps1", "cas");
    let src = w.root.join("src");
    generate(&src, &DatasetSpec::mixed(bytes, 21)).unwrap();
    w.ok(&[
        "library",
        "--library",
        &w.s("cas-lib"),
        "ingest",
        "-p",
        "CAS00001",
        src.to_str().unwrap(),
    ]);
    w
}

fn term(mut child: Child) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "serve exits cleanly on SIGTERM: {status}");
}

/// The receiver's library opens (repairing crash leftovers), holds the package, verifies clean,
/// and materialises to a tree identical to the source.
fn check_receiver(w: &World) {
    let lib = Library::open(
        Path::new(&w.s("ps1-lib")),
        Access::Write,
        IoMode::from_env(),
    )
    .unwrap();
    let m = lib
        .manifest(&PackageId::parse("CAS00001").unwrap(), 1)
        .unwrap();
    assert!(lib.missing(&m).is_empty());
    let v = freight_core::verify::verify(&lib, None, &Progress::default()).unwrap();
    assert!(v.is_clean(), "{:?}", v.bad);
    let out = w.root.join("out");
    freight_core::materialize::materialize(&lib, &m, &out, &Progress::default()).unwrap();
    assert_eq!(
        freight_test_support::tree::difference(&w.root.join("src"), &out).unwrap(),
        None
    );
}

#[test]
fn sigkill_of_the_receiver_at_five_moments_still_ends_complete() {
    let seed = freight_test_support::replay_seed("FREIGHT_CRASH_SEED");
    let mut rng = StdRng::seed_from_u64(seed);
    let w = setup(160 << 20);
    let port = free_udp_port();
    let mut receiver = w.serve("ps1", "ps1-lib", port);
    let args = w.send_args(port);
    let sender = w
        .cmd(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = sender.id();
    let sender = std::thread::spawn(move || sender.wait_with_output().unwrap());
    // Once the manifest is stored the transfer is over; the sender may still be closing its
    // connection, but a kill then interrupts no session.
    let manifest = w.p("ps1-lib/manifests/CAS00001/0000000001.fmf");
    let alive =
        || Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(pid) && !manifest.exists();

    // Kill the receiver while data flows: after the receiver's library has grown since the
    // last restart (the session is moving), wait a random moment more, then SIGKILL it.
    let mut kills = 0;
    while kills < 5 && alive() {
        let base = store_bytes(&w.s("ps1-lib"));
        let deadline = Instant::now() + Duration::from_secs(20);
        while store_bytes(&w.s("ps1-lib")) <= base && alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(0..150)));
        if !alive() {
            break;
        }
        receiver.kill().unwrap(); // SIGKILL
        receiver.wait().unwrap();
        kills += 1;
        receiver = w.serve("ps1", "ps1-lib", port);
    }
    let out = sender.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        kills, 5,
        "the transfer ended before five kills; make the package larger"
    );
    term(receiver);

    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let window = summary["in_flight_window"].as_u64().unwrap();
    let sessions: Vec<&serde_json::Value> = summary["per_session"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["chunks_needed"].as_u64().unwrap() > 0 || s["committed"].as_bool().unwrap())
        .collect();
    assert!(sessions.len() >= 6, "{summary:#}");
    let mut wasted_total = 0;
    for pair in sessions.windows(2) {
        let delivered =
            pair[0]["bytes_needed"].as_u64().unwrap() - pair[1]["bytes_needed"].as_u64().unwrap();
        let wasted = pair[0]["bytes_sent"]
            .as_u64()
            .unwrap()
            .saturating_sub(delivered);
        eprintln!(
            "session sent {} delivered {delivered} wasted {wasted} (window {window})",
            pair[0]["bytes_sent"]
        );
        assert!(
            wasted <= window,
            "re-sent {wasted} > in-flight window {window}: {summary:#}"
        );
        wasted_total += wasted;
    }
    let first_need = sessions[0]["bytes_needed"].as_u64().unwrap();
    assert_eq!(
        summary["bytes_sent"].as_u64().unwrap(),
        first_need + wasted_total
    );
    check_receiver(&w);
}

#[test]
fn a_restarted_sender_sends_only_what_the_receiver_still_lacks() {
    let w = setup(96 << 20);
    let port = free_udp_port();
    let receiver = w.serve("ps1", "ps1-lib", port);
    let args = w.send_args(port);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let full: u64 = {
        let out = w.ok(&["library", "--library", &w.s("cas-lib"), "stats", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["stored_bytes"]
            .as_u64()
            .unwrap_or_else(|| panic!("{v:#}"))
    };
    // Kill the sender once a third of the package has reached the receiver's disk.
    let mut first = w
        .cmd(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while store_bytes(&w.s("ps1-lib")) < full / 3 && Instant::now() < deadline {
        assert!(
            first.try_wait().unwrap().is_none(),
            "finished before the kill"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    first.kill().unwrap();
    first.wait().unwrap();
    let out = w.ok(&args);
    let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
    let needed = summary["bytes_needed_first"].as_u64().unwrap();
    assert!(
        needed > 0 && needed < full,
        "resumed: needed {needed} of {full}"
    );
    term(receiver);
    check_receiver(&w);
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.split(") ").nth(1).is_some_and(|r| r.starts_with('Z')))
        .unwrap_or(true)
}

/// Bytes in the library's pack files (appended data shows before it is committed).
fn store_bytes(lib: &str) -> u64 {
    let dir = Path::new(lib).join("store/packs");
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// `freight transfer --site SITE --library SITE-lib send --to TO --peer PEER -p PKG EXTRA...`
/// as arguments.
fn send(w: &World, site: &str, to: &str, peer: &str, pkg: &str, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = ["transfer", "--site", &w.s(site), "--library"]
        .map(String::from)
        .to_vec();
    a.push(w.s(&format!("{site}-lib")));
    a.extend(["send", "--to", to, "--peer", peer, "-p", pkg].map(String::from));
    a.extend(extra.iter().map(|x| x.to_string()));
    a
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn refusals_on_the_command_line_are_one_line() {
    let w = setup(2 << 20);
    w.site("xyz", "XYZ");
    w.trust("ps1", "xyz");
    w.ok(&[
        "site",
        "--site",
        &w.s("xyz"),
        "identity",
        "export",
        "--out",
        &w.s("xyz.id"),
    ]);
    let port = free_udp_port();
    let receiver = w.serve("ps1", "ps1-lib", port);
    let to = format!("127.0.0.1:{port}");
    let fail =
        |site, peer, pkg, extra: &[&str]| w.fail(&strs(&send(&w, site, &to, peer, pkg, extra)));
    // A site PS1 does not trust.
    let xyz_fp = std::fs::read_to_string(w.s("xyz.id"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("fingerprint: "))
        .unwrap()
        .to_string();
    w.ok(&[
        "library",
        "--library",
        &w.s("xyz-lib"),
        "ingest",
        "-p",
        "XYZ00001",
        &w.s("src"),
    ]);
    let e = fail("xyz", "PS1", "XYZ00001", &["--attempts", "1"]);
    assert!(
        e.contains(&xyz_fp) && e.contains("not in the trust store"),
        "{e}"
    );
    // Expecting another site at that address.
    let e = fail("cas", "PS2", "CAS00001", &["--attempts", "1"]);
    assert!(e.contains("not site PS2"), "{e}");
    // A package the library does not hold; a bad throttle.
    let e = fail("cas", "PS1", "CAS0000F", &[]);
    assert!(e.contains("CAS0000F"), "{e}");
    let e = fail("cas", "PS1", "CAS00001", &["--throttle", "Mon-Fx closed"]);
    assert!(e.contains("Fx"), "{e}");
    // Nobody listening: gives up after the attempts, naming the address.
    let dead = format!("127.0.0.1:{}", free_udp_port());
    let mut args = send(
        &w,
        "cas",
        &dead,
        "PS1",
        "CAS00001",
        &["--attempts", "2", "--retry-delay", "0.1"],
    );
    args.splice(1..1, ["--idle-timeout".to_string(), "0.5".to_string()]);
    let e = w.fail(&strs(&args));
    assert!(e.contains(&dead), "{e}");
    // The receiver refuses nothing it should accept: a real push still works.
    let out = w.ok(&strs(&send(&w, "cas", &to, "PS1", "CAS00001", &[])));
    assert!(out.contains("sent CAS00001 v1 to PS1"), "{out}");
    term(receiver);
}
