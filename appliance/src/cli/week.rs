//! A route's week as a 7×24 grid for the terminal: one row per day (Monday first), one
//! column per hour, each cell two characters: who may send (a letter) and at what rate (a
//! key into the legend below the grid). The schedule is read by the transport's one parser
//! ([`RouteThrottle::parse`]) from the canonical text the admin API answers with.
//!
//! ```text
//! week in UTC, link 100Mbit/s
//!      00 01 02 03 04 05 06 07 08 09 10 11 12 13 14 15 16 17 18 19 20 21 22 23
//! Mon  A. A. A. A. A. A. A. A. H1 H1 H1 H1 H1 H1 H1 H1 H1 H1 A. A. A. A. A. A.
//! Sat  -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- --
//! who:  A all   M medium and high   H high only   -- closed
//! rate: . unlimited   1 2MiB/s
//! ```
//! 78 columns, so it fits a terminal of 80.

use crate::cli::error::CliError;
use freight_transport::schedule::DAY_NAMES;
use freight_transport::{Allowed, Cell, Rate, RouteThrottle};
use jiff::civil::Weekday;

/// Keys of rates other than unlimited, in order of first appearance in the week (Monday
/// 00:00 on); the rates past the last key share [`OTHER`].
const KEYS: &[u8] = b"123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
/// The key of rates beyond [`KEYS`] (a week has at most 168 distinct cells).
const OTHER: char = '*';
const WEEKDAYS: [Weekday; 7] = [
    Weekday::Monday,
    Weekday::Tuesday,
    Weekday::Wednesday,
    Weekday::Thursday,
    Weekday::Friday,
    Weekday::Saturday,
    Weekday::Sunday,
];

/// The grid of `schedule` (the compact text form), with its legend.
pub fn grid(schedule: &str) -> Result<String, CliError> {
    let t = RouteThrottle::parse(schedule)?;
    Ok(render(&t))
}

fn who(a: Allowed) -> char {
    match a {
        Allowed::All => 'A',
        Allowed::MediumHigh => 'M',
        Allowed::HighOnly => 'H',
        Allowed::Closed => '-',
    }
}

/// The rates of the week other than unlimited, in order of first appearance.
fn rates(t: &RouteThrottle) -> Vec<Rate> {
    let mut seen = Vec::new();
    for day in WEEKDAYS {
        for hour in 0..24 {
            let c = t.schedule().cell(day, hour);
            if c.allowed != Allowed::Closed && c.rate != Rate::Unlimited && !seen.contains(&c.rate)
            {
                seen.push(c.rate);
            }
        }
    }
    seen
}

fn cell_text(c: Cell, rates: &[Rate]) -> String {
    if c.allowed == Allowed::Closed {
        return "--".into();
    }
    let rate = match rates.iter().position(|r| *r == c.rate) {
        None => '.',
        Some(i) => KEYS.get(i).map_or(OTHER, |k| *k as char),
    };
    format!("{}{rate}", who(c.allowed))
}

fn render(t: &RouteThrottle) -> String {
    let rates = rates(t);
    let zone = t.time_zone().iana_name().unwrap_or("UTC");
    let mut out = format!("week in {zone}");
    if let Some(link) = t.link_bandwidth() {
        out.push_str(&format!(", link {}", Rate::BytesPerSec(link)));
    }
    out.push('\n');
    out.push_str("    ");
    for h in 0..24 {
        out.push_str(&format!(" {h:02}"));
    }
    out.push('\n');
    for (d, day) in WEEKDAYS.iter().enumerate() {
        out.push_str(DAY_NAMES[d]);
        out.push(' ');
        for hour in 0..24 {
            out.push(' ');
            out.push_str(&cell_text(t.schedule().cell(*day, hour), &rates));
        }
        out.push('\n');
    }
    out.push_str("who:  A all   M medium and high   H high only   -- closed\n");
    let mut legend = vec![". unlimited".to_string()];
    for (i, r) in rates.iter().enumerate().take(KEYS.len()) {
        let what = match r {
            Rate::Percent(_) => format!("{r} of the link"),
            _ => r.to_string(),
        };
        legend.push(format!("{} {what}", KEYS[i] as char));
    }
    if rates.len() > KEYS.len() {
        legend.push(format!(
            "{OTHER} {} more rates (see the schedule's text)",
            rates.len() - KEYS.len()
        ));
    }
    out.push_str(&wrap("rate: ", &legend));
    out
}

/// `entries` after `lead`, three spaces apart, broken into lines of at most [`WIDTH`]
/// characters (continued under the first entry).
fn wrap(lead: &str, entries: &[String]) -> String {
    let indent = " ".repeat(lead.chars().count());
    let mut out = String::new();
    let mut line = lead.to_string();
    for (i, e) in entries.iter().enumerate() {
        let sep = if i == 0 { "" } else { "   " };
        if i > 0 && line.chars().count() + sep.len() + e.chars().count() > WIDTH {
            out.push_str(&line);
            out.push('\n');
            line = format!("{indent}{e}");
        } else {
            line.push_str(sep);
            line.push_str(e);
        }
    }
    out.push_str(&line);
    out.push('\n');
    out
}

/// The widest line drawn (a terminal of 80 columns shows it whole).
const WIDTH: usize = 78;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_week_reads_as_days_by_hours_with_a_legend() {
        let g = grid(
            "link 100Mbit/s; Mon-Fri 08:00-18:00 high 2MiB/s; Sat-Sun closed; Wed 20:00-22:00 medium 50%",
        )
        .unwrap();
        let lines: Vec<&str> = g.lines().collect();
        assert_eq!(lines[0], "week in UTC, link 100Mbit/s");
        assert!(lines[1].starts_with("     00 01 02"), "{g}");
        assert!(lines[1].ends_with(" 23"), "{g}");
        assert_eq!(lines.len(), 2 + 7 + 2, "{g}");
        let row = |d: usize| -> Vec<&str> { lines[2 + d].split_whitespace().collect() };
        let mon = row(0);
        assert_eq!(mon[0], "Mon");
        assert_eq!(mon.len(), 25);
        assert_eq!(&mon[1..9], ["A."; 8]);
        assert_eq!(&mon[9..19], ["H1"; 10]);
        assert_eq!(&mon[19..25], ["A."; 6]);
        let wed = row(2);
        assert_eq!(&wed[21..23], ["M2", "M2"]);
        for d in [5, 6] {
            assert_eq!(&row(d)[1..], ["--"; 24], "{g}");
        }
        assert!(lines[9].starts_with("who:  A all"), "{g}");
        assert_eq!(
            lines[10],
            "rate: . unlimited   1 2MiB/s   2 50% of the link"
        );
        assert!(lines.iter().all(|l| l.chars().count() <= 78), "{g}");
    }

    #[test]
    fn the_default_week_is_all_open_and_unlimited_and_pulse_and_zones_show() {
        let g = grid("daily unlimited").unwrap();
        assert_eq!(g.matches("A.").count(), 168, "{g}");
        assert!(g.contains("rate: . unlimited\n"), "{g}");
        let g = grid("tz Europe/Stockholm; Sun 22:00-24:00 pulse 64KiB/5s").unwrap();
        assert!(g.starts_with("week in Europe/Stockholm\n"), "{g}");
        assert!(g.contains("1 pulse 64KiB/5s"), "{g}");
        assert_eq!(g.matches("A1").count(), 2, "{g}");
    }

    #[test]
    fn more_rates_than_keys_share_one_key() {
        // 168 distinct rates: one per hour of the week.
        let mut rules = Vec::new();
        for (d, name) in DAY_NAMES.iter().enumerate() {
            for h in 0..24 {
                rules.push(format!(
                    "{name} {h:02}:00-{:02}:00 {}KiB/s",
                    h + 1,
                    d * 24 + h + 1
                ));
            }
        }
        let g = grid(&rules.join("; ")).unwrap();
        assert!(
            g.contains(&format!("* {} more rates", 168 - KEYS.len())),
            "{g}"
        );
        assert!(g.lines().all(|l| l.chars().count() <= WIDTH), "{g}");
        assert!(
            g.contains("\n      "),
            "the legend continues under itself: {g}"
        );
        assert!(g.contains("AZ") && g.contains("A*"), "{g}");
    }

    #[test]
    fn a_bad_schedule_is_refused_by_the_one_parser() {
        let e = grid("Mon 25:00-26:00 closed").unwrap_err().to_string();
        assert!(
            e.starts_with("throttle schedule \"Mon 25:00-26:00 closed\""),
            "{e}"
        );
        assert!(!e.contains('\n'), "{e}");
    }
}
