//! Sizes, rates and durations as people write them: `2GiB`, `100Mbit/s`, `30m`, `1h 30m`.
//!
//! The one parser of each for the whole workspace: the library config and the CLI's size
//! options, the route throttle's text and TOML forms, `freightd.toml`'s durations and the
//! benchmarks' rates all read them here, so the same words mean the same everywhere. Each
//! returns a one-line message that quotes the input and shows what to write; callers add the
//! key or option it came from.

use std::time::Duration;

/// Parses a byte size such as `2GiB`, `256MiB`, `64KiB`, `1.5GiB`, `4096` or
/// `10MB`. Binary suffixes (`KiB`, `MiB`, `GiB`, `TiB`, and the short `K`,
/// `M`, `G`, `T`) are powers of 1024; `KB`, `MB`, `GB`, `TB` are powers of
/// 1000. Case-insensitive; `B` alone means bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let multiplier: u64 = match suffix.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        other => return Err(format!("unknown size suffix {other:?} in {text:?}")),
    };
    if let Ok(whole) = number.parse::<u64>() {
        return whole
            .checked_mul(multiplier)
            .ok_or_else(|| format!("size {text:?} is too large"));
    }
    let value: f64 = number
        .parse()
        .map_err(|_| format!("invalid size {text:?}: expected e.g. 2GiB, 256MiB or 4096"))?;
    let bytes = value * multiplier as f64;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(format!("size {text:?} is too large"));
    }
    Ok(bytes.round() as u64)
}

/// Parses a rate, returning bytes per second: a size per second (`2MiB/s`, `10MB/s`,
/// `4096/s`, sizes as in [`parse_size`]) or a bit rate (`100Mbit/s`, `1.5Gbit/s`, `64kbit/s`;
/// `k`, `M`, `G`, `T` are powers of 1000, bits are rounded to the nearest byte). The `/s` may
/// be left out (`100Mbit` is a link's speed). Case-insensitive. Zero is returned as zero:
/// whether it means anything is the caller's business.
pub fn parse_rate(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let lower = trimmed.to_ascii_lowercase();
    let per = lower.strip_suffix("/s").unwrap_or(&lower).trim_end();
    let Some(head) = per.strip_suffix("bit") else {
        return parse_size(per).map_err(|e| {
            format!("{e}; write a size per second such as 2MiB/s, 10MB/s or 100Mbit/s")
        });
    };
    let (number, multiplier): (&str, u128) = match head.char_indices().last() {
        Some((i, 'k')) => (&head[..i], 1_000),
        Some((i, 'm')) => (&head[..i], 1_000_000),
        Some((i, 'g')) => (&head[..i], 1_000_000_000),
        Some((i, 't')) => (&head[..i], 1_000_000_000_000),
        _ => (head, 1),
    };
    let number = number.trim();
    let bad = || format!("not a bit rate; write e.g. 100Mbit/s or 1.5Gbit/s ({trimmed})");
    let bits: u128 = if let Ok(n) = number.parse::<u64>() {
        u128::from(n) * multiplier
    } else {
        let value: f64 = number.parse().map_err(|_| bad())?;
        if value.is_nan() || value < 0.0 {
            return Err(bad());
        }
        // Casting saturates: 3.5e38bit/s (or an infinite 1e999) becomes u128::MAX, which
        // the size check below refuses.
        (value * multiplier as f64).round() as u128
    };
    // Round to the nearest byte; saturating, so that the largest count refuses instead of
    // wrapping (or panicking) on the way to the check.
    u64::try_from(bits.saturating_add(4) / 8)
        .map_err(|_| format!("bit rate {trimmed} is too large"))
}

/// Parses a duration that is not negative: `500ms`, `5s`, `30m`, `2h`, `1h 30m`, `1.5s`,
/// `2 hours`, `1 hour, 30 minutes`, or ISO 8601 `PT30M`. This is jiff's "friendly" format
/// (units from hours down to nanoseconds; days and longer are refused, as their length
/// varies), read case-insensitively so that `5S` and `500MS` mean what they meant in the
/// throttle grammar.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?} is not a duration; write e.g. 500ms or 5s, 30m or 1h 30m");
    // jiff's unit words are all lower case, and so are ISO 8601's once lowered: lowering
    // first only widens what is accepted, never changes a meaning.
    let d: jiff::SignedDuration = text
        .trim()
        .to_ascii_lowercase()
        .parse()
        .map_err(|_| bad())?;
    Duration::try_from(d).map_err(|_| format!("{text:?}: a duration cannot be negative"))
}

/// Renders a byte count with a binary unit, e.g. `1.5 GiB`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("1.5KiB"), Ok(1536));
        assert_eq!(parse_size("500MB"), Ok(500_000_000));
        assert_eq!(parse_size("17"), Ok(17));
        assert!(parse_size("12XB").is_err());
        assert!(parse_size("x").is_err());
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(12), "12 B");
    }

    #[test]
    fn rates_as_sizes_or_bits_per_second() {
        for (text, want) in [
            ("2MiB/s", 2 << 20),
            ("10MB/s", 10_000_000),
            ("4096/s", 4096),
            ("1.5GiB/s", 3 << 29),
            ("100Mbit/s", 12_500_000),
            ("1.5Gbit/s", 187_500_000),
            ("64kbit/s", 8_000),
            ("1Tbit/s", 125_000_000_000),
            ("12bit/s", 2), // rounded to the nearest byte
            // The throttle's link form: `/s` left out; any case; spaces as the text form joins.
            ("100Mbit", 12_500_000),
            ("2MiB", 2 << 20),
            ("5mib/S", 5 << 20),
            ("100MBIT/S", 12_500_000),
            (" 5MiB /s ", 5 << 20),
            ("0/s", 0),
        ] {
            assert_eq!(parse_rate(text), Ok(want), "{text:?}");
        }
        for (text, remedy) in [
            ("12XB/s", "write a size per second"),
            ("fast", "write a size per second"),
            ("unlimited", "write a size per second"),
            ("xMbit/s", "write e.g. 100Mbit/s"),
            ("-1Mbit/s", "write e.g. 100Mbit/s"),
            ("99999999999999999999Tbit/s", "too large"),
            // Beyond u128 as a float: once an overflow (a panic in debug builds, a rate of
            // 0 in release ones).
            ("3.5e38bit/s", "too large"),
            ("3e38Tbit/s", "too large"),
            ("1e999bit/s", "too large"),
        ] {
            let e = parse_rate(text).expect_err(text);
            assert!(e.contains(remedy), "{text:?}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn durations_in_the_union_of_both_old_grammars() {
        let ms = Duration::from_millis;
        for (text, want) in [
            // The throttle's pulse delays: a whole number and ms, s, m, min or h, any case.
            ("500ms", ms(500)),
            ("5s", ms(5_000)),
            ("1m", ms(60_000)),
            ("2min", ms(120_000)),
            ("2h", ms(7_200_000)),
            ("5S", ms(5_000)),
            ("500MS", ms(500)),
            ("1H", ms(3_600_000)),
            ("0s", Duration::ZERO),
            // freightd.toml: jiff's friendly format and ISO 8601.
            ("30m", ms(1_800_000)),
            ("1h 30m", ms(5_400_000)),
            ("1h30m", ms(5_400_000)),
            ("1.5s", ms(1_500)),
            ("2 hours", ms(7_200_000)),
            ("1 hour, 30 minutes", ms(5_400_000)),
            ("PT30M", ms(1_800_000)),
            ("250us", Duration::from_micros(250)),
            (" 5s ", ms(5_000)),
        ] {
            assert_eq!(parse_duration(text), Ok(want), "{text:?}");
        }
        for (text, phrase) in [
            ("soon", "not a duration"),
            ("5", "not a duration"),
            ("", "not a duration"),
            ("5x", "e.g. 500ms or 5s"),
            ("1d", "not a duration"),
            ("-5s", "cannot be negative"),
            ("5s ago", "cannot be negative"),
        ] {
            let e = parse_duration(text).expect_err(text);
            assert!(e.contains(phrase), "{text:?}: {e}");
            assert!(e.contains(&format!("{text:?}")), "{e}");
        }
    }
}
