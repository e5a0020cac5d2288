//! A route's bandwidth windows: the weekly 7×24 schedule of allowed priorities and rate limits
//! (SPEC §5), and its two written forms, a compact text for the command line and TOML for files.
//!
//! Pure data and parsing; [`crate::throttle::Limiter`] enforces it.
//!
//! # Model
//! One [`Cell`] per hour of each day, Monday 00:00 to Sunday 24:00, in the route's time zone.
//! A cell says which package priorities may start sending ([`Allowed`]) and at what [`Rate`].
//! The default cell is `all unlimited`. [`RouteThrottle`] is what one route (an address or a
//! DP) declares: the schedule, the link bandwidth that percents refer to, and the time zone.
//!
//! Hours are local wall-clock hours: on the day a clock goes forward the skipped hour's cell
//! never applies, and on the day it goes back the repeated hour's cell applies twice (see
//! [`Schedule::cell_at`]).
//!
//! # Text form
//! ```text
//! throttle  := item (';' item)* [';']
//! item      := 'link' BANDWIDTH | 'tz' ZONE | rule
//! rule      := days [hours] action
//! days      := 'daily' | dayspec (',' dayspec)*
//! dayspec   := day ['-' day]            a range may wrap: Sat-Mon is Sat, Sun, Mon
//! day       := Mon | Tue | Wed | Thu | Fri | Sat | Sun    (or the full name)
//! hours     := HH:00 '-' HH:00          whole hours; the end may be 24:00 (00:00 means the same);
//!                                       a range that wraps, 22:00-06:00, covers 22-24 on each
//!                                       named day and 00-06 on the day after it
//! action    := 'closed' | allowed [rate] | rate              (allowed defaults to all)
//! allowed   := 'all' | 'medium' | 'high'                     medium = medium and high; high = high only
//! rate      := 'unlimited' | N '%' | BANDWIDTH | 'pulse' SIZE '/' DURATION
//! BANDWIDTH := SIZE '/s' | N UNITbit '/s'                    UNIT: none, k, M, G, T (powers of 1000)
//! SIZE      := as freight_core::units::parse_size: 4096, 64KiB, 2MiB (1024s), 10MB (1000s), 1.5GiB
//! DURATION  := N ('ms' | 's' | 'm' | 'h')                    whole milliseconds, 1ms to 24h
//! ZONE      := an IANA time zone name: Europe/Stockholm, America/New_York, UTC
//! ```
//! - Rules apply in order; a later rule overrides what an earlier one said about the same
//!   cells. Cells no rule names stay `all unlimited`.
//! - `link` declares the route's link bandwidth: percents are percents of it (a percent
//!   without it is an error), and a pulse sends its block at it. `tz` names the time zone of
//!   the hours; without it they are UTC. Each may be given once, anywhere.
//! - `N%` is 1% to 100% of the link; `pulse 64KiB/5s` sends 64 KiB (at the link bandwidth if
//!   declared, else as fast as it goes), then waits 5 s, and again.
//! - Keywords, days and units are case-insensitive. Whitespace separates words; spaces around
//!   `,`, `-` and `/` are ignored. One trailing `;` is allowed, an empty rule elsewhere is not.
//!
//! Examples:
//! ```text
//! Mon-Fri 08:00-18:00 high 2MiB/s; Sat-Sun closed
//! link 100Mbit/s; tz Europe/Stockholm; daily 50%; Mon-Fri 08:00-17:00 medium 10%
//! Fri 22:00-06:00 closed                  Friday 22:00 to Saturday 06:00
//! Sat-Mon pulse 64KiB/5s
//! daily unlimited                         the default
//! ```
//!
//! Printing ([`RouteThrottle::to_text`], `Display`) gives the canonical form: `link`, then `tz`
//! (left out for UTC), then rules in three layers. First `daily` with the week's most common
//! cell (left out when it is the default). Then, for days whose own most common cell differs,
//! one rule per such cell naming all those days. Then one rule per run of hours that differs
//! from its day's cell, naming every day with the same run; a run to 24:00 and the same run
//! from 00:00 on each following day print as one rule that wraps. Rules come in day order,
//! except that an hours rule follows the day rules it overrides. A schedule with no rules
//! prints as `daily unlimited`. Parsing the printed text gives back the same value.
//!
//! # TOML form
//! ```toml
//! link_bandwidth = "100Mbit/s"   # optional; BANDWIDTH, "/s" optional
//! time_zone = "Europe/Stockholm" # optional; default UTC
//! [[window]]                     # one per rule, applied in order
//! days = "Mon-Fri"               # days, as above
//! hours = "08:00-18:00"          # optional; default the whole day
//! allowed = "high"               # optional: closed, all, medium, high; default all
//! rate = "2MiB/s"                # optional: a rate, as above; default unlimited
//! [[window]]
//! days = "Sat-Sun"
//! allowed = "closed"
//! ```
//! A window needs `allowed` or `rate`; a closed window has no `rate`. [`RouteThrottle`]
//! implements `Serialize`/`Deserialize` as this table, so a configuration file can embed it.

use crate::error::{Error, Result};
use freight_core::units::parse_size;
use jiff::Timestamp;
use jiff::civil::Weekday;
use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Short day names, Monday first (the schedule's day index).
pub const DAY_NAMES: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
const FULL_DAY_NAMES: [&str; 7] = [
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
];
/// Longest pulse delay.
pub const MAX_PULSE_DELAY: Duration = Duration::from_secs(24 * 3600);
const NS_PER_HOUR: i128 = 3_600_000_000_000;
const ACTION_HELP: &str = "write closed, all, medium, high, unlimited, a percent such as 50%, \
     a rate such as 2MiB/s or 100Mbit/s, or pulse 64KiB/5s";

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

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Rate::Unlimited => f.write_str("unlimited"),
            Rate::Percent(p) => write!(f, "{p}%"),
            Rate::BytesPerSec(b) => write!(f, "{}/s", format_bandwidth(b)),
            Rate::Pulse { block, delay } => {
                write!(f, "pulse {}/{}", format_size(block), format_duration(delay))
            }
        }
    }
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

/// The action of the text form: `closed`, `high 2MiB/s`, `50%`, `medium`, `unlimited`.
impl fmt::Display for Cell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.allowed, self.rate) {
            (Allowed::Closed, _) => f.write_str("closed"),
            (Allowed::All, rate) => write!(f, "{rate}"),
            (allowed, Rate::Unlimited) => f.write_str(allowed.name()),
            (allowed, rate) => write!(f, "{} {rate}", allowed.name()),
        }
    }
}

/// The weekly schedule: one [`Cell`] per hour, Monday first.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Schedule {
    cells: [[Cell; 24]; 7],
}

impl Default for Schedule {
    fn default() -> Schedule {
        Schedule {
            cells: [[Cell::DEFAULT; 24]; 7],
        }
    }
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Schedule")
            .field(&rules_text(&canonical_rules(self)))
            .finish()
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

    fn apply(&mut self, days: &DaySet, hours: Option<(u8, u8)>, cell: Cell) {
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

fn check_rate(rate: Rate, link: Option<u64>) -> std::result::Result<(), String> {
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

fn check_delay(delay: Duration) -> std::result::Result<(), String> {
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
#[serde(try_from = "ThrottleToml", into = "ThrottleToml")]
pub struct RouteThrottle {
    schedule: Schedule,
    link_bandwidth: Option<u64>,
    time_zone: TimeZone,
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

    /// Parses the text form (module documentation).
    pub fn parse(input: &str) -> Result<RouteThrottle> {
        parse_text(input).map_err(|b| Error::BadSchedule {
            input: input.to_string(),
            at: b.at,
            token: b.token,
            reason: b.reason,
        })
    }

    /// The canonical text form (module documentation); [`RouteThrottle::parse`] reads it back.
    pub fn to_text(&self) -> String {
        let mut items = Vec::new();
        if let Some(link) = self.link_bandwidth {
            items.push(format!("link {}/s", format_bandwidth(link)));
        }
        if let Some(name) = self.zone_name() {
            items.push(format!("tz {name}"));
        }
        let rules = canonical_rules(&self.schedule);
        items.push(rules_text(&rules));
        items.join("; ")
    }

    /// Parses the TOML form (module documentation).
    pub fn from_toml(text: &str) -> Result<RouteThrottle> {
        let file: ThrottleToml = toml::from_str(text).map_err(|e| {
            let place = match e.span() {
                Some(span) => {
                    let before = text.get(..span.start).unwrap_or(text);
                    let line = before.matches('\n').count() + 1;
                    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
                    format!("line {line} column {column}")
                }
                None => "file".to_string(),
            };
            Error::BadScheduleToml {
                place,
                reason: e.message().trim().replace('\n', "; "),
            }
        })?;
        RouteThrottle::try_from(file)
    }

    /// The canonical TOML form; [`RouteThrottle::from_toml`] reads it back.
    pub fn to_toml(&self) -> String {
        toml::to_string(&ThrottleToml::from(self.clone()))
            .expect("a throttle's TOML is strings and tables only, which always serialize")
    }

    fn zone_name(&self) -> Option<&str> {
        self.time_zone.iana_name().filter(|&name| name != "UTC")
    }
}

impl FromStr for RouteThrottle {
    type Err = Error;

    fn from_str(s: &str) -> Result<RouteThrottle> {
        RouteThrottle::parse(s)
    }
}

impl fmt::Display for RouteThrottle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_text())
    }
}

// ---------------------------------------------------------------------------------------------
// Shared pieces of both forms.

type DaySet = [bool; 7];

/// One rule: the days it names, its hours (`None`: the whole day), and the cell it sets.
struct Rule {
    days: DaySet,
    hours: Option<(u8, u8)>,
    cell: Cell,
}

/// A parse failure inside one string: byte offset, the offending text, why and what to write.
#[derive(Debug)]
struct Bad {
    at: usize,
    token: String,
    reason: String,
}

impl Bad {
    fn new(at: usize, token: &str, reason: impl Into<String>) -> Bad {
        Bad {
            at,
            token: token.to_string(),
            reason: reason.into(),
        }
    }
}

fn day_index(day: Weekday) -> usize {
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

fn parse_day(text: &str, at: usize) -> std::result::Result<usize, Bad> {
    let lower = text.to_ascii_lowercase();
    (0..7)
        .find(|&d| lower == DAY_NAMES[d].to_ascii_lowercase() || lower == FULL_DAY_NAMES[d])
        .ok_or_else(|| {
            Bad::new(
                at,
                text,
                "unknown day; write Mon, Tue, Wed, Thu, Fri, Sat or Sun, a range such as Mon-Fri, a list such as Mon,Wed, or daily",
            )
        })
}

/// `daily`, `Mon`, `Mon-Fri`, `Sat-Mon`, `Mon,Wed-Thu`.
fn parse_days(text: &str) -> std::result::Result<DaySet, Bad> {
    if text.eq_ignore_ascii_case("daily") {
        return Ok([true; 7]);
    }
    let mut days = [false; 7];
    let mut at = 0;
    for part in text.split(',') {
        if part.is_empty() {
            return Err(Bad::new(
                at,
                text,
                "empty day in the list; write e.g. Mon,Wed or Mon-Fri",
            ));
        }
        match part.split_once('-') {
            Some((a, b)) => {
                let first = parse_day(a, at)?;
                let last = parse_day(b, at + a.len() + 1)?;
                let mut d = first;
                loop {
                    days[d] = true;
                    if d == last {
                        break;
                    }
                    d = (d + 1) % 7;
                }
            }
            None => days[parse_day(part, at)?] = true,
        }
        at += part.len() + 1;
    }
    Ok(days)
}

/// `HH:00`, as a start (0..=23) or an end (1..=24, 0 meaning 24).
fn parse_hour(text: &str, at: usize, end: bool) -> std::result::Result<u8, Bad> {
    let not_time = || Bad::new(at, text, "not a time; write whole hours such as 08:00");
    let (h, m) = text.split_once(':').ok_or_else(not_time)?;
    let digits = |s: &str, n: std::ops::RangeInclusive<usize>| {
        n.contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit())
    };
    if !digits(h, 1..=2) || !digits(m, 2..=2) {
        return Err(not_time());
    }
    let hour: u8 = h.parse().map_err(|_| not_time())?;
    if hour > 24 || (hour == 24 && !end) {
        let range = if end {
            "00:00 to 24:00"
        } else {
            "00:00 to 23:00"
        };
        return Err(Bad::new(
            at,
            text,
            format!("hour {hour} is out of range; write {range}"),
        ));
    }
    if m != "00" {
        return Err(Bad::new(
            at,
            text,
            format!(
                "schedule cells are whole hours; write {hour:02}:00 or {:02}:00",
                hour + 1
            ),
        ));
    }
    Ok(if end && hour == 0 { 24 } else { hour })
}

/// `08:00-18:00`, `22:00-06:00` (wraps), `18:00-24:00`.
fn parse_hours(text: &str) -> std::result::Result<(u8, u8), Bad> {
    let Some((a, b)) = text.split_once('-') else {
        return Err(Bad::new(
            0,
            text,
            "hours are a range; write e.g. 08:00-18:00",
        ));
    };
    let start = parse_hour(a, 0, false)?;
    let end = parse_hour(b, a.len() + 1, true)?;
    if start == end {
        return Err(Bad::new(
            0,
            text,
            "empty hour range; to cover the whole day leave the hours out",
        ));
    }
    Ok((start, end))
}

fn parse_allowed(word: &str) -> Option<Allowed> {
    match word.to_ascii_lowercase().as_str() {
        "all" => Some(Allowed::All),
        "medium" => Some(Allowed::MediumHigh),
        "high" => Some(Allowed::HighOnly),
        "closed" => Some(Allowed::Closed),
        _ => None,
    }
}

/// A bandwidth without `/s`: a size (`2MiB`, `10MB`, `4096`) or bits (`100Mbit`, `1.5Gbit`).
fn parse_bandwidth(text: &str) -> std::result::Result<u64, String> {
    let lower = text.to_ascii_lowercase();
    let bytes = if let Some(head) = lower.strip_suffix("bit") {
        let (number, multiplier): (&str, u128) = match head.char_indices().last() {
            Some((i, 'k')) => (&head[..i], 1_000),
            Some((i, 'm')) => (&head[..i], 1_000_000),
            Some((i, 'g')) => (&head[..i], 1_000_000_000),
            Some((i, 't')) => (&head[..i], 1_000_000_000_000),
            _ => (head, 1),
        };
        let bad = || format!("not a bit rate; write e.g. 100Mbit/s or 1.5Gbit/s ({text})");
        let bits: u128 = if let Ok(n) = number.parse::<u64>() {
            u128::from(n) * multiplier
        } else {
            let value: f64 = number.parse().map_err(|_| bad())?;
            if !value.is_finite() || value < 0.0 {
                return Err(bad());
            }
            (value * multiplier as f64).round() as u128
        };
        // Round to the nearest byte.
        u64::try_from((bits + 4) / 8).map_err(|_| format!("bit rate {text} is too large"))?
    } else {
        parse_size(text).map_err(|e| {
            format!("{e}; write a size per second such as 2MiB/s, 10MB/s or 100Mbit/s")
        })?
    };
    if bytes == 0 {
        return Err("a rate of 0 would stop all traffic; write closed instead".into());
    }
    Ok(bytes)
}

/// `5s`, `500ms`, `1m`, `2h`.
fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let bad = || {
        format!(
            "{text:?} is not a duration; write a whole number with ms, s, m or h, e.g. 500ms or 5s"
        )
    };
    let n: u64 = number.parse().map_err(|_| bad())?;
    let ms_per: u64 = match unit.to_ascii_lowercase().as_str() {
        "ms" => 1,
        "s" => 1_000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        _ => return Err(bad()),
    };
    let delay = Duration::from_millis(n.checked_mul(ms_per).ok_or_else(bad)?);
    check_delay(delay)?;
    Ok(delay)
}

/// `pulse SIZE/DURATION` after the word `pulse`.
fn parse_pulse(text: &str) -> std::result::Result<Rate, Bad> {
    let Some((size, delay)) = text.rsplit_once('/') else {
        return Err(Bad::new(
            0,
            text,
            "a pulse is a block and a delay; write e.g. pulse 64KiB/5s",
        ));
    };
    let block = parse_size(size).map_err(|e| {
        Bad::new(
            0,
            size,
            format!("{e}; write the block as a size, e.g. pulse 64KiB/5s"),
        )
    })?;
    if block == 0 {
        return Err(Bad::new(
            0,
            size,
            "a pulse block of 0 bytes sends nothing; write e.g. pulse 64KiB/5s, or closed",
        ));
    }
    let delay = parse_duration(delay).map_err(|e| Bad::new(size.len() + 1, delay, e))?;
    Ok(Rate::Pulse { block, delay })
}

/// One rate word (and, for `pulse`, the word after it) from `words`, advancing `i`.
fn parse_rate(words: &[Word], i: &mut usize) -> std::result::Result<(Rate, usize), Bad> {
    let word = &words[*i];
    *i += 1;
    let text = word.text.as_str();
    let lower = text.to_ascii_lowercase();
    let rate = if lower == "unlimited" {
        Rate::Unlimited
    } else if lower == "pulse" {
        let Some(next) = words.get(*i) else {
            return Err(Bad::new(
                word.pos(text.len()),
                "",
                "pulse needs a block and a delay; write e.g. pulse 64KiB/5s",
            ));
        };
        *i += 1;
        parse_pulse(&next.text).map_err(|b| Bad {
            at: next.pos(b.at),
            ..b
        })?
    } else if let Some(number) = text.strip_suffix('%') {
        let p: u16 = number.parse().map_err(|_| {
            Bad::new(
                word.at(),
                text,
                "not a percent; write a whole number from 1% to 100%",
            )
        })?;
        if p == 0 {
            return Err(Bad::new(
                word.at(),
                text,
                "0% would stop all traffic; write closed instead",
            ));
        }
        if p > 100 {
            return Err(Bad::new(
                word.at(),
                text,
                format!("{p}% is more than the link; write 1% to 100%, or unlimited"),
            ));
        }
        Rate::Percent(p as u8)
    } else if lower.ends_with("/s") {
        let size = &text[..text.len() - 2];
        Rate::BytesPerSec(parse_bandwidth(size).map_err(|e| Bad::new(word.at(), text, e))?)
    } else if parse_bandwidth(text).is_ok() {
        return Err(Bad::new(
            word.at(),
            text,
            format!("a rate is per second; write {text}/s"),
        ));
    } else if text.contains('-') && text.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(Bad::new(
            word.at(),
            text,
            "not hours or a rate; write hours as 08:00-18:00",
        ));
    } else {
        return Err(Bad::new(
            word.at(),
            text,
            format!("unknown action; {ACTION_HELP}"),
        ));
    };
    Ok((rate, word.at()))
}

/// The most common of `cells`; ties go to `prefer`, then to the first.
fn most_common<'a>(cells: impl Iterator<Item = &'a Cell> + Clone, prefer: Cell) -> Cell {
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
fn canonical_rules(schedule: &Schedule) -> Vec<Rule> {
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
fn covers(rule: &Rule, d: usize) -> bool {
    match rule.hours {
        Some((s, e)) if e < s => rule.days[d] || rule.days[(d + 6) % 7],
        _ => rule.days[d],
    }
}

fn days_text(days: &DaySet) -> String {
    if days.iter().all(|&d| d) {
        return "daily".into();
    }
    let mut parts = Vec::new();
    for start in (0..7).filter(|&d| days[d] && !days[(d + 6) % 7]) {
        let len = (0..7).take_while(|k| days[(start + k) % 7]).count();
        parts.push(if len == 1 {
            DAY_NAMES[start].to_string()
        } else {
            format!("{}-{}", DAY_NAMES[start], DAY_NAMES[(start + len - 1) % 7])
        });
    }
    parts.join(",")
}

fn hours_text((start, end): (u8, u8)) -> String {
    format!("{start:02}:00-{end:02}:00")
}

fn rules_text(rules: &[Rule]) -> String {
    if rules.is_empty() {
        return "daily unlimited".into();
    }
    let texts: Vec<String> = rules
        .iter()
        .map(|r| match r.hours {
            Some(hours) => format!("{} {} {}", days_text(&r.days), hours_text(hours), r.cell),
            None => format!("{} {}", days_text(&r.days), r.cell),
        })
        .collect();
    texts.join("; ")
}

/// The shortest exact spelling of a byte count: `2MiB`, `10MB`, `4097B`.
fn format_size(bytes: u64) -> String {
    best_spelling(bytes, false)
}

/// The shortest exact spelling of a bandwidth (without `/s`): `2MiB`, `10MB`, `100Mbit`.
fn format_bandwidth(bytes: u64) -> String {
    best_spelling(bytes, true)
}

fn best_spelling(bytes: u64, bits: bool) -> String {
    let n = u128::from(bytes);
    let mut best = (n, format!("{n}B"));
    let byte_units: [(&str, u128); 8] = [
        ("KiB", 1 << 10),
        ("MiB", 1 << 20),
        ("GiB", 1 << 30),
        ("TiB", 1 << 40),
        ("KB", 1_000),
        ("MB", 1_000_000),
        ("GB", 1_000_000_000),
        ("TB", 1_000_000_000_000),
    ];
    for (unit, size) in byte_units {
        if n.is_multiple_of(size) && n / size < best.0 {
            best = (n / size, format!("{}{unit}", n / size));
        }
    }
    if bits {
        let b = n * 8;
        for (unit, size) in [
            ("kbit", 1_000u128),
            ("Mbit", 1_000_000),
            ("Gbit", 1_000_000_000),
            ("Tbit", 1_000_000_000_000),
        ] {
            if b.is_multiple_of(size) && b / size < best.0 {
                best = (b / size, format!("{}{unit}", b / size));
            }
        }
    }
    best.1
}

fn format_duration(delay: Duration) -> String {
    let ms = delay.as_millis();
    if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1_000) {
        format!("{}s", ms / 1_000)
    } else {
        format!("{ms}ms")
    }
}

fn parse_zone(name: &str) -> std::result::Result<TimeZone, String> {
    TimeZone::get(name).map_err(|_| {
        "unknown time zone; write an IANA name such as Europe/Stockholm, America/New_York or UTC"
            .to_string()
    })
}

// ---------------------------------------------------------------------------------------------
// Text form.

/// A word of the text form: whitespace-separated pieces joined where one ends or the next
/// begins with `,`, `-` or `/` (so `Mon - Fri` is `Mon-Fri`), with where each piece came from.
struct Word {
    text: String,
    /// (offset in `text`, offset in the input) of each piece.
    pieces: Vec<(usize, usize)>,
}

impl Word {
    fn at(&self) -> usize {
        self.pieces[0].1
    }

    /// Input offset of `text` offset `i`.
    fn pos(&self, i: usize) -> usize {
        let (t, p) = self
            .pieces
            .iter()
            .rev()
            .find(|(t, _)| *t <= i)
            .copied()
            .unwrap_or(self.pieces[0]);
        p + (i - t)
    }
}

fn words(segment: &str, base: usize) -> Vec<Word> {
    let joins = |c: char| matches!(c, ',' | '-' | '/');
    let mut out: Vec<Word> = Vec::new();
    let mut rest = segment;
    let mut offset = base;
    while let Some(skip) = rest.find(|c: char| !c.is_whitespace()) {
        rest = &rest[skip..];
        offset += skip;
        let len = rest.find(char::is_whitespace).unwrap_or(rest.len());
        let piece = &rest[..len];
        match out.last_mut() {
            Some(last) if last.text.ends_with(joins) || piece.starts_with(joins) => {
                last.pieces.push((last.text.len(), offset));
                last.text.push_str(piece);
            }
            _ => out.push(Word {
                text: piece.to_string(),
                pieces: vec![(0, offset)],
            }),
        }
        rest = &rest[len..];
        offset += len;
    }
    out
}

fn parse_text(input: &str) -> std::result::Result<RouteThrottle, Bad> {
    if input.trim().is_empty() {
        return Err(Bad::new(
            0,
            "",
            "empty schedule; write a rule such as `daily unlimited` or `Mon-Fri 08:00-18:00 high 2MiB/s`",
        ));
    }
    let mut link: Option<u64> = None;
    let mut zone: Option<TimeZone> = None;
    let mut schedule = Schedule::default();
    let mut first_percent: Option<(usize, String)> = None;
    let segments: Vec<&str> = input.split(';').collect();
    let mut base = 0;
    for (n, segment) in segments.iter().enumerate() {
        let ws = words(segment, base);
        let end = base + segment.len();
        base = end + 1;
        let Some(first) = ws.first() else {
            if n + 1 == segments.len() && n > 0 {
                continue; // one trailing ';'
            }
            return Err(Bad::new(
                end,
                "",
                "empty rule; remove the extra ';' or write a rule such as `Sat-Sun closed`",
            ));
        };
        let keyword = first.text.to_ascii_lowercase();
        if keyword == "link" || keyword == "tz" {
            let Some(value) = ws.get(1) else {
                let example = if keyword == "link" {
                    "link 100Mbit/s"
                } else {
                    "tz Europe/Stockholm"
                };
                return Err(Bad::new(
                    end,
                    &first.text,
                    format!("{keyword} needs a value; write e.g. `{example}`"),
                ));
            };
            if let Some(extra) = ws.get(2) {
                return Err(Bad::new(
                    extra.at(),
                    &extra.text,
                    format!(
                        "unexpected after {keyword} {}; end the item with ';'",
                        value.text
                    ),
                ));
            }
            if keyword == "link" {
                if link.is_some() {
                    return Err(Bad::new(
                        first.at(),
                        &first.text,
                        "link is given twice; keep one",
                    ));
                }
                let text = &value.text;
                let size = text
                    .strip_suffix("/s")
                    .or_else(|| text.strip_suffix("/S"))
                    .unwrap_or(text);
                link = Some(parse_bandwidth(size).map_err(|e| Bad::new(value.at(), text, e))?);
            } else {
                if zone.is_some() {
                    return Err(Bad::new(
                        first.at(),
                        &first.text,
                        "tz is given twice; keep one",
                    ));
                }
                zone = Some(
                    parse_zone(&value.text).map_err(|e| Bad::new(value.at(), &value.text, e))?,
                );
            }
            continue;
        }
        let (rule, percent_at) = parse_rule(&ws, end)?;
        if let (None, Some(at)) = (&first_percent, percent_at) {
            let token = ws
                .iter()
                .find(|w| w.at() == at)
                .map_or("", |w| w.text.as_str());
            first_percent = Some((at, token.to_string()));
        }
        schedule.apply(&rule.days, rule.hours, rule.cell);
    }
    if let (None, Some((at, token))) = (link, &first_percent) {
        return Err(Bad::new(
            *at,
            token,
            "a percent needs the route's link bandwidth; add `link 100Mbit/s;` (the link's real speed) or write an absolute rate such as 2MiB/s",
        ));
    }
    RouteThrottle::new(schedule, link, zone.unwrap_or(TimeZone::UTC))
        .map_err(|e| Bad::new(0, "", e.to_string()))
}

/// `days [hours] action`; also returns where a percent rate was written, if one was.
fn parse_rule(ws: &[Word], end: usize) -> std::result::Result<(Rule, Option<usize>), Bad> {
    let days = parse_days(&ws[0].text).map_err(|b| Bad {
        at: ws[0].pos(b.at),
        ..b
    })?;
    let mut i = 1;
    let mut hours = None;
    if let Some(w) = ws.get(i).filter(|w| w.text.contains(':')) {
        hours = Some(parse_hours(&w.text).map_err(|b| Bad {
            at: w.pos(b.at),
            ..b
        })?);
        i += 1;
    }
    let Some(word) = ws.get(i) else {
        return Err(Bad::new(
            end,
            "",
            format!("the rule names no action; {ACTION_HELP}"),
        ));
    };
    let mut allowed = Allowed::All;
    if let Some(a) = parse_allowed(&word.text) {
        allowed = a;
        i += 1;
    }
    let mut rate = Rate::Unlimited;
    let mut percent_at = None;
    if allowed != Allowed::Closed && i < ws.len() {
        let (r, at) = parse_rate(ws, &mut i)?;
        if matches!(r, Rate::Percent(_)) {
            percent_at = Some(at);
        }
        rate = r;
    }
    if let Some(extra) = ws.get(i) {
        return Err(Bad::new(
            extra.at(),
            &extra.text,
            "unexpected after the rule's action; separate rules with ';'",
        ));
    }
    let cell = Cell::new(allowed, rate);
    Ok((Rule { days, hours, cell }, percent_at))
}

// ---------------------------------------------------------------------------------------------
// TOML form.

/// The TOML table; see the module documentation.
#[derive(Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ThrottleToml {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    link_bandwidth: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    time_zone: Option<String>,
    #[serde(default, rename = "window", skip_serializing_if = "Vec::is_empty")]
    windows: Vec<WindowToml>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WindowToml {
    days: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hours: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    allowed: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rate: Option<String>,
}

impl From<RouteThrottle> for ThrottleToml {
    fn from(t: RouteThrottle) -> ThrottleToml {
        let windows = canonical_rules(&t.schedule)
            .iter()
            .map(|r| WindowToml {
                days: days_text(&r.days),
                hours: r.hours.map(hours_text),
                allowed: Some(r.cell.allowed.name().to_string()),
                rate: (r.cell.allowed != Allowed::Closed).then(|| r.cell.rate.to_string()),
            })
            .collect();
        ThrottleToml {
            link_bandwidth: t
                .link_bandwidth
                .map(|b| format!("{}/s", format_bandwidth(b))),
            time_zone: t.zone_name().map(str::to_string),
            windows,
        }
    }
}

impl TryFrom<ThrottleToml> for RouteThrottle {
    type Error = Error;

    fn try_from(file: ThrottleToml) -> Result<RouteThrottle> {
        let bad = |place: String, b: Bad| Error::BadScheduleToml {
            place,
            reason: if b.token.is_empty() {
                b.reason
            } else {
                format!("{:?}: {}", b.token, b.reason)
            },
        };
        let link = match &file.link_bandwidth {
            Some(text) => {
                let size = text
                    .strip_suffix("/s")
                    .or_else(|| text.strip_suffix("/S"))
                    .unwrap_or(text);
                Some(
                    parse_bandwidth(size.trim()).map_err(|reason| Error::BadScheduleToml {
                        place: format!("link_bandwidth = {text:?}"),
                        reason,
                    })?,
                )
            }
            None => None,
        };
        let zone = match &file.time_zone {
            Some(name) => parse_zone(name).map_err(|reason| Error::BadScheduleToml {
                place: format!("time_zone = {name:?}"),
                reason,
            })?,
            None => TimeZone::UTC,
        };
        let mut schedule = Schedule::default();
        for (n, w) in file.windows.iter().enumerate() {
            let n = n + 1;
            let days = parse_days(w.days.trim())
                .map_err(|b| bad(format!("window {n}: days = {:?}", w.days), b))?;
            let hours = match &w.hours {
                Some(text) => Some(
                    parse_hours(&text.split_whitespace().collect::<String>())
                        .map_err(|b| bad(format!("window {n}: hours = {text:?}"), b))?,
                ),
                None => None,
            };
            let allowed =
                match &w.allowed {
                    Some(text) => Some(parse_allowed(text.trim()).ok_or_else(|| {
                        Error::BadScheduleToml {
                            place: format!("window {n}: allowed = {text:?}"),
                            reason:
                                "write closed, all, medium (medium and high) or high (high only)"
                                    .into(),
                        }
                    })?),
                    None => None,
                };
            let rate = match &w.rate {
                Some(text) => {
                    let place = format!("window {n}: rate = {text:?}");
                    if allowed == Some(Allowed::Closed) {
                        return Err(Error::BadScheduleToml {
                            place,
                            reason: "a closed window has no rate; remove rate, or allow a priority"
                                .into(),
                        });
                    }
                    let ws = words(text, 0);
                    if ws.is_empty() {
                        return Err(Error::BadScheduleToml {
                            place,
                            reason: format!("empty rate; {ACTION_HELP}"),
                        });
                    }
                    let mut i = 0;
                    let (rate, _) = parse_rate(&ws, &mut i).map_err(|b| bad(place.clone(), b))?;
                    if let Some(extra) = ws.get(i) {
                        return Err(bad(
                            place,
                            Bad::new(extra.at(), &extra.text, "unexpected after the rate"),
                        ));
                    }
                    if let (Rate::Percent(_), None) = (rate, link) {
                        return Err(Error::BadScheduleToml {
                            place,
                            reason: "a percent needs the route's link bandwidth; add link_bandwidth = \"100Mbit/s\" (the link's real speed) or write an absolute rate such as 2MiB/s".into(),
                        });
                    }
                    Some(rate)
                }
                None => None,
            };
            if allowed.is_none() && rate.is_none() {
                return Err(Error::BadScheduleToml {
                    place: format!("window {n}"),
                    reason: "the window sets neither allowed nor rate; add allowed = \"closed\" (or all, medium, high) or a rate such as rate = \"2MiB/s\"".into(),
                });
            }
            let cell = Cell::new(
                allowed.unwrap_or(Allowed::All),
                rate.unwrap_or(Rate::Unlimited),
            );
            schedule.apply(&days, hours, cell);
        }
        RouteThrottle::new(schedule, link, zone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Weekday::{Friday, Monday, Saturday, Sunday, Thursday, Tuesday, Wednesday};
    use proptest::prelude::*;

    const WEEK: [Weekday; 7] = [
        Monday, Tuesday, Wednesday, Thursday, Friday, Saturday, Sunday,
    ];

    fn parse(text: &str) -> RouteThrottle {
        RouteThrottle::parse(text).unwrap_or_else(|e| panic!("{text:?} should parse: {e}"))
    }

    fn fill(s: &mut Schedule, days: &[Weekday], hours: std::ops::Range<u8>, cell: Cell) {
        for &d in days {
            for h in hours.clone() {
                s.set(d, h, cell);
            }
        }
    }

    fn ts(text: &str) -> Timestamp {
        text.parse().expect("test timestamp")
    }

    fn stockholm() -> TimeZone {
        TimeZone::get("Europe/Stockholm").expect("the system tz database has Europe/Stockholm")
    }

    /// Every cell different, so that a cell tells which (day, hour) it came from.
    fn distinct() -> Schedule {
        let mut s = Schedule::default();
        for (d, &day) in WEEK.iter().enumerate() {
            for h in 0..24 {
                s.set(
                    day,
                    h,
                    Cell::new(
                        Allowed::All,
                        Rate::BytesPerSec((d * 24) as u64 + u64::from(h) + 1),
                    ),
                );
            }
        }
        s
    }

    #[test]
    fn parses_the_example() {
        let t = parse("Mon-Fri 08:00-18:00 high 2MiB/s; Sat-Sun closed");
        let mut want = Schedule::default();
        let high = Cell::new(Allowed::HighOnly, Rate::BytesPerSec(2 << 20));
        fill(&mut want, &WEEK[..5], 8..18, high);
        fill(&mut want, &[Saturday, Sunday], 0..24, Cell::CLOSED);
        assert_eq!(t.schedule(), &want);
        assert_eq!(t.link_bandwidth(), None);
        assert_eq!(t.time_zone().iana_name(), Some("UTC"));
        assert_eq!(t.schedule().cell(Monday, 7), Cell::DEFAULT);
        assert_eq!(t.schedule().cell(Friday, 17), high);
    }

    #[test]
    fn later_rules_override_and_hours_wrap_into_the_next_day() {
        let t = parse(
            "daily 1MiB/s; Fri 22:00-06:00 closed; Sun 23:00-01:00 high; Wed 20:00-00:00 medium",
        );
        let mib = Cell::new(Allowed::All, Rate::BytesPerSec(1 << 20));
        let mut want = Schedule::default();
        fill(&mut want, &WEEK, 0..24, mib);
        fill(&mut want, &[Friday], 22..24, Cell::CLOSED);
        fill(&mut want, &[Saturday], 0..6, Cell::CLOSED);
        let high = Cell::new(Allowed::HighOnly, Rate::Unlimited);
        fill(&mut want, &[Sunday], 23..24, high);
        fill(&mut want, &[Monday], 0..1, high);
        fill(
            &mut want,
            &[Wednesday],
            20..24,
            Cell::new(Allowed::MediumHigh, Rate::Unlimited),
        );
        assert_eq!(t.schedule(), &want);
    }

    #[test]
    fn day_ranges_wrap_lists_and_spaces() {
        let t = parse(
            "link 1Gbit/s ; Sat - Mon closed ; wed , FRIDAY 10% ; tue 01:00 - 02:00 medium 5MiB / s",
        );
        let mut want = Schedule::default();
        fill(&mut want, &[Saturday, Sunday, Monday], 0..24, Cell::CLOSED);
        fill(
            &mut want,
            &[Wednesday, Friday],
            0..24,
            Cell::new(Allowed::All, Rate::Percent(10)),
        );
        fill(
            &mut want,
            &[Tuesday],
            1..2,
            Cell::new(Allowed::MediumHigh, Rate::BytesPerSec(5 << 20)),
        );
        assert_eq!(t.schedule(), &want);
        assert_eq!(t.link_bandwidth(), Some(125_000_000));
    }

    #[test]
    fn rates_in_every_unit() {
        let t = parse(
            "link 100Mbit/s; tz europe/stockholm; daily 50%; Mon pulse 64KiB/5s; Tue 1.5Gbit/s; \
             Wed 10MB/s; Thu 4096/s; Fri pulse 1MB/500ms; Sat unlimited",
        );
        assert_eq!(t.link_bandwidth(), Some(12_500_000));
        assert_eq!(t.time_zone().iana_name(), Some("Europe/Stockholm"));
        let rate = |d| t.schedule().cell(d, 12).rate;
        assert_eq!(
            rate(Monday),
            Rate::Pulse {
                block: 65536,
                delay: Duration::from_secs(5)
            }
        );
        assert_eq!(rate(Tuesday), Rate::BytesPerSec(187_500_000));
        assert_eq!(rate(Wednesday), Rate::BytesPerSec(10_000_000));
        assert_eq!(rate(Thursday), Rate::BytesPerSec(4096));
        assert_eq!(
            rate(Friday),
            Rate::Pulse {
                block: 1_000_000,
                delay: Duration::from_millis(500)
            }
        );
        assert_eq!(rate(Saturday), Rate::Unlimited);
        assert_eq!(rate(Sunday), Rate::Percent(50));
    }

    #[test]
    fn prints_the_canonical_form() {
        for (input, canonical) in [
            (
                "Mon-Fri 08:00-18:00 high 2MiB/s; Sat-Sun closed",
                "Mon-Fri 08:00-18:00 high 2MiB/s; Sat-Sun closed",
            ),
            (
                "Sat-Sun closed; Mon-Fri 08:00-18:00 high 2097152/s",
                "Mon-Fri 08:00-18:00 high 2MiB/s; Sat-Sun closed",
            ),
            ("daily unlimited", "daily unlimited"),
            ("mon all", "daily unlimited"),
            (
                "daily closed; Mon 09:00-10:00 all",
                "daily closed; Mon 09:00-10:00 unlimited",
            ),
            ("Fri 22:00-06:00 closed", "Fri 22:00-06:00 closed"),
            (
                "link 100Mbit/s; tz Europe/Stockholm; daily 50%; Mon-Fri 08:00-17:00 medium 10%; \
                 Fri 22:00-06:00 closed; Sat-Mon 03:00-04:00 pulse 64KiB/5s",
                "link 100Mbit/s; tz Europe/Stockholm; daily 50%; Sat-Mon 03:00-04:00 pulse 64KiB/5s; \
                 Mon-Fri 08:00-17:00 medium 10%; Fri 22:00-03:00 closed; Sat 04:00-06:00 closed",
            ),
            // An hours rule follows the day rule it overrides, also over midnight.
            (
                "Sat-Sun closed; Sun 10:00-12:00 high; Mon 09:00-10:00 high",
                "Mon 09:00-10:00 high; Sat-Sun closed; Sun 10:00-12:00 high",
            ),
            (
                "Sun closed; Sat 22:00-02:00 high",
                "Sun closed; Sat 22:00-02:00 high",
            ),
            ("Sat-Mon medium 125000/s", "Sat-Mon medium 1Mbit/s"),
            (
                "link 12500000/s; tz Europe/Stockholm; Wed 10% ",
                "link 100Mbit/s; tz Europe/Stockholm; Wed 10%",
            ),
            ("Tue pulse 65536/60000ms", "Tue pulse 64KiB/1m"),
        ] {
            assert_eq!(parse(input).to_text(), canonical, "printing {input:?}");
            assert_eq!(parse(canonical), parse(input), "reparsing {canonical:?}");
        }
        assert_eq!(RouteThrottle::default().to_string(), "daily unlimited");
    }

    #[test]
    fn toml_and_text_forms_agree() {
        let toml = r#"
link_bandwidth = "100Mbit/s"
time_zone = "Europe/Stockholm"
[[window]]
days = "Mon-Fri"
hours = "08:00-18:00"
allowed = "high"
rate = "2MiB/s"
[[window]]
days = "Sat-Sun"
allowed = "closed"
[[window]]
days = "Wed"
hours = "22:00-02:00"
rate = "pulse 64KiB/5s"
[[window]]
days = "daily"
hours = "12:00-13:00"
rate = "50%"
"#;
        let text = "link 100Mbit/s; tz Europe/Stockholm; Mon-Fri 08:00-18:00 high 2MiB/s; \
                    Sat-Sun closed; Wed 22:00-02:00 pulse 64KiB/5s; daily 12:00-13:00 50%";
        let from_toml = RouteThrottle::from_toml(toml).expect("the TOML parses");
        assert_eq!(from_toml, parse(text));
        let printed = from_toml.to_toml();
        assert_eq!(
            RouteThrottle::from_toml(&printed).expect("printed TOML parses"),
            from_toml
        );
        // And through serde, as a configuration file embeds it.
        #[derive(Deserialize, Serialize)]
        struct Config {
            throttle: RouteThrottle,
        }
        let config = toml::to_string(&Config {
            throttle: from_toml.clone(),
        })
        .expect("serializes");
        let back: Config = toml::from_str(&config).expect("deserializes");
        assert_eq!(back.throttle, from_toml);
    }

    /// (input, offending token, byte offset, a phrase of the remedy)
    const BAD_TEXT: &[(&str, &str, usize, &str)] = &[
        ("", "", 0, "write a rule such as"),
        ("Mun 08:00-18:00 closed", "Mun", 0, "write Mon, Tue"),
        ("Mon-Fx closed", "Fx", 4, "write Mon, Tue"),
        ("Mon,,Tue closed", "Mon,,Tue", 4, "empty day"),
        (
            "Mon 25:00-26:00 closed",
            "25:00",
            4,
            "hour 25 is out of range",
        ),
        ("Mon 24:00-02:00 closed", "24:00", 4, "write 00:00 to 23:00"),
        (
            "Mon 08:00-18:30 closed",
            "18:30",
            10,
            "write 18:00 or 19:00",
        ),
        ("Mon 08:30-18:00 closed", "08:30", 4, "write 08:00 or 09:00"),
        (
            "Mon 8h-18:00 closed",
            "8h",
            4,
            "write whole hours such as 08:00",
        ),
        (
            "Mon 08:00-08:00 closed",
            "08:00-08:00",
            4,
            "leave the hours out",
        ),
        ("Mon 8-18 closed", "8-18", 4, "write hours as 08:00-18:00"),
        ("Mon 50%", "50%", 4, "add `link 100Mbit/s;`"),
        ("link 1Gbit/s; Mon 0%", "0%", 18, "write closed instead"),
        ("link 1Gbit/s; Mon 150%", "150%", 18, "write 1% to 100%"),
        ("link 1Gbit/s; Mon x%", "x%", 18, "from 1% to 100%"),
        ("Mon 12XB/s", "12XB/s", 4, "write a size per second"),
        ("Mon 0MiB/s", "0MiB/s", 4, "write closed instead"),
        ("Mon 2MiB", "2MiB", 4, "write 2MiB/s"),
        ("Mon fast", "fast", 4, "write closed, all"),
        ("Mon", "", 3, "the rule names no action"),
        ("Mon 08:00-18:00", "", 15, "the rule names no action"),
        ("Mon closed;; Tue high", "", 11, "empty rule"),
        ("; Mon closed", "", 0, "empty rule"),
        (
            "tz Mars/Olympus; daily closed",
            "Mars/Olympus",
            3,
            "IANA name",
        ),
        (
            "tz; daily closed",
            "tz",
            2,
            "write e.g. `tz Europe/Stockholm`",
        ),
        ("tz UTC; tz UTC; daily closed", "tz", 8, "given twice"),
        ("link 1Gbit/s; link 1Gbit/s", "link", 14, "given twice"),
        ("link 0/s; daily closed", "0/s", 5, "write closed instead"),
        (
            "link 1Gbit/s 2; daily closed",
            "2",
            13,
            "end the item with ';'",
        ),
        ("Mon closed extra", "extra", 11, "separate rules with ';'"),
        ("Mon high 2MiB/s 5", "5", 16, "separate rules with ';'"),
        ("Mon pulse", "", 9, "write e.g. pulse 64KiB/5s"),
        ("Mon pulse 64KiB", "64KiB", 10, "a block and a delay"),
        ("Mon pulse 64KiB/0s", "0s", 16, "from 1ms to 24h"),
        ("Mon pulse 64KiB/25h", "25h", 16, "from 1ms to 24h"),
        ("Mon pulse 64KiB/5x", "5x", 16, "e.g. 500ms or 5s"),
        ("Mon pulse 0/5s", "0", 10, "sends nothing"),
        ("Sun 2m pulse", "2m", 4, "write 2m/s"),
        ("Mon - Fx closed", "Fx", 6, "write Mon, Tue"),
    ];

    #[test]
    fn bad_text_inputs() {
        for &(input, token, at, remedy) in BAD_TEXT {
            let err = RouteThrottle::parse(input).expect_err(input);
            let Error::BadSchedule {
                input: i,
                at: a,
                token: t,
                reason,
            } = &err
            else {
                panic!("{input:?}: wrong error {err:?}");
            };
            assert_eq!(
                (i.as_str(), t.as_str(), *a),
                (input, token, at),
                "{input:?}: {err}"
            );
            assert!(
                reason.contains(remedy),
                "{input:?}: {reason:?} lacks {remedy:?}"
            );
            let message = err.to_string();
            assert!(!message.contains('\n'), "{message}");
            assert!(
                message.contains(&format!("at column {}", at + 1)),
                "{message}"
            );
            if !token.is_empty() {
                assert!(message.contains(&format!("{token:?}")), "{message}");
            }
        }
    }

    #[test]
    fn bad_toml_inputs() {
        for (toml, place, remedy) in [
            (
                "[[window]]\ndays = \"Mun\"\nallowed = \"closed\"\n",
                "window 1: days = \"Mun\"",
                "write Mon, Tue",
            ),
            (
                "[[window]]\ndays = \"Mon\"\nallowed = \"closed\"\nrate = \"1MiB/s\"\n",
                "window 1: rate",
                "remove rate",
            ),
            (
                "[[window]]\ndays = \"Mon\"\nrate = \"50%\"\n",
                "window 1: rate = \"50%\"",
                "add link_bandwidth",
            ),
            (
                "[[window]]\ndays = \"Mon\"\nrate = \"150%\"\n",
                "window 1: rate = \"150%\"",
                "write 1% to 100%",
            ),
            (
                "[[window]]\ndays = \"Mon\"\n",
                "window 1",
                "neither allowed nor rate",
            ),
            (
                "[[window]]\ndays = \"Mon\"\nallowed = \"some\"\n",
                "window 1: allowed = \"some\"",
                "write closed, all",
            ),
            (
                "[[window]]\ndays = \"Mon\"\nhours = \"09:15-10:00\"\nallowed = \"high\"\n",
                "window 1: hours",
                "write 09:00 or 10:00",
            ),
            (
                "[[window]]\ndays = \"Mon\"\nrate = \"2MiB/s junk\"\n",
                "window 1: rate",
                "unexpected after the rate",
            ),
            (
                "time_zone = \"Mars/Olympus\"\n",
                "time_zone = \"Mars/Olympus\"",
                "IANA name",
            ),
            (
                "link_bandwidth = \"fast\"\n",
                "link_bandwidth = \"fast\"",
                "write a size per second",
            ),
            ("colour = \"red\"\n", "line 1 column 1", "unknown field"),
            ("[[window]]\ndays = Mon\n", "line 2 column 8", ""),
        ] {
            let err = RouteThrottle::from_toml(toml).expect_err(toml);
            let Error::BadScheduleToml { place: p, reason } = &err else {
                panic!("{toml:?}: wrong error {err:?}");
            };
            assert!(
                p.starts_with(place),
                "{toml:?}: place {p:?}, want {place:?}"
            );
            assert!(
                reason.contains(remedy),
                "{toml:?}: {reason:?} lacks {remedy:?}"
            );
            assert!(!err.to_string().contains('\n'), "{err}");
        }
    }

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

    fn rate_strategy() -> impl Strategy<Value = Rate> {
        let bytes = prop_oneof![
            1u64..=u64::MAX,
            (1u64..=4096, 0u32..5).prop_map(|(k, e)| k * 1024u64.pow(e)),
            (1u64..=1000, 0u32..5).prop_map(|(k, e)| k * 1000u64.pow(e)),
            (1u64..100_000).prop_map(|k| k * 125),
        ];
        let block = prop_oneof![1u64..=1 << 50, (1u64..=64).prop_map(|k| k << 16)];
        let delay = prop_oneof![
            1u64..=86_400_000,
            (1u64..=24).prop_map(|h| h * 3_600_000),
            (1u64..=60).prop_map(|s| s * 1000)
        ];
        prop_oneof![
            Just(Rate::Unlimited),
            (1u8..=100).prop_map(Rate::Percent),
            bytes.prop_map(Rate::BytesPerSec),
            (block, delay).prop_map(|(block, ms)| Rate::Pulse {
                block,
                delay: Duration::from_millis(ms)
            }),
        ]
    }

    fn cell_strategy() -> impl Strategy<Value = Cell> {
        let allowed = prop_oneof![
            Just(Allowed::All),
            Just(Allowed::MediumHigh),
            Just(Allowed::HighOnly),
            Just(Allowed::Closed),
        ];
        (allowed, rate_strategy()).prop_map(|(a, r)| Cell::new(a, r))
    }

    /// Schedules as people write them (rules over the default), or cells drawn from a small
    /// palette (many short runs).
    fn throttle_strategy() -> impl Strategy<Value = RouteThrottle> {
        let rule = (1u8..128, 0u8..24, 1u8..=24, cell_strategy());
        let by_rules = prop::collection::vec(rule, 0..10).prop_map(|rules| {
            let mut s = Schedule::default();
            for (mask, start, len, cell) in rules {
                let days: DaySet = std::array::from_fn(|d| mask & (1 << d) != 0);
                let end = start + len;
                let hours = match end {
                    24 if start == 0 => None,
                    e if e > 24 => Some((start, e - 24)),
                    e => Some((start, e)),
                };
                s.apply(&days, hours, cell);
            }
            s
        });
        let palette = (
            prop::collection::vec(cell_strategy(), 1..4),
            prop::collection::vec(0usize..4, 168),
        )
            .prop_map(|(palette, picks)| {
                let mut s = Schedule::default();
                for (i, pick) in picks.into_iter().enumerate() {
                    s.set(WEEK[i / 24], (i % 24) as u8, palette[pick % palette.len()]);
                }
                s
            });
        let zones = prop_oneof![
            Just("UTC"),
            Just("Europe/Stockholm"),
            Just("America/New_York"),
            Just("Asia/Kolkata")
        ];
        (
            prop_oneof![by_rules, palette],
            prop::option::of(1u64..=u64::MAX),
            zones,
        )
            .prop_map(|(s, link, zone)| {
                let has_percent = s
                    .cells
                    .iter()
                    .flatten()
                    .any(|c| matches!(c.rate, Rate::Percent(_)));
                let link = if has_percent {
                    Some(link.unwrap_or(1_000_000))
                } else {
                    link
                };
                RouteThrottle::new(s, link, TimeZone::get(zone).expect("tz database"))
                    .expect("generated throttles are valid")
            })
    }

    proptest! {
        #[test]
        fn text_round_trips(t in throttle_strategy()) {
            let text = t.to_text();
            let back = RouteThrottle::parse(&text).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&back, &t, "text {}", text);
            prop_assert_eq!(back.to_text(), text);
        }

        #[test]
        fn toml_round_trips(t in throttle_strategy()) {
            let toml = t.to_toml();
            let back = RouteThrottle::from_toml(&toml).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&back, &t, "toml {}", toml);
        }

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
