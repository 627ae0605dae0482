//! JSON forms of times in payloads: instants as RFC 3339 UTC with microseconds (the
//! ledger's precision), dates as `YYYY-MM-DD`.

use ledger::Timestamp;
use serde::{Deserialize, Deserializer, Serializer};

pub mod instant {
    use super::*;

    pub fn serialize<S: Serializer>(t: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.to_rfc3339())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Timestamp::parse_rfc3339(&s).ok_or_else(|| serde::de::Error::custom("malformed instant"))
    }
}

const DATE: &[time::format_description::FormatItem<'static>] =
    time::macros::format_description!("[year]-[month]-[day]");

pub fn format_date(d: time::Date) -> String {
    d.format(DATE).unwrap_or_default()
}

pub fn parse_date(s: &str) -> Option<time::Date> {
    time::Date::parse(s, DATE).ok()
}

pub mod date {
    use super::*;

    pub fn serialize<S: Serializer>(d: &time::Date, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_date(*d))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<time::Date, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        parse_date(&s).ok_or_else(|| serde::de::Error::custom("malformed date"))
    }
}

pub mod opt_date {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Option<time::Date>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&format_date(*d)),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<time::Date>, D::Error> {
        let s = <Option<std::borrow::Cow<'de, str>>>::deserialize(d)?;
        s.map(|s| parse_date(&s).ok_or_else(|| serde::de::Error::custom("malformed date"))).transpose()
    }
}
