//! One descriptor per read-model table ([`Table`]): its name, its primary key, and its
//! columns in the table's order, each with its name, its SQL type and how to get its
//! value from the domain value a row is made of. The COPY of new rows ([`NewRows`]), the
//! upsert of the others ([`Upserts`]) and the select list that loads rows back
//! ([`Table::select_list`]) are all driven by it, so adding a column touches the SQL and
//! the table's descriptor (`records/tables.rs`), nothing else.
//!
//! A row is a domain value `T` (a chart, an entry, a consent version, ...) under the keys
//! `K` it does not carry itself (the patient's id, an entry's id).

use std::borrow::Cow;

use sqlx::PgConnection;
use uuid::Uuid;

use crate::copy::CopyRows;
use crate::error::ProjectionError;
use crate::sqlmap::array_literal;

/// How a column's value is got from a row, by the column's SQL type (`None` is NULL).
pub(crate) enum Get<K, T> {
    Uuid(fn(&K, &T) -> Option<Uuid>),
    Bool(fn(&K, &T) -> bool),
    Int(fn(&K, &T) -> Option<i32>),
    BigInt(fn(&K, &T) -> Option<i64>),
    Text(for<'a> fn(&'a K, &'a T) -> Option<Cow<'a, str>>),
    /// `text[]`.
    Texts(for<'a> fn(&'a K, &'a T) -> Option<Cow<'a, [String]>>),
    Date(fn(&K, &T) -> Option<time::Date>),
    Time(fn(&K, &T) -> Option<time::OffsetDateTime>),
    /// A `jsonb` document, as JSON text.
    Jsonb(fn(&K, &T) -> Option<String>),
    /// Entry content, as JSON text: `json`, or `jsonb` in a generation made before it
    /// became `json` ([`crate::records::ChartCache::content_jsonb`]).
    Content(fn(&K, &T) -> String),
}

/// A column of a read-model table.
pub(crate) struct Column<K, T> {
    pub(crate) name: &'static str,
    /// Set by an upsert that finds the row (else kept as first inserted); key columns
    /// are never set.
    updated: bool,
    get: Get<K, T>,
}

impl<K, T> Column<K, T> {
    const fn new(name: &'static str, get: Get<K, T>) -> Self {
        Self { name, updated: true, get }
    }
    pub(crate) const fn uuid(name: &'static str, f: fn(&K, &T) -> Option<Uuid>) -> Self {
        Self::new(name, Get::Uuid(f))
    }
    pub(crate) const fn boolean(name: &'static str, f: fn(&K, &T) -> bool) -> Self {
        Self::new(name, Get::Bool(f))
    }
    pub(crate) const fn int(name: &'static str, f: fn(&K, &T) -> Option<i32>) -> Self {
        Self::new(name, Get::Int(f))
    }
    pub(crate) const fn bigint(name: &'static str, f: fn(&K, &T) -> Option<i64>) -> Self {
        Self::new(name, Get::BigInt(f))
    }
    pub(crate) const fn text(
        name: &'static str,
        f: for<'a> fn(&'a K, &'a T) -> Option<Cow<'a, str>>,
    ) -> Self {
        Self::new(name, Get::Text(f))
    }
    pub(crate) const fn texts(
        name: &'static str,
        f: for<'a> fn(&'a K, &'a T) -> Option<Cow<'a, [String]>>,
    ) -> Self {
        Self::new(name, Get::Texts(f))
    }
    pub(crate) const fn date(name: &'static str, f: fn(&K, &T) -> Option<time::Date>) -> Self {
        Self::new(name, Get::Date(f))
    }
    pub(crate) const fn time(name: &'static str, f: fn(&K, &T) -> Option<time::OffsetDateTime>) -> Self {
        Self::new(name, Get::Time(f))
    }
    pub(crate) const fn jsonb(name: &'static str, f: fn(&K, &T) -> Option<String>) -> Self {
        Self::new(name, Get::Jsonb(f))
    }
    pub(crate) const fn content(name: &'static str, f: fn(&K, &T) -> String) -> Self {
        Self::new(name, Get::Content(f))
    }
    /// Written when the row is inserted and left as it is by an upsert that finds it.
    pub(crate) const fn kept(mut self) -> Self {
        self.updated = false;
        self
    }

    /// Whether the column holds JSON (read back as text).
    fn is_json(&self) -> bool {
        matches!(self.get, Get::Jsonb(_) | Get::Content(_))
    }

    /// The array type an upsert binds the column's values as, and the expression that
    /// turns an element (named `u`) back into the column's type.
    fn unnest(&self, u: &str) -> (&'static str, String) {
        match self.get {
            Get::Uuid(_) => ("uuid[]", u.to_owned()),
            Get::Bool(_) => ("bool[]", u.to_owned()),
            Get::Int(_) => ("int[]", u.to_owned()),
            Get::BigInt(_) => ("bigint[]", u.to_owned()),
            Get::Text(_) => ("text[]", u.to_owned()),
            // sqlx binds no two-dimensional arrays: each row's array goes as a literal
            // (`array_literal`), turned into `text[]` per row in SQL.
            Get::Texts(_) => ("text[]", format!("{u}::text[]")),
            Get::Date(_) => ("date[]", u.to_owned()),
            Get::Time(_) => ("timestamptz[]", u.to_owned()),
            Get::Jsonb(_) => ("text[]", format!("{u}::jsonb")),
            Get::Content(_) => ("text[]", format!("{u}::json")),
        }
    }
}

/// A read-model table's descriptor.
pub(crate) struct Table<K: 'static, T: 'static> {
    pub(crate) name: &'static str,
    /// The primary key, in its order (an upsert's conflict target).
    pub(crate) key: &'static [&'static str],
    /// Every column written, in the table's order.
    pub(crate) columns: &'static [Column<K, T>],
}

impl<K, T> Table<K, T> {
    /// `schema.table (column, ...)`: where a COPY or an insert writes.
    fn target(&self, schema: &str) -> String {
        let names: Vec<&str> = self.columns.iter().map(|c| c.name).collect();
        format!("{schema}.{} ({})", self.name, names.join(", "))
    }

    /// The columns, for a `SELECT` that loads rows back (JSON as text).
    pub(crate) fn select_list(&self) -> String {
        let list: Vec<String> = self
            .columns
            .iter()
            .map(|c| if c.is_json() { format!("{0}::text AS {0}", c.name) } else { c.name.to_owned() })
            .collect();
        list.join(", ")
    }

    /// The columns that are not part of the primary key, in the table's order.
    pub(crate) fn non_key(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.columns.iter().map(|c| c.name).filter(|n| !self.key.contains(n))
    }

    /// `INSERT ... SELECT FROM UNNEST(...) ON CONFLICT (key) DO UPDATE` of every column,
    /// one array parameter per column, setting the updated ones.
    fn upsert_sql(&self, schema: &str) -> String {
        let mut params = Vec::new();
        let mut exprs = Vec::new();
        let mut names = Vec::new();
        for (i, c) in self.columns.iter().enumerate() {
            let u = format!("c{i}");
            let (array, expr) = c.unnest(&u);
            params.push(format!("${}::{array}", i + 1));
            exprs.push(expr);
            names.push(u);
        }
        let set: Vec<String> = self
            .columns
            .iter()
            .filter(|c| c.updated && !self.key.contains(&c.name))
            .map(|c| format!("{0} = EXCLUDED.{0}", c.name))
            .collect();
        let action =
            if set.is_empty() { "NOTHING".to_owned() } else { format!("UPDATE SET {}", set.join(", ")) };
        format!(
            "INSERT INTO {} SELECT {} FROM UNNEST({}) AS u({}) ON CONFLICT ({}) DO {action}",
            self.target(schema),
            exprs.join(", "),
            params.join(", "),
            names.join(", "),
            self.key.join(", "),
        )
    }
}

/// New rows of a table (rows that cannot exist yet), encoded for a binary COPY.
pub(crate) struct NewRows<K: 'static, T: 'static> {
    table: &'static Table<K, T>,
    rows: CopyRows,
    /// Send entry content as `jsonb` ([`Get::Content`]).
    content_jsonb: bool,
}

impl<K, T> NewRows<K, T> {
    pub(crate) fn new(table: &'static Table<K, T>, content_jsonb: bool) -> Self {
        let fields = i16::try_from(table.columns.len()).unwrap_or(i16::MAX);
        Self { table, rows: CopyRows::new(fields), content_jsonb }
    }

    pub(crate) fn push(&mut self, k: &K, t: &T) -> Result<(), ProjectionError> {
        let rows = self.rows.row();
        for c in self.table.columns {
            match c.get {
                Get::Uuid(f) => rows.put(f(k, t))?,
                Get::Bool(f) => rows.put(f(k, t))?,
                Get::Int(f) => rows.put(f(k, t))?,
                Get::BigInt(f) => rows.put(f(k, t))?,
                Get::Text(f) => rows.put(f(k, t).as_deref())?,
                Get::Texts(f) => rows.put(f(k, t).as_deref())?,
                Get::Date(f) => rows.put(f(k, t))?,
                Get::Time(f) => rows.put(f(k, t))?,
                Get::Jsonb(f) => match f(k, t) {
                    Some(json) => rows.put_jsonb(&json)?,
                    None => rows.put(None::<&str>)?,
                },
                Get::Content(f) if self.content_jsonb => rows.put_jsonb(&f(k, t))?,
                Get::Content(f) => rows.put_json(&f(k, t))?,
            };
        }
        Ok(())
    }

    /// Send the rows in the caller's transaction.
    pub(crate) async fn write(self, conn: &mut PgConnection, schema: &str) -> Result<(), ProjectionError> {
        self.rows.copy_into(conn, &self.table.target(schema)).await
    }
}

/// Rows of a table that may exist already, gathered column by column for one upsert.
pub(crate) struct Upserts<K: 'static, T: 'static> {
    table: &'static Table<K, T>,
    columns: Vec<Values>,
    rows: usize,
}

/// One column's values, as the array an upsert binds.
enum Values {
    Uuid(Vec<Option<Uuid>>),
    Bool(Vec<bool>),
    Int(Vec<Option<i32>>),
    BigInt(Vec<Option<i64>>),
    /// Text, text arrays (as literals) and JSON.
    Text(Vec<Option<String>>),
    Date(Vec<Option<time::Date>>),
    Time(Vec<Option<time::OffsetDateTime>>),
}

impl Values {
    fn of<K, T>(get: &Get<K, T>) -> Self {
        match get {
            Get::Uuid(_) => Self::Uuid(Vec::new()),
            Get::Bool(_) => Self::Bool(Vec::new()),
            Get::Int(_) => Self::Int(Vec::new()),
            Get::BigInt(_) => Self::BigInt(Vec::new()),
            Get::Text(_) | Get::Texts(_) | Get::Jsonb(_) | Get::Content(_) => Self::Text(Vec::new()),
            Get::Date(_) => Self::Date(Vec::new()),
            Get::Time(_) => Self::Time(Vec::new()),
        }
    }
}

impl<K, T> Upserts<K, T> {
    pub(crate) fn new(table: &'static Table<K, T>) -> Self {
        Self { table, columns: table.columns.iter().map(|c| Values::of(&c.get)).collect(), rows: 0 }
    }

    pub(crate) fn push(&mut self, k: &K, t: &T) -> Result<(), ProjectionError> {
        for (c, values) in self.table.columns.iter().zip(&mut self.columns) {
            match (&c.get, values) {
                (Get::Uuid(f), Values::Uuid(v)) => v.push(f(k, t)),
                (Get::Bool(f), Values::Bool(v)) => v.push(f(k, t)),
                (Get::Int(f), Values::Int(v)) => v.push(f(k, t)),
                (Get::BigInt(f), Values::BigInt(v)) => v.push(f(k, t)),
                (Get::Text(f), Values::Text(v)) => v.push(f(k, t).map(Cow::into_owned)),
                (Get::Texts(f), Values::Text(v)) => v.push(f(k, t).map(|a| array_literal(a.iter()))),
                (Get::Jsonb(f), Values::Text(v)) => v.push(f(k, t)),
                (Get::Content(f), Values::Text(v)) => v.push(Some(f(k, t))),
                (Get::Date(f), Values::Date(v)) => v.push(f(k, t)),
                (Get::Time(f), Values::Time(v)) => v.push(f(k, t)),
                _ => return Err(ProjectionError::Corrupt { what: "upsert column type" }),
            }
        }
        self.rows += 1;
        Ok(())
    }

    /// Upsert the rows in the caller's transaction.
    pub(crate) async fn write(self, conn: &mut PgConnection, schema: &str) -> Result<(), ProjectionError> {
        if self.rows == 0 {
            return Ok(());
        }
        let sql = self.table.upsert_sql(schema);
        let mut query = sqlx::query(&sql);
        for values in self.columns {
            query = match values {
                Values::Uuid(v) => query.bind(v),
                Values::Bool(v) => query.bind(v),
                Values::Int(v) => query.bind(v),
                Values::BigInt(v) => query.bind(v),
                Values::Text(v) => query.bind(v),
                Values::Date(v) => query.bind(v),
                Values::Time(v) => query.bind(v),
            };
        }
        query.execute(conn).await?;
        Ok(())
    }
}
