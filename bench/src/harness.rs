//! Measuring child processes and reporting the results: wall time, peak
//! memory and CPU time of a command ([`measure`]), throughput statistics
//! ([`SideStats`]) and plain-text tables ([`Table`]). Shared by all
//! `freight-bench` subcommands; on-disk sizes come from
//! [`freight_test_support::tree::disk_usage`].

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use freight_test_support::tree::walk;
use serde::Serialize;

/// What [`measure`] observed about one child process.
#[derive(Debug, Clone, Copy)]
pub struct Measurement {
    /// Wall-clock time from just before spawning to the child's exit.
    pub wall: Duration,
    /// Peak resident set size in KiB, as `wait4` reports it: the largest of
    /// the child and of every descendant it waited for (for a shell pipeline,
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
/// The child is reaped with `wait4`, whose resource usage covers the child
/// and the descendants it waited for. The command's stdio should not be
/// piped to this process (nothing reads the pipes while waiting); inherited,
/// null or file stdio is fine. A child that exits unsuccessfully is not an
/// error here: check [`Measurement::status`].
pub fn measure(cmd: &mut Command) -> io::Result<Measurement> {
    let start = Instant::now();
    let child = cmd.spawn().map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("spawning {}: {e}", cmd.get_program().to_string_lossy()),
        )
    })?;
    wait_measured(child, start)
}

/// Waits for `child` (spawned at `start`) to exit and measures it like [`measure`]: for a
/// process started in the background, such as a server that is stopped with a signal.
/// `child` must not have been waited for yet.
pub fn wait_measured(child: Child, start: Instant) -> io::Result<Measurement> {
    let pid = libc::pid_t::try_from(child.id())
        .map_err(|_| io::Error::other(format!("child pid {} out of range", child.id())))?;
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is a plain C struct for which all-zero bytes are valid.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `status` and `usage` are valid, writable, and live for the call.
        let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
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
    Ok(Measurement {
        wall,
        max_rss_kib: u64::try_from(usage.ru_maxrss).unwrap_or(0),
        user: timeval(usage.ru_utime),
        system: timeval(usage.ru_stime),
        status: ExitStatus::from_raw(status),
    })
}

fn timeval(tv: libc::timeval) -> Duration {
    let secs = u64::try_from(tv.tv_sec).unwrap_or(0);
    let micros = u32::try_from(tv.tv_usec).unwrap_or(0);
    Duration::from_secs(secs) + Duration::from_micros(micros.into())
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
    fn measures_a_child() {
        let m = measure(Command::new("sh").args(["-c", "exit 3"])).unwrap();
        assert_eq!(m.status.code(), Some(3));
        assert!(m.max_rss_kib > 0);
        let m = measure(Command::new("sh").args(["-c", "sleep 0.2"])).unwrap();
        assert!(m.status.success());
        assert!(m.wall >= Duration::from_millis(200));
        assert!(measure(&mut Command::new("/nonexistent/freight-bench-x")).is_err());
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
