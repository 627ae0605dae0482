//! Rows written with `COPY ... FROM STDIN (FORMAT binary)`: the runner's bulk path.
//!
//! A batch's new rows go to PostgreSQL as one COPY per table instead of an
//! `INSERT ... SELECT FROM UNNEST(...)`: PostgreSQL parses no statement, builds no arrays
//! and runs no executor per row, which is most of what a row insert costs it. COPY has no
//! `ON CONFLICT`, so it carries only rows that cannot exist yet (see `records`).
//!
//! The field encodings are sqlx's own (`sqlx::Encode`, the binary format it binds
//! parameters in); this module adds only the framing of PostgreSQL's binary COPY format
//! (a signature, a field count per row, a length before each field, a trailer), documented
//! in the PostgreSQL manual under COPY, "Binary Format".

use sqlx::encode::IsNull;
use sqlx::postgres::{PgArgumentBuffer, PgConnection, Postgres};
use sqlx::Encode;

use crate::error::ProjectionError;

/// How much of the COPY stream is handed to sqlx at a time.
const SEND_SLICE: usize = 256 * 1024;

/// The signature, flags and header-extension length that open every binary COPY stream.
const HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

/// The rows of one table, encoded for a binary COPY.
pub(crate) struct CopyRows {
    buf: PgArgumentBuffer,
    fields: i16,
    rows: usize,
    /// Fields written in the current row (checked against `fields`).
    in_row: i16,
}

impl CopyRows {
    pub fn new(fields: i16) -> Self {
        let mut buf = PgArgumentBuffer::default();
        buf.extend_from_slice(HEADER);
        Self { buf, fields, rows: 0, in_row: fields }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.rows
    }

    /// Start a row; its `fields` values follow.
    pub fn row(&mut self) -> &mut Self {
        debug_assert_eq!(self.in_row, self.fields, "previous row incomplete");
        self.buf.extend_from_slice(&self.fields.to_be_bytes());
        self.rows += 1;
        self.in_row = 0;
        self
    }

    /// One field, in sqlx's binary encoding of its type (`None` is NULL).
    pub fn put<'q, T: Encode<'q, Postgres>>(&mut self, value: T) -> Result<&mut Self, ProjectionError> {
        let at = self.buf.len();
        self.buf.extend_from_slice(&[0; 4]);
        let len = match value.encode(&mut self.buf) {
            Ok(IsNull::No) => i32::try_from(self.buf.len() - at - 4)
                .map_err(|_| ProjectionError::Corrupt { what: "copy field size" })?,
            Ok(IsNull::Yes) => {
                self.buf.truncate(at + 4);
                -1
            }
            Err(_) => return Err(ProjectionError::Corrupt { what: "copy field encoding" }),
        };
        self.buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
        self.in_row += 1;
        Ok(self)
    }

    /// A `jsonb` field from JSON text (binary `jsonb` is a version byte, 1, then the text).
    pub fn put_jsonb(&mut self, json: &str) -> Result<&mut Self, ProjectionError> {
        let len = i32::try_from(json.len() + 1)
            .map_err(|_| ProjectionError::Corrupt { what: "copy field size" })?;
        self.buf.extend_from_slice(&len.to_be_bytes());
        self.buf.push(1);
        self.buf.extend_from_slice(json.as_bytes());
        self.in_row += 1;
        Ok(self)
    }

    /// A `json` field from JSON text (binary `json` is the text itself).
    pub fn put_json(&mut self, json: &str) -> Result<&mut Self, ProjectionError> {
        self.put(json)
    }

    /// Send the rows to `target` (`schema.table (columns)`) in the caller's transaction.
    pub async fn copy_into(mut self, conn: &mut PgConnection, target: &str) -> Result<(), ProjectionError> {
        if self.rows == 0 {
            return Ok(());
        }
        debug_assert_eq!(self.in_row, self.fields, "last row incomplete");
        self.buf.extend_from_slice(&(-1i16).to_be_bytes());
        let mut copy = conn.copy_in_raw(&format!("COPY {target} FROM STDIN (FORMAT binary)")).await?;
        // In slices: sqlx copies what it is given into the connection's write buffer before
        // flushing, so one send of a whole batch (tens of MB) would grow that buffer to the
        // batch's size (page faults and copies on every batch). A failed send leaves the
        // COPY open; abort it so the connection stays usable (the transaction is rolled
        // back by the caller).
        for slice in self.buf.chunks(SEND_SLICE) {
            if let Err(e) = copy.send(slice).await {
                let _ = copy.abort("send failed").await;
                return Err(e.into());
            }
        }
        copy.finish().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn every_field_type_round_trips_through_postgres() {
        let db = testdb::TestDb::new().await.unwrap();
        let mut conn = db.pool().acquire().await.unwrap();
        sqlx::query(
            "CREATE TABLE t (u uuid, i int, b bigint, f boolean, s text, a text[], j jsonb, ts timestamptz, d date, \
             js json, e text[])",
        )
        .execute(&mut *conn)
        .await
        .unwrap();
        let id = uuid::Uuid::now_v7();
        let at = time::macros::datetime!(2026-12-01 06:22:18.123456 UTC);
        let names = vec!["Zoë \"tab\t\"".to_owned(), String::new(), "\\{,}".to_owned()];
        let mut rows = CopyRows::new(11);
        rows.row()
            .put(id)
            .unwrap()
            .put(-7i32)
            .unwrap()
            .put(i64::MAX)
            .unwrap()
            .put(true)
            .unwrap()
            .put("line\nbreak\\ \u{0}x".replace('\u{0}', ""))
            .unwrap()
            .put(&names)
            .unwrap()
            .put_jsonb(r#"{"k": ["é", 1.5, null]}"#)
            .unwrap()
            .put(at)
            .unwrap()
            .put(time::macros::date!(1931 - 02 - 28))
            .unwrap()
            .put_json(r#"{"b": 1,  "a": "x"}"#)
            .unwrap()
            .put(Vec::<String>::new())
            .unwrap();
        rows.row();
        for _ in 0..11 {
            rows.put(None::<String>).unwrap();
        }
        assert_eq!(rows.len(), 2);
        rows.copy_into(&mut conn, "t (u, i, b, f, s, a, j, ts, d, js, e)").await.unwrap();
        let back: (
            uuid::Uuid,
            i32,
            i64,
            bool,
            String,
            Vec<String>,
            String,
            time::OffsetDateTime,
            time::Date,
        ) = sqlx::query_as("SELECT u, i, b, f, s, a, j::text, ts, d FROM t WHERE u IS NOT NULL")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        assert_eq!(back.0, id);
        assert_eq!((back.1, back.2, back.3), (-7, i64::MAX, true));
        assert_eq!(back.4, "line\nbreak\\ x");
        assert_eq!(back.5, names);
        assert_eq!(back.6, r#"{"k": ["é", 1.5, null]}"#);
        assert_eq!((back.7, back.8), (at, time::macros::date!(1931 - 02 - 28)));
        // `json` keeps the text as sent; an empty array is an empty array, not NULL.
        let (js, e): (String, Vec<String>) = sqlx::query_as("SELECT js::text, e FROM t WHERE u IS NOT NULL")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        assert_eq!((js.as_str(), e.len()), (r#"{"b": 1,  "a": "x"}"#, 0));
        let nulls: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM t WHERE num_nulls(u, i, b, f, s, a, j, ts, d, js, e) = 11",
        )
        .fetch_one(&mut *conn)
        .await
        .unwrap();
        assert_eq!(nulls, 1);
    }

    #[tokio::test]
    async fn a_rejected_copy_leaves_the_connection_usable_and_writes_nothing() {
        let db = testdb::TestDb::new().await.unwrap();
        let mut conn = db.pool().acquire().await.unwrap();
        sqlx::query("CREATE TABLE t (k int PRIMARY KEY)").execute(&mut *conn).await.unwrap();
        let mut rows = CopyRows::new(1);
        rows.row().put(1i32).unwrap();
        rows.row().put(1i32).unwrap();
        let err = rows.copy_into(&mut conn, "t (k)").await.unwrap_err();
        assert_eq!(err.code(), "projection.database");
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM t").fetch_one(&mut *conn).await.unwrap();
        assert_eq!(n, 0);
    }

    #[tokio::test]
    async fn a_stream_of_many_slices_arrives_whole() {
        let db = testdb::TestDb::new().await.unwrap();
        let mut conn = db.pool().acquire().await.unwrap();
        sqlx::query("CREATE TABLE t (k int PRIMARY KEY, s text)").execute(&mut *conn).await.unwrap();
        // Rows straddle slice boundaries: 3,000 rows of ~700 bytes is about 8 slices.
        let text: String = (0..700).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
        let mut rows = CopyRows::new(2);
        for k in 0..3000i32 {
            rows.row().put(k).unwrap().put(format!("{k}:{text}")).unwrap();
        }
        rows.copy_into(&mut conn, "t (k, s)").await.unwrap();
        let (n, sum, ok): (i64, i64, bool) =
            sqlx::query_as("SELECT count(*), sum(k), bool_and(s = k || ':' || $1) FROM t")
                .bind(&text)
                .fetch_one(&mut *conn)
                .await
                .unwrap();
        assert_eq!((n, sum, ok), (3000, 2999 * 3000 / 2, true));
    }
}
