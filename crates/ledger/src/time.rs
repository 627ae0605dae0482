//! Recorded-at times: UTC, microseconds since the Unix epoch, as a signed 64-bit integer.

use std::fmt;

use time::{OffsetDateTime, PrimitiveDateTime};

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
        Self::from_datetime_exact(dt)
    }

    /// As a `time` value (what sqlx binds to `timestamptz`), saturating at the range
    /// `time` supports (years -9999..=9999).
    /// This is the one conversion to `time`; every crate uses it.
    pub fn to_datetime(self) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0) * 1000).unwrap_or(if self.0 > 0 {
            PrimitiveDateTime::MAX.assume_utc()
        } else {
            PrimitiveDateTime::MIN.assume_utc()
        })
    }

    /// From a `time` value read from the database, truncated to the microsecond (all
    /// `timestamptz` values are whole microseconds).
    pub fn from_datetime(t: OffsetDateTime) -> Self {
        Self(i64::try_from(t.unix_timestamp_nanos().div_euclid(1000)).unwrap_or(i64::MAX))
    }

    /// From a `time` value given by a client: `None` when it has digits finer than a
    /// microsecond (refused, never truncated).
    pub fn from_datetime_exact(t: OffsetDateTime) -> Option<Self> {
        let nanos = t.unix_timestamp_nanos();
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

    #[test]
    fn datetime_conversions_round_trip_and_saturate() {
        let t = Timestamp::from_micros(1_795_435_200_123_456);
        assert_eq!(Timestamp::from_datetime(t.to_datetime()), t);
        assert_eq!(Timestamp::from_datetime_exact(t.to_datetime()), Some(t));
        let before_epoch = Timestamp::from_micros(-1_500_001);
        assert_eq!(Timestamp::from_datetime(before_epoch.to_datetime()), before_epoch);
        assert_eq!(Timestamp::from_micros(i64::MAX).to_datetime(), PrimitiveDateTime::MAX.assume_utc());
        assert_eq!(Timestamp::from_micros(i64::MIN).to_datetime(), PrimitiveDateTime::MIN.assume_utc());
        let fine = t.to_datetime() + time::Duration::nanoseconds(1);
        assert_eq!(Timestamp::from_datetime_exact(fine), None);
        assert_eq!(Timestamp::from_datetime(fine), t);
    }
}
