//! The TOML form, for configuration files.
//!
//! ```toml
//! link_bandwidth = "100Mbit/s"   # optional; BANDWIDTH, "/s" optional
//! time_zone = "Europe/Stockholm" # optional; default UTC
//! [[window]]                     # one per rule, applied in order
//! days = "Mon-Fri"               # days
//! hours = "08:00-18:00"          # optional; default the whole day
//! allowed = "high"               # optional: closed, all, medium, high; default all
//! rate = "2MiB/s"                # optional: a rate; default unlimited
//! [[window]]
//! days = "Sat-Sun"
//! allowed = "closed"
//! ```
//! Days, hours, bandwidths and rates are written as in the [text form](super::text). A window
//! needs `allowed` or `rate`; a closed window has no `rate`. [`RouteThrottle`]
//! implements `Serialize`/`Deserialize` as this table, so a configuration file can embed it.

use super::model::{Allowed, Cell, Rate, RouteThrottle, Schedule, canonical_rules};
use super::text::{
    ACTION_HELP, Bad, days_text, format_bandwidth, hours_text, parse_allowed, parse_bandwidth,
    parse_days, parse_hours, parse_rate, parse_zone, words,
};
use crate::error::{Error, Result};
use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};

impl RouteThrottle {
    /// Parses the TOML form (see [`schedule::toml_form`](super::toml_form)).
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
}

/// The TOML table; see the module documentation. `RouteThrottle` (de)serializes through it.
#[derive(Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct ThrottleToml {
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
            Some(text) => Some(
                parse_bandwidth(text).map_err(|reason| Error::BadScheduleToml {
                    place: format!("link_bandwidth = {text:?}"),
                    reason,
                })?,
            ),
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
    use crate::schedule::test_support::*;
    use proptest::prelude::*;

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
            // Beyond u64 bytes per second: refused, never wrapped (issue 18).
            (
                "[[window]]\ndays = \"Mon\"\nrate = \"3.5e38bit/s\"\n",
                "window 1: rate",
                "too large",
            ),
            (
                "link_bandwidth = \"3.5e38bit/s\"\n",
                "link_bandwidth = \"3.5e38bit/s\"",
                "too large",
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

    proptest! {
        #[test]
        fn toml_round_trips(t in throttle_strategy()) {
            let toml = t.to_toml();
            let back = RouteThrottle::from_toml(&toml).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&back, &t, "toml {}", toml);
        }
    }
}
