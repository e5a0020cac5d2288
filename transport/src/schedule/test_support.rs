//! Helpers the schedule's tests share: a parser that panics with the input, schedule
//! builders, and proptest strategies for valid throttles.

use super::model::{Allowed, Cell, DaySet, Rate, RouteThrottle, Schedule};
use jiff::Timestamp;
use jiff::civil::Weekday::{self, Friday, Monday, Saturday, Sunday, Thursday, Tuesday, Wednesday};
use jiff::tz::TimeZone;
use proptest::prelude::*;
use std::time::Duration;

pub(super) const WEEK: [Weekday; 7] = [
    Monday, Tuesday, Wednesday, Thursday, Friday, Saturday, Sunday,
];

pub(super) fn parse(text: &str) -> RouteThrottle {
    RouteThrottle::parse(text).unwrap_or_else(|e| panic!("{text:?} should parse: {e}"))
}

pub(super) fn fill(s: &mut Schedule, days: &[Weekday], hours: std::ops::Range<u8>, cell: Cell) {
    for &d in days {
        for h in hours.clone() {
            s.set(d, h, cell);
        }
    }
}

pub(super) fn ts(text: &str) -> Timestamp {
    text.parse().expect("test timestamp")
}

pub(super) fn stockholm() -> TimeZone {
    TimeZone::get("Europe/Stockholm").expect("the system tz database has Europe/Stockholm")
}

/// Every cell different, so that a cell tells which (day, hour) it came from.
pub(super) fn distinct() -> Schedule {
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

pub(super) fn rate_strategy() -> impl Strategy<Value = Rate> {
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

pub(super) fn cell_strategy() -> impl Strategy<Value = Cell> {
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
pub(super) fn throttle_strategy() -> impl Strategy<Value = RouteThrottle> {
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
