//! Human-friendly durations (`250ms`, `10s`, `2m`, `24h`) as used throughout Skein's YAML.

use serde::{Deserialize, Deserializer, Serializer};
use std::time::Duration;

/// Parses `<integer><unit>` with unit `ms`, `s`, `m` or `h`; returns `None` otherwise.
pub fn parse(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().ok()?;
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => n.checked_mul(60).map(Duration::from_secs),
        "h" => n.checked_mul(3600).map(Duration::from_secs),
        _ => None,
    }
}

/// Formats a duration in the largest unit that represents it exactly.
pub fn format(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(3_600_000) && ms > 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) && ms > 0 {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// `serde(with = "skein_model::duration")` support.
pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format(*d))
}

/// `serde(with = "skein_model::duration")` support.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    parse(&text).ok_or_else(|| {
        serde::de::Error::custom(format!(
            "invalid duration {text:?}: expected a whole number followed by ms, s, m or h (e.g. 250ms, 10s)"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_unit() {
        assert_eq!(parse("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse("24h"), Some(Duration::from_secs(86_400)));
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        for bad in ["", "10", "s", "1.5s", "-1s", "10 parsecs", "10d"] {
            assert_eq!(parse(bad), None, "{bad:?} should be refused");
        }
    }

    #[test]
    fn formats_round_trip() {
        for text in ["250ms", "10s", "2m", "24h", "0s"] {
            assert_eq!(format(parse(text).unwrap()), text);
        }
    }
}
