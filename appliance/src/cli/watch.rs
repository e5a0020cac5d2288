//! `freight watch`: a bar per running copy (`GET /v1/progress`) and new status messages
//! (`GET /v1/messages?since=`) printed above the bars, polled until Ctrl-C or, with
//! `--until-settled`, until nothing is left to do.

use crate::admin::client::{AdminClient, with_query};
use crate::api::{JobProgress, PackageStatus, StatusMessage};
use crate::cli::error::CliError;
use crate::cli::render::{job_label, job_state, message_line, status_table};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use jiff::tz::TimeZone;
use std::collections::{HashMap, HashSet};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// Job states of a copy still to finish (`JobProgress.state`).
const ACTIVE_JOB_STATES: [&str; 4] = ["requested", "queued", "running", "retrying"];
/// Per-DP states still to change (`PackageStatus.state`), checked besides the jobs.
const PENDING_STATES: [&str; 3] = ["Install Pending", "Retrying", "Removal Pending"];
/// Messages from before the watch started that the first poll shows, newest last.
const BACKLOG: usize = 20;

/// What `freight watch` was asked to do.
pub struct WatchOpts {
    /// Only this package's copies, messages and status.
    pub package: Option<String>,
    /// Exit once settled (see [`settled`]) and print the final status.
    pub until_settled: bool,
    /// Time between polls.
    pub interval: Duration,
    /// With `until_settled`: give up after this long.
    pub timeout: Option<Duration>,
    /// Messages and the final status as JSON lines, no bars.
    pub json: bool,
    /// No bars.
    pub quiet: bool,
    /// Print every message after this sequence number instead of a backlog of the newest.
    pub since: Option<i64>,
}

fn concerns(package: Option<&str>, p: &str) -> bool {
    package.is_none_or(|want| want == p)
}

/// The settle rule: no copy (of `package`, or of any package) is requested, queued, running or
/// retrying,
/// and no DP of it is still Install Pending, Retrying or Removal Pending.
pub fn settled(jobs: &[JobProgress], status: &[PackageStatus], package: Option<&str>) -> bool {
    let busy_job = jobs
        .iter()
        .any(|j| concerns(package, &j.package) && ACTIVE_JOB_STATES.contains(&j.state.as_str()));
    let pending = status
        .iter()
        .any(|s| concerns(package, &s.package) && PENDING_STATES.contains(&s.state.as_str()));
    !busy_job && !pending
}

/// The DPs on which the package (or any package) failed.
pub fn failed<'a>(status: &'a [PackageStatus], package: Option<&str>) -> Vec<&'a PackageStatus> {
    status
        .iter()
        .filter(|s| concerns(package, &s.package) && s.state == "Failed")
        .collect()
}

/// The messages to print from one poll, in sequence order: those after `last`, or on the
/// first poll (`last` is `None`) the newest `backlog`.
pub fn fresh(msgs: &[StatusMessage], last: Option<i64>, backlog: usize) -> Vec<&StatusMessage> {
    let mut new: Vec<&StatusMessage> = msgs
        .iter()
        .filter(|m| last.is_none_or(|l| m.seq > l))
        .collect();
    new.sort_by_key(|m| m.seq);
    if last.is_none() {
        let skip = new.len().saturating_sub(backlog);
        new.drain(..skip);
    }
    new
}

/// The one-line error of a watch that settled with failures.
fn failure_error(bad: &[&PackageStatus], package: Option<&str>) -> CliError {
    let list: Vec<String> = bad
        .iter()
        .map(|s| format!("{} on {}", s.package, s.dp))
        .collect();
    let (msgs, fix) = match package {
        Some(p) => (
            format!("freight messages --package {p}"),
            format!("freight redistribute {p} --dp DP"),
        ),
        None => (
            "freight messages".to_string(),
            "freight redistribute ID --dp DP".to_string(),
        ),
    };
    CliError::Failed(format!(
        "failed: {}; see why with `{msgs}`, fix it, then `{fix}`",
        list.join(", ")
    ))
}

/// Runs the watch until Ctrl-C, or until settled with `until_settled`.
pub async fn run(client: &AdminClient, o: WatchOpts) -> Result<(), CliError> {
    let visible = !o.quiet && !o.json && std::io::stderr().is_terminal();
    let mut bars = Bars::new(visible);
    let multi = bars.multi.clone();
    tokio::select! {
        r = poll(client, &o, &mut bars) => r,
        _ = tokio::signal::ctrl_c() => {
            multi.clear().ok();
            match (&o.package, o.until_settled) {
                (_, false) => Ok(()),
                (Some(p), true) => Err(CliError::Usage(format!(
                    "interrupted before package {p} settled; `freight status {p}` shows where it stands"
                ))),
                (None, true) => Err(CliError::Usage(
                    "interrupted before all copies settled; `freight status` shows where they stand"
                        .into(),
                )),
            }
        }
    }
}

async fn poll(client: &AdminClient, o: &WatchOpts, bars: &mut Bars) -> Result<(), CliError> {
    let tz = TimeZone::system();
    let pkg = o.package.as_deref();
    let status_path = with_query("/status", &[("package", o.package.clone())]);
    let deadline = o.timeout.map(|t| Instant::now() + t);
    let mut last: Option<i64> = o.since;
    loop {
        let jobs: Vec<JobProgress> = client.get("/progress").await?;
        let jobs: Vec<JobProgress> = jobs
            .into_iter()
            .filter(|j| concerns(pkg, &j.package))
            .collect();
        // Status only once no copy runs; fetched before the messages so that the messages
        // of the last state changes are printed before the final table.
        let done = if o.until_settled && settled(&jobs, &[], pkg) {
            let status: Vec<PackageStatus> = client.get(&status_path).await?;
            settled(&jobs, &status, pkg).then_some(status)
        } else {
            None
        };
        let since = last.map(|l| l.to_string());
        let path = with_query(
            "/messages",
            &[("package", o.package.clone()), ("since", since)],
        );
        let msgs: Vec<StatusMessage> = client.get(&path).await?;
        for m in fresh(&msgs, last, BACKLOG) {
            let line = if o.json {
                serde_json::to_string(m).map_err(|e| CliError::Usage(e.to_string()))?
            } else {
                message_line(m, &tz)
            };
            bars.println(&line);
        }
        // The first poll moves past everything, even the backlog it did not print.
        last = msgs.iter().map(|m| m.seq).chain(last).max().or(Some(0));
        bars.update(&jobs);
        if let Some(status) = done {
            bars.clear();
            if o.json {
                let line =
                    serde_json::to_string(&status).map_err(|e| CliError::Usage(e.to_string()))?;
                println!("{line}");
            } else {
                print!("{}", status_table(&status, &tz));
            }
            let bad = failed(&status, pkg);
            return if bad.is_empty() {
                Ok(())
            } else {
                Err(failure_error(&bad, pkg))
            };
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            bars.clear();
            let what = pkg.map_or("the copies".to_string(), |p| format!("package {p}"));
            let status = pkg.map_or("freight status".to_string(), |p| {
                format!("freight status {p}")
            });
            return Err(CliError::Usage(format!(
                "{what} did not settle within the --timeout; `{status}` shows where it stands"
            )));
        }
        tokio::time::sleep(o.interval).await;
    }
}

/// One bar per (package, DP) copy, on stderr when it is a terminal.
struct Bars {
    multi: MultiProgress,
    visible: bool,
    style: ProgressStyle,
    /// Each copy's bar and the attempt it shows (a new attempt restarts the bar).
    bars: HashMap<(String, String), (ProgressBar, u32)>,
}

impl Bars {
    fn new(visible: bool) -> Bars {
        let target = if visible {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let style = ProgressStyle::with_template(
            "{prefix:<24} [{bar:30}] {bytes:>10}/{total_bytes:<10} {binary_bytes_per_sec:>12}  {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        Bars {
            multi: MultiProgress::with_draw_target(target),
            visible,
            style,
            bars: HashMap::new(),
        }
    }

    /// Prints a line on stdout above the bars.
    fn println(&self, line: &str) {
        if self.visible {
            self.multi.suspend(|| println!("{line}"));
        } else {
            println!("{line}");
        }
    }

    /// Shows these copies: new bars for new ones, finished ones removed.
    fn update(&mut self, jobs: &[JobProgress]) {
        if !self.visible {
            return;
        }
        let live: HashSet<(String, String)> = jobs
            .iter()
            .map(|j| (j.package.clone(), j.dp.clone()))
            .collect();
        let multi = &self.multi;
        self.bars.retain(|k, (bar, _)| {
            let keep = live.contains(k);
            if !keep {
                bar.finish_and_clear();
                multi.remove(bar);
            }
            keep
        });
        for j in jobs {
            let (bar, attempt) = self
                .bars
                .entry((j.package.clone(), j.dp.clone()))
                .or_insert_with(|| {
                    let bar = multi.add(ProgressBar::new(j.total));
                    bar.set_style(self.style.clone());
                    (bar, j.attempts)
                });
            if *attempt != j.attempts {
                bar.reset();
                *attempt = j.attempts;
            }
            bar.set_prefix(job_label(j));
            bar.set_length(j.total);
            bar.set_position(j.done);
            bar.set_message(job_state(j));
        }
    }

    /// Removes every bar.
    fn clear(&mut self) {
        for (_, (bar, _)) in self.bars.drain() {
            bar.finish_and_clear();
        }
        self.multi.clear().ok();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(package: &str, state: &str) -> JobProgress {
        JobProgress {
            package: package.into(),
            version: 1,
            dp: "dp1".into(),
            action: "install".into(),
            state: state.into(),
            attempts: 1,
            total: 0,
            done: 0,
        }
    }

    fn st(package: &str, dp: &str, state: &str) -> PackageStatus {
        PackageStatus {
            package: package.into(),
            site: None,
            dp: dp.into(),
            state: state.into(),
            version: None,
            last_copied: None,
            message: None,
            last_bytes: None,
        }
    }

    #[test]
    fn settles_when_no_copy_is_left_for_the_package() {
        let done = [st("A", "dp1", "Installed"), st("A", "dp2", "Failed")];
        assert!(settled(&[], &done, Some("A")));
        for s in ["requested", "queued", "running", "retrying"] {
            assert!(!settled(&[job("A", s)], &done, Some("A")), "{s}");
            assert!(!settled(&[job("A", s)], &done, None), "{s}");
            // Another package's copy does not hold up a watch of A.
            assert!(settled(&[job("B", s)], &done, Some("A")), "{s}");
        }
        for s in ["Install Pending", "Retrying", "Removal Pending"] {
            let status = [st("A", "dp1", "Installed"), st("A", "dp2", s)];
            assert!(!settled(&[], &status, Some("A")), "{s}");
            assert!(settled(&[], &status, Some("B")), "{s}");
        }
        assert!(settled(&[], &[st("A", "dp1", "Removed")], None));
    }

    #[test]
    fn failures_are_counted_for_the_package_and_named() {
        let status = [
            st("A", "dp1", "Installed"),
            st("A", "dp2", "Failed"),
            st("B", "dp1", "Failed"),
        ];
        assert_eq!(failed(&status, Some("A")).len(), 1);
        assert_eq!(failed(&status, None).len(), 2);
        assert!(failed(&status[..1], Some("A")).is_empty());
        let e = failure_error(&failed(&status, Some("A")), Some("A")).to_string();
        assert_eq!(
            e,
            "failed: A on dp2; see why with `freight messages --package A`, fix it, then \
             `freight redistribute A --dp DP`"
        );
    }

    fn msg(seq: i64) -> StatusMessage {
        StatusMessage {
            seq,
            id: 2300,
            severity: "info".into(),
            component: "DistMgr".into(),
            site: "PS1".into(),
            time: 0,
            package: None,
            dp: None,
            version: None,
            strings: vec![],
            text: String::new(),
        }
    }

    #[test]
    fn only_new_messages_print_and_the_first_poll_shows_a_backlog() {
        let msgs: Vec<StatusMessage> = [3, 1, 2, 5, 4].into_iter().map(msg).collect();
        let seqs = |v: Vec<&StatusMessage>| v.iter().map(|m| m.seq).collect::<Vec<_>>();
        assert_eq!(seqs(fresh(&msgs, None, 2)), [4, 5]);
        assert_eq!(seqs(fresh(&msgs, None, 10)), [1, 2, 3, 4, 5]);
        // A server that answers `since` inclusively still prints nothing twice.
        assert_eq!(seqs(fresh(&msgs, Some(3), 2)), [4, 5]);
        assert!(fresh(&msgs, Some(5), 2).is_empty());
    }
}
