//! Parses durations given on the command line: `500ms`, `10s`, `2m`, `1h`, `1.5s`.

use std::time::Duration;

/// Parses a positive duration with a unit (ns, us, µs, ms, s, m, h).
pub fn parse(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 500ms, 10s, 2m"))?;
    let scale = match unit {
        "ns" => 1e-9,
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "" => return Err(format!("duration {s:?} needs a unit (ms, s, m, h)")),
        _ => {
            return Err(format!(
                "unknown unit {unit:?} in duration {s:?} (use ns, us, ms, s, m, h)"
            ));
        }
    };
    let secs = n * scale;
    if !secs.is_finite() || secs <= 0.0 || secs > 366.0 * 86400.0 {
        return Err(format!("duration {s:?} out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("250us"), Ok(Duration::from_micros(250)));
    }

    #[test]
    fn rejects_bad_input() {
        for bad in ["", "10", "s", "-1s", "0s", "1x", "1e9h", "nan", "1..2s"] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
