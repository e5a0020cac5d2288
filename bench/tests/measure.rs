//! The measuring harness on real processes: `freight-measure` (built with this package) runs
//! the command, and the peak RSS reported is the command's own.

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use freight_bench::harness::{measure, wait_measured, wrap};

#[test]
fn measures_a_child() {
    let m = measure(Command::new("sh").args(["-c", "exit 3"])).unwrap();
    assert_eq!(m.status.code(), Some(3));
    assert!(m.max_rss_kib > 0);
    let m = measure(Command::new("sh").args(["-c", "sleep 0.2"])).unwrap();
    assert!(m.status.success());
    assert!(m.wall >= Duration::from_millis(200));
    assert!(m.cpu() < Duration::from_millis(150), "{:?}", m.cpu());
    let err = measure(&mut Command::new("/nonexistent/freight-bench-x")).unwrap_err();
    assert!(err.to_string().contains("did not start"), "{err}");
}

#[test]
fn the_environment_and_working_folder_pass_through() {
    let dir = std::env::temp_dir();
    let m = measure(
        Command::new("sh")
            .args([
                "-c",
                r#"test "$FREIGHT_X" = yes && test -z "$FREIGHT_GONE" && test "$(pwd -P)" = "$1""#,
                "sh",
            ])
            .arg(dir.canonicalize().unwrap())
            .env("FREIGHT_X", "yes")
            .env_remove("FREIGHT_GONE")
            .env("FREIGHT_GONE_SET", "")
            .current_dir(&dir),
    )
    .unwrap();
    assert!(m.status.success(), "{:?}", m.status);
}

#[test]
fn one_command_is_measured_run_after_run() {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "exit 4"]);
    for _ in 0..3 {
        let m = measure(cmd.stdin(Stdio::null())).unwrap();
        assert_eq!(m.status.code(), Some(4));
    }
}

#[test]
fn peak_rss_covers_waited_descendants() {
    // The shell waits for dd, which fills a 64 MiB buffer.
    let script = "dd if=/dev/zero of=/dev/null bs=64M count=1 2>/dev/null; true";
    let m = measure(Command::new("sh").args(["-c", script])).unwrap();
    assert!(m.status.success());
    assert!(m.max_rss_kib >= 60 << 10, "max RSS {} KiB", m.max_rss_kib);
}

#[test]
fn a_big_benchmark_does_not_lend_its_peak_to_a_small_child() {
    // Without the wrapper, `wait4` would report this process's 512 MiB peak for `true`.
    let mut big = vec![0u8; 512 << 20];
    for i in (0..big.len()).step_by(4096) {
        big[i] = 1;
    }
    let m = measure(&mut Command::new("true")).unwrap();
    assert!(m.status.success());
    assert!(
        m.max_rss_kib < 32 << 10,
        "`true` reported at {} KiB",
        m.max_rss_kib
    );
    drop(std::hint::black_box(big));
}

#[test]
fn a_server_stopped_with_sigterm_is_measured() {
    let mut cmd = Command::new("sleep");
    cmd.arg("30").stdin(Stdio::null());
    wrap(&mut cmd).unwrap();
    let start = Instant::now();
    let child = cmd.spawn().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    // SAFETY: kill has no memory preconditions; the pid is our unreaped child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let m = wait_measured(child, start).unwrap();
    assert_eq!(m.status.signal(), Some(libc::SIGTERM));
    assert!(m.wall < Duration::from_secs(10));
    assert!(m.max_rss_kib > 0);
}
