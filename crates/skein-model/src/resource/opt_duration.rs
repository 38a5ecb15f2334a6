//! `serde(with = "…::opt_duration")` for optional durations (`Option<Duration>`), written
//! like [`crate::duration`]: `250ms`, `10s`, `2m`, `24h`; absent or `null` is `None`.

use serde::{Deserialize, Deserializer, Serializer};
use std::time::Duration;

/// Writes `Some(d)` as a duration string and `None` as null (pair it with
/// `skip_serializing_if = "Option::is_none"`).
pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => crate::duration::serialize(d, s),
        None => s.serialize_none(),
    }
}

/// Reads an optional duration string; the error names the accepted form.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    match Option::<String>::deserialize(d)? {
        None => Ok(None),
        Some(text) => crate::duration::parse(&text).map(Some).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "invalid duration {text:?}: expected a whole number followed by ms, s, m or h (e.g. 250ms, 10s)"
            ))
        }),
    }
}
