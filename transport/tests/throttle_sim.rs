//! The route throttle, simulated: a week of a changing schedule driven through one `Limiter`
//! by several streams, and the async `RouteLimiter` under tokio's paused clock.
//!
//! Expected values come from the schedule's configuration, looked up by plain arithmetic on
//! UTC hours (not through the limiter), and are compared with what the streams achieved.

use freight_transport::clock::{Clock, Reading, TokioClock};
use freight_transport::route_limiter::RouteLimiter;
use freight_transport::schedule::{Allowed, Cell, Priority, Rate, RouteThrottle};
use freight_transport::throttle::{Admit, Limiter, SLICE};
use jiff::Timestamp;
use jiff::civil::Weekday;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::sync::Arc;
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
    Reading::new(Duration::from_nanos(ns as u64), ts(ns))
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
fn simulate(
    limiter: &mut Limiter,
    priorities: &[Priority],
    from: i128,
    until: i128,
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
    let mut wakes: BinaryHeap<Reverse<(i128, usize)>> =
        (0..streams.len()).map(|i| Reverse((from, i))).collect();
    let mut wire_free = from;
    while let Some(Reverse((now, i))) = wakes.pop() {
        if now >= until {
            continue;
        }
        let s = &mut streams[i];
        if s.left == 0 {
            match limiter.admit(reading(now), s.priority) {
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
                    if let Some(r) = reopens {
                        assert!(r > now, "reopens {r} not after {now}");
                        wakes.push(Reverse((r, i)));
                    }
                    continue;
                }
            }
        }
        let start = limiter.reserve(reading(now), SLICE).start.as_nanos() as i128;
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
        wakes.push(Reverse((wire_free, i)));
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
