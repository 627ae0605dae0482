//! Recorded-at times: UTC, microseconds since the Unix epoch, as a signed 64-bit integer.

use std::fmt;

/// A UTC instant with microsecond precision (what PostgreSQL's `timestamptz` holds).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    pub const fn from_micros(micros: i64) -> Self {
        Self(micros)
    }
    pub const fn as_micros(self) -> i64 {
        self.0
    }

    /// RFC 3339 with six fractional digits, e.g. `2026-11-23T12:00:00.000000Z`.
    /// Out-of-range instants (beyond year 9999) render as raw microseconds.
    pub fn to_rfc3339(self) -> String {
        let Ok(dt) = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0) * 1000) else {
            return format!("@{}us", self.0);
        };
        let fmt = time::macros::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
        );
        dt.format(&fmt).unwrap_or_else(|_| format!("@{}us", self.0))
    }

    /// Parse RFC 3339 (any offset; stored as UTC). Sub-microsecond digits are rejected
    /// rather than silently truncated.
    pub fn parse_rfc3339(s: &str) -> Option<Self> {
        let dt = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
        let nanos = dt.unix_timestamp_nanos();
        if nanos % 1000 != 0 {
            return None;
        }
        i64::try_from(nanos / 1000).ok().map(Self)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Timestamp({})", self.to_rfc3339())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trip() {
        let t = Timestamp::from_micros(1_795_435_200_123_456);
        assert_eq!(t.to_rfc3339(), "2026-11-23T12:00:00.123456Z");
        assert_eq!(Timestamp::parse_rfc3339(&t.to_rfc3339()), Some(t));
        assert_eq!(Timestamp::parse_rfc3339("2026-11-23T13:00:00.123456+01:00"), Some(t));
        assert_eq!(Timestamp::parse_rfc3339("2026-11-23T12:00:00.1234567Z"), None);
        assert_eq!(Timestamp::from_micros(i64::MAX).to_rfc3339(), format!("@{}us", i64::MAX));
    }
}
