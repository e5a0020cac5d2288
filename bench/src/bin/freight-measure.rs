//! `freight-measure DIR PROGRAM [ARGS...]`: runs PROGRAM and writes the resource usage of it
//! (and of the descendants it waited for) as `maxrss_kib user_us system_us` to the file
//! `DIR/freight-measure-<parent pid>-<own pid>`, the name the harness that started it expects.
//!
//! Why a process of its own: `wait4` reports a child's peak RSS as the largest of its own
//! `maxrss`, and Linux seeds that with the high-water mark of the memory image the child's
//! `exec` replaced. A child that a big process starts with `posix_spawn` (vfork: it shares the
//! parent's memory until exec) therefore "peaks" at the parent's peak; one started with `fork`
//! at the parent's resident size. The benchmark harness ([`freight_bench::harness::measure`])
//! execs this small program in the forked child instead of PROGRAM, so PROGRAM is started from
//! a memory image of a few MiB, and its own peak is what is reported. The harness reads REPORT;
//! stdio, environment and working folder pass through unchanged.
//!
//! SIGTERM, SIGINT, SIGHUP and SIGQUIT are passed on to PROGRAM (servers are stopped with
//! SIGTERM), and this process ends the way PROGRAM ended: the same exit code, or the same signal.

use std::ffi::OsString;
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicI32, Ordering};

/// PROGRAM's pid once started (0 before), read by the signal handler.
static CHILD: AtomicI32 = AtomicI32::new(0);
/// A signal that arrived before PROGRAM started, passed on as soon as it has.
static PENDING: AtomicI32 = AtomicI32::new(0);

const FORWARDED: [libc::c_int; 4] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT];

extern "C" fn forward(sig: libc::c_int) {
    let pid = CHILD.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe; the pid is our unreaped child.
        unsafe { libc::kill(pid, sig) };
    } else {
        PENDING.store(sig, Ordering::SeqCst);
    }
}

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(dir), Some(program)) = (args.next(), args.next()) else {
        eprintln!("usage: freight-measure DIR PROGRAM [ARGS...]");
        return ExitCode::from(2);
    };
    let report = std::path::Path::new(&dir).join(format!(
        "freight-measure-{}-{}",
        std::os::unix::process::parent_id(),
        std::process::id()
    ));
    let rest: Vec<OsString> = args.collect();
    for sig in FORWARDED {
        // SAFETY: `forward` only touches atomics and calls kill, both async-signal-safe.
        unsafe { libc::signal(sig, forward as *const () as libc::sighandler_t) };
    }
    let child = match Command::new(&program)
        .args(&rest)
        .env_remove("FREIGHT_MEASURE_WRAPPED")
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "freight-measure: starting {}: {e}",
                program.to_string_lossy()
            );
            return ExitCode::from(127);
        }
    };
    let pid = child.id() as libc::pid_t;
    CHILD.store(pid, Ordering::SeqCst);
    let pending = PENDING.swap(0, Ordering::SeqCst);
    if pending != 0 {
        // SAFETY: as in `forward`.
        unsafe { libc::kill(pid, pending) };
    }
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is a plain C struct for which all-zero bytes are valid.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `status` and `usage` are valid and writable for the call.
        let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if reaped == pid {
            break;
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            eprintln!("freight-measure: waiting for {pid}: {err}");
            return ExitCode::from(127);
        }
    }
    drop(child);
    let micros = |tv: libc::timeval| tv.tv_sec * 1_000_000 + tv.tv_usec;
    let line = format!(
        "{} {} {}\n",
        usage.ru_maxrss,
        micros(usage.ru_utime),
        micros(usage.ru_stime)
    );
    if let Err(e) = std::fs::write(&report, line) {
        eprintln!("freight-measure: writing {}: {e}", report.to_string_lossy());
        return ExitCode::from(127);
    }
    if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        // SAFETY: restoring the default action and raising the signal PROGRAM died of, so
        // the harness sees the same ending.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
            libc::raise(sig);
        }
    }
    ExitCode::from(libc::WEXITSTATUS(status) as u8)
}
