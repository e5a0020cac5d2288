//! The compact text form, for the command line: parsing and canonical printing.
//!
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
//! DURATION  := as freight_core::units::parse_duration: 500ms, 5s, 1m, 2h, 1m30s, 1.5s
//!                                                            whole milliseconds, 1ms to 24h
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

use super::model::{
    Allowed, Cell, DAY_NAMES, DaySet, Rate, RouteThrottle, Rule, Schedule, canonical_rules,
    check_delay,
};
use crate::error::{Error, Result};
use freight_core::units::{self, parse_size};
use jiff::tz::TimeZone;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

const FULL_DAY_NAMES: [&str; 7] = [
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
];
pub(super) const ACTION_HELP: &str = "write closed, all, medium, high, unlimited, a percent such as 50%, \
     a rate such as 2MiB/s or 100Mbit/s, or pulse 64KiB/5s";

impl RouteThrottle {
    /// Parses the text form (grammar: [`schedule::text`](super::text)).
    pub fn parse(input: &str) -> Result<RouteThrottle> {
        parse_text(input).map_err(|b| Error::BadSchedule {
            input: input.to_string(),
            at: b.at,
            token: b.token,
            reason: b.reason,
        })
    }

    /// The canonical text form (see [`schedule::text`](super::text)); [`RouteThrottle::parse`]
    /// reads it back.
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

/// A schedule debugs as its canonical rules: 168 cells would say less.
impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Schedule")
            .field(&rules_text(&canonical_rules(self)))
            .finish()
    }
}

/// A parse failure inside one string: byte offset, the offending text, why and what to write.
#[derive(Debug)]
pub(super) struct Bad {
    pub(super) at: usize,
    pub(super) token: String,
    pub(super) reason: String,
}

impl Bad {
    pub(super) fn new(at: usize, token: &str, reason: impl Into<String>) -> Bad {
        Bad {
            at,
            token: token.to_string(),
            reason: reason.into(),
        }
    }
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
pub(super) fn parse_days(text: &str) -> std::result::Result<DaySet, Bad> {
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
pub(super) fn parse_hours(text: &str) -> std::result::Result<(u8, u8), Bad> {
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

pub(super) fn parse_allowed(word: &str) -> Option<Allowed> {
    match word.to_ascii_lowercase().as_str() {
        "all" => Some(Allowed::All),
        "medium" => Some(Allowed::MediumHigh),
        "high" => Some(Allowed::HighOnly),
        "closed" => Some(Allowed::Closed),
        _ => None,
    }
}

/// A bandwidth, `/s` optional ([`units::parse_rate`]), that is not zero.
pub(super) fn parse_bandwidth(text: &str) -> std::result::Result<u64, String> {
    match units::parse_rate(text)? {
        0 => Err("a rate of 0 would stop all traffic; write closed instead".into()),
        bytes => Ok(bytes),
    }
}

/// A pulse delay: a duration ([`units::parse_duration`]) in whole milliseconds, 1ms to 24h.
fn parse_delay(text: &str) -> std::result::Result<Duration, String> {
    let delay = units::parse_duration(text)?;
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
    let delay = parse_delay(delay).map_err(|e| Bad::new(size.len() + 1, delay, e))?;
    Ok(Rate::Pulse { block, delay })
}

/// One rate word (and, for `pulse`, the word after it) from `words`, advancing `i`.
pub(super) fn parse_rate(words: &[Word], i: &mut usize) -> std::result::Result<(Rate, usize), Bad> {
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
        Rate::BytesPerSec(parse_bandwidth(text).map_err(|e| Bad::new(word.at(), text, e))?)
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

pub(super) fn days_text(days: &DaySet) -> String {
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

pub(super) fn hours_text((start, end): (u8, u8)) -> String {
    format!("{start:02}:00-{end:02}:00")
}

pub(super) fn rules_text(rules: &[Rule]) -> String {
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
pub(super) fn format_bandwidth(bytes: u64) -> String {
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

pub(super) fn parse_zone(name: &str) -> std::result::Result<TimeZone, String> {
    TimeZone::get(name).map_err(|_| {
        "unknown time zone; write an IANA name such as Europe/Stockholm, America/New_York or UTC"
            .to_string()
    })
}

/// A word of the text form: whitespace-separated pieces joined where one ends or the next
/// begins with `,`, `-` or `/` (so `Mon - Fri` is `Mon-Fri`), with where each piece came from.
pub(super) struct Word {
    pub(super) text: String,
    /// (offset in `text`, offset in the input) of each piece.
    pieces: Vec<(usize, usize)>,
}

impl Word {
    pub(super) fn at(&self) -> usize {
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

pub(super) fn words(segment: &str, base: usize) -> Vec<Word> {
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
                link = Some(parse_bandwidth(text).map_err(|e| Bad::new(value.at(), text, e))?);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::test_support::*;
    use jiff::civil::Weekday::{Friday, Monday, Saturday, Sunday, Thursday, Tuesday, Wednesday};
    use proptest::prelude::*;

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
    fn pulse_delays_are_read_like_every_other_duration() {
        // The delay goes through freight_core::units::parse_duration, so what freightd.toml
        // accepts works here too; the schedule's own limits (whole ms, 1ms..=24h) still hold.
        for (delay, ms) in [
            ("5s", 5_000),
            ("5S", 5_000),
            ("2min", 120_000),
            ("1m30s", 90_000),
            ("1.5s", 1_500),
            ("24h", 86_400_000),
        ] {
            let t = parse(&format!("Mon pulse 64KiB/{delay}"));
            assert_eq!(
                t.schedule().cell(Monday, 0).rate,
                Rate::Pulse {
                    block: 65536,
                    delay: Duration::from_millis(ms)
                },
                "{delay}"
            );
        }
        for (delay, phrase) in [
            ("1.5ms", "whole number of milliseconds"),
            ("24h1s", "from 1ms to 24h"),
            ("-5s", "cannot be negative"),
            ("5", "e.g. 500ms or 5s"),
        ] {
            let input = format!("Mon pulse 64KiB/{delay}");
            let err = RouteThrottle::parse(&input).expect_err(&input);
            let Error::BadSchedule { token, reason, .. } = &err else {
                panic!("{input:?}: wrong error {err:?}");
            };
            assert_eq!(token, delay);
            assert!(reason.contains(phrase), "{input:?}: {reason}");
        }
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
        // Rates beyond u64 bytes per second are refused in one line, never wrapped: issue 18
        // found `3.5e38bit/s` overflowing (a panic in debug builds, a rate of 0 in release).
        ("daily 3.5e38bit/s", "3.5e38bit/s", 6, "too large"),
        (
            "Mon 08:00-09:00 high 3e38Tbit/s",
            "3e38Tbit/s",
            21,
            "too large",
        ),
        ("link 3.5e38bit/s; daily 50%", "3.5e38bit/s", 5, "too large"),
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

    proptest! {
        #[test]
        fn text_round_trips(t in throttle_strategy()) {
            let text = t.to_text();
            let back = RouteThrottle::parse(&text).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&back, &t, "text {}", text);
            prop_assert_eq!(back.to_text(), text);
        }
    }
}
