//! Measuring child processes and reporting the results: wall time, peak
//! memory and CPU time of a command ([`measure`]), throughput statistics
//! ([`SideStats`]) and plain-text tables ([`Table`]). Shared by all
//! `freight-bench` subcommands; on-disk sizes come from
//! [`freight_test_support::tree::disk_usage`].

use std::ffi::{CString, OsStr, OsString};
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use freight_test_support::tree::walk;
use serde::Serialize;

/// What [`measure`] observed about one child process.
#[derive(Debug, Clone, Copy)]
pub struct Measurement {
    /// Wall-clock time from just before spawning to the child's exit.
    pub wall: Duration,
    /// Peak resident set size in KiB, as `wait4` reports it to `freight-measure`: the
    /// largest of the child and of every descendant it waited for (for a shell pipeline,
    /// the biggest process of the pipeline, not their sum).
    pub max_rss_kib: u64,
    /// User CPU time of the child and its waited-for descendants.
    pub user: Duration,
    /// System CPU time of the child and its waited-for descendants.
    pub system: Duration,
    /// How the child exited.
    pub status: ExitStatus,
}

impl Measurement {
    /// User plus system CPU time.
    pub fn cpu(&self) -> Duration {
        self.user + self.system
    }

    /// Peak resident set size in MiB.
    pub fn max_rss_mib(&self) -> f64 {
        self.max_rss_kib as f64 / 1024.0
    }
}

/// Runs `cmd` to completion and measures it.
///
/// The command runs under `freight-measure` (see [`wrap`]), which reports the peak RSS and CPU
/// time of the command and of the descendants it waited for (for a shell pipeline, the biggest
/// process of the pipeline, not their sum). The command's stdio should not be piped to this
/// process (nothing reads the pipes while waiting); inherited, null or file stdio is fine. A
/// child that exits unsuccessfully is not an error here: check [`Measurement::status`].
pub fn measure(cmd: &mut Command) -> io::Result<Measurement> {
    wrap(cmd)?;
    let start = Instant::now();
    let child = cmd.spawn().map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("spawning {}: {e}", cmd.get_program().to_string_lossy()),
        )
    })?;
    wait_measured(child, start)
}

/// Marks a command [`wrap`] has prepared (in its environment, the one thing of a `Command`
/// that can be read back), so that measuring it again does not wrap it twice.
const WRAPPED: &str = "FREIGHT_MEASURE_WRAPPED";

/// Where `freight-measure` reports on the child `pid` of this process: a name both sides can
/// make without telling each other (the tool knows its own pid and its parent's).
fn report_path(pid: u32) -> PathBuf {
    std::env::temp_dir().join(format!("freight-measure-{}-{pid}", std::process::id()))
}

/// Reads (and removes) the report on the child `pid`, which has ended.
fn take_report(pid: u32) -> io::Result<(u64, Duration, Duration)> {
    let path = report_path(pid);
    let text = fs::read_to_string(&path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "freight-measure left no report at {} ({e}): the command did not start",
                path.display()
            ),
        )
    })?;
    let _ = fs::remove_file(&path);
    let bad = || io::Error::other(format!("malformed freight-measure report {text:?}"));
    let mut it = text.split_whitespace().map(|f| f.parse::<u64>());
    let (Some(Ok(rss)), Some(Ok(user)), Some(Ok(system))) = (it.next(), it.next(), it.next())
    else {
        return Err(bad());
    };
    Ok((
        rss,
        Duration::from_micros(user),
        Duration::from_micros(system),
    ))
}

/// Makes `cmd` run under `freight-measure`, so that its peak RSS is its own.
///
/// `wait4` alone is not enough: Linux seeds a child's `maxrss` with the high-water mark of the
/// memory image its `exec` replaces, which for `posix_spawn` (what `Command` uses) is the
/// benchmark's own image and peak, and for `fork` the benchmark's resident size. So the forked
/// child execs the small `freight-measure` (found next to the running executable, or at
/// `$FREIGHT_MEASURE`), which starts the command from its own few MiB and reports the
/// command's usage; the error of a few MiB this leaves is the tool's own peak. Everything else
/// set on `cmd` (stdio, environment, working folder) applies as before, because the exec
/// happens in a pre-exec hook, after `Command` has set them up in the child.
///
/// A command is wrapped once (a second call does nothing), so it can be measured run after
/// run; its program, arguments and environment are taken as they are at the first call.
pub fn wrap(cmd: &mut Command) -> io::Result<()> {
    if cmd.get_envs().any(|(k, _)| k == WRAPPED) {
        return Ok(());
    }
    cmd.env(WRAPPED, "1");
    let tool = measure_tool()?;
    let cstr = |s: &OsStr| {
        CString::new(s.as_bytes()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} contains a NUL byte", s.to_string_lossy()),
            )
        })
    };
    let mut argv = vec![
        cstr(tool.as_os_str())?,
        cstr(std::env::temp_dir().as_os_str())?,
    ];
    argv.push(cstr(cmd.get_program())?);
    for a in cmd.get_args() {
        argv.push(cstr(a)?);
    }
    // The environment the command would have had: ours, with its changes applied (std applies
    // them only at its own exec, after the hook).
    let mut env: std::collections::BTreeMap<OsString, OsString> = std::env::vars_os().collect();
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => env.insert(k.to_owned(), v.to_owned()),
            None => env.remove(k),
        };
    }
    let mut envp = Vec::with_capacity(env.len());
    for (k, v) in env {
        let mut kv = k;
        kv.push("=");
        kv.push(v);
        envp.push(cstr(&kv)?);
    }
    let exec = Exec::new(cstr(tool.as_os_str())?, argv, envp);
    // SAFETY: the hook runs in the forked child and only calls execve (async-signal-safe) on
    // strings prepared here, before the fork.
    unsafe { cmd.pre_exec(move || exec.run()) };
    Ok(())
}

/// An `execve` prepared before the fork: the strings and the NULL-terminated pointer arrays.
struct Exec {
    path: CString,
    _strings: (Vec<CString>, Vec<CString>),
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
}

// SAFETY: the raw pointers point into the CStrings the struct owns, which are never changed;
// `Command::pre_exec` requires Send + Sync of its hook.
unsafe impl Send for Exec {}
// SAFETY: as above; the hook only reads.
unsafe impl Sync for Exec {}

impl Exec {
    fn new(path: CString, argv: Vec<CString>, envp: Vec<CString>) -> Self {
        let ptrs = |v: &[CString]| {
            v.iter()
                .map(|s| s.as_ptr())
                .chain(std::iter::once(std::ptr::null()))
                .collect::<Vec<_>>()
        };
        Exec {
            argv: ptrs(&argv),
            envp: ptrs(&envp),
            path,
            _strings: (argv, envp),
        }
    }

    fn run(&self) -> io::Result<()> {
        // SAFETY: every pointer is a valid NUL-terminated string or the terminating NULL.
        unsafe { libc::execve(self.path.as_ptr(), self.argv.as_ptr(), self.envp.as_ptr()) };
        Err(io::Error::last_os_error())
    }
}

/// `freight-measure`: `$FREIGHT_MEASURE`, else next to the running executable (or one folder
/// up, for test binaries in `target/*/deps`).
fn measure_tool() -> io::Result<PathBuf> {
    if let Some(p) = std::env::var_os("FREIGHT_MEASURE") {
        return Ok(p.into());
    }
    let exe = std::env::current_exe()?;
    for dir in exe.ancestors().skip(1).take(2) {
        let p = dir.join("freight-measure");
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!(
            "freight-measure not found next to {}; build it: cargo build -p freight-bench --bins",
            exe.display()
        ),
    ))
}

/// Waits for `child` (spawned at `start` from a command given to [`wrap`]) to exit and
/// measures it like [`measure`]: for a process started in the background, such as a server
/// that is stopped with a signal. `child` must not have been waited for yet.
pub fn wait_measured(child: Child, start: Instant) -> io::Result<Measurement> {
    let pid = libc::pid_t::try_from(child.id())
        .map_err(|_| io::Error::other(format!("child pid {} out of range", child.id())))?;
    let mut status: libc::c_int = 0;
    loop {
        // SAFETY: `status` is valid and writable for the call.
        let reaped = unsafe { libc::waitpid(pid, &mut status, 0) };
        if reaped == pid {
            break;
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(io::Error::new(
                err.kind(),
                format!("waiting for child {pid}: {err}"),
            ));
        }
    }
    let wall = start.elapsed();
    // The child is reaped; dropping `Child` neither waits nor kills.
    drop(child);
    let (max_rss_kib, user, system) = take_report(pid as u32)?;
    Ok(Measurement {
        wall,
        max_rss_kib,
        user,
        system,
        status: ExitStatus::from_raw(status),
    })
}

/// Flushes dirty pages of all filesystems (`sync(2)`), so that writeback left
/// over from one run does not slow down the next.
pub fn sync_filesystems() {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() }
}

/// Reads every regular file under `root` (symlinks are not followed) so that
/// later runs read from the page cache. Returns the number of bytes read.
///
/// Reading the files ourselves is used instead of `tar -cf /dev/null`,
/// because GNU tar skips reading file contents when writing to `/dev/null`.
pub fn warm_page_cache(root: &Path) -> io::Result<u64> {
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0;
    walk(root, &mut |path, meta| {
        if meta.is_file() {
            let mut file = File::open(path).map_err(|e| with_path(e, "opening", path))?;
            loop {
                let n = file
                    .read(&mut buf)
                    .map_err(|e| with_path(e, "reading", path))?;
                if n == 0 {
                    break;
                }
                total += n as u64;
            }
        }
        Ok(())
    })?;
    Ok(total)
}

fn with_path(err: io::Error, action: &str, path: &Path) -> io::Error {
    io::Error::new(err.kind(), format!("{action} {}: {err}", path.display()))
}

pub use freight_core::units::parse_size;

/// Throughput in MB/s (10^6 bytes per second).
pub fn mb_per_s(bytes: u64, wall: Duration) -> f64 {
    let secs = wall.as_secs_f64();
    if secs > 0.0 {
        bytes as f64 / 1e6 / secs
    } else {
        f64::INFINITY
    }
}

/// Median of `values` (mean of the middle two for an even count); NaN when empty.
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => sorted[n / 2],
        _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// One measured run of one contender ("side") of a comparison, ready to be
/// printed or serialized.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunRecord {
    /// Contender name, e.g. `peer` or `freight`.
    pub side: String,
    /// 1-based run number.
    pub run: usize,
    /// Wall time in seconds.
    pub wall_s: f64,
    /// Throughput in MB/s of source bytes.
    pub mb_per_s: f64,
    /// Peak RSS in MiB (see [`Measurement::max_rss_kib`]).
    pub max_rss_mib: f64,
    /// User CPU seconds.
    pub user_s: f64,
    /// System CPU seconds.
    pub system_s: f64,
    /// Size in bytes of what the run produced.
    pub output_bytes: u64,
}

impl RunRecord {
    /// A record of `measurement`, with throughput computed over `source_bytes`.
    pub fn new(
        side: &str,
        run: usize,
        measurement: &Measurement,
        source_bytes: u64,
        output_bytes: u64,
    ) -> Self {
        RunRecord {
            side: side.to_owned(),
            run,
            wall_s: measurement.wall.as_secs_f64(),
            mb_per_s: mb_per_s(source_bytes, measurement.wall),
            max_rss_mib: measurement.max_rss_mib(),
            user_s: measurement.user.as_secs_f64(),
            system_s: measurement.system.as_secs_f64(),
            output_bytes,
        }
    }
}

/// Summary over all runs of one side.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SideStats {
    /// Contender name.
    pub side: String,
    /// Number of runs.
    pub runs: usize,
    /// Highest throughput (shortest run), MB/s.
    pub best_mb_per_s: f64,
    /// Median throughput, MB/s.
    pub median_mb_per_s: f64,
    /// Shortest wall time, seconds.
    pub best_wall_s: f64,
    /// Median wall time, seconds.
    pub median_wall_s: f64,
    /// Highest peak RSS over all runs, MiB.
    pub max_rss_mib: f64,
    /// Median CPU (user + system) seconds.
    pub median_cpu_s: f64,
    /// Output size of the last run, bytes.
    pub output_bytes: u64,
}

impl SideStats {
    /// Summarizes the records of `side` among `records`; `None` if there are none.
    pub fn of(side: &str, records: &[RunRecord]) -> Option<Self> {
        let mine: Vec<&RunRecord> = records.iter().filter(|r| r.side == side).collect();
        let last = mine.last()?;
        let collect = |f: fn(&RunRecord) -> f64| mine.iter().map(|r| f(r)).collect::<Vec<_>>();
        let speeds = collect(|r| r.mb_per_s);
        let walls = collect(|r| r.wall_s);
        Some(SideStats {
            side: side.to_owned(),
            runs: mine.len(),
            best_mb_per_s: speeds.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            median_mb_per_s: median(&speeds),
            best_wall_s: walls.iter().copied().fold(f64::INFINITY, f64::min),
            median_wall_s: median(&walls),
            max_rss_mib: collect(|r| r.max_rss_mib).into_iter().fold(0.0, f64::max),
            median_cpu_s: median(&collect(|r| r.user_s + r.system_s)),
            output_bytes: last.output_bytes,
        })
    }
}

/// A plain-text table: the first column left-aligned, the others
/// right-aligned, columns separated by two spaces.
#[derive(Debug, Clone, Default)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new<S: ToString>(headers: impl IntoIterator<Item = S>) -> Self {
        Table {
            headers: headers.into_iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Appends a row; missing cells are blank, extra cells widen the table.
    pub fn row<S: ToString>(&mut self, cells: impl IntoIterator<Item = S>) -> &mut Self {
        self.rows
            .push(cells.into_iter().map(|c| c.to_string()).collect());
        self
    }

    /// Appends a row comparing one figure of two sides, both with `decimals` digits, and a
    /// last cell (a ratio, or blank).
    pub fn figures(
        &mut self,
        label: &str,
        a: f64,
        b: f64,
        decimals: usize,
        last: String,
    ) -> &mut Self {
        self.row([
            label.to_owned(),
            format!("{a:.decimals$}"),
            format!("{b:.decimals$}"),
            last,
        ])
    }

    /// A table of `records`, one row per run.
    pub fn of_runs(records: &[RunRecord]) -> Self {
        let mut table = Table::new([
            "side",
            "run",
            "wall s",
            "MB/s",
            "max RSS MiB",
            "CPU s",
            "output bytes",
        ]);
        for r in records {
            table.row([
                r.side.clone(),
                r.run.to_string(),
                format!("{:.2}", r.wall_s),
                format!("{:.1}", r.mb_per_s),
                format!("{:.1}", r.max_rss_mib),
                format!("{:.2}", r.user_s + r.system_s),
                r.output_bytes.to_string(),
            ]);
        }
        table
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let columns = self
            .rows
            .iter()
            .map(Vec::len)
            .chain([self.headers.len()])
            .max()
            .unwrap_or(0);
        let cell = |row: &[String], i: usize| row.get(i).map_or("", |c| c.as_str()).to_owned();
        let mut widths = vec![0; columns];
        for row in std::iter::once(&self.headers).chain(&self.rows) {
            for (i, width) in widths.iter_mut().enumerate() {
                *width = (*width).max(cell(row, i).chars().count());
            }
        }
        let line = |f: &mut fmt::Formatter<'_>, row: &[String]| -> fmt::Result {
            let mut text = String::new();
            for (i, &width) in widths.iter().enumerate() {
                let c = cell(row, i);
                if i == 0 {
                    text.push_str(&format!("{c:<width$}"));
                } else {
                    text.push_str(&format!("  {c:>width$}"));
                }
            }
            writeln!(f, "{}", text.trim_end())
        };
        line(f, &self.headers)?;
        let total: usize = widths.iter().sum::<usize>() + 2 * columns.saturating_sub(1);
        writeln!(f, "{}", "-".repeat(total))?;
        for row in &self.rows {
            line(f, row)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("64kib"), Ok(64 << 10));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size("10MB"), Ok(10_000_000));
        assert_eq!(parse_size("3 G"), Ok(3 << 30));
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("GiB").is_err());
        assert!(parse_size("99999999999TiB").is_err());
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn table_renders_aligned() {
        let mut t = Table::new(["side", "MB/s"]);
        t.row(["peer", "12.5"]).row(["freight", "100.0"]);
        let text = t.to_string();
        assert_eq!(
            text,
            "side      MB/s\n--------------\npeer      12.5\nfreight  100.0\n"
        );
    }

    #[test]
    fn stats_of_runs() {
        let rec = |side: &str, run, wall_s: f64, rss| RunRecord {
            side: side.into(),
            run,
            wall_s,
            mb_per_s: 100.0 / wall_s,
            max_rss_mib: rss,
            user_s: 1.0,
            system_s: 0.5,
            output_bytes: run as u64,
        };
        let records = [
            rec("peer", 1, 2.0, 10.0),
            rec("freight", 1, 1.0, 50.0),
            rec("peer", 2, 4.0, 12.0),
        ];
        let peer = SideStats::of("peer", &records).unwrap();
        assert_eq!(peer.runs, 2);
        assert_eq!(peer.best_mb_per_s, 50.0);
        assert_eq!(peer.median_mb_per_s, 37.5);
        assert_eq!(peer.best_wall_s, 2.0);
        assert_eq!(peer.max_rss_mib, 12.0);
        assert_eq!(peer.output_bytes, 2);
        assert_eq!(peer.median_cpu_s, 1.5);
        assert!(SideStats::of("other", &records).is_none());
    }
}
