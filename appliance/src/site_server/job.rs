//! The distribution job's state machine (SPEC §6 and §7), pure: no SQL, no clock, no I/O.
//!
//! DistMgr asks [`plan`] what a pending action becomes (a job, the DP's new state and the
//! messages to raise); PkgXferMgr asks [`next`] what an attempt's [`Outcome`] means (the
//! job's next state, the DP's package status and the messages). The store writes the answer
//! in one transaction. Every transition is unit-tested here without a database.
//!
//! ```text
//!             plan                    attempt (PkgXferMgr)
//! target ──────────► Queued ──────────► Running ──Copied/Removed/Validated──► Done
//!   DP: Install Pending / Removal Pending   │
//!                       ▲                   ├── failure, attempts left ──► Retrying (after delay)
//!                       └───────────────────┘       DP: Retrying / Removal Pending
//!                                           ├── failure, last attempt ──► Failed   DP: Failed
//!                                           ├── permanent failure ───────► Failed   DP: Failed (at once)
//!                                           └── DP holds a newer version ─► Done    DP: Installed (newer)
//! ```
//!
//! A failure is [`FailureKind::Transient`] (peer unreachable, timeout, lost connection, full
//! disk: the retry policy applies) or [`FailureKind::Permanent`] (a name or path the DP's file
//! system refuses, a hash mismatch, a refused authorization, a manifest too large for the peer:
//! it can never succeed as things stand, so the job fails at once with its reason, 8202).

use super::statmgr::Msg;
use super::store::types::{Action, DpState};
pub use crate::content::FailureKind;
use freight_core::units::human;
use std::time::Duration;

/// Attempts and delays (SPEC §6; `freightd.toml` sets them).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Attempts of a DP copy, removal or validation before it fails (100).
    pub dp_attempts: u32,
    /// Wait between those attempts (30 minutes).
    pub dp_delay: Duration,
    /// Pull DP notification attempts (no source yet, or at capacity) before the job fails (30).
    pub pull_attempts: u32,
    /// Wait before notifying a pull DP again (30 minutes).
    pub pull_delay: Duration,
}

/// What the job machine needs to know of a job attempt that ended.
#[derive(Debug, Clone, PartialEq)]
pub struct JobFacts<'a> {
    /// Package ID.
    pub package: &'a str,
    /// The version the job is for (0 for a removal).
    pub version: u32,
    /// DP name.
    pub dp: &'a str,
    /// What the job does.
    pub action: Action,
    /// Attempts made, this one included.
    pub attempts: u32,
    /// The version the DP's status row says it holds.
    pub held: Option<u32>,
}

/// A pull DP job's error while it waits for a source DP to hold its version. The store wakes
/// the jobs waiting so as soon as a source installs that version, so an update reaching a pull
/// DP before its sources waits for them, not for the retry delay (SPEC's 30 minutes).
pub const NO_SOURCE_YET: &str = "no source DP holds this version yet";

/// How one attempt of a job ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Content hosted and verified: stored bytes sent, seconds taken.
    Copied {
        /// Stored (compressed) bytes that travelled.
        bytes: u64,
        /// Wall time of the attempt.
        secs: f64,
    },
    /// The DP dropped the package; bytes of content it freed.
    Removed {
        /// Pack bytes released.
        freed: u64,
    },
    /// The DP re-hashed what it holds.
    Validated {
        /// The version it checked (None: it holds none).
        version: Option<u32>,
        /// Chunks re-hashed.
        chunks: u64,
        /// Chunks that failed.
        bad: u64,
        /// Files affected (the first few).
        files: Vec<String>,
    },
    /// A pull DP: no source DP holds the version yet (8212).
    NoSource,
    /// A pull DP is at capacity (8211).
    AtCapacity {
        /// Its active jobs.
        active: usize,
    },
    /// A pull DP could not download from any source (8213), or (permanent) cannot host the
    /// version at all (8202 at once).
    PullFailed {
        /// Why, per source.
        reason: String,
        /// Whether another attempt can help (the pull DP says).
        kind: FailureKind,
    },
    /// The DP holds a newer version than the one offered and dropped the older one (seed 000:
    /// "a newer version has already arrived"): informational, not a failure.
    NewerHeld {
        /// The newer version the DP holds.
        newer: u32,
    },
    /// The attempt failed (peer unreachable, refused, disk full, ...).
    Failed {
        /// One line naming the object and the cause.
        reason: String,
        /// Whether another attempt can help.
        kind: FailureKind,
    },
}

/// The job row's next state.
#[derive(Debug, Clone, PartialEq)]
pub enum JobEnd {
    /// Finished successfully.
    Done,
    /// Waits `after`, then runs again.
    Retry {
        /// Why this attempt failed.
        error: String,
        /// Delay before the next attempt.
        after: Duration,
    },
    /// Failed its last attempt.
    Failed {
        /// Why.
        error: String,
    },
}

/// What changes in the DP's package status row.
#[derive(Debug, Clone, PartialEq)]
pub enum StatusWrite {
    /// The row becomes this state. `copied` also stamps the last copy and validation.
    Set {
        /// New state.
        state: DpState,
        /// The version the DP holds afterwards.
        version: Option<u32>,
        /// The row's message (None clears it).
        message: Option<String>,
        /// A copy completed now.
        copied: bool,
    },
    /// A validation ended: stamps its time; `failed` also sets the state to Failed with that
    /// message.
    Validated {
        /// Why validation failed, if it did.
        failed: Option<String>,
    },
    /// The row stays as it is.
    Unchanged,
}

/// Everything one attempt's end changes.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// The job's next state.
    pub job: JobEnd,
    /// The DP's package status.
    pub status: StatusWrite,
    /// Status messages to raise, in order.
    pub messages: Vec<Msg>,
}

/// The next state of a job whose attempt ended with `outcome`.
pub fn next(f: &JobFacts, outcome: Outcome, policy: &RetryPolicy) -> Transition {
    let (p, v, dp) = (f.package, f.version, f.dp);
    let msg =
        |id: u32, strings: &[&dyn std::fmt::Display]| Msg::new(id, strings).package(p, v).dp(dp);
    let done = |status, messages| Transition {
        job: JobEnd::Done,
        status,
        messages,
    };
    match outcome {
        Outcome::Copied { bytes, secs } => done(
            StatusWrite::Set {
                state: DpState::Installed,
                version: Some(v),
                message: None,
                copied: true,
            },
            vec![
                msg(8200, &[&p, &v, &dp, &human(bytes), &format!("{secs:.2}")]),
                msg(2329, &[&p, &v, &dp]),
                msg(8210, &[&p, &v, &dp]),
                msg(2330, &[&p, &v, &dp]),
            ],
        ),
        Outcome::Removed { freed } => done(
            StatusWrite::Set {
                state: DpState::Removed,
                version: None,
                message: None,
                copied: false,
            },
            vec![msg(2332, &[&p, &dp, &human(freed)])],
        ),
        // The DP checked another version than the one this site expects it to hold (or none):
        // whatever it re-hashed, the copy is not the right one.
        Outcome::Validated { version, .. } if version != f.held => {
            let shown = |v: Option<u32>| v.map_or("none".to_string(), |v| format!("version {v}"));
            let (have, want) = (shown(version), shown(f.held));
            done(
                StatusWrite::Validated {
                    failed: Some(format!(
                        "holds {have}, this site expects {want}; redistribute to repair"
                    )),
                },
                vec![msg(2387, &[&p, &dp, &have, &want])],
            )
        }
        Outcome::Validated {
            version: Some(checked),
            chunks,
            bad: 0,
            ..
        } => done(
            StatusWrite::Validated { failed: None },
            vec![
                Msg::new(2384, &[&p, &checked, &dp, &chunks])
                    .package(p, checked)
                    .dp(dp),
            ],
        ),
        Outcome::Validated { bad, files, .. } => done(
            StatusWrite::Validated {
                failed: Some(format!(
                    "validation found {bad} corrupt or missing chunk(s); redistribute to repair"
                )),
            },
            vec![msg(2386, &[&p, &v, &dp, &bad, &files.join(", ")])],
        ),
        Outcome::NoSource => {
            let (n, delay) = (policy.pull_attempts, policy.pull_delay);
            let m = msg(8212, &[&dp, &p, &v, &f.attempts, &n, &human_delay(delay)]);
            retry(f, NO_SOURCE_YET.into(), n, delay, m)
        }
        Outcome::AtCapacity { active } => {
            let (n, delay) = (policy.pull_attempts, policy.pull_delay);
            let m = msg(8211, &[&dp, &active, &p, &v, &human_delay(delay)]);
            let reason = format!("pull DP at capacity ({active} active jobs)");
            retry(f, reason, n, delay, m)
        }
        Outcome::PullFailed {
            reason,
            kind: FailureKind::Permanent,
        } => fail(f, one_line(&format!("cannot host this version: {reason}"))),
        Outcome::PullFailed {
            reason,
            kind: FailureKind::Transient,
        } => {
            let reason = one_line(&format!("could not download from any source: {reason}"));
            let (n, delay) = (policy.dp_attempts, policy.dp_delay);
            let m = msg(
                8213,
                &[&dp, &p, &v, &f.attempts, &n, &reason, &human_delay(delay)],
            );
            retry(f, reason, n, delay, m)
        }
        Outcome::NewerHeld { newer } => done(
            StatusWrite::Set {
                state: DpState::Installed,
                version: Some(newer),
                message: None,
                copied: false,
            },
            vec![msg(2345, &[&p, &v, &dp, &newer])],
        ),
        Outcome::Failed {
            reason,
            kind: FailureKind::Permanent,
        } => fail(f, one_line(&reason)),
        Outcome::Failed {
            reason,
            kind: FailureKind::Transient,
        } => {
            let reason = one_line(&reason);
            let (n, delay) = (policy.dp_attempts, policy.dp_delay);
            let m = msg(
                8201,
                &[&p, &v, &dp, &f.attempts, &n, &reason, &human_delay(delay)],
            );
            retry(f, reason, n, delay, m)
        }
    }
}

/// The job fails now: DP status Failed with `reason`, message 8202.
fn fail(f: &JobFacts, reason: String) -> Transition {
    let (p, v, dp) = (f.package, f.version, f.dp);
    let last = Msg::new(8202, &[&p, &v, &dp, &f.attempts, &reason])
        .package(p, v)
        .dp(dp);
    Transition {
        status: StatusWrite::Set {
            state: DpState::Failed,
            version: f.held,
            message: Some(reason.clone()),
            copied: false,
        },
        job: JobEnd::Failed { error: reason },
        messages: vec![last],
    }
}

/// Another attempt after `delay` (raising `m`) or, once `attempts` are spent, a failure (8202).
fn retry(f: &JobFacts, reason: String, attempts: u32, delay: Duration, m: Msg) -> Transition {
    if f.attempts >= attempts {
        return fail(f, reason);
    }
    let status = match f.action {
        // A failed validation attempt says nothing new about the copy.
        Action::Validate => StatusWrite::Unchanged,
        Action::Remove => StatusWrite::Set {
            state: DpState::RemovalPending,
            version: f.held,
            message: Some(reason.clone()),
            copied: false,
        },
        Action::Install | Action::Redistribute => StatusWrite::Set {
            state: DpState::Retrying,
            version: f.held,
            message: Some(reason.clone()),
            copied: false,
        },
    };
    Transition {
        job: JobEnd::Retry {
            error: reason,
            after: delay,
        },
        status,
        messages: vec![m],
    }
}

/// What DistMgr knows of one pending action when it plans it.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetFacts<'a> {
    /// Package ID.
    pub package: &'a str,
    /// DP name.
    pub dp: &'a str,
    /// The action asked for.
    pub action: Action,
    /// The version it is for.
    pub version: u32,
    /// The DP holds an installed copy of `version` or newer.
    pub settled: bool,
    /// A job of this package to this DP is queued, running or retrying.
    pub live: bool,
}

/// What a pending action becomes.
#[derive(Debug, Clone, PartialEq)]
pub enum Planned {
    /// Nothing to do (the DP already holds it, or a validation would displace live work).
    Skip,
    /// A queued job (a live one is replaced), the DP's new state, and the messages.
    Job {
        /// The DP's state from now on (None: unchanged, for a validation).
        state: Option<DpState>,
        /// Messages to raise.
        messages: Vec<Msg>,
    },
}

/// Plans one pending action (seed 001: a DP worker creates the job for PkgXferMgr).
pub fn plan(t: &TargetFacts) -> Planned {
    // Distributing what a DP already holds, with nothing else going on, moves nothing.
    if t.action == Action::Install && t.settled && !t.live {
        return Planned::Skip;
    }
    // A validation never displaces a copy or a removal already queued.
    if t.action == Action::Validate && t.live {
        return Planned::Skip;
    }
    let (p, v, dp) = (t.package, t.version, t.dp);
    let msg =
        |id: u32, strings: &[&dyn std::fmt::Display]| Msg::new(id, strings).package(p, v).dp(dp);
    let (state, messages) = match t.action {
        Action::Remove => (Some(DpState::RemovalPending), vec![msg(2331, &[&p, &dp])]),
        Action::Validate => (None, vec![msg(2380, &[&p, &v, &dp])]),
        Action::Install | Action::Redistribute => {
            let verb = if t.action == Action::Redistribute {
                "redistribute"
            } else {
                "add or update"
            };
            (
                Some(DpState::InstallPending),
                vec![
                    msg(2342, &[&verb, &p, &dp]),
                    msg(2357, &[&p, &v, &dp, &t.action]),
                ],
            )
        }
    };
    Planned::Job { state, messages }
}

/// The message that ends a package thread once none of its jobs is live: processed (2301) or
/// processed with `failed` DPs failing (2302).
pub fn settled(package: &str, name: &str, version: u32, failed: u32) -> Msg {
    let m = if failed > 0 {
        Msg::new(2302, &[&package, &name, &failed])
    } else {
        Msg::new(2301, &[&package, &name])
    };
    m.package(package, version)
}

/// A reason on one line, for the status row and messages.
fn one_line(reason: &str) -> String {
    reason.replace(['\n', '\r'], " ")
}

/// A delay as people read it in a message.
pub fn human_delay(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 120.0 {
        format!("{s:.0} s")
    } else {
        format!("{:.0} min", s / 60.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SPEC §6 defaults.
    const SPEC: RetryPolicy = RetryPolicy {
        dp_attempts: 100,
        dp_delay: Duration::from_secs(30 * 60),
        pull_attempts: 30,
        pull_delay: Duration::from_secs(30 * 60),
    };

    fn facts(action: Action, attempts: u32, held: Option<u32>) -> JobFacts<'static> {
        JobFacts {
            package: "PS100001",
            version: 2,
            dp: "dp1",
            action,
            attempts,
            held,
        }
    }

    fn ids(t: &Transition) -> Vec<u32> {
        t.messages.iter().map(|m| m.id).collect()
    }

    #[test]
    fn a_copy_ends_installed_with_the_messages_of_the_seeds() {
        let t = next(
            &facts(Action::Install, 1, Some(1)),
            Outcome::Copied {
                bytes: 1 << 20,
                secs: 1.5,
            },
            &SPEC,
        );
        assert_eq!(t.job, JobEnd::Done);
        assert_eq!(
            t.status,
            StatusWrite::Set {
                state: DpState::Installed,
                version: Some(2),
                message: None,
                copied: true
            }
        );
        assert_eq!(ids(&t), [8200, 2329, 8210, 2330]);
        assert!(t.messages.iter().all(|m| m.dp.as_deref() == Some("dp1")
            && m.package.as_deref() == Some("PS100001")
            && m.version == Some(2)));
        assert_eq!(t.messages[0].strings[3], human(1 << 20));
    }

    #[test]
    fn a_failed_copy_retries_after_the_delay_then_fails_on_its_last_attempt() {
        let f = || Outcome::Failed {
            reason: "DP1 unreachable\nsecond line".into(),
            kind: FailureKind::Transient,
        };
        let t = next(&facts(Action::Install, 1, Some(1)), f(), &SPEC);
        assert_eq!(
            t.job,
            JobEnd::Retry {
                error: "DP1 unreachable second line".into(),
                after: Duration::from_secs(1800)
            }
        );
        assert_eq!(
            t.status,
            StatusWrite::Set {
                state: DpState::Retrying,
                version: Some(1),
                message: Some("DP1 unreachable second line".into()),
                copied: false
            }
        );
        assert_eq!(ids(&t), [8201]);
        assert_eq!(
            t.messages[0].strings[3..7],
            ["1", "100", "DP1 unreachable second line", "30 min"]
        );
        // Attempt 99 still retries; attempt 100 is the last (SPEC §6: 100 attempts).
        assert!(matches!(
            next(&facts(Action::Install, 99, None), f(), &SPEC).job,
            JobEnd::Retry { .. }
        ));
        let last = next(&facts(Action::Redistribute, 100, Some(1)), f(), &SPEC);
        assert!(matches!(last.job, JobEnd::Failed { .. }));
        assert_eq!(ids(&last), [8202]);
        assert!(matches!(
            last.status,
            StatusWrite::Set {
                state: DpState::Failed,
                version: Some(1),
                ..
            }
        ));
    }

    #[test]
    fn a_removal_stays_removal_pending_while_it_retries_and_ends_removed() {
        let t = next(
            &facts(Action::Remove, 3, Some(2)),
            Outcome::Failed {
                reason: "down".into(),
                kind: FailureKind::Transient,
            },
            &SPEC,
        );
        assert!(matches!(
            t.status,
            StatusWrite::Set {
                state: DpState::RemovalPending,
                version: Some(2),
                ..
            }
        ));
        let t = next(
            &facts(Action::Remove, 4, Some(2)),
            Outcome::Removed { freed: 4096 },
            &SPEC,
        );
        assert_eq!(t.job, JobEnd::Done);
        assert!(matches!(
            t.status,
            StatusWrite::Set {
                state: DpState::Removed,
                version: None,
                ..
            }
        ));
        assert_eq!(ids(&t), [2332]);
        let small = RetryPolicy {
            dp_attempts: 2,
            ..SPEC
        };
        let t = next(
            &facts(Action::Remove, 2, Some(2)),
            Outcome::Failed {
                reason: "down".into(),
                kind: FailureKind::Transient,
            },
            &small,
        );
        assert!(matches!(
            t.status,
            StatusWrite::Set {
                state: DpState::Failed,
                ..
            }
        ));
    }

    #[test]
    fn validation_reports_a_clean_copy_or_fails_it_and_a_failed_attempt_changes_nothing() {
        let ok = next(
            &facts(Action::Validate, 1, Some(2)),
            Outcome::Validated {
                version: Some(2),
                chunks: 7,
                bad: 0,
                files: vec![],
            },
            &SPEC,
        );
        assert_eq!(ok.status, StatusWrite::Validated { failed: None });
        assert_eq!(ids(&ok), [2384]);
        let bad = next(
            &facts(Action::Validate, 1, Some(2)),
            Outcome::Validated {
                version: Some(2),
                chunks: 7,
                bad: 2,
                files: vec!["a".into(), "b".into()],
            },
            &SPEC,
        );
        assert!(matches!(
            bad.status,
            StatusWrite::Validated { failed: Some(_) }
        ));
        assert_eq!(ids(&bad), [2386]);
        assert_eq!(bad.messages[0].strings[4], "a, b");
        let down = next(
            &facts(Action::Validate, 1, Some(2)),
            Outcome::Failed {
                reason: "down".into(),
                kind: FailureKind::Transient,
            },
            &SPEC,
        );
        assert_eq!(down.status, StatusWrite::Unchanged);
        assert_eq!(ids(&down), [8201]);
    }

    #[test]
    fn validation_of_another_version_than_expected_fails_with_its_own_message() {
        // The DP re-hashed a clean version 3 (pushed by someone else) while this site expects
        // version 2: a failure naming both, never "verified successfully".
        let t = next(
            &facts(Action::Validate, 1, Some(2)),
            Outcome::Validated {
                version: Some(3),
                chunks: 7,
                bad: 0,
                files: vec![],
            },
            &SPEC,
        );
        assert_eq!(ids(&t), [2387]);
        assert_eq!(t.messages[0].strings[2..4], ["version 3", "version 2"]);
        assert!(
            matches!(&t.status, StatusWrite::Validated { failed: Some(m) } if m.contains("holds version 3"))
        );
        let none = next(
            &facts(Action::Validate, 1, Some(2)),
            Outcome::Validated {
                version: None,
                chunks: 0,
                bad: 0,
                files: vec![],
            },
            &SPEC,
        );
        assert_eq!(ids(&none), [2387]);
        assert_eq!(none.messages[0].strings[2], "none");
    }

    #[test]
    fn a_pull_dp_without_source_or_capacity_is_notified_again_up_to_its_attempts() {
        let t = next(&facts(Action::Install, 1, None), Outcome::NoSource, &SPEC);
        assert_eq!(ids(&t), [8212]);
        assert!(matches!(t.job, JobEnd::Retry { after, .. } if after == SPEC.pull_delay));
        let t = next(
            &facts(Action::Install, 5, None),
            Outcome::AtCapacity { active: 50 },
            &SPEC,
        );
        assert_eq!(ids(&t), [8211]);
        assert_eq!(t.messages[0].strings[1], "50");
        // SPEC §6: 30 notification attempts.
        let t = next(&facts(Action::Install, 30, None), Outcome::NoSource, &SPEC);
        assert_eq!(ids(&t), [8202]);
        let t = next(
            &facts(Action::Install, 2, None),
            Outcome::PullFailed {
                reason: "DP1: refused".into(),
                kind: FailureKind::Transient,
            },
            &SPEC,
        );
        assert_eq!(ids(&t), [8213]);
        assert!(matches!(t.job, JobEnd::Retry { after, .. } if after == SPEC.dp_delay));
    }

    #[test]
    fn a_permanent_pull_failure_fails_the_job_at_once_with_its_reason() {
        let t = next(
            &facts(Action::Install, 1, None),
            Outcome::PullFailed {
                reason: "DP1: share: File name too long (os error 36)".into(),
                kind: FailureKind::Permanent,
            },
            &SPEC,
        );
        assert!(
            matches!(&t.job, JobEnd::Failed { error } if error.contains("File name too long")),
            "{t:?}"
        );
        assert_eq!(ids(&t), [8202]);
        assert!(matches!(
            t.status,
            StatusWrite::Set {
                state: DpState::Failed,
                ..
            }
        ));
    }

    #[test]
    fn a_permanent_failure_fails_the_job_at_once_and_a_transient_one_retries() {
        let permanent = || Outcome::Failed {
            reason: "dp1: a/b: create: File name too long (os error 36)".into(),
            kind: FailureKind::Permanent,
        };
        let transient = || Outcome::Failed {
            reason: "dp1: No space left on device (os error 28)".into(),
            kind: FailureKind::Transient,
        };
        for action in [Action::Install, Action::Redistribute, Action::Remove] {
            // On the first attempt, with 99 attempts left: Failed, no Retrying, 8202 only.
            let t = next(&facts(action, 1, Some(1)), permanent(), &SPEC);
            assert_eq!(
                t.job,
                JobEnd::Failed {
                    error: "dp1: a/b: create: File name too long (os error 36)".into()
                },
                "{action}"
            );
            assert_eq!(
                t.status,
                StatusWrite::Set {
                    state: DpState::Failed,
                    version: Some(1),
                    message: Some("dp1: a/b: create: File name too long (os error 36)".into()),
                    copied: false
                },
                "{action}"
            );
            assert_eq!(ids(&t), [8202], "{action}");
            assert_eq!(t.messages[0].strings[3], "1");
            // The same failure, transient, keeps the retry policy.
            let t = next(&facts(action, 1, Some(1)), transient(), &SPEC);
            assert!(
                matches!(t.job, JobEnd::Retry { after, .. } if after == SPEC.dp_delay),
                "{action}"
            );
            assert_eq!(ids(&t), [8201], "{action}");
        }
        // A permanent failure of a validation fails it at once too.
        let t = next(&facts(Action::Validate, 1, Some(2)), permanent(), &SPEC);
        assert!(matches!(t.job, JobEnd::Failed { .. }));
        assert_eq!(ids(&t), [8202]);
    }

    #[test]
    fn an_older_version_at_a_dp_holding_a_newer_one_is_dropped_with_an_informational_message() {
        let t = next(
            &facts(Action::Install, 1, Some(3)),
            Outcome::NewerHeld { newer: 3 },
            &SPEC,
        );
        assert_eq!(t.job, JobEnd::Done);
        assert_eq!(
            t.status,
            StatusWrite::Set {
                state: DpState::Installed,
                version: Some(3),
                message: None,
                copied: false
            }
        );
        assert_eq!(ids(&t), [2345]);
        assert_eq!(super::super::statmgr::describe(2345).0, "info");
        assert_eq!(t.messages[0].strings, ["PS100001", "2", "dp1", "3"]);
        assert_eq!(t.messages[0].version, Some(2));
    }

    fn target(action: Action, settled: bool, live: bool) -> TargetFacts<'static> {
        TargetFacts {
            package: "PS100001",
            dp: "dp1",
            action,
            version: 3,
            settled,
            live,
        }
    }

    #[test]
    fn planning_makes_install_pending_and_removal_pending_jobs_and_skips_what_is_settled() {
        let Planned::Job { state, messages } = plan(&target(Action::Install, false, false)) else {
            panic!("an install is planned");
        };
        assert_eq!(state, Some(DpState::InstallPending));
        assert_eq!(
            messages.iter().map(|m| m.id).collect::<Vec<_>>(),
            [2342, 2357]
        );
        assert_eq!(messages[0].strings[0], "add or update");
        let Planned::Job { messages, .. } = plan(&target(Action::Redistribute, true, false)) else {
            panic!("a redistribute always runs");
        };
        assert_eq!(messages[0].strings[0], "redistribute");
        assert_eq!(plan(&target(Action::Install, true, false)), Planned::Skip);
        // A live job of an older version is replaced by the install of the new one.
        assert!(matches!(
            plan(&target(Action::Install, true, true)),
            Planned::Job { .. }
        ));
        let Planned::Job { state, messages } = plan(&target(Action::Remove, true, true)) else {
            panic!("a removal is planned");
        };
        assert_eq!(state, Some(DpState::RemovalPending));
        assert_eq!(messages[0].id, 2331);
        assert_eq!(plan(&target(Action::Validate, true, true)), Planned::Skip);
        let Planned::Job { state, messages } = plan(&target(Action::Validate, true, false)) else {
            panic!("a validation is planned");
        };
        assert_eq!((state, messages[0].id), (None, 2380));
    }

    #[test]
    fn a_package_thread_ends_processed_or_processed_with_failures() {
        assert_eq!(settled("PS100001", "office", 2, 0).id, 2301);
        let m = settled("PS100001", "office", 2, 3);
        assert_eq!((m.id, m.strings[2].as_str()), (2302, "3"));
    }

    #[test]
    fn delays_read_in_seconds_or_minutes() {
        assert_eq!(human_delay(Duration::from_secs(2)), "2 s");
        assert_eq!(human_delay(Duration::from_secs(1800)), "30 min");
    }
}
