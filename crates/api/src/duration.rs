//! Durations in the Gateway API syntax (GEP-2257): one to four `<digits><unit>` groups, units
//! `h`, `m`, `s` and `ms`, in decreasing order, for example `1h30m`, `10s`, `250ms` or `0s`.

use std::fmt;
use std::time::Duration;

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty duration")]
    Empty,
    #[error(
        "invalid duration {0:?}: expected groups of digits and a unit (h, m, s, ms), e.g. 1m30s or 250ms"
    )]
    Syntax(String),
    #[error("invalid duration {0:?}: units must appear once each, largest first")]
    Order(String),
    #[error("invalid duration {0:?}: each number has at most 5 digits")]
    TooLong(String),
}

/// Parses a Gateway API duration.
pub fn parse(input: &str) -> Result<Duration, DurationError> {
    if input.is_empty() {
        return Err(DurationError::Empty);
    }
    let bytes = input.as_bytes();
    let mut total = Duration::ZERO;
    let mut i = 0;
    // Rank of the previous unit: h=4, m=3, s=2, ms=1; each must be strictly smaller.
    let mut last_rank = u8::MAX;
    let mut groups = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return Err(DurationError::Syntax(input.to_owned()));
        }
        if i - start > 5 {
            return Err(DurationError::TooLong(input.to_owned()));
        }
        let value: u64 = input[start..i]
            .parse()
            .map_err(|_| DurationError::Syntax(input.to_owned()))?;
        let (rank, unit, len) = match &bytes[i..] {
            [b'm', b's', ..] => (1, Duration::from_millis(1), 2),
            [b'h', ..] => (4, Duration::from_secs(3600), 1),
            [b'm', ..] => (3, Duration::from_secs(60), 1),
            [b's', ..] => (2, Duration::from_secs(1), 1),
            _ => return Err(DurationError::Syntax(input.to_owned())),
        };
        if rank >= last_rank {
            return Err(DurationError::Order(input.to_owned()));
        }
        last_rank = rank;
        i += len;
        groups += 1;
        total +=
            unit * u32::try_from(value).map_err(|_| DurationError::TooLong(input.to_owned()))?;
    }
    if groups > 4 {
        return Err(DurationError::Syntax(input.to_owned()));
    }
    Ok(total)
}

/// Formats a duration in the same syntax, the shortest exact form (`90s` is `1m30s`).
pub fn format(d: Duration) -> String {
    let mut ms = d.as_millis();
    if ms == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    for (unit_ms, suffix) in [(3_600_000, "h"), (60_000, "m"), (1000, "s"), (1, "ms")] {
        if ms >= unit_ms {
            out.push_str(&(ms / unit_ms).to_string());
            out.push_str(suffix);
            ms %= unit_ms;
        }
    }
    out
}

/// A duration that reads and writes itself in the Gateway API syntax.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Dur(pub Duration);

/// In a CRD, a duration is a string in the Gateway API syntax (GEP-2257).
#[cfg(feature = "schema")]
impl schemars::JsonSchema for Dur {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^([0-9]{1,5}(h|m|s|ms)){1,4}$",
            "description": "A duration: one to four <digits><unit> groups, units h, m, s, ms, largest first (e.g. 1m30s, 250ms)."
        })
    }
}

impl Dur {
    pub const fn from_millis(ms: u64) -> Self {
        Dur(Duration::from_millis(ms))
    }
    pub const fn from_secs(s: u64) -> Self {
        Dur(Duration::from_secs(s))
    }
}

impl fmt::Debug for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format(self.0))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format(self.0))
    }
}

impl std::str::FromStr for Dur {
    type Err = DurationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse(s).map(Dur)
    }
}

impl From<Dur> for Duration {
    fn from(d: Dur) -> Duration {
        d.0
    }
}

impl serde::Serialize for Dur {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(self.0))
    }
}

impl<'de> serde::Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).map(Dur).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_gateway_api_forms() {
        let cases = [
            ("0s", 0),
            ("1s", 1000),
            ("250ms", 250),
            ("1m30s", 90_000),
            ("1h", 3_600_000),
            ("1h2m3s4ms", 3_723_004),
            ("99999ms", 99_999),
        ];
        for (input, ms) in cases {
            assert_eq!(parse(input), Ok(Duration::from_millis(ms)), "{input}");
        }
    }

    #[test]
    fn refuses_what_the_gateway_api_refuses() {
        for input in [
            "", "1", "s", "1x", "1s1m", "1s1s", "-1s", "1.5s", "100000s", " 1s", "1s ",
        ] {
            assert!(parse(input).is_err(), "{input:?} should be refused");
        }
    }

    #[test]
    fn format_round_trips() {
        for ms in [0u64, 1, 999, 1000, 61_001, 3_600_000, 7_384_005] {
            let d = Duration::from_millis(ms);
            assert_eq!(parse(&format(d)), Ok(d));
        }
    }

    proptest::proptest! {
        #[test]
        fn never_panics(s in ".{0,24}") {
            let _ = parse(&s);
        }
    }
}
