//! Durations and sizes as settings write them (`250ms`, `1.5s`, `64MiB`): parsed in one
//! place for the YAML file, the flags of both binaries and every collector's options.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// The longest duration any setting takes: long enough for any interval or timeout,
/// short enough that adding it to the clock can never overflow.
pub const MAX_DURATION: Duration = Duration::from_hours(24 * 365);

/// Parses durations such as `250ms`, `1s`, `1.5s`, `2m`, `1h`, `7d`, up to [`MAX_DURATION`].
pub fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("{text:?} has no unit (ms, s, m, h or d)"))?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} does not start with a number"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        "d" => value * 86400.0,
        _ => {
            return Err(format!(
                "{text:?} has unknown unit {unit:?} (ms, s, m, h or d)"
            ));
        }
    };
    let duration = Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))?;
    if duration > MAX_DURATION {
        return Err(format!(
            "{text:?} is longer than the longest allowed duration, 8760h (365 days)"
        ));
    }
    Ok(duration)
}

/// Parses sizes such as `1048576`, `512KiB`, `64MiB`, `1GiB` (also `KB`, `MB`, `GB` as
/// powers of 1000).
pub fn parse_bytes(text: &str) -> std::result::Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} does not start with a whole number"))?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => {
            return Err(format!(
                "{text:?} has unknown unit {other:?} (B, KiB, MiB, GiB, KB, MB, GB)"
            ));
        }
    };
    value
        .checked_mul(factor)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// Serde: a size as a number of bytes or text such as `64MiB`.
pub fn deserialize_bytes<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Number(u64),
        Text(String),
    }
    match Size::deserialize(deserializer)? {
        Size::Number(n) => Ok(n),
        Size::Text(text) => parse_bytes(&text).map_err(serde::de::Error::custom),
    }
}

/// Serde: an optional size as a number of bytes or text such as `64MiB`.
pub fn deserialize_optional_bytes<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<u64>, D::Error> {
    deserialize_bytes(deserializer).map(Some)
}

/// Serde: a duration as text such as `250ms`.
pub fn deserialize_duration<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_duration(&text).map_err(serde::de::Error::custom)
}

/// Serde: an optional duration as text such as `250ms`.
pub fn deserialize_optional_duration<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Duration>, D::Error> {
    deserialize_duration(deserializer).map(Some)
}

/// Checks `host:port` (a host, and a port 1..=65535); the reason names the address.
pub fn check_host_port(address: &str) -> std::result::Result<(), String> {
    let Some((host, port)) = address.rsplit_once(':') else {
        return Err(format!("{address:?} is not host:port (or none)"));
    };
    if host.is_empty() || host.contains('/') {
        return Err(format!("{address:?} has no valid host"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!("{address:?} has no valid port (1..=65535)")),
    }
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::*;

    #[rstest]
    #[case::millis("250ms", Duration::from_millis(250))]
    #[case::seconds("1s", Duration::from_secs(1))]
    #[case::fraction("1.5s", Duration::from_millis(1500))]
    #[case::minutes("2m", Duration::from_mins(2))]
    #[case::hours("1h", Duration::from_hours(1))]
    fn durations_parse(#[case] text: &str, #[case] expected: Duration) {
        assert_eq!(parse_duration(text), Ok(expected));
    }

    #[rstest]
    #[case::plain("4096", 4096)]
    #[case::kibibytes("512KiB", 512 << 10)]
    #[case::mebibytes("64MiB", 64 << 20)]
    #[case::gibibytes("1GiB", 1 << 30)]
    #[case::megabytes("5MB", 5_000_000)]
    fn sizes_parse(#[case] text: &str, #[case] expected: u64) {
        assert_eq!(parse_bytes(text), Ok(expected));
    }

    #[test]
    fn bad_sizes_say_why() {
        assert!(parse_bytes("lots").unwrap_err().contains("whole number"));
        assert!(parse_bytes("5TB").unwrap_err().contains("unknown unit"));
    }

    #[rstest]
    #[case::no_unit("10", "no unit")]
    #[case::bad_unit("10w", "unknown unit")]
    #[case::no_number("s", "does not start with a number")]
    #[case::overflowing("18000000000000000000s", "longest allowed")]
    #[case::over_a_year("8761h", "longest allowed")]
    #[case::negative("-1s", "does not start with a number")]
    fn bad_durations_say_why(#[case] text: &str, #[case] expected: &str) {
        let error = parse_duration(text).unwrap_err();
        assert!(error.contains(expected), "{error}");
    }
}
