//! Small conversions between domain values and SQL columns.

use ledger::{Actor, RoleName};
use serde::{de::DeserializeOwned, Serialize};
use uuid::Uuid;

use crate::error::ProjectionError;

pub fn pos(p: u64) -> i64 {
    i64::try_from(p).unwrap_or(i64::MAX)
}

pub fn upos(p: i64) -> u64 {
    u64::try_from(p).unwrap_or(0)
}

/// A unit-like enum's serde name (`"soap_note"`).
pub fn name<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

/// The enum value named `s`.
pub fn parse<T: DeserializeOwned>(s: &str, what: &'static str) -> Result<T, ProjectionError> {
    serde_json::from_value(serde_json::Value::String(s.to_owned()))
        .map_err(|_| ProjectionError::Corrupt { what })
}

pub fn parse_all<T: DeserializeOwned + Ord>(
    v: &[String],
    what: &'static str,
) -> Result<std::collections::BTreeSet<T>, ProjectionError> {
    v.iter().map(|s| parse(s, what)).collect()
}

pub fn names<'a, T: Serialize + 'a>(v: impl IntoIterator<Item = &'a T>) -> Vec<String> {
    v.into_iter().map(name).collect()
}

/// A JSON document for a `jsonb` column (bound as text, cast in SQL).
pub fn json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".to_owned())
}

/// A PostgreSQL array literal of text elements (`{"a","b \\"c\\""}`): every element
/// quoted, with `\\` and `"` escaped, so any text (PHI included) round-trips through
/// `::text[]`.
pub fn array_literal<S: AsRef<str>>(items: impl IntoIterator<Item = S>) -> String {
    let mut out = String::from("{");
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('"');
        for c in item.as_ref().chars() {
            if c == '\\' || c == '"' {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
    }
    out.push('}');
    out
}

pub fn from_json<T: DeserializeOwned>(s: &str, what: &'static str) -> Result<T, ProjectionError> {
    serde_json::from_str(s).map_err(|_| ProjectionError::Corrupt { what })
}

pub fn actor(user_id: Uuid, role: &str) -> Result<Actor, ProjectionError> {
    Ok(Actor { user_id, role: RoleName::new(role).map_err(|_| ProjectionError::Corrupt { what: "role" })? })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::array_literal;

    /// Any text round-trips through the literal and `::text[]`, in order.
    #[tokio::test]
    async fn array_literals_round_trip_through_postgres() {
        let db = testdb::TestDb::new().await.unwrap();
        let cases: Vec<Vec<String>> = vec![
            vec![],
            vec![String::new()],
            vec!["NULL".into(), "null".into(), " a b ".into()],
            vec!["\"quoted\"".into(), "back\\slash".into(), "{braces},comma".into(), "'apostrophe'".into()],
            vec!["Zoë".into(), "李".into(), "tab\tnew\nline".into(), "\\\"".into()],
        ];
        for case in cases {
            let back: Vec<String> = sqlx::query_scalar("SELECT $1::text[]")
                .bind(array_literal(&case))
                .fetch_one(db.pool())
                .await
                .unwrap();
            assert_eq!(back, case);
        }
    }
}
