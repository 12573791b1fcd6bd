//! Go's `time.Duration` text (`"1h30m0s"`, `"45s"`, `"1.5h"`, `"300ms"`), the format of hoop's
//! `jit.timeout` spec value (the gateway parses it with `time.ParseDuration`).
//!
//! Hand-written on purpose: it is a dozen lines, and the Rust crates that parse "human"
//! durations accept other syntaxes (spaces, `days`, `min`) that Go refuses, which would make
//! the agent more lenient than the gateway that produced the value.

use std::time::Duration;

/// Parses a Go duration. Negative, empty or malformed values are `None`.
pub fn parse(text: &str) -> Option<Duration> {
    let mut rest = text.trim();
    if rest == "0" {
        return Some(Duration::ZERO);
    }
    if rest.is_empty() || rest.starts_with('-') {
        return None;
    }
    rest = rest.strip_prefix('+').unwrap_or(rest);
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, tail) = rest.split_at(num_len);
        let value: f64 = num.parse().ok()?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += value * scale;
        rest = tail;
    }
    Duration::try_from_secs_f64(total).ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_go_prints_and_accepts() {
        let s = |n| Some(Duration::from_secs(n));
        assert_eq!(parse("1h30m0s"), s(5400));
        assert_eq!(parse("45s"), s(45));
        assert_eq!(parse("15m"), s(900));
        assert_eq!(parse("1.5h"), s(5400));
        assert_eq!(parse("300ms"), Some(Duration::from_millis(300)));
        assert_eq!(parse("0"), Some(Duration::ZERO));
        for bad in ["", "-5s", "5", "5 s", "5d", "h", "1x2s", "1..5s"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }
}
