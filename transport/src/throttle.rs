//! The route limiter: one per route (address or DP), shared by all the route's streams and
//! sessions. It decides when a chunk may start ([`Limiter::admit`]) and when each slice of
//! bytes may go out ([`Limiter::reserve`]) under the route's [`RouteThrottle`].
//!
//! Pure and deterministic: no clock, no sleeping, no async. Every call takes a [`Reading`] of
//! both clocks; [`crate::route_limiter::RouteLimiter`] is the thin async shell that takes the
//! readings and sleeps.
//!
//! # Two clocks
//! Only the schedule is read on the wall clock ([`Reading::wall`]): which cell (hour of the
//! week in the route's time zone) is in force, so whether a priority may start and at what
//! rate. Everything else is monotonic ([`Reading::mono`]): the GCRA state, burst credit,
//! pulse blocks and pauses, and the instants the limiter answers with. So a step of the wall
//! clock (an NTP correction of -1 h, a VM resumed with a clock ten years off) changes at most
//! which cell is in force: it can neither freeze the route (a debt kept in wall time would
//! last as long as the step back) nor let it burst (nor forgive a debt on a step forward).
//!
//! The cell is found from each reading's wall time, cached for the span of instants it covers;
//! a step out of the span is a miss, so the new cell is read at once. A reading whose wall
//! time disagrees with the monotonic time elapsed since the previous reading by more than
//! [`STEP_TOLERANCE`] is a step: it is counted ([`LimiterStats::wall_steps`]) and reported
//! once ([`Limiter::take_step`]) for the shell to log. Nothing here needs repair after one,
//! because nothing here is kept in wall time.
//!
//! # Admission
//! A transfer calls `admit(now, priority)` before each chunk. In a cell that does not permit
//! the priority the answer is [`Admit::Closed`] with the start of the next cell that does
//! (searching eight days ahead), a wall time. So at a closing window a transfer stops after
//! its current chunk and resumes with the next one when the window opens.
//!
//! # Pacing
//! Virtual scheduling (GCRA) on the monotonic clock. The limiter keeps `next_free`, the
//! instant by which everything reserved so far has gone out at the cell's rate.
//! `reserve(now, n)` takes `start = max(next_free, now - τ)`, sets
//! `next_free = start + n / rate`, and returns `max(start, now)`: the caller waits until then
//! and sends the `n` bytes.
//! - The long-run rate is exact: while busy, `next_free` moves by exactly `n / rate` per
//!   reservation (rounded up to the nanosecond, so never faster).
//! - Bursts are small. The burst allowance is `τ = min(10 ms, 64 KiB / rate)`, i.e. at most
//!   `min(rate × 10 ms, 64 KiB)` of credit. So an idle limiter lets one slice (callers reserve
//!   at most [`SLICE`] = 64 KiB at a time) plus that credit go at once, and no more however
//!   long it was idle. 10 ms is below any loss-recovery timescale that matters on a WAN.
//!   The 64 KiB cap keeps the extra burst at one slice on fast links.
//! - A cell's rate applies to reservations made in it. When the pacing differs from the
//!   previous reservation's (a new cell, reached as time passes or by a wall-clock step, or
//!   [`Limiter::set_throttle`]), the debt still outstanding (`next_free - now`, less any pulse
//!   pause still to come) is turned back into bytes at the old rate and timed again at the
//!   new one. So a new rate holds from the next reservation, within one slice.
//! - A reservation already waiting when the pacing changes is timed again by
//!   [`Limiter::retime`]: it keeps its place in the route's queue, and the bytes from it to
//!   the end of the queue are timed at the new pacing. The shell calls it at least every
//!   [`SLICE_TIME`] while a reservation waits, so no wait timed under a cell that is no
//!   longer in force (a slow rate's slice, a pulse pause) outlasts the change by more than
//!   [`SLICE_TIME`]: a step can neither freeze the route nor hold it to the old cell.
//! - A percent is of the declared link bandwidth, rounded down to a whole byte per second.
//! - In a closed cell (the tail of a chunk that started before the close) reservations use
//!   the pacing of the last open cell before it.
//! - Unlimited: `reserve` returns `now` and leaves no debt.
//! - Pulse: reservations are paced at the link bandwidth if the route declares one, else not at
//!   all. Once `block` bytes have been reserved, the next reservation waits until `delay` after
//!   the block ended: the block ends at `next_free` when paced, or at its last reservation's
//!   start when not; so does every other reservation made during the pause. A slice that
//!   crosses the block's end is sent whole and its excess counts toward the next block. A
//!   quiet spell of at least `delay` ends a partial block.

use crate::clock::Reading;
use crate::schedule::{Allowed, CellSpan, Priority, Rate, RouteThrottle};
use jiff::{SignedDuration, Timestamp};
use std::time::Duration;

/// The largest reservation callers should make: slices of at most this many bytes keep bursts
/// small and let a rate change apply within one slice.
pub const SLICE: u64 = 64 * 1024;
/// The pacing quantum, as time: the longest the route limiter sleeps before it reads its
/// clocks again while a reservation waits (a slow rate's slice, a pulse pause), or while a
/// closed window waits on a wall clock that does not announce its steps. So a new cell, a
/// wall-clock step or a new throttle applies within `SLICE_TIME`, and a wait that no longer
/// applies holds a route no longer than that. 100 ms: a few cheap wake-ups a second for a
/// waiting stream, and short next to any schedule's hour.
pub const SLICE_TIME: Duration = Duration::from_millis(100);
/// Longest burst allowance, as time.
pub const BURST_TIME: Duration = Duration::from_millis(10);
/// Largest burst allowance, in bytes.
pub const BURST_BYTES: u64 = 64 * 1024;
/// How far the wall clock may move away from the monotonic clock between two readings before
/// it counts as a step. Well above the jitter of taking the two readings, and above NTP's
/// slewing (at most 0.5 ms per second) between the calls of a busy route; a long idle spell
/// slewed by more than this counts a step, which costs nothing but a log line.
pub const STEP_TOLERANCE: Duration = Duration::from_secs(1);

const NS_PER_SEC: u128 = 1_000_000_000;

/// Answer of [`Limiter::admit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// The current cell permits the priority: send the next chunk.
    Open,
    /// It does not: wait.
    Closed {
        /// Start of the next cell that permits the priority, within eight days; `None` if
        /// the schedule never does.
        reopens: Option<Timestamp>,
    },
}

/// How reservations are paced, once a cell's [`Rate`] is resolved against the route's link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pacing {
    /// No pacing.
    Unlimited,
    /// Bytes per second (at least 1).
    Rate(u64),
    /// Pulse mode.
    Pulse {
        /// Bytes per block.
        block: u64,
        /// Pause after each block.
        delay: Duration,
        /// Pacing within a block: the link bandwidth, if declared.
        rate: Option<u64>,
    },
}

impl Pacing {
    /// The rate at which bytes are paced, if they are.
    pub fn rate(self) -> Option<u64> {
        match self {
            Pacing::Unlimited => None,
            Pacing::Rate(r) => Some(r),
            Pacing::Pulse { rate, .. } => rate,
        }
    }
}

impl RouteThrottle {
    /// The pacing of `rate` on this route: percents resolved against the link bandwidth.
    pub fn pacing(&self, rate: Rate) -> Pacing {
        match rate {
            Rate::Unlimited => Pacing::Unlimited,
            Rate::Percent(p) => match self.link_bandwidth() {
                Some(link) => {
                    let r = u128::from(link) * u128::from(p) / 100;
                    Pacing::Rate(u64::try_from(r).unwrap_or(u64::MAX).max(1))
                }
                // A RouteThrottle never holds a percent without a link; stay safe anyway.
                None => Pacing::Unlimited,
            },
            Rate::BytesPerSec(r) => Pacing::Rate(r.max(1)),
            Rate::Pulse { block, delay } => Pacing::Pulse {
                block: block.max(1),
                delay,
                rate: self.link_bandwidth(),
            },
        }
    }
}

/// Counters for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimiterStats {
    /// Bytes reserved (sent or about to be) since the limiter was made.
    pub bytes_reserved: u64,
    /// Calls to [`Limiter::reserve`].
    pub reservations: u64,
    /// Calls to [`Limiter::admit`] that answered closed.
    pub refusals: u64,
    /// Steps of the wall clock seen (see [`STEP_TOLERANCE`]).
    pub wall_steps: u64,
}

/// Answer of [`Limiter::reserve`]; hand it back to [`Limiter::retime`] while it waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation {
    /// When the bytes may go, on the monotonic clock: the reading's `mono` or later.
    pub start: Duration,
    /// Bytes reserved on the route before these (wrapping): its place in the route's queue.
    position: u64,
    /// The pacing generation it was timed in.
    generation: u64,
}

/// The cell `now` falls in, cached until the next boundary, with its pacing.
#[derive(Debug, Clone, Copy)]
struct Current {
    span: CellSpan,
    pacing: Pacing,
}

/// One route's limiter; see the module documentation.
#[derive(Debug, Clone)]
pub struct Limiter {
    throttle: RouteThrottle,
    current: Option<Current>,
    /// Pacing of the last reservation.
    pacing: Pacing,
    /// Counts the changes of `pacing`: a reservation of an older generation is re-timed.
    generation: u64,
    /// Bytes reserved so far (wrapping): the end of the route's queue.
    reserved: u64,
    /// Monotonic ns at which all reserved bytes are out at the pacing rate.
    next_free: i128,
    /// Start of the last reservation, monotonic ns.
    last_start: i128,
    /// Bytes of the current pulse block so far.
    block_sent: u64,
    /// End of the current (or last) pulse pause, monotonic ns.
    pause_until: i128,
    /// `reserved` when the pause began: the reservations from there on wait for its end.
    pause_position: u64,
    /// The latest reading (by monotonic time), to tell wall-clock steps.
    last: Option<Reading>,
    /// The last step seen and not yet taken by [`Limiter::take_step`].
    step: Option<SignedDuration>,
    stats: LimiterStats,
}

impl Limiter {
    /// A limiter for a route, idle.
    pub fn new(throttle: RouteThrottle) -> Limiter {
        Limiter {
            throttle,
            current: None,
            pacing: Pacing::Unlimited,
            generation: 0,
            reserved: 0,
            // Far in the past, yet far from overflow in the arithmetic below.
            next_free: i128::MIN / 4,
            last_start: i128::MIN / 4,
            block_sent: 0,
            pause_until: i128::MIN / 4,
            pause_position: 0,
            last: None,
            step: None,
            stats: LimiterStats::default(),
        }
    }

    /// The route's throttle.
    pub fn throttle(&self) -> &RouteThrottle {
        &self.throttle
    }

    /// Replaces the route's throttle; it applies at once to admissions and to the next
    /// reservation.
    pub fn set_throttle(&mut self, throttle: RouteThrottle) {
        self.throttle = throttle;
        self.current = None;
    }

    /// Counters.
    pub fn stats(&self) -> LimiterStats {
        self.stats
    }

    /// The wall-clock step seen since the last call, if any: how far the wall clock moved
    /// beyond (or short of) the monotonic time between two readings.
    pub fn take_step(&mut self) -> Option<SignedDuration> {
        self.step.take()
    }

    /// The cell in force at wall time `wall`, with the span it covers.
    pub fn cell_at(&mut self, wall: Timestamp) -> CellSpan {
        self.current(wall).span
    }

    /// The pacing a reservation made at wall time `wall` gets (for a closed cell, the last
    /// open cell's).
    pub fn pacing_at(&mut self, wall: Timestamp) -> Pacing {
        self.current(wall).pacing
    }

    /// May a chunk of `priority` start at `now`? Call it at every chunk boundary. Decided on
    /// the wall clock alone.
    pub fn admit(&mut self, now: Reading, priority: Priority) -> Admit {
        self.observe(now);
        let current = self.current(now.wall);
        if current.span.cell.allowed.permits(priority) {
            return Admit::Open;
        }
        self.stats.refusals += 1;
        let reopens = self
            .throttle
            .schedule()
            .find_from(current.span.end, self.throttle.time_zone(), |cell| {
                cell.allowed.permits(priority)
            })
            .map(|span| span.start);
        Admit::Closed { reopens }
    }

    /// Reserves `bytes` (at most [`SLICE`] for smooth pacing) and returns when they may be
    /// sent, on the monotonic clock: `now.mono` or later. The caller waits until then, then
    /// sends. The pacing is the cell's at `now.wall`.
    pub fn reserve(&mut self, now: Reading, bytes: u64) -> Reservation {
        self.observe(now);
        let now_ns = nanos(now.mono);
        let pacing = self.current(now.wall).pacing;
        if pacing != self.pacing {
            self.switch(now_ns, pacing);
        }
        self.stats.bytes_reserved = self.stats.bytes_reserved.saturating_add(bytes);
        self.stats.reservations += 1;
        let start = match pacing {
            Pacing::Unlimited => now_ns,
            Pacing::Rate(rate) => self.pace(now_ns, bytes, rate, true),
            Pacing::Pulse { block, delay, rate } => {
                let delay = delay.as_nanos() as i128;
                let block_end = match rate {
                    Some(_) => self.next_free,
                    None => self.last_start,
                };
                let mut credit = true;
                if self.block_sent >= block {
                    let blocks = (self.block_sent / block) as i128;
                    self.block_sent %= block;
                    self.pause_until = block_end.saturating_add(delay.saturating_mul(blocks));
                    self.pause_position = self.reserved;
                    // The pause is the pause: no burst credit eats into it.
                    credit = false;
                } else if self.block_sent > 0 && now_ns >= block_end.saturating_add(delay) {
                    self.block_sent = 0;
                }
                self.block_sent = self.block_sent.saturating_add(bytes);
                // Every reservation made during the pause waits for its end, not only the
                // first: unpaced, nothing else would hold back the other streams' slices.
                let earliest = now_ns.max(self.pause_until);
                match rate {
                    Some(rate) => self.pace(earliest, bytes, rate, credit),
                    None => earliest,
                }
            }
        };
        self.last_start = start;
        let position = self.reserved;
        self.reserved = self.reserved.wrapping_add(bytes);
        Reservation {
            start: duration(start.max(now_ns)),
            position,
            generation: self.generation,
        }
    }

    /// When a reservation that is still waiting may go, looked at again at `now`: its own
    /// start while the pacing it was timed in holds; after a change (a new cell by the clock
    /// or by a wall-clock step, or [`Limiter::set_throttle`]) a start timed at the new pacing,
    /// keeping its place in the queue. A pulse pause ends with its cell. Call it whenever the
    /// caller wakes before `start`, and at least every [`SLICE_TIME`].
    pub fn retime(&mut self, now: Reading, reservation: Reservation) -> Reservation {
        self.observe(now);
        let now_ns = nanos(now.mono);
        let pacing = self.current(now.wall).pacing;
        if pacing != self.pacing {
            self.switch(now_ns, pacing);
        }
        if reservation.generation == self.generation {
            return reservation;
        }
        // next_free is when the end of the queue goes out, so this reservation starts the
        // time of the bytes from it to that end earlier (GCRA's virtual schedule, run back).
        let ahead = self.reserved.wrapping_sub(reservation.position);
        let start = match self.pacing.rate() {
            Some(rate) => self.next_free.saturating_sub(cost_ns(ahead, rate)),
            None => now_ns,
        };
        Reservation {
            start: duration(start.max(now_ns)),
            generation: self.generation,
            ..reservation
        }
    }

    /// Notes a reading: tells a step of the wall clock from the time that passed.
    fn observe(&mut self, now: Reading) {
        if let Some(last) = self.last {
            let mono = nanos(now.mono) - nanos(last.mono);
            let wall = now.wall.as_nanosecond() - last.wall.as_nanosecond();
            let step = wall - mono;
            if step.abs() > nanos(STEP_TOLERANCE) {
                self.stats.wall_steps += 1;
                self.step = Some(signed(step));
            }
            // Streams read the clocks before they queue for the limiter, so readings can
            // arrive slightly out of order: compare each with the latest, keep the latest.
            if now.mono < last.mono {
                return;
            }
        }
        self.last = Some(now);
    }

    /// GCRA step at `rate` from `from`; returns the reservation's start.
    fn pace(&mut self, from: i128, bytes: u64, rate: u64, credit: bool) -> i128 {
        let allowance = if credit { burst_ns(rate) } else { 0 };
        let start = self.next_free.max(from - allowance);
        self.next_free = start.saturating_add(cost_ns(bytes, rate));
        start
    }

    /// The pacing changed (new cell or new throttle): keep the outstanding debt in bytes.
    fn switch(&mut self, now_ns: i128, new: Pacing) {
        match (self.pacing, new.rate()) {
            (_, None) => self.next_free = self.next_free.min(now_ns),
            // An unpaced pulse never timed what waits for its pause: time it now.
            (Pacing::Pulse { rate: None, .. }, Some(rate)) => {
                if self.pause_until > now_ns {
                    let waiting = self.reserved.wrapping_sub(self.pause_position);
                    self.next_free = now_ns.saturating_add(cost_ns(waiting, rate));
                }
            }
            (old_pacing, Some(new)) => {
                if let Some(old) = old_pacing.rate() {
                    // A pause still to come was the old cell's: only the bytes are owed.
                    let from = match old_pacing {
                        Pacing::Pulse { .. } => now_ns.max(self.pause_until),
                        _ => now_ns,
                    };
                    if self.next_free > from {
                        let debt = self.next_free - from;
                        let (old, new) = (i128::from(old), i128::from(new));
                        let retimed = debt.saturating_mul(old).saturating_add(new - 1) / new;
                        self.next_free = now_ns.saturating_add(retimed);
                    } else {
                        self.next_free = self.next_free.min(now_ns);
                    }
                }
            }
        }
        self.generation = self.generation.wrapping_add(1);
        // A new pacing starts afresh: a pulse's block and pause were its cell's.
        self.block_sent = 0;
        self.pause_until = i128::MIN / 4;
        self.pacing = new;
    }

    /// The cell at wall time `wall`. Cached by the span it covers, not by time passing: a
    /// wall-clock step out of the span is a miss, and the cell is looked up again at once.
    fn current(&mut self, wall: Timestamp) -> Current {
        if let Some(c) = self.current
            && c.span.start <= wall
            && wall < c.span.end
        {
            return c;
        }
        let span = self.throttle.cell_at(wall);
        let pacing = if span.cell.allowed == Allowed::Closed {
            self.last_open_pacing(span)
        } else {
            self.throttle.pacing(span.cell.rate)
        };
        let current = Current { span, pacing };
        self.current = Some(current);
        current
    }

    /// Pacing of the last open cell before the closed `span` (a week back at most).
    fn last_open_pacing(&self, span: CellSpan) -> Pacing {
        let mut at = span.start;
        for _ in 0..(8 * 24 + 16) {
            let prev = self
                .throttle
                .cell_at(crate::schedule::timestamp(at.as_nanosecond() - 1));
            if prev.cell.allowed != Allowed::Closed {
                return self.throttle.pacing(prev.cell.rate);
            }
            if prev.start >= at {
                break;
            }
            at = prev.start;
        }
        // Never open: nothing should flow, and whatever does is not held back.
        Pacing::Unlimited
    }
}

/// Time `bytes` take at `rate`, rounded up.
fn cost_ns(bytes: u64, rate: u64) -> i128 {
    let ns = (u128::from(bytes) * NS_PER_SEC).div_ceil(u128::from(rate.max(1)));
    i128::try_from(ns).unwrap_or(i128::MAX)
}

/// `d` in nanoseconds.
fn nanos(d: Duration) -> i128 {
    i128::try_from(d.as_nanos()).unwrap_or(i128::MAX)
}

/// `ns` nanoseconds (not negative, at most `u64::MAX` seconds) as a duration.
fn duration(ns: i128) -> Duration {
    let ns = ns.max(0);
    let secs = u64::try_from(ns / NS_PER_SEC as i128).unwrap_or(u64::MAX);
    Duration::new(secs, (ns % NS_PER_SEC as i128) as u32)
}

/// `ns` nanoseconds as a signed duration (in range for any two jiff timestamps).
fn signed(ns: i128) -> SignedDuration {
    let secs =
        i64::try_from(ns / NS_PER_SEC as i128).unwrap_or(if ns < 0 { i64::MIN } else { i64::MAX });
    SignedDuration::new(secs, (ns % NS_PER_SEC as i128) as i32)
}

/// The burst allowance τ at `rate`: min(10 ms, 64 KiB / rate).
fn burst_ns(rate: u64) -> i128 {
    (BURST_TIME.as_nanos() as i128).min(cost_ns(BURST_BYTES, rate))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::Priority::{High, Low, Medium};

    /// A Monday, 00:00 UTC.
    const MONDAY: &str = "2025-01-06T00:00:00Z";

    fn throttle(text: &str) -> RouteThrottle {
        RouteThrottle::parse(text).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The reading `offset` after Monday 00:00 UTC on the wall clock, with the monotonic
    /// clock at `offset` too (it started then); no step.
    fn at(offset: &str) -> Reading {
        let base: Timestamp = MONDAY.parse().expect("timestamp");
        let offset = offset.parse::<SignedDuration>().expect("duration");
        Reading::new(
            Duration::try_from(offset).expect("not negative"),
            base.checked_add(offset).expect("in range"),
        )
    }

    /// Wall time of [`at`].
    fn wall(offset: &str) -> Timestamp {
        at(offset).wall
    }

    /// Monotonic time of [`at`].
    fn mono(offset: &str) -> Duration {
        at(offset).mono
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Reserves `count` slices back to back (each made when the previous may start, as a
    /// caller that always has data does) from `now`, the clocks running together; returns
    /// the starts.
    fn back_to_back(l: &mut Limiter, mut now: Reading, count: usize, bytes: u64) -> Vec<Duration> {
        (0..count)
            .map(|_| {
                let start = l.reserve(now, bytes).start;
                now = now.at_mono(start);
                start
            })
            .collect()
    }

    #[test]
    fn unlimited_returns_now_and_leaves_no_debt() {
        let mut l = Limiter::new(RouteThrottle::default());
        let t = at("0s");
        for _ in 0..1000 {
            assert_eq!(l.reserve(t, SLICE).start, t.mono);
        }
        assert_eq!(
            l.stats(),
            LimiterStats {
                bytes_reserved: 1000 * SLICE,
                reservations: 1000,
                refusals: 0,
                wall_steps: 0,
            }
        );
        // The unlimited bytes are not charged to a rate that comes later.
        l.set_throttle(throttle("daily 1MiB/s"));
        assert_eq!(l.reserve(t, 4096).start, t.mono);
    }

    #[test]
    fn back_to_back_reservations_hold_the_rate_exactly() {
        let mut l = Limiter::new(throttle("daily 1MB/s"));
        let t0 = at("10s");
        let starts = back_to_back(&mut l, t0, 1001, 10_000);
        // The first slice and the 10 ms of credit go at once...
        assert_eq!((starts[0], starts[1]), (t0.mono, t0.mono));
        // ...then exactly one 10 kB slice per 10 ms at 1 MB/s, with no drift.
        for (n, s) in starts.iter().enumerate().skip(1) {
            assert_eq!(*s - t0.mono, ms(10 * (n as u64 - 1)), "slice {n}");
        }
    }

    #[test]
    fn odd_rates_never_run_fast() {
        // 3 bytes per second: 1 byte costs 333,333,333.33 ns, rounded up.
        let mut l = Limiter::new(throttle("daily 3/s"));
        let t0 = at("0s");
        let starts = back_to_back(&mut l, t0, 3001, 1);
        // 2999 bytes from the second start to the last: 999.67 s, plus at most 1 ns each.
        let elapsed = (starts[3000] - starts[1]).as_nanos();
        let exact = 2999 * 1_000_000_000 / 3;
        assert!((exact..=exact + 2999).contains(&elapsed), "{elapsed} ns");
    }

    #[test]
    fn an_idle_limiter_allows_only_a_small_burst() {
        for (text, rate) in [("daily 1MiB/s", 1u64 << 20), ("daily 100MiB/s", 100 << 20)] {
            let mut l = Limiter::new(throttle(text));
            back_to_back(&mut l, at("0s"), 50, SLICE);
            // An hour idle, then many small slices at one instant.
            let t = at("1h");
            let mut at_once = 0;
            while l.reserve(t, 4096).start == t.mono {
                at_once += 4096;
            }
            let burst = (rate / 100).min(BURST_BYTES);
            assert!(
                at_once <= burst + 4096,
                "{text}: {at_once} bytes at once, burst {burst}"
            );
            assert!(
                at_once + 4096 >= burst,
                "{text}: {at_once} bytes at once, burst {burst}"
            );
        }
    }

    #[test]
    fn a_new_cell_rate_applies_from_the_next_slice() {
        // Slow to fast: a 64 KiB slice at 64 KiB/s is a second of debt, which must not
        // delay the fast hour by a second.
        let mut l = Limiter::new(throttle("daily 64KiB/s; Mon 01:00-02:00 64MiB/s"));
        let starts = back_to_back(&mut l, at("59m"), 4000, SLICE);
        let fast: u64 = starts
            .iter()
            .filter(|s| (mono("1h1s")..mono("1h2s")).contains(*s))
            .map(|_| SLICE)
            .sum();
        assert!(
            fast.abs_diff(64 << 20) <= (64 << 20) / 50,
            "{fast} bytes in the fast hour's second second"
        );
        // Fast to slow: the slow rate holds from the first second on.
        let mut l = Limiter::new(throttle("daily 1MiB/s; Mon 01:00-02:00 64KiB/s"));
        let starts = back_to_back(&mut l, at("59m59s"), 20_000, 1024);
        let slow: u64 = starts
            .iter()
            .filter(|s| (mono("1h1s")..mono("1h11s")).contains(*s))
            .map(|_| 1024)
            .sum();
        assert!(
            slow.abs_diff(640 << 10) <= (640 << 10) / 50,
            "{slow} bytes in 10 s at 64 KiB/s"
        );
    }

    #[test]
    fn closed_cells_answer_when_each_priority_reopens() {
        let mut l = Limiter::new(throttle(
            "daily closed; Mon 08:00-09:00 high; Mon 10:00-11:00 medium; Tue 00:00-01:00 all",
        ));
        let closed = |reopens: &str| Admit::Closed {
            reopens: Some(wall(reopens)),
        };
        assert_eq!(l.admit(at("7h30m"), Low), closed("24h"));
        assert_eq!(l.admit(at("7h30m"), Medium), closed("10h"));
        assert_eq!(l.admit(at("7h30m"), High), closed("8h"));
        assert_eq!(l.admit(at("8h30m"), High), Admit::Open);
        assert_eq!(l.admit(at("8h30m"), Medium), closed("10h"));
        assert_eq!(l.admit(at("10h"), Medium), Admit::Open);
        assert_eq!(l.admit(at("24h59m"), Low), Admit::Open);
        // After Monday's last open cell for high, the next is a week later.
        assert_eq!(l.admit(at("25h"), High), closed("176h"));
        assert_eq!(l.stats().refusals, 5);
        // Never open.
        l.set_throttle(throttle("daily medium"));
        assert_eq!(l.admit(at("0s"), Low), Admit::Closed { reopens: None });
        l.set_throttle(throttle("daily closed"));
        assert_eq!(l.admit(at("0s"), High), Admit::Closed { reopens: None });
    }

    #[test]
    fn a_tail_in_a_closed_cell_is_paced_at_the_last_open_rate() {
        let mut l = Limiter::new(throttle(
            "daily closed; Mon 08:00-09:00 100KB/s; Mon 10:00-11:00 1MB/s; Mon 11:00-12:00 high",
        ));
        assert_eq!(l.pacing_at(wall("9h")), Pacing::Rate(100_000));
        assert_eq!(l.pacing_at(wall("12h")), Pacing::Unlimited);
        // Before Monday 08:00 the last open cell is last week's Monday 11:00.
        assert_eq!(l.pacing_at(wall("7h")), Pacing::Unlimited);
        l.set_throttle(throttle(
            "daily closed; Mon 08:00-09:00 100KB/s; Mon 10:00-11:00 1MB/s",
        ));
        assert_eq!(l.pacing_at(wall("7h")), Pacing::Rate(1_000_000));
        let starts = back_to_back(&mut l, at("9h"), 11, 10_000);
        assert_eq!(starts[10] - starts[1], ms(900));
    }

    #[test]
    fn percents_are_of_the_link() {
        let mut l = Limiter::new(throttle("link 100Mbit/s; daily 33%; Sun 1%"));
        assert_eq!(l.pacing_at(wall("0s")), Pacing::Rate(4_125_000));
        assert_eq!(l.pacing_at(wall("144h")), Pacing::Rate(125_000));
    }

    #[test]
    fn pulse_sends_a_block_then_waits() {
        // At the link's 1 MiB/s a 64 KiB slice takes 62.5 ms; four make the 256 KiB block.
        let mut l = Limiter::new(throttle("link 1MiB/s; daily pulse 256KiB/2s"));
        let starts = back_to_back(&mut l, at("0s"), 21, SLICE);
        let gaps: Vec<Duration> = starts.windows(2).map(|w| w[1] - w[0]).collect();
        let slice = Duration::from_micros(62_500);
        // The first block starts with 10 ms of credit; from then on the pattern is exact.
        assert_eq!(gaps[0], slice - ms(10));
        for (n, gap) in gaps.iter().enumerate().skip(1) {
            let want = if n % 4 == 3 { slice + ms(2000) } else { slice };
            assert_eq!(*gap, want, "gap {n}: {gaps:?}");
        }
        // Without a link, a block goes at once.
        let mut l = Limiter::new(throttle("daily pulse 256KiB/2s"));
        let starts = back_to_back(&mut l, at("0s"), 12, SLICE);
        let offsets: Vec<Duration> = starts.iter().map(|s| *s - mono("0s")).collect();
        let want: Vec<Duration> = (0..12).map(|n| ms(2000 * (n / 4))).collect();
        assert_eq!(offsets, want);
        // A quiet spell of a whole delay ends a partial block: the next block is whole.
        let mut l = Limiter::new(throttle("daily pulse 256KiB/2s"));
        back_to_back(&mut l, at("0s"), 2, SLICE);
        let starts = back_to_back(&mut l, at("10s"), 5, SLICE);
        let offsets: Vec<Duration> = starts.iter().map(|s| *s - mono("10s")).collect();
        assert_eq!(offsets, [ms(0), ms(0), ms(0), ms(0), ms(2000)]);
        // Several streams: a slice reserved during the pause by another stream waits for its
        // end too (it once went at once, so unpaced pulses leaked through their pauses).
        for link in ["", "link 1MiB/s; "] {
            let mut l = Limiter::new(throttle(&format!("{link}daily pulse 256KiB/2s")));
            let t = at("0s");
            let starts: Vec<Duration> = (0..9).map(|_| l.reserve(t, SLICE).start).collect();
            let pause = starts[4];
            assert!(pause >= ms(2000), "{link}: {starts:?}");
            assert!(
                starts[5..].iter().all(|s| *s >= pause),
                "{link}: {starts:?}"
            );
            assert!(
                starts[8] >= pause + ms(2000),
                "{link}: a second pause: {starts:?}"
            );
        }
    }

    #[test]
    fn set_throttle_applies_to_the_next_reservation() {
        let mut l = Limiter::new(throttle("daily 1MB/s"));
        let starts = back_to_back(&mut l, at("0s"), 10, 100_000);
        // Mid-slice (0.1 s of debt at 1 MB/s = 100 kB), the rate becomes 10 MB/s: the
        // remaining 100 kB take 10 ms, and the next slices 10 ms each.
        let now = at("0s").at_mono(starts[9]);
        l.set_throttle(throttle("daily 10MB/s"));
        let next = back_to_back(&mut l, now, 3, 100_000);
        assert_eq!(next[0] - now.mono, ms(10));
        assert_eq!(next[2] - next[0], ms(20));
    }

    /// Ten years as the wall clock counts them from Monday 2025-01-06: 3,653 days (three
    /// leap days), which lands on a Tuesday going back and a Sunday going forward.
    const TEN_YEARS: SignedDuration = SignedDuration::from_hours(3653 * 24);

    #[test]
    fn a_wall_clock_step_neither_freezes_nor_bursts_the_pacing() {
        // Issue 18: the debt was kept in wall time, so an NTP step of -1 h froze the route
        // for an hour (and a step forward forgave the debt).
        for step in [
            SignedDuration::from_hours(-1),
            SignedDuration::from_hours(1),
            -TEN_YEARS,
            TEN_YEARS,
        ] {
            let mut l = Limiter::new(throttle("daily 1MB/s"));
            let t0 = at("10s");
            let before = back_to_back(&mut l, t0, 100, 10_000);
            let now = t0.at_mono(before[99]).stepped(step);
            let after = back_to_back(&mut l, now, 100, 10_000);
            let starts: Vec<Duration> = before.into_iter().chain(after).collect();
            // One 10 kB slice per 10 ms throughout, across the step.
            for (n, s) in starts.iter().enumerate().skip(1) {
                assert_eq!(*s - t0.mono, ms(10 * (n as u64 - 1)), "{step}: slice {n}");
            }
            assert_eq!(l.stats().wall_steps, 1, "{step}");
            assert_eq!(l.take_step(), Some(step));
            assert_eq!(l.take_step(), None);
        }
    }

    #[test]
    fn a_step_reads_the_cell_of_the_new_wall_time_at_once() {
        let mut l = Limiter::new(throttle(
            "daily 1MB/s; Mon 10:00-11:00 closed; Mon 11:00-12:00 100kB/s; Tue closed; Sun high",
        ));
        let now = at("9h30m");
        assert_eq!(l.admit(now, Low), Admit::Open);
        // +1 h: into the closed hour, which reopens at 11:00.
        let closed = Admit::Closed {
            reopens: Some(wall("11h")),
        };
        let now = now.after(ms(1)).stepped(SignedDuration::from_hours(1));
        assert_eq!((l.admit(now, Low), l.admit(now, High)), (closed, closed));
        // And back.
        let now = now.after(ms(1)).stepped(SignedDuration::from_hours(-1));
        assert_eq!(l.admit(now, Low), Admit::Open);
        // -10 years is a Tuesday (closed all day); +10 years a Sunday (high only).
        let past = now.stepped(-TEN_YEARS);
        assert_eq!(
            past.wall.to_zoned(jiff::tz::TimeZone::UTC).weekday(),
            jiff::civil::Weekday::Tuesday
        );
        let midnight = |r: Reading| {
            let day = r.wall.to_zoned(jiff::tz::TimeZone::UTC).date();
            day.tomorrow()
                .expect("in range")
                .to_zoned(jiff::tz::TimeZone::UTC)
                .expect("zoned")
                .timestamp()
        };
        assert_eq!(
            l.admit(past, High),
            Admit::Closed {
                reopens: Some(midnight(past))
            }
        );
        let future = now.stepped(TEN_YEARS);
        assert_eq!(
            future.wall.to_zoned(jiff::tz::TimeZone::UTC).weekday(),
            jiff::civil::Weekday::Sunday
        );
        assert_eq!(l.admit(future, High), Admit::Open);
        assert_eq!(
            l.admit(future, Medium),
            Admit::Closed {
                reopens: Some(midnight(future))
            }
        );
        // Pacing follows the cell too: +2 h into the 100 kB/s hour, slices of 10 kB go
        // 100 ms apart from the next reservation on (the 10 kB still owed when the step came
        // included).
        let mut l = Limiter::new(throttle("daily 1MB/s; Mon 11:00-12:00 100kB/s"));
        let t0 = at("9h30m");
        let fast = back_to_back(&mut l, t0, 50, 10_000);
        let now = t0.at_mono(fast[49]).stepped(SignedDuration::from_hours(2));
        let slow = back_to_back(&mut l, now, 20, 10_000);
        assert_eq!(slow[0] - fast[49], ms(100));
        for w in slow.windows(2) {
            assert_eq!(w[1] - w[0], ms(100));
        }
    }

    #[test]
    fn a_step_is_what_the_clocks_disagree_on_beyond_the_tolerance() {
        let mut l = Limiter::new(throttle("daily 1MB/s"));
        let t = at("1h");
        l.admit(t, Low);
        // Slewing and the jitter of reading two clocks are not steps...
        l.admit(
            t.after(ms(5000)).stepped(SignedDuration::from_millis(900)),
            Low,
        );
        l.admit(t.after(ms(5000)), Low);
        // ...nor are readings that reach the limiter out of order.
        l.admit(t.after(ms(4000)), Low);
        l.admit(t.after(ms(6000)), Low);
        assert_eq!((l.stats().wall_steps, l.take_step()), (0, None));
        // More than the tolerance is.
        l.admit(
            t.after(ms(7000))
                .stepped(SignedDuration::from_millis(-1100)),
            Low,
        );
        assert_eq!(l.stats().wall_steps, 1);
        assert_eq!(l.take_step(), Some(SignedDuration::from_millis(-1100)));
    }

    #[test]
    fn a_waiting_reservation_is_retimed_when_the_pacing_changes() {
        let schedule = "daily 1KiB/s; Mon 10:00-11:00 unlimited; Mon 11:00-12:00 64KiB/s";
        // Two 64 KiB slices at 1 KiB/s from 09:00 (the first with 10 ms of burst credit):
        // the second waits 63.99 s. One second later, 126.99 s of debt are owed.
        let owed = Duration::from_millis(126_990);
        for (step, want) in [
            // Into the unlimited hour: at once.
            (SignedDuration::from_hours(1), Duration::ZERO),
            // Into 64 KiB/s: the debt as bytes, timed at 64 times the rate, less this
            // reservation's own slice (1 s), which is the last of it.
            (
                SignedDuration::from_hours(2),
                owed / 64 - Duration::from_secs(1),
            ),
            // Within the same hour: nothing changes.
            (SignedDuration::from_mins(10), Duration::from_millis(62_990)),
        ] {
            let mut l = Limiter::new(throttle(schedule));
            let t = at("9h");
            assert_eq!(l.reserve(t, SLICE).start, t.mono);
            let waiting = l.reserve(t, SLICE);
            assert_eq!(waiting.start, t.mono + Duration::from_millis(63_990));
            let now = t.after(ms(1000));
            assert_eq!(l.retime(now, waiting), waiting, "no change, no new time");
            let now = now.stepped(step);
            let again = l.retime(now, waiting);
            assert_eq!(again.start - now.mono, want, "{step}");
            assert_eq!(l.retime(now, again), again, "{step}");
        }
        // set_throttle too.
        let mut l = Limiter::new(throttle("daily 1KiB/s"));
        let t = at("9h");
        l.reserve(t, SLICE);
        let waiting = l.reserve(t, SLICE);
        l.set_throttle(throttle("daily unlimited"));
        assert_eq!(l.retime(t.after(ms(5)), waiting).start, t.mono + ms(5));
    }

    #[test]
    fn a_pulse_pause_ends_with_its_cell() {
        // Paced at the link: two slices after the block wait an hour; a step into the
        // 1 MiB/s hour leaves only their bytes owed, not the pause: the first goes at once,
        // the second 64 KiB (62.5 ms) later.
        let mut l = Limiter::new(throttle(
            "link 1MiB/s; daily pulse 256KiB/1h; Mon 10:00-11:00 1MiB/s",
        ));
        let t = at("9h");
        let starts = back_to_back(&mut l, t, 4, SLICE);
        let now = t.at_mono(starts[3]);
        let waiting = [l.reserve(now, SLICE), l.reserve(now, SLICE)];
        assert!(waiting[0].start > now.mono + Duration::from_secs(3600));
        let now = now.after(ms(100));
        assert_eq!(waiting.map(|w| l.retime(now, w)), waiting);
        let now = now.stepped(SignedDuration::from_hours(1));
        let again = waiting.map(|w| l.retime(now, w).start - now.mono);
        assert_eq!(again, [Duration::ZERO, Duration::from_micros(62_500)]);
        // Unpaced: two slices wait for the pause's end; at the new rate they go one after
        // the other, not together (what waited is charged, not forgiven).
        let mut l = Limiter::new(throttle("daily pulse 256KiB/1h; Mon 10:00-11:00 1MiB/s"));
        let t = at("9h");
        let starts: Vec<Reservation> = (0..6).map(|_| l.reserve(t, SLICE)).collect();
        assert!(starts[4].start > t.mono + Duration::from_secs(3599));
        let now = t.after(ms(100)).stepped(SignedDuration::from_hours(1));
        let (a, b) = (l.retime(now, starts[4]), l.retime(now, starts[5]));
        assert_eq!(a.start, now.mono);
        assert_eq!(b.start - now.mono, Duration::from_micros(62_500));
        // And a slice reserved next goes after them.
        assert_eq!(
            l.reserve(now, SLICE).start - now.mono,
            Duration::from_micros(125_000)
        );
    }

    #[test]
    fn the_largest_rates_a_schedule_holds_do_not_overflow() {
        // A schedule refuses rates beyond u64 bytes per second (schedule::text's tests);
        // every rate up to that, and a link as fast, must pace without overflowing.
        use crate::schedule::{Cell, Schedule};
        use jiff::civil::Weekday::Monday;
        let mut s = Schedule::default();
        for hour in 0..24 {
            s.set(
                Monday,
                hour,
                Cell::new(Allowed::All, Rate::BytesPerSec(u64::MAX)),
            );
        }
        s.set(Monday, 1, Cell::new(Allowed::All, Rate::Percent(100)));
        let pulse = Rate::Pulse {
            block: u64::MAX,
            delay: Duration::from_secs(24 * 3600),
        };
        s.set(Monday, 2, Cell::new(Allowed::All, pulse));
        let t = RouteThrottle::new(s, Some(u64::MAX), jiff::tz::TimeZone::UTC).expect("valid");
        let mut l = Limiter::new(t);
        assert_eq!(l.pacing_at(wall("1h")), Pacing::Rate(u64::MAX));
        for offset in ["0s", "1h", "2h", "3h"] {
            let now = at(offset);
            for bytes in [1, SLICE, u64::MAX] {
                let r = l.reserve(now, bytes);
                assert!(
                    r.start >= now.mono && r.start - now.mono <= ms(2),
                    "{offset}"
                );
                assert_eq!(l.retime(now, r), r);
            }
        }
        let text = throttle("daily 18446744073709551615B/s; link 18446744073709551615B/s; Mon 50%");
        let mut l = Limiter::new(text);
        assert_eq!(l.pacing_at(wall("0s")), Pacing::Rate(u64::MAX / 2));
        back_to_back(&mut l, at("0s"), 100, SLICE);
    }
}
