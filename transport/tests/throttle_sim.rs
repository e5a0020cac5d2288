//! The route throttle, simulated: a week of a changing schedule driven through one `Limiter`
//! by several streams, and the async `RouteLimiter` under tokio's paused clock; then the same
//! with the wall clock stepped mid-transfer (an hour and ten years, back and forth), which
//! must neither freeze a route nor let it burst, and must open and close windows at once.
//!
//! Expected values come from the schedule's configuration, looked up by plain arithmetic on
//! UTC hours (not through the limiter), and are compared with what the streams achieved.

use freight_transport::clock::{Clock, Reading, TokioClock};
use freight_transport::route_limiter::RouteLimiter;
use freight_transport::schedule::{Allowed, Cell, Priority, Rate, RouteThrottle};
use freight_transport::throttle::{Admit, Limiter, SLICE, SLICE_TIME};
use jiff::civil::Weekday;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const NS: i128 = 1_000_000_000;
const HOUR: i128 = 3600 * NS;
const WEEK: [Weekday; 7] = [
    Weekday::Monday,
    Weekday::Tuesday,
    Weekday::Wednesday,
    Weekday::Thursday,
    Weekday::Friday,
    Weekday::Saturday,
    Weekday::Sunday,
];
/// The declared link bandwidth of the simulated route.
const LINK: u64 = 1 << 20;
/// What the simulated network carries: the limit of unlimited cells.
const WIRE: u64 = 4 << 20;

/// Monday 2025-01-06 00:00 UTC, in ns.
fn monday() -> i128 {
    "2025-01-06T00:00:00Z"
        .parse::<Timestamp>()
        .expect("timestamp")
        .as_nanosecond()
}

fn ts(ns: i128) -> Timestamp {
    Timestamp::from_nanosecond(ns).expect("in range")
}

/// A reading of clocks that have run together since the epoch: monotonic time is the wall
/// time's nanoseconds since 1970.
fn reading(ns: i128) -> Reading {
    stepped_reading(ns, 0)
}

/// A reading at monotonic `ns` of a wall clock stepped by `offset` in all.
fn stepped_reading(ns: i128, offset: i128) -> Reading {
    Reading::new(Duration::from_nanos(ns as u64), ts(ns + offset))
}

fn throttle(text: &str) -> RouteThrottle {
    RouteThrottle::parse(text).unwrap_or_else(|e| panic!("{e}"))
}

/// The cell of hour `index` (hours since a Monday 00:00 UTC; wraps weekly), by arithmetic.
fn cell_of_hour(t: &RouteThrottle, index: i128) -> Cell {
    let index = index.rem_euclid(168);
    t.schedule()
        .cell(WEEK[(index / 24) as usize], (index % 24) as u8)
}

/// The configured rate of a cell in bytes per second, where a rate is configured.
fn configured_rate(cell: Cell) -> Option<f64> {
    match (cell.allowed, cell.rate) {
        (Allowed::Closed, _) | (_, Rate::Unlimited) => None,
        (_, Rate::BytesPerSec(r)) => Some(r as f64),
        (_, Rate::Percent(p)) => Some((LINK * u64::from(p) / 100) as f64),
        (_, Rate::Pulse { block, delay }) => {
            Some(block as f64 / (block as f64 / LINK as f64 + delay.as_secs_f64()))
        }
    }
}

/// What happened in the simulation.
#[derive(Debug, Clone, Copy)]
enum Event {
    /// A stream started a chunk.
    Admitted { t: i128, stream: usize },
    /// A stream was told to wait.
    Refused {
        t: i128,
        stream: usize,
        reopens: Option<i128>,
    },
    /// A slice went onto the wire.
    Sent {
        t: i128,
        stream: usize,
        chunk: u32,
        admitted: i128,
        bytes: u64,
    },
}

struct Stream {
    priority: Priority,
    chunk: u32,
    left: u64,
    admitted: i128,
    rng: u64,
}

/// Runs `priorities.len()` always-busy streams through `limiter` from `from` to `until`.
/// Each stream sends chunks of 12 to 20 slices of 64 KiB (about 1 MiB), asks `admit` before
/// each chunk (sleeping until `reopens` when refused), reserves each slice, and writes it
/// when the reservation allows and the wire is free; its next reservation is made when the
/// slice is out. `hook` sees every event and may change the limiter.
///
/// Times are monotonic; the wall clock runs with them (see [`reading`]) but is stepped by
/// `by` at each `(at, by)` of `steps`, as a clock that announces its steps: a stream waiting
/// for a window looks again at once. (Reservations are not re-timed here: a step that
/// changes the pacing is the async tests' business.)
fn simulate(
    limiter: &mut Limiter,
    priorities: &[Priority],
    from: i128,
    until: i128,
    steps: &[(i128, i128)],
    mut hook: impl FnMut(Event, &mut Limiter),
) {
    let mut streams: Vec<Stream> = priorities
        .iter()
        .enumerate()
        .map(|(i, &priority)| Stream {
            priority,
            chunk: 0,
            left: 0,
            admitted: 0,
            rng: 0x9E37_79B9_7F4A_7C15 ^ (i as u64 + 1),
        })
        .collect();
    // Wakes carry the stream's epoch; a step re-wakes waiting streams in a new epoch, and
    // the wakes of the old one are dropped.
    let mut epochs = vec![0u64; streams.len()];
    let mut waiting = vec![false; streams.len()];
    let mut wakes: BinaryHeap<Reverse<(i128, usize, u64)>> =
        (0..streams.len()).map(|i| Reverse((from, i, 0))).collect();
    let mut wire_free = from;
    let mut offset = 0;
    let mut steps = steps.iter().peekable();
    loop {
        // A step happens at its time, before any later wake.
        let next_wake = wakes.peek().map(|Reverse((t, ..))| *t);
        if let Some(&&(at, by)) = steps.peek()
            && at < until
            && next_wake.is_none_or(|t| at <= t)
        {
            steps.next();
            offset += by;
            for w in (0..streams.len()).filter(|&w| waiting[w]) {
                epochs[w] += 1;
                wakes.push(Reverse((at, w, epochs[w])));
            }
            continue;
        }
        let Some(Reverse((now, i, epoch))) = wakes.pop() else {
            break;
        };
        if now >= until {
            continue;
        }
        if epoch != epochs[i] {
            continue;
        }
        waiting[i] = false;
        let s = &mut streams[i];
        if s.left == 0 {
            match limiter.admit(stepped_reading(now, offset), s.priority) {
                Admit::Open => {
                    s.rng = s
                        .rng
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    s.chunk += 1;
                    s.left = SLICE * (12 + (s.rng >> 33) % 9);
                    s.admitted = now;
                    hook(Event::Admitted { t: now, stream: i }, limiter);
                }
                Admit::Closed { reopens } => {
                    let reopens = reopens.map(|r| r.as_nanosecond());
                    hook(
                        Event::Refused {
                            t: now,
                            stream: i,
                            reopens,
                        },
                        limiter,
                    );
                    waiting[i] = true;
                    if let Some(r) = reopens {
                        let r = r - offset;
                        assert!(r > now, "reopens {r} not after {now}");
                        wakes.push(Reverse((r, i, epochs[i])));
                    }
                    continue;
                }
            }
        }
        let start = limiter
            .reserve(stepped_reading(now, offset), SLICE)
            .start
            .as_nanos() as i128;
        assert!(start >= now, "a reservation starts before it was made");
        let sent = start.max(wire_free);
        wire_free = sent + i128::from(SLICE) * NS / i128::from(WIRE);
        let s = &mut streams[i];
        s.left -= SLICE;
        let event = Event::Sent {
            t: sent,
            stream: i,
            chunk: s.chunk,
            admitted: s.admitted,
            bytes: SLICE,
        };
        hook(event, limiter);
        wakes.push(Reverse((wire_free, i, epochs[i])));
    }
}

const WEEK_SCHEDULE: &str = "link 1MiB/s; daily 256KiB/s; \
    Mon-Fri 08:00-18:00 medium 50%; Mon-Fri 12:00-13:00 high 384KiB/s; Mon-Fri 18:00-20:00 25%; \
    Tue,Thu 02:00-04:00 closed; Wed 03:00-05:00 pulse 256KiB/2s; Sat 00:00-12:00 high 10%; \
    Sat 20:00-21:00 unlimited; Sun closed; Sun 10:00-11:00 768KiB/s; Sun 22:00-02:00 medium 200KB/s";

#[derive(Default)]
struct HourLog {
    /// Bytes sent from the hour's second second to its end.
    measured: u64,
    /// Bytes sent in the hour.
    total: u64,
    /// Send times, for pulse hours.
    sends: Vec<i128>,
    /// (stream, chunk) → when the chunk was admitted, for slices of streams the hour does
    /// not permit.
    tails: BTreeMap<(usize, u32), i128>,
}

#[test]
fn a_week_of_schedule_holds_every_cell() {
    let t = throttle(WEEK_SCHEDULE);
    let priorities = [
        Priority::High,
        Priority::Medium,
        Priority::Low,
        Priority::Medium,
    ];
    let start = monday();
    let mut hours: Vec<HourLog> = (0..168).map(|_| HourLog::default()).collect();
    let mut limiter = Limiter::new(t.clone());
    let mut admissions = 0u64;
    let mut refusals = 0u64;
    simulate(
        &mut limiter,
        &priorities,
        start,
        start + 168 * HOUR,
        &[],
        |event, _| match event {
            Event::Admitted { t: now, stream } => {
                // Nothing starts where its priority is not allowed.
                let cell = cell_of_hour(&t, (now - start) / HOUR);
                assert!(
                    cell.allowed.permits(priorities[stream]),
                    "admitted {:?} in {cell:?}",
                    priorities[stream]
                );
                admissions += 1;
            }
            Event::Refused {
                t: now,
                stream,
                reopens,
            } => {
                let p = priorities[stream];
                let hour = (now - start) / HOUR;
                assert!(
                    !cell_of_hour(&t, hour).allowed.permits(p),
                    "refused {p:?} in an open cell"
                );
                // The reopening is the start of the first later hour that permits p.
                let reopens = reopens.expect("every priority has an open cell in this schedule");
                assert_eq!((reopens - start) % HOUR, 0, "reopens off an hour boundary");
                let open = (reopens - start) / HOUR;
                assert!(cell_of_hour(&t, open).allowed.permits(p));
                for h in hour + 1..open {
                    assert!(
                        !cell_of_hour(&t, h).allowed.permits(p),
                        "hour {h} was open for {p:?} before {open}"
                    );
                }
                refusals += 1;
            }
            Event::Sent {
                t: now,
                stream,
                chunk,
                admitted,
                bytes,
            } => {
                let hour = ((now - start) / HOUR) as usize;
                let Some(log) = hours.get_mut(hour) else {
                    return;
                };
                log.total += bytes;
                if now >= start + hour as i128 * HOUR + NS {
                    log.measured += bytes;
                }
                if matches!(cell_of_hour(&t, hour as i128).rate, Rate::Pulse { .. }) {
                    log.sends.push(now);
                }
                if !cell_of_hour(&t, hour as i128)
                    .allowed
                    .permits(priorities[stream])
                {
                    log.tails.insert((stream, chunk), admitted);
                }
            }
        },
    );
    assert!(
        admissions > 10_000 && refusals > 10,
        "{admissions} admissions, {refusals} refusals"
    );

    let mut checked = 0;
    let mut pulse_blocks = 0;
    for (h, log) in hours.iter().enumerate() {
        let cell = cell_of_hour(&t, h as i128);
        let hour_start = start + h as i128 * HOUR;
        let name = format!("{:?} {:02}:00 ({cell})", WEEK[h / 24], h % 24);
        // Limited open cells: the achieved rate over the hour less its first second.
        if let Some(rate) = configured_rate(cell) {
            let achieved = log.measured as f64 / 3599.0;
            assert!(
                (achieved / rate - 1.0).abs() <= 0.02,
                "{name}: {achieved:.0} B/s, configured {rate:.0}"
            );
            checked += 1;
        }
        if cell.allowed != Allowed::Closed && cell.rate == Rate::Unlimited {
            // Unlimited means the wire's speed, not the link's.
            assert!(
                log.total > 3 * LINK * 3600,
                "{name}: only {} bytes",
                log.total
            );
        }
        // Tails: only where the previous hour permitted the stream (a closing boundary), at
        // most one chunk per stream, each admitted in the previous hour.
        let mut per_stream = BTreeMap::<usize, usize>::new();
        for (&(stream, _), &admitted) in &log.tails {
            let p = priorities[stream];
            assert!(
                cell_of_hour(&t, h as i128 - 1).allowed.permits(p),
                "{name}: {p:?} sends without a closing boundary"
            );
            assert!(
                (hour_start - HOUR..hour_start).contains(&admitted),
                "{name}: {p:?} chunk admitted at {admitted}"
            );
            *per_stream.entry(stream).or_default() += 1;
        }
        for (stream, chunks) in per_stream {
            assert_eq!(
                chunks, 1,
                "{name}: stream {stream} sent {chunks} chunks past the close"
            );
        }
        // Pulse: slices 62.5 ms apart (64 KiB at the link's 1 MiB/s), and a pause of the
        // delay after every 256 KiB block (4 slices).
        if let Rate::Pulse { block, delay } = cell.rate {
            let slice = i128::from(SLICE) * NS / i128::from(LINK);
            let pause = slice + delay.as_nanos() as i128;
            let gaps: Vec<i128> = log.sends.windows(2).map(|w| w[1] - w[0]).collect();
            // From the first pause on (the first block may have begun in the previous hour).
            let first = gaps.iter().position(|&g| g == pause).expect("a pause");
            let mut in_block = 0;
            for &gap in &gaps[first + 1..] {
                if gap == pause {
                    assert_eq!(
                        in_block + 1,
                        block / SLICE,
                        "{name}: block of {} slices",
                        in_block + 1
                    );
                    in_block = 0;
                    pulse_blocks += 1;
                } else {
                    assert_eq!(gap, slice, "{name}: gap of {gap} ns inside a block");
                    in_block += 1;
                }
            }
        }
    }
    // Every hour but Sunday's 21 closed ones, Tue and Thu 02:00-04:00, and Sat 20:00.
    assert_eq!(checked, 168 - 21 - 4 - 1, "limited open cells checked");
    assert!(pulse_blocks > 3000, "{pulse_blocks} pulse blocks");
}

#[test]
fn set_throttle_mid_cell_takes_effect_within_a_second() {
    let start = monday();
    let up = start + 30 * 60 * NS + NS / 2;
    let down = start + 40 * 60 * NS + NS / 4;
    let mut limiter = Limiter::new(throttle("daily 256KiB/s"));
    let mut sends = Vec::new();
    let (mut raised, mut lowered) = (false, false);
    let priorities = [Priority::Low, Priority::Medium, Priority::High];
    simulate(
        &mut limiter,
        &priorities,
        start,
        start + 3600 * NS,
        &[],
        |event, limiter| {
            if let Event::Sent { t, bytes, .. } = event {
                // The change happens at the first event at or after its time.
                if t >= up && !raised {
                    limiter.set_throttle(throttle("daily 1MiB/s"));
                    raised = true;
                }
                if t >= down && !lowered {
                    limiter.set_throttle(throttle("daily 128KiB/s"));
                    lowered = true;
                }
                sends.push((t, bytes));
            }
        },
    );
    let rate = |from: i128, secs: i128| {
        let bytes: u64 = sends
            .iter()
            .filter(|(t, _)| (from..from + secs * NS).contains(t))
            .map(|(_, b)| b)
            .sum();
        bytes as f64 / secs as f64
    };
    let within = |got: f64, want: u64| (got / want as f64 - 1.0).abs() <= 0.02;
    assert!(
        within(rate(up - 60 * NS, 60), 256 << 10),
        "before: {}",
        rate(up - 60 * NS, 60)
    );
    assert!(
        within(rate(up + NS, 60), 1 << 20),
        "after raising: {}",
        rate(up + NS, 60)
    );
    assert!(
        within(rate(down + NS, 120), 128 << 10),
        "after lowering: {}",
        rate(down + NS, 120)
    );
}

/// Priorities, for the async tests.
const MEDIUM: Priority = Priority::Medium;

#[tokio::test(start_paused = true)]
async fn two_tasks_share_the_route_rate() {
    let clock = Arc::new(TokioClock::starting_at(ts(monday())));
    let route = RouteLimiter::new(throttle("daily 1MiB/s"), clock.clone());
    let begin = tokio::time::Instant::now();
    let run_for = Duration::from_secs(120);
    let task = |route: RouteLimiter| {
        tokio::spawn(async move {
            let mut sent = 0u64;
            while begin.elapsed() < run_for {
                route.admit(MEDIUM).await;
                for _ in 0..16 {
                    route.pace(SLICE).await;
                    sent += SLICE;
                }
            }
            sent
        })
    };
    let (a, b) = (task(route.clone()), task(route.clone()));
    let (a, b) = (a.await.expect("task a"), b.await.expect("task b"));
    let elapsed = begin.elapsed().as_secs_f64();
    let rate = (a + b) as f64 / elapsed;
    assert!(
        (rate / f64::from(1u32 << 20) - 1.0).abs() <= 0.02,
        "{rate:.0} B/s over {elapsed} s"
    );
    // Both got a real share.
    assert!(a.min(b) * 3 > a.max(b), "shares {a} and {b}");
    assert_eq!(route.stats().bytes_reserved, a + b);
    // The clock moved with tokio's time.
    let wall = clock.read().wall.as_nanosecond() - monday();
    assert!((wall - (elapsed * 1e9) as i128).abs() < 1_000_000);
}

#[tokio::test(start_paused = true)]
async fn a_closed_window_blocks_until_it_reopens() {
    // Monday 09:30; the window opens for all at 10:00 and for low only on Tuesday.
    let clock = Arc::new(TokioClock::starting_at(ts(monday()
        + 9 * HOUR
        + 30 * 60 * NS)));
    let route = RouteLimiter::new(
        throttle("daily closed; Mon 10:00-11:00 medium; Tue 00:00-01:00 all"),
        clock.clone(),
    );
    route.admit(Priority::High).await;
    assert_eq!(clock.read().wall, ts(monday() + 10 * HOUR));
    // High and medium go at once now; low waits for Tuesday.
    route.admit(Priority::Medium).await;
    assert_eq!(clock.read().wall, ts(monday() + 10 * HOUR));
    route.admit(Priority::Low).await;
    assert_eq!(clock.read().wall, ts(monday() + 24 * HOUR));
    // A week of closed schedule passes in no real time: the next window for high is next
    // Monday 10:00.
    tokio::time::sleep(Duration::from_secs(3600)).await;
    let real = std::time::Instant::now();
    route.admit(Priority::High).await;
    assert_eq!(clock.read().wall, ts(monday() + (168 + 10) * HOUR));
    assert!(real.elapsed() < Duration::from_secs(5));
}

#[tokio::test(start_paused = true)]
async fn a_schedule_change_wakes_waiting_transfers() {
    // With a clock that announces its steps the waiter sleeps until a change; with one that
    // does not (like the system's) it looks every SLICE_TIME. Either way the change itself
    // wakes it: 5.55 s is not a multiple of SLICE_TIME.
    for announced in [true, false] {
        let clock = TokioClock::starting_at(ts(monday()));
        let clock = Arc::new(if announced {
            clock
        } else {
            clock.unannounced()
        });
        let route = RouteLimiter::new(throttle("daily closed"), clock.clone());
        let waiter = {
            let (route, clock) = (route.clone(), clock.clone());
            tokio::spawn(async move {
                route.admit(Priority::Low).await;
                clock.read().wall
            })
        };
        tokio::time::sleep(Duration::from_millis(5550)).await;
        assert!(!waiter.is_finished());
        route.set_throttle(throttle("daily unlimited"));
        let admitted = waiter.await.expect("waiter");
        assert_eq!(
            admitted,
            ts(monday() + 5550 * 1_000_000),
            "announced {announced}"
        );
    }
}

#[test]
fn dst_days_in_stockholm_map_instants_to_local_hour_cells() {
    // Closed from 02:00 to 03:00 local on Sundays, and high only from 01:00 to 02:00.
    let t = throttle("tz Europe/Stockholm; Sun 02:00-03:00 closed; Sun 01:00-02:00 high");
    let mut l = Limiter::new(t);
    let at = |s: &str| reading(s.parse::<Timestamp>().expect("timestamp").as_nanosecond());
    let low = Priority::Low;
    // 2025-03-30, the last Sunday of March: at 01:00 UTC 02:00 CET becomes 03:00 CEST, so
    // the closed hour never happens. 00:30 UTC is 01:30 CET (high only), 01:00 UTC is
    // 03:00 CEST (open).
    assert_eq!(
        l.admit(at("2025-03-30T00:30:00Z"), low),
        Admit::Closed {
            reopens: Some(at("2025-03-30T01:00:00Z").wall)
        }
    );
    assert_eq!(
        l.admit(at("2025-03-30T00:30:00Z"), Priority::High),
        Admit::Open
    );
    assert_eq!(l.admit(at("2025-03-30T01:00:00Z"), low), Admit::Open);
    assert_eq!(l.admit(at("2025-03-29T23:59:59Z"), low), Admit::Open);
    // 2025-10-26, the last Sunday of October: at 01:00 UTC 03:00 CEST becomes 02:00 CET, so
    // the closed hour happens twice: 00:00-02:00 UTC.
    assert_eq!(
        l.admit(at("2025-10-25T23:30:00Z"), low),
        Admit::Closed {
            reopens: Some(at("2025-10-26T02:00:00Z").wall)
        }
    );
    assert_eq!(
        l.admit(at("2025-10-26T00:00:00Z"), Priority::High),
        Admit::Closed {
            reopens: Some(at("2025-10-26T02:00:00Z").wall)
        }
    );
    assert_eq!(
        l.admit(at("2025-10-26T01:59:59Z"), Priority::High),
        Admit::Closed {
            reopens: Some(at("2025-10-26T02:00:00Z").wall)
        }
    );
    assert_eq!(l.admit(at("2025-10-26T02:00:00Z"), low), Admit::Open);
    assert_eq!(l.admit(at("2025-10-25T22:59:59Z"), low), Admit::Open);
    // A winter Sunday (CET, UTC+1): 02:00-03:00 local is 01:00-02:00 UTC.
    assert_eq!(
        l.admit(at("2025-01-12T01:00:00Z"), Priority::High),
        Admit::Closed {
            reopens: Some(at("2025-01-12T02:00:00Z").wall)
        }
    );
    assert_eq!(
        l.admit(at("2025-01-12T00:59:59Z"), Priority::High),
        Admit::Open
    );
}

// ---------------------------------------------------------------------------------------------
// Steps of the wall clock (issue 18): pacing is monotonic, the schedule follows the wall.

/// Ten years on the wall clock from Monday 2025-01-06: 3,653 days (three leap days), which
/// lands on Tuesday 2015-01-06 going back and Sunday 2035-01-07 going forward.
const TEN_YEARS: i128 = 3653 * 24 * HOUR;

/// The cell of wall time `wall` (ns, UTC), by the calendar rather than through the limiter.
fn cell_at_wall(t: &RouteThrottle, wall: i128) -> Cell {
    let local = ts(wall).to_zoned(TimeZone::UTC);
    t.schedule().cell(local.weekday(), local.hour() as u8)
}

#[test]
fn pulse_mode_and_priorities_hold_across_wall_clock_steps() {
    use Priority::{High, Low, Medium};
    let t = throttle(
        "link 1MiB/s; daily pulse 256KiB/2s; Mon 10:00-12:00 high pulse 256KiB/2s; \
         Tue medium pulse 256KiB/2s",
    );
    let priorities = [High, Medium, Low];
    let start = monday() + 9 * HOUR;
    let min = 60 * NS;
    // Monday 09:05 -> 10:05 (high only), back to 09:10 (all), to Tuesday 2015 (medium and
    // high), back to Monday 2025 (all), on to Sunday 2035 (all).
    let steps = [
        (start + 5 * min, HOUR),
        (start + 10 * min, -HOUR),
        (start + 15 * min, -TEN_YEARS),
        (start + 20 * min, TEN_YEARS),
        (start + 25 * min, TEN_YEARS),
    ];
    let permitted = [
        [true; 3],
        [true, false, false],
        [true; 3],
        [true, true, false],
        [true; 3],
        [true; 3],
    ];
    let interval = |mono: i128| steps.iter().filter(|(at, _)| *at <= mono).count();
    let wall = |mono: i128| {
        mono + steps[..interval(mono)]
            .iter()
            .map(|(_, by)| by)
            .sum::<i128>()
    };
    let mut admissions: BTreeMap<(usize, usize), Vec<i128>> = BTreeMap::new();
    let mut sends: Vec<(i128, usize, u32, i128)> = Vec::new();
    let mut limiter = Limiter::new(t.clone());
    simulate(
        &mut limiter,
        &priorities,
        start,
        start + 30 * min,
        &steps,
        |event, _| match event {
            Event::Admitted { t: now, stream } => {
                let cell = cell_at_wall(&t, wall(now));
                assert!(
                    cell.allowed.permits(priorities[stream]),
                    "{:?} admitted in {cell} at {}",
                    priorities[stream],
                    ts(wall(now))
                );
                admissions
                    .entry((interval(now), stream))
                    .or_default()
                    .push(now);
            }
            Event::Sent {
                t: now,
                stream,
                chunk,
                admitted,
                ..
            } => sends.push((now, stream, chunk, admitted)),
            Event::Refused { .. } => {}
        },
    );
    assert_eq!(limiter.stats().wall_steps, 5);
    for (k, allowed) in permitted.iter().enumerate() {
        let from = if k == 0 { start } else { steps[k - 1].0 };
        for (stream, &allowed) in allowed.iter().enumerate() {
            let admitted = admissions.get(&(k, stream));
            let p = priorities[stream];
            assert_eq!(admitted.is_some(), allowed, "{p:?} after step {k}");
            // A window a step opens admits at once: the waiting stream is woken by the step.
            if let Some(first) = admitted.and_then(|a| a.first())
                && k > 0
                && !permitted[k - 1][stream]
            {
                assert_eq!(*first, from, "{p:?} after step {k}");
            }
            // A window a step closes stops admission at once: what the stream still sends is
            // the tail of one chunk admitted before the step.
            if !allowed {
                let to = steps.get(k).map_or(i128::MAX, |s| s.0);
                let tails: Vec<_> = sends
                    .iter()
                    .filter(|(t, s, ..)| *s == stream && (from..to).contains(t))
                    .map(|&(_, _, chunk, admitted)| (chunk, admitted))
                    .collect();
                assert!(
                    tails.iter().all(|&(c, a)| c == tails[0].0 && a < from),
                    "{p:?} after step {k}: {tails:?}"
                );
            }
        }
    }
    // The pulse pattern runs on, step or no step: from the first pause on, slices 62.5 ms
    // apart (64 KiB at the link's 1 MiB/s) in blocks of four, and a pause of 2 s after each.
    sends.sort();
    let times: Vec<i128> = sends.iter().map(|s| s.0).collect();
    let slice = i128::from(SLICE) * NS / i128::from(LINK);
    let pause = slice + 2 * NS;
    let gaps: Vec<i128> = times.windows(2).map(|w| w[1] - w[0]).collect();
    let first = gaps.iter().position(|&g| g == pause).expect("a pause");
    let mut in_block = 0;
    let mut blocks = 0;
    for &gap in &gaps[first + 1..] {
        if gap == pause {
            assert_eq!(in_block + 1, 4, "a block of {} slices", in_block + 1);
            in_block = 0;
            blocks += 1;
        } else {
            assert_eq!(gap, slice, "a gap of {gap} ns inside a block");
            in_block += 1;
        }
    }
    assert!(blocks > 750, "{blocks} blocks");
    // So the rate holds: 20 blocks in every 45 s (20 cycles of 2.25 s), within a slice.
    let mut from = times[first];
    while from + 45 * NS <= start + 30 * min {
        let n = times
            .iter()
            .filter(|t| (from..from + 45 * NS).contains(*t))
            .count();
        assert!(n.abs_diff(80) <= 1, "{n} slices from {from}");
        from += 15 * NS;
    }
}

/// What streams did through a `RouteLimiter`, in monotonic time since they started.
#[derive(Debug, Default)]
struct Trace {
    /// When a slice was let go, and its bytes.
    sends: Vec<(Duration, u64)>,
    /// When a chunk was admitted, and by which stream.
    admissions: Vec<(Duration, usize)>,
}

impl Trace {
    /// Bytes let go in `[from, to)`.
    fn bytes(&self, from: Duration, to: Duration) -> u64 {
        self.sends
            .iter()
            .filter(|(t, _)| (from..to).contains(t))
            .map(|(_, b)| b)
            .sum()
    }

    /// The longest time in `[from, to)` with no slice let go.
    fn longest_silence(&self, from: Duration, to: Duration) -> Duration {
        let mut times: Vec<Duration> = self
            .sends
            .iter()
            .map(|s| s.0)
            .filter(|t| (from..to).contains(t))
            .collect();
        times.sort();
        let inner = times.windows(2).map(|w| w[1] - w[0]);
        let edges = [
            times.first().map_or(to - from, |t| *t - from),
            times.last().map_or(Duration::ZERO, |t| to - *t),
        ];
        inner.chain(edges).max().unwrap_or(to - from)
    }

    /// The first admission at or after `from`.
    fn first_admission(&self, from: Duration) -> Option<Duration> {
        self.admissions
            .iter()
            .map(|a| a.0)
            .filter(|t| *t >= from)
            .min()
    }
}

/// Runs one always-busy stream per priority through `route` for `run_for` of tokio's (paused)
/// time, each admitting chunks of `chunk` slices and pacing every slice, as push sessions
/// do; steps the wall clock by `by` at each `(at, by)` of `steps`. `clock` must be `route`'s,
/// made just before (its monotonic time is the trace's).
async fn run_route(
    route: &RouteLimiter,
    clock: &Arc<TokioClock>,
    priorities: &[Priority],
    chunk: usize,
    run_for: Duration,
    steps: &[(Duration, SignedDuration)],
) -> Trace {
    let trace = Arc::new(Mutex::new(Trace::default()));
    let begin = tokio::time::Instant::now();
    let origin = clock.read().mono;
    let mut tasks = Vec::new();
    for (i, &p) in priorities.iter().enumerate() {
        let (route, clock, trace) = (route.clone(), clock.clone(), trace.clone());
        tasks.push(tokio::spawn(async move {
            let since = |clock: &TokioClock| clock.read().mono - origin;
            let work = async {
                loop {
                    route.admit(p).await;
                    let now = since(&clock);
                    trace.lock().expect("trace").admissions.push((now, i));
                    for _ in 0..chunk {
                        route.pace(SLICE).await;
                        let now = since(&clock);
                        trace.lock().expect("trace").sends.push((now, SLICE));
                    }
                }
            };
            // The streams never end on their own: the run does.
            let _ = tokio::time::timeout_at(begin + run_for, work).await;
        }));
    }
    for &(at, by) in steps {
        tokio::time::sleep_until(begin + at).await;
        clock.step(by);
    }
    for task in tasks {
        task.await.expect("stream");
    }
    std::mem::take(&mut *trace.lock().expect("trace"))
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// A clock on tokio's time from Monday 2025-01-06 plus `offset`, announcing its steps or not
/// (then the route limiter finds them by reading, as with the system's clock).
fn tokio_clock(offset: i128, announced: bool) -> Arc<TokioClock> {
    let clock = TokioClock::starting_at(ts(monday() + offset));
    Arc::new(if announced {
        clock
    } else {
        clock.unannounced()
    })
}

#[tokio::test(start_paused = true)]
async fn a_stepped_wall_clock_neither_freezes_nor_bursts_a_route() {
    let rate = 1u64 << 20;
    let hour = SignedDuration::from_hours(1);
    let ten_years = SignedDuration::from_nanos(TEN_YEARS as i64);
    let steps = [
        (secs(30), -hour),
        (secs(60), hour),
        (secs(90), -ten_years),
        (secs(120), ten_years),
        (secs(150), ten_years),
    ];
    for announced in [true, false] {
        let clock = tokio_clock(9 * HOUR + 30 * 60 * NS, announced);
        let route = RouteLimiter::new(throttle("daily 1MiB/s"), clock.clone());
        let trace = run_route(&route, &clock, &[MEDIUM; 3], 16, secs(180), &steps).await;
        assert_eq!(route.stats().wall_steps, 5, "announced {announced}");
        // Bytes per 10 s of monotonic time, across every step: within 2 % of the rate.
        for s in 1..=170 {
            let bytes = trace.bytes(secs(s), secs(s + 10));
            let error = bytes as f64 / (10 * rate) as f64 - 1.0;
            assert!(
                error.abs() <= 0.02,
                "announced {announced}: {bytes} bytes in 10 s from {s} s"
            );
        }
        // Per second, never a slice more (a burst) or less (a freeze) than the rate.
        for s in 1..180 {
            let bytes = trace.bytes(secs(s), secs(s + 1));
            assert!(
                bytes.abs_diff(rate) <= SLICE,
                "announced {announced}: {bytes} bytes in second {s}"
            );
        }
        // And never a silence of more than one SLICE_TIME (slices go every 62.5 ms).
        let silence = trace.longest_silence(secs(0), secs(180));
        assert!(
            silence <= SLICE_TIME,
            "announced {announced}: silent for {silence:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn steps_into_a_closed_window_stop_admission_and_steps_out_admit_within_a_slice_time() {
    // From Monday 09:30, every 20 s: +1 h into a closed hour, back, -10 years to a closed
    // Tuesday, +10 years back, +10 years to a closed Sunday, back.
    let hour = SignedDuration::from_hours(1);
    let ten_years = SignedDuration::from_nanos(TEN_YEARS as i64);
    let steps = [
        (secs(20), hour),
        (secs(40), -hour),
        (secs(60), -ten_years),
        (secs(80), ten_years),
        (secs(100), ten_years),
        (secs(120), -ten_years),
    ];
    let closes = [true, false, true, false, true, false];
    let rate = 1u64 << 20;
    let priorities = [Priority::High, Priority::Medium, Priority::Low];
    for announced in [true, false] {
        let clock = tokio_clock(9 * HOUR + 30 * 60 * NS, announced);
        let route = RouteLimiter::new(
            throttle("daily 1MiB/s; Mon 10:00-11:00 closed; Tue closed; Sun closed"),
            clock.clone(),
        );
        // Chunks of 4 slices (256 KiB, a quarter of a second at the rate).
        let trace = run_route(&route, &clock, &priorities, 4, secs(140), &steps).await;
        for (k, &(at, _)) in steps.iter().enumerate() {
            let next = steps.get(k + 1).map_or(secs(140), |s| s.0);
            let name = format!("announced {announced}, step {k} at {at:?}");
            if closes[k] {
                // Nothing admitted after the step; what is still sent is at most the
                // tail of each stream's chunk (so less than a second at the rate).
                assert_eq!(
                    trace
                        .first_admission(at + Duration::from_nanos(1))
                        .filter(|t| *t < next),
                    None,
                    "{name}"
                );
                let tails = trace.bytes(at, next);
                assert!(
                    tails <= 3 * 4 * SLICE,
                    "{name}: {tails} bytes after the close"
                );
                assert_eq!(trace.bytes(at + secs(1), next), 0, "{name}");
            } else {
                // Admitted within one SLICE_TIME (at once when the step is announced), and
                // at the rate from then on.
                let first = trace.first_admission(at).expect("admitted again");
                assert!(
                    first - at <= SLICE_TIME,
                    "{name}: admitted after {:?}",
                    first - at
                );
                if announced {
                    assert_eq!(first, at, "{name}");
                }
                let bytes = trace.bytes(at + secs(1), next - secs(1));
                let error = bytes as f64 / (18 * rate) as f64 - 1.0;
                assert!(error.abs() <= 0.02, "{name}: {bytes} bytes in 18 s");
            }
        }
        assert_eq!(route.stats().wall_steps, 6, "announced {announced}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_step_into_another_rate_applies_within_a_slice_time() {
    // At 16 KiB/s a 64 KiB slice waits 4 s; a step into the 1 MiB/s hour must not leave the
    // route waiting those seconds out, and the step back must slow it down at once.
    let hour = SignedDuration::from_hours(1);
    let steps = [(secs(20), hour), (secs(40), -hour)];
    let (slow, fast) = (16u64 << 10, 1u64 << 20);
    for announced in [true, false] {
        let clock = tokio_clock(9 * HOUR + 30 * 60 * NS, announced);
        let route = RouteLimiter::new(
            throttle("daily 16KiB/s; Mon 10:00-11:00 1MiB/s"),
            clock.clone(),
        );
        let trace = run_route(&route, &clock, &[MEDIUM; 3], 16, secs(640), &steps).await;
        // Silent at most until the waiting reservations are re-timed (SLICE_TIME, at once
        // when the step is announced), then for what is left of the slice in progress,
        // timed at the new rate (62.5 ms at most): not the 4 s of the old one.
        let silence = trace.longest_silence(secs(20), secs(40));
        assert!(
            silence <= SLICE_TIME + Duration::from_nanos(SLICE * 1_000_000_000 / fast),
            "announced {announced}: silent for {silence:?} after the step"
        );
        let bytes = trace.bytes(secs(21), secs(39));
        let error = bytes as f64 / (18 * fast) as f64 - 1.0;
        assert!(
            error.abs() <= 0.02,
            "announced {announced}: {bytes} bytes in 18 s fast"
        );
        let bytes = trace.bytes(secs(40), secs(640));
        let error = bytes as f64 / (600 * slow) as f64 - 1.0;
        assert!(
            error.abs() <= 0.02,
            "announced {announced}: {bytes} bytes in 600 s slow"
        );
    }
}
