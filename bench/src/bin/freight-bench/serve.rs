//! Server processes of a benchmark: started, awaited until ready, stopped with SIGTERM and
//! measured (peak RSS and CPU through `freight-measure`, see `harness::wrap`).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use freight_bench::harness::{self, Measurement};

use crate::{BenchError, command_line, ctx};

/// How long a server may take to print its readiness line.
const SERVE_READY: Duration = Duration::from_secs(60);

/// A running server process (`freight transfer serve`, `freight daemon`), stopped with SIGTERM
/// when dropped (the benchmark failed); [`Serve::stop`] stops it and measures it.
pub struct Serve {
    child: Option<Child>,
    started: Instant,
    /// Its standard output after the readiness line, one line at a time.
    lines: mpsc::Receiver<String>,
}

impl Serve {
    /// Starts `cmd` and waits for its readiness line, which `ready` turns into what the caller
    /// needs (an address); returns that.
    pub fn start(
        cmd: &mut Command,
        ready: impl Fn(&str) -> Option<String>,
    ) -> Result<(Serve, String), BenchError> {
        harness::wrap(cmd).map_err(ctx(format!("measuring {}", command_line(cmd))))?;
        let started = Instant::now();
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(ctx(format!("starting {}", command_line(cmd))))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let serve = Serve {
            child: Some(child),
            started,
            lines,
        };
        let line = serve.lines.recv_timeout(SERVE_READY).map_err(|_| {
            BenchError::Failed(format!(
                "`{}` printed no readiness line within {SERVE_READY:?}",
                command_line(cmd)
            ))
        })?;
        let addr = ready(&line)
            .ok_or_else(|| BenchError::Failed(format!("unexpected readiness line: {line:?}")))?;
        Ok((serve, addr))
    }

    /// CPU time (user + system) the server has used so far, read from `/proc` (the server is
    /// the child of its `freight-measure`); None when it cannot be read.
    pub fn cpu_so_far(&self) -> Option<Duration> {
        let wrapper = self.child.as_ref()?.id();
        let children =
            std::fs::read_to_string(format!("/proc/{wrapper}/task/{wrapper}/children")).ok()?;
        let pid: u32 = children.split_whitespace().next()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The fields after the command name (which may hold spaces) start after its ')'.
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
        // SAFETY: sysconf has no memory preconditions.
        let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).ok()?;
        Some(Duration::from_millis(ticks * 1000 / hz.max(1)))
    }

    /// SIGTERM, then reap; peak RSS and CPU of the whole serve process.
    pub fn stop(mut self) -> Result<(Measurement, Vec<String>), BenchError> {
        let child = self.child.take().expect("running");
        terminate(&child);
        let m = harness::wait_measured(child, self.started)?;
        let lines = self.lines.try_iter().collect();
        Ok((m, lines))
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&child);
            let _ = child.wait();
        }
    }
}

fn terminate(child: &Child) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill has no memory preconditions; the pid is our unreaped child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
}
