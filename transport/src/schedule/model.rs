//! The model: one cell per hour of the week, what a cell allows, and what a route declares.
//!
//! One [`Cell`] per hour of each day, Monday 00:00 to Sunday 24:00, in the route's time zone.
//! A cell says which package priorities may start sending ([`Allowed`]) and at what [`Rate`].
//! The default cell is `all unlimited`. [`RouteThrottle`] is what one route (an address or a
//! DP) declares: the schedule, the link bandwidth that percents refer to, and the time zone.
//!
//! Hours are local wall-clock hours: on the day a clock goes forward the skipped hour's cell
//! never applies, and on the day it goes back the repeated hour's cell applies twice (see
//! [`Schedule::cell_at`]).

use crate::error::{Error, Result};
use jiff::Timestamp;
use jiff::civil::Weekday;
use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Short day names, Monday first (the schedule's day index).
pub const DAY_NAMES: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
/// Longest pulse delay.
pub const MAX_PULSE_DELAY: Duration = Duration::from_secs(24 * 3600);
const NS_PER_HOUR: i128 = 3_600_000_000_000;

/// A package's priority (SPEC §1; default medium). Ordered low < medium < high.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Sent only in `all` cells.
    Low,
    /// Sent in `all` and `medium` cells.
    #[default]
    Medium,
    /// Sent in every cell that is not closed.
    High,
}

impl Priority {
    /// `low`, `medium` or `high`.
    pub fn name(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Medium => "medium",
            Priority::High => "high",
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Priority {
    type Err = Error;

    fn from_str(s: &str) -> Result<Priority> {
        match s.trim().to_ascii_lowercase().as_str() {
            "low" => Ok(Priority::Low),
            "medium" => Ok(Priority::Medium),
            "high" => Ok(Priority::High),
            _ => Err(Error::BadPriority(s.to_string())),
        }
    }
}

/// Which priorities may start sending in a cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Allowed {
    /// Every priority.
    #[default]
    All,
    /// Medium and high.
    MediumHigh,
    /// High only.
    HighOnly,
    /// Nothing starts; transfers in progress pause after their current chunk.
    Closed,
}

impl Allowed {
    /// Whether a package of `priority` may send in a cell with this setting.
    pub fn permits(self, priority: Priority) -> bool {
        match self {
            Allowed::All => true,
            Allowed::MediumHigh => priority >= Priority::Medium,
            Allowed::HighOnly => priority == Priority::High,
            Allowed::Closed => false,
        }
    }

    /// The word of the text form: `all`, `medium`, `high` or `closed`.
    pub fn name(self) -> &'static str {
        match self {
            Allowed::All => "all",
            Allowed::MediumHigh => "medium",
            Allowed::HighOnly => "high",
            Allowed::Closed => "closed",
        }
    }
}

/// A cell's rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Rate {
    /// No limit.
    #[default]
    Unlimited,
    /// 1..=100 percent of the route's declared link bandwidth.
    Percent(u8),
    /// An absolute rate, bytes per second (at least 1).
    BytesPerSec(u64),
    /// The seeds' pulse mode: send `block` bytes (paced at the link bandwidth if the route
    /// declares one, else unpaced), then wait `delay`, and again.
    Pulse {
        /// Bytes per block (at least 1).
        block: u64,
        /// Pause after each block: whole milliseconds, 1 ms to [`MAX_PULSE_DELAY`].
        delay: Duration,
    },
}

/// One hour of the weekly schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Cell {
    /// Which priorities may send.
    pub allowed: Allowed,
    /// The rate limit (meaningless, and kept `Unlimited`, in a closed cell).
    pub rate: Rate,
}

impl Cell {
    /// `all unlimited`: every cell no rule names.
    pub const DEFAULT: Cell = Cell {
        allowed: Allowed::All,
        rate: Rate::Unlimited,
    };
    /// `closed`.
    pub const CLOSED: Cell = Cell {
        allowed: Allowed::Closed,
        rate: Rate::Unlimited,
    };

    /// A cell; a closed cell's rate is dropped (nothing is sent under it).
    pub fn new(allowed: Allowed, rate: Rate) -> Cell {
        match allowed {
            Allowed::Closed => Cell::CLOSED,
            _ => Cell { allowed, rate },
        }
    }
}

/// The weekly schedule: one [`Cell`] per hour, Monday first.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Schedule {
    pub(super) cells: [[Cell; 24]; 7],
}

impl Default for Schedule {
    fn default() -> Schedule {
        Schedule {
            cells: [[Cell::DEFAULT; 24]; 7],
        }
    }
}

/// Where one instant falls in a schedule: its cell and the span of instants the cell covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CellSpan {
    /// The cell.
    pub cell: Cell,
    /// Local weekday of the cell.
    pub day: Weekday,
    /// Local hour of the cell, 0..=23.
    pub hour: u8,
    /// First instant of the span.
    pub start: Timestamp,
    /// First instant after the span: the next cell boundary (an hour, or a time zone
    /// transition, later than `start`). The next cell may be equal to this one.
    pub end: Timestamp,
}

impl Schedule {
    /// The cell of `day` at local `hour`. Panics if `hour` is not 0..=23.
    pub fn cell(&self, day: Weekday, hour: u8) -> Cell {
        self.cells[day_index(day)][usize::from(hour)]
    }

    /// Sets the cell of `day` at local `hour` (a closed cell's rate is dropped). Panics if
    /// `hour` is not 0..=23.
    pub fn set(&mut self, day: Weekday, hour: u8, cell: Cell) {
        self.cells[day_index(day)][usize::from(hour)] = Cell::new(cell.allowed, cell.rate);
    }

    /// The cell in force at instant `at` for hours kept in `tz`, with the span it covers.
    ///
    /// The span is the local hour that holds `at`, cut at any time zone transition inside it:
    /// when clocks go back, 02:00-03:00 happens twice, as two spans of the same cell; when
    /// they go forward, the skipped hour has no span at all.
    pub fn cell_at(&self, at: Timestamp, tz: &TimeZone) -> CellSpan {
        let local = tz.to_datetime(at);
        let day = local.weekday();
        let hour = local.hour() as u8;
        let at_ns = at.as_nanosecond();
        let into_hour = (i128::from(local.minute()) * 60 + i128::from(local.second()))
            * 1_000_000_000
            + i128::from(local.subsec_nanosecond());
        let mut start = at_ns - into_hour;
        let mut end = start + NS_PER_HOUR;
        // An offset change inside the hour (DST, or a zone whose shift is not a whole hour)
        // cuts the span: the wall-clock hour before and after it are different instants.
        if let Some(t) = tz.preceding(timestamp(at_ns + 1)).next() {
            start = start.max(t.timestamp().as_nanosecond());
        }
        if let Some(t) = tz.following(at).next() {
            end = end.min(t.timestamp().as_nanosecond());
        }
        CellSpan {
            cell: self.cell(day, hour),
            day,
            hour,
            start: timestamp(start),
            end: timestamp(end),
        }
    }

    /// The first cell (as a span) at or after `from`, searching eight days ahead, for which
    /// `pred` holds.
    pub fn find_from(
        &self,
        from: Timestamp,
        tz: &TimeZone,
        mut pred: impl FnMut(Cell) -> bool,
    ) -> Option<CellSpan> {
        let mut at = from;
        // 8 days of hour cells, plus room for transitions that cut an hour in two.
        for _ in 0..(8 * 24 + 16) {
            let span = self.cell_at(at, tz);
            if pred(span.cell) {
                return Some(span);
            }
            if span.end <= at {
                return None;
            }
            at = span.end;
        }
        None
    }

    pub(super) fn apply(&mut self, days: &DaySet, hours: Option<(u8, u8)>, cell: Cell) {
        for d in (0..7).filter(|&d| days[d]) {
            match hours {
                None => self.cells[d] = [cell; 24],
                Some((s, e)) if s < e => self.cells[d][usize::from(s)..usize::from(e)].fill(cell),
                Some((s, e)) => {
                    self.cells[d][usize::from(s)..].fill(cell);
                    self.cells[(d + 1) % 7][..usize::from(e)].fill(cell);
                }
            }
        }
    }

    fn check(&self, link: Option<u64>) -> std::result::Result<(), String> {
        for (d, day) in self.cells.iter().enumerate() {
            for (h, cell) in day.iter().enumerate() {
                check_rate(cell.rate, link)
                    .map_err(|reason| format!("cell {} {h:02}:00: {reason}", DAY_NAMES[d]))?;
            }
        }
        Ok(())
    }
}

pub(super) fn check_rate(rate: Rate, link: Option<u64>) -> std::result::Result<(), String> {
    match rate {
        Rate::Unlimited => Ok(()),
        Rate::Percent(0) => Err("0% would stop all traffic; write closed instead".into()),
        Rate::Percent(p) if p > 100 => Err(format!(
            "{p}% is more than the link; write 1% to 100%, or unlimited"
        )),
        Rate::Percent(p) if link.is_none() => Err(format!(
            "{p}% needs the route's link bandwidth; declare it (link 100Mbit/s) or write an absolute rate such as 2MiB/s"
        )),
        Rate::Percent(_) => Ok(()),
        Rate::BytesPerSec(0) => {
            Err("a rate of 0 would stop all traffic; write closed instead".into())
        }
        Rate::BytesPerSec(_) => Ok(()),
        Rate::Pulse { block: 0, .. } => Err(
            "a pulse block of 0 bytes sends nothing; write e.g. pulse 64KiB/5s, or closed".into(),
        ),
        Rate::Pulse { delay, .. } => check_delay(delay),
    }
}

pub(super) fn check_delay(delay: Duration) -> std::result::Result<(), String> {
    if delay.is_zero() || delay > MAX_PULSE_DELAY || !delay.subsec_nanos().is_multiple_of(1_000_000)
    {
        Err(format!(
            "pulse delay {delay:?} is not a whole number of milliseconds from 1ms to 24h; write e.g. 500ms or 5s"
        ))
    } else {
        Ok(())
    }
}

/// What one route (an address or a DP) declares: its weekly schedule, the link bandwidth that
/// percents refer to, and the time zone of the schedule's hours. Always valid: every way to
/// build one checks it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(
    try_from = "super::toml_form::ThrottleToml",
    into = "super::toml_form::ThrottleToml"
)]
pub struct RouteThrottle {
    pub(super) schedule: Schedule,
    pub(super) link_bandwidth: Option<u64>,
    pub(super) time_zone: TimeZone,
}

impl Default for RouteThrottle {
    /// Always open, unlimited, UTC, no declared link bandwidth.
    fn default() -> RouteThrottle {
        RouteThrottle {
            schedule: Schedule::default(),
            link_bandwidth: None,
            time_zone: TimeZone::UTC,
        }
    }
}

/// Equal when the schedules and link bandwidths are equal and the time zones have the same
/// name.
impl PartialEq for RouteThrottle {
    fn eq(&self, other: &RouteThrottle) -> bool {
        self.schedule == other.schedule
            && self.link_bandwidth == other.link_bandwidth
            && self.time_zone.iana_name() == other.time_zone.iana_name()
    }
}

impl Eq for RouteThrottle {}

impl RouteThrottle {
    /// A route's throttle, checked: percents need `link_bandwidth`, every rate is in range
    /// (see [`Rate`]), a declared link bandwidth is not 0, and the time zone has an IANA name
    /// (so that it can be written down).
    pub fn new(
        schedule: Schedule,
        link_bandwidth: Option<u64>,
        time_zone: TimeZone,
    ) -> Result<RouteThrottle> {
        if link_bandwidth == Some(0) {
            return Err(Error::BadThrottle(
                "link bandwidth 0; declare the link's real speed (e.g. 100Mbit/s) or none".into(),
            ));
        }
        if time_zone.iana_name().is_none() {
            return Err(Error::BadThrottle(format!(
                "time zone {time_zone:?} has no IANA name; use a named zone such as Europe/Stockholm or UTC"
            )));
        }
        schedule.check(link_bandwidth).map_err(Error::BadThrottle)?;
        Ok(RouteThrottle {
            schedule,
            link_bandwidth,
            time_zone,
        })
    }

    /// A route held to `rate` at every hour, every priority allowed, UTC, no declared link
    /// (so no percent): what a fixed-rate benchmark or test declares. Checked like any other.
    pub fn constant(rate: Rate) -> Result<RouteThrottle> {
        let schedule = Schedule {
            cells: [[Cell::new(Allowed::All, rate); 24]; 7],
        };
        RouteThrottle::new(schedule, None, TimeZone::UTC)
    }

    /// The weekly schedule.
    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// The declared link bandwidth, bytes per second.
    pub fn link_bandwidth(&self) -> Option<u64> {
        self.link_bandwidth
    }

    /// The time zone of the schedule's hours.
    pub fn time_zone(&self) -> &TimeZone {
        &self.time_zone
    }

    /// [`Schedule::cell_at`] in the route's time zone.
    pub fn cell_at(&self, at: Timestamp) -> CellSpan {
        self.schedule.cell_at(at, &self.time_zone)
    }

    pub(super) fn zone_name(&self) -> Option<&str> {
        self.time_zone.iana_name().filter(|&name| name != "UTC")
    }
}

// ---------------------------------------------------------------------------------------------
// The schedule as rules, which both written forms print.

pub(super) type DaySet = [bool; 7];

/// One rule: the days it names, its hours (`None`: the whole day), and the cell it sets.
pub(super) struct Rule {
    pub(super) days: DaySet,
    pub(super) hours: Option<(u8, u8)>,
    pub(super) cell: Cell,
}

pub(super) fn day_index(day: Weekday) -> usize {
    day.to_monday_zero_offset() as usize
}

/// The timestamp `ns` nanoseconds after the epoch, clamped to jiff's range.
pub(crate) fn timestamp(ns: i128) -> Timestamp {
    let ns = ns.clamp(
        Timestamp::MIN.as_nanosecond(),
        Timestamp::MAX.as_nanosecond(),
    );
    Timestamp::from_nanosecond(ns).unwrap_or(Timestamp::MAX)
}

/// The most common of `cells`; ties go to `prefer`, then to the first.
pub(super) fn most_common<'a>(cells: impl Iterator<Item = &'a Cell> + Clone, prefer: Cell) -> Cell {
    let count = |c: Cell| cells.clone().filter(|x| **x == c).count();
    let mut best = prefer;
    let mut best_count = count(prefer);
    for &cell in cells.clone() {
        let n = count(cell);
        if n > best_count {
            (best, best_count) = (cell, n);
        }
    }
    best
}

/// The rules of the printed forms, in three layers (see the module documentation): the
/// week's most common cell, each day's own most common cell where it differs, and the runs
/// of hours that differ from their day's cell, grouped across days and joined over midnight.
/// Applied in order over the default they give back `schedule`.
pub(super) fn canonical_rules(schedule: &Schedule) -> Vec<Rule> {
    let week_base = most_common(schedule.cells.iter().flatten(), Cell::DEFAULT);
    let day_base: [Cell; 7] =
        std::array::from_fn(|d| most_common(schedule.cells[d].iter(), week_base));
    let mut day_rules: Vec<Rule> = Vec::new();
    for d in (0..7).filter(|&d| day_base[d] != week_base) {
        match day_rules.iter_mut().find(|r| r.cell == day_base[d]) {
            Some(rule) => rule.days[d] = true,
            None => {
                let mut days = [false; 7];
                days[d] = true;
                day_rules.push(Rule {
                    days,
                    hours: None,
                    cell: day_base[d],
                });
            }
        }
    }
    // Runs that differ from their day's base, each (start, end, cell) once with its days.
    let mut runs: Vec<Option<Rule>> = Vec::new();
    for (d, day) in schedule.cells.iter().enumerate() {
        let mut h = 0;
        while h < 24 {
            let cell = day[h];
            let len = day[h..].iter().take_while(|c| **c == cell).count();
            let hours = Some((h as u8, (h + len) as u8));
            if cell != day_base[d] {
                match runs
                    .iter_mut()
                    .flatten()
                    .find(|r| r.hours == hours && r.cell == cell)
                {
                    Some(rule) => rule.days[d] = true,
                    None => {
                        let mut days = [false; 7];
                        days[d] = true;
                        runs.push(Some(Rule { days, hours, cell }));
                    }
                }
            }
            h += len;
        }
    }
    // A run to midnight and a run from midnight on each following day become one rule
    // that wraps, e.g. Fri 22:00-06:00.
    for i in 0..runs.len() {
        let Some(Rule {
            days,
            hours: Some((start, 24)),
            cell,
        }) = runs[i]
        else {
            continue;
        };
        let next_days: DaySet = std::array::from_fn(|d| days[(d + 6) % 7]);
        let partner = runs.iter().position(|r| {
            matches!(r, Some(r) if r.cell == cell && r.days == next_days
                && matches!(r.hours, Some((0, end)) if end < start))
        });
        if let Some(j) = partner {
            let end = runs[j].as_ref().and_then(|r| r.hours).map_or(0, |(_, e)| e);
            runs[i] = Some(Rule {
                days,
                hours: Some((start, end)),
                cell,
            });
            runs[j] = None;
        }
    }
    let mut rules = Vec::new();
    if week_base != Cell::DEFAULT {
        rules.push(Rule {
            days: [true; 7],
            hours: None,
            cell: week_base,
        });
    }
    // Day order (then layer, then hour), except that a run waits for the day rules of the
    // days it covers, which it overrides.
    let key = |r: &Rule, layer: u8| {
        let first = r.days.iter().position(|&d| d).unwrap_or(0);
        (first, layer, r.hours.map_or(0, |(s, _)| s))
    };
    let mut pending: Vec<(Rule, u8)> = day_rules
        .into_iter()
        .map(|r| (r, 2))
        .chain(runs.into_iter().flatten().map(|r| (r, 3)))
        .collect();
    pending.sort_by_key(|(r, layer)| key(r, *layer));
    while !pending.is_empty() {
        let ready = pending
            .iter()
            .position(|(r, layer)| {
                *layer == 2
                    || !pending
                        .iter()
                        .any(|(d, l)| *l == 2 && (0..7).any(|i| d.days[i] && covers(r, i)))
            })
            .unwrap_or(0);
        rules.push(pending.remove(ready).0);
    }
    rules
}

/// Whether `rule` sets a cell of day `d`.
pub(super) fn covers(rule: &Rule, d: usize) -> bool {
    match rule.hours {
        Some((s, e)) if e < s => rule.days[d] || rule.days[(d + 6) % 7],
        _ => rule.days[d],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::test_support::*;
    use Weekday::{Monday, Sunday, Tuesday};
    use proptest::prelude::*;

    #[test]
    fn new_checks_throttles_built_in_code() {
        let mut s = Schedule::default();
        s.set(Tuesday, 8, Cell::new(Allowed::All, Rate::Percent(30)));
        let err =
            RouteThrottle::new(s.clone(), None, TimeZone::UTC).expect_err("percent without link");
        assert!(
            err.to_string()
                .contains("cell Tue 08:00: 30% needs the route's link bandwidth"),
            "{err}"
        );
        assert!(RouteThrottle::new(s.clone(), Some(1000), TimeZone::UTC).is_ok());
        for (rate, phrase) in [
            (Rate::Percent(0), "write closed instead"),
            (Rate::Percent(101), "write 1% to 100%"),
            (Rate::BytesPerSec(0), "write closed instead"),
            (
                Rate::Pulse {
                    block: 0,
                    delay: Duration::from_secs(1),
                },
                "sends nothing",
            ),
            (
                Rate::Pulse {
                    block: 1,
                    delay: Duration::ZERO,
                },
                "from 1ms to 24h",
            ),
            (
                Rate::Pulse {
                    block: 1,
                    delay: Duration::from_micros(1500),
                },
                "whole number of milliseconds",
            ),
        ] {
            let mut s = Schedule::default();
            s.set(Sunday, 23, Cell::new(Allowed::HighOnly, rate));
            let err = RouteThrottle::new(s, Some(1000), TimeZone::UTC).expect_err(phrase);
            assert!(matches!(err, Error::BadThrottle(_)));
            assert!(
                err.to_string().contains("cell Sun 23:00") && err.to_string().contains(phrase),
                "{err}"
            );
        }
        let err =
            RouteThrottle::new(Schedule::default(), Some(0), TimeZone::UTC).expect_err("link 0");
        assert!(
            err.to_string().contains("declare the link's real speed"),
            "{err}"
        );
        let fixed = TimeZone::fixed(jiff::tz::offset(2));
        let err = RouteThrottle::new(Schedule::default(), None, fixed).expect_err("unnamed zone");
        assert!(err.to_string().contains("no IANA name"), "{err}");
    }

    #[test]
    fn a_constant_throttle_is_daily_rate_and_checked() {
        let t = RouteThrottle::constant(Rate::BytesPerSec(2_000_000)).expect("a valid rate");
        assert_eq!(t, parse("daily 2MB/s"));
        assert!(RouteThrottle::constant(Rate::Unlimited).is_ok());
        for bad in [Rate::BytesPerSec(0), Rate::Percent(5)] {
            let err = RouteThrottle::constant(bad).expect_err("refused");
            assert!(matches!(err, Error::BadThrottle(_)), "{err}");
        }
    }

    #[test]
    fn a_closed_cell_keeps_no_rate() {
        let mut s = Schedule::default();
        s.set(
            Monday,
            0,
            Cell {
                allowed: Allowed::Closed,
                rate: Rate::BytesPerSec(5),
            },
        );
        assert_eq!(s.cell(Monday, 0), Cell::CLOSED);
    }

    #[test]
    fn priorities_and_allowed() {
        use Priority::{High, Low, Medium};
        assert!(Low < Medium && Medium < High);
        assert_eq!(Priority::default(), Medium);
        for p in [Low, Medium, High] {
            assert_eq!(p.to_string().parse::<Priority>().ok(), Some(p));
        }
        assert_eq!(" HIGH ".parse::<Priority>().ok(), Some(High));
        let err = "urgent".parse::<Priority>().expect_err("not a priority");
        assert_eq!(
            err.to_string(),
            "unknown package priority \"urgent\"; write low, medium or high"
        );
        let table = [
            (Allowed::All, [true, true, true]),
            (Allowed::MediumHigh, [false, true, true]),
            (Allowed::HighOnly, [false, false, true]),
            (Allowed::Closed, [false, false, false]),
        ];
        for (allowed, want) in table {
            assert_eq!(
                [Low, Medium, High].map(|p| allowed.permits(p)),
                want,
                "{allowed:?}"
            );
        }
    }

    #[test]
    fn dst_spring_forward_in_stockholm() {
        let tz = stockholm();
        let s = distinct();
        // Sunday 2025-03-30, the last Sunday of March: at 01:00 UTC, 02:00 CET becomes
        // 03:00 CEST; local 02:00-03:00 does not exist.
        let span = s.cell_at(ts("2025-03-30T00:30:00Z"), &tz);
        assert_eq!((span.day, span.hour), (Sunday, 1));
        assert_eq!(
            (span.start, span.end),
            (ts("2025-03-30T00:00:00Z"), ts("2025-03-30T01:00:00Z"))
        );
        assert_eq!(span.cell, s.cell(Sunday, 1));
        let span = s.cell_at(ts("2025-03-30T01:00:00Z"), &tz);
        assert_eq!((span.day, span.hour), (Sunday, 3));
        assert_eq!(
            (span.start, span.end),
            (ts("2025-03-30T01:00:00Z"), ts("2025-03-30T02:00:00Z"))
        );
        // The local Sunday runs from 23:00 UTC Saturday (CET) to 22:00 UTC Sunday (CEST):
        // 23 cells, each a Sunday hour, hour 2 missing.
        let mut at = ts("2025-03-29T23:00:00Z");
        let mut hours = Vec::new();
        while at < ts("2025-03-30T22:00:00Z") {
            let span = s.cell_at(at, &tz);
            assert_eq!(span.start, at);
            assert_eq!(span.day, Sunday);
            assert_eq!(span.cell, s.cell(Sunday, span.hour));
            hours.push(span.hour);
            at = span.end;
        }
        assert_eq!(hours, [0, 1].into_iter().chain(3..24).collect::<Vec<u8>>());
        assert_eq!(s.cell_at(at, &tz).day, Monday);
    }

    #[test]
    fn dst_fall_back_in_stockholm() {
        let tz = stockholm();
        let s = distinct();
        // Sunday 2025-10-26, the last Sunday of October: at 01:00 UTC, 03:00 CEST becomes
        // 02:00 CET; local 02:00-03:00 happens twice.
        let first = s.cell_at(ts("2025-10-26T00:30:00Z"), &tz);
        let second = s.cell_at(ts("2025-10-26T01:30:00Z"), &tz);
        for span in [first, second] {
            assert_eq!(
                (span.day, span.hour, span.cell),
                (Sunday, 2, s.cell(Sunday, 2))
            );
        }
        assert_eq!(
            (first.start, first.end),
            (ts("2025-10-26T00:00:00Z"), ts("2025-10-26T01:00:00Z"))
        );
        assert_eq!(
            (second.start, second.end),
            (ts("2025-10-26T01:00:00Z"), ts("2025-10-26T02:00:00Z"))
        );
        let mut at = ts("2025-10-25T22:00:00Z");
        let mut hours = Vec::new();
        while at < ts("2025-10-26T23:00:00Z") {
            let span = s.cell_at(at, &tz);
            assert_eq!((span.start, span.day), (at, Sunday));
            hours.push(span.hour);
            at = span.end;
        }
        assert_eq!(
            hours,
            [0, 1, 2, 2].into_iter().chain(3..24).collect::<Vec<u8>>()
        );
    }

    #[test]
    fn offsets_that_are_not_whole_hours() {
        let s = distinct();
        // India is UTC+05:30: a local hour runs from :30 to :30 UTC.
        let kolkata = TimeZone::get("Asia/Kolkata").expect("tz database");
        let span = s.cell_at(ts("2025-01-06T00:00:00Z"), &kolkata);
        assert_eq!((span.day, span.hour), (Monday, 5));
        assert_eq!(
            (span.start, span.end),
            (ts("2025-01-05T23:30:00Z"), ts("2025-01-06T00:30:00Z"))
        );
        // Lord Howe Island moves its clocks by 30 minutes: on Sunday 2025-10-05 at 02:00
        // (+10:30, 15:30 UTC Saturday) they go to 02:30 (+11). Hour 2 starts at the transition.
        let lord_howe = TimeZone::get("Australia/Lord_Howe").expect("tz database");
        let before = s.cell_at(ts("2025-10-04T15:15:00Z"), &lord_howe);
        assert_eq!((before.day, before.hour), (Sunday, 1));
        assert_eq!(
            (before.start, before.end),
            (ts("2025-10-04T14:30:00Z"), ts("2025-10-04T15:30:00Z"))
        );
        let after = s.cell_at(ts("2025-10-04T15:45:00Z"), &lord_howe);
        assert_eq!((after.day, after.hour), (Sunday, 2));
        assert_eq!(
            (after.start, after.end),
            (ts("2025-10-04T15:30:00Z"), ts("2025-10-04T16:00:00Z"))
        );
    }

    proptest! {
        #[test]
        fn printing_uses_no_more_rules_than_hour_runs(t in throttle_strategy()) {
            // At most one week rule, one day rule per day, and one hours rule per run of
            // equal cells in a day other than a run of the day's own base cell: never more
            // rules than runs, plus one.
            let rules = canonical_rules(t.schedule());
            let runs: usize = t.schedule().cells.iter()
                .map(|day| 1 + day.windows(2).filter(|w| w[0] != w[1]).count())
                .sum();
            prop_assert!(rules.len() <= runs + 1, "{} rules for {} runs", rules.len(), runs);
        }
    }
}
