//! A route's bandwidth windows: the weekly 7×24 schedule of allowed priorities and rate limits
//! (SPEC §5), and its two written forms, a compact text for the command line and TOML for files.
//!
//! Pure data and parsing; [`crate::throttle::Limiter`] enforces it.
//!
//! The code follows that split:
//! - [`model`]: [`Priority`], [`Allowed`], [`Rate`], [`Cell`], the weekly [`Schedule`] and
//!   [`RouteThrottle`], with the checks every way of building one runs, and the schedule as
//!   rules (what both written forms print);
//! - [`text`]: the compact text form's grammar, parser and canonical printer
//!   ([`RouteThrottle::parse`], [`RouteThrottle::to_text`]);
//! - [`toml_form`]: the TOML form ([`RouteThrottle::from_toml`], [`RouteThrottle::to_toml`],
//!   and `Serialize`/`Deserialize`, so a configuration file can embed a throttle).
//!
//! Sizes, rates and durations in both forms are read by [`freight_core::units`], like every
//! other size, rate and duration in Freight; what is particular to a schedule (a rate of zero
//! is refused, a pulse delay is whole milliseconds up to a day) is checked here.

pub mod model;
pub mod text;
pub mod toml_form;

#[cfg(test)]
mod test_support;

pub(crate) use model::timestamp;
pub use model::{
    Allowed, Cell, CellSpan, DAY_NAMES, MAX_PULSE_DELAY, Priority, Rate, RouteThrottle, Schedule,
};
