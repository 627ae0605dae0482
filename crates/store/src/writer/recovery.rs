//! The writer's connection, and recovery when a commit fails.
//!
//! The writer connects, takes the ledger's session advisory lock ([`WRITER_LOCK`]; a
//! second process waits) and loads its state (head, Merkle frontier, last recorded time)
//! from the database. If a commit fails otherwise than on an event id already stored, or
//! the connection drops, the writer reconnects (a bounded wait for the lock), reloads head
//! and frontier from the database, and checks the stored hashes at the batch's first and
//! last positions to answer truthfully: committed, not written (retrying is safe), or,
//! when the database stays unreachable, outcome unknown.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ledger::merkle::Frontier;
use ledger::Timestamp;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{Connection, Row};

use super::commit::{answer_unwritten, settle};
use super::gather::requeue_front;
use super::{AppendRequest, LedgerState, NewRow, Prepared, Writer, WRITER_LOCK};
use crate::error::StoreError;
use crate::nodes::fetch_nodes;
use crate::Head;

/// Connect, take the writer lock (waiting for another writer to go away; with
/// `lock_timeout`, at most that long), load the state.
pub(crate) async fn connect_writer(
    opts: &PgConnectOptions,
    lock_timeout: Option<Duration>,
) -> Result<(PgConnection, LedgerState), StoreError> {
    let mut conn = connect_session(opts).await?;
    if let Some(t) = lock_timeout {
        sqlx::query(&format!("SET lock_timeout = {}", t.as_millis().max(1))).execute(&mut conn).await?;
    }
    sqlx::query("SELECT pg_advisory_lock($1)").bind(WRITER_LOCK).execute(&mut conn).await?;
    sqlx::query("SET lock_timeout = 0").execute(&mut conn).await?;
    let state = load_state(&mut conn).await?;
    Ok((conn, state))
}

/// A writer-side session: durable commits, and index access only. Every statement the
/// writer runs (and the gapless trigger's probes, planned in this session) finds its rows
/// through an index; with sequential scans off, the generic plans PostgreSQL caches after
/// a few runs use those indexes even when they were made while the table was small, and
/// stay right as the ledger grows without waiting for an ANALYZE. Planning every run anew
/// (`force_custom_plan`) would cost about 0.3 ms per commit.
pub(super) async fn connect_session(opts: &PgConnectOptions) -> Result<PgConnection, StoreError> {
    let mut conn = PgConnection::connect_with(opts).await?;
    sqlx::query("SET synchronous_commit = on").execute(&mut conn).await?;
    sqlx::query("SET enable_seqscan = off").execute(&mut conn).await?;
    Ok(conn)
}

/// Head, Merkle frontier and last recorded time, from the database.
pub(crate) async fn load_state(conn: &mut PgConnection) -> Result<LedgerState, StoreError> {
    let row = sqlx::query("SELECT position, recorded_at FROM ledger_events ORDER BY position DESC LIMIT 1")
        .fetch_optional(&mut *conn)
        .await?;
    let (head, last_micros) = match row {
        None => (0, i64::MIN),
        Some(r) => {
            let p: i64 = r.try_get("position")?;
            let t: time::OffsetDateTime = r.try_get("recorded_at")?;
            (p as u64 + 1, Timestamp::from_datetime(t).as_micros())
        }
    };
    let parts = Frontier::node_ids(head);
    let found = fetch_nodes(&mut *conn, &parts).await?;
    let hashes = parts
        .iter()
        .map(|n| {
            found.get(n).copied().ok_or(StoreError::Corrupt { position: head, reason: "missing Merkle node" })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let frontier = Frontier::from_parts(head, hashes)
        .map_err(|_| StoreError::Corrupt { position: head, reason: "inconsistent Merkle frontier" })?;
    Ok(LedgerState { head, frontier, last_micros })
}

/// Did the database connection fail (rather than a statement, or the store itself)? Only
/// database errors are: the store's own failures (a task, the random number generator)
/// say nothing about the connection.
pub(super) fn is_broken_connection(e: &StoreError) -> bool {
    matches!(e, StoreError::Database(d) if is_connection_error(d))
}

/// Did the connection itself fail (rather than the statement)? I/O and protocol errors,
/// and the server's own: connection exceptions (SQLSTATE class 08) and operator
/// intervention such as `pg_terminate_backend` or a shutdown (57P01-57P03).
fn is_connection_error(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::Protocol(_) | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(d) => d.code().is_some_and(|c| c.starts_with("08") || c.starts_with("57P")),
        _ => false,
    }
}

/// Did the commit fail only because an event id is already stored (a retry of an event
/// planned without a look-up)? Then nothing was written.
pub(super) fn is_event_id_conflict(e: &StoreError) -> bool {
    match e {
        StoreError::Database(sqlx::Error::Database(d)) => {
            d.constraint() == Some("ledger_events_event_id_key")
        }
        _ => false,
    }
}

impl Writer {
    /// The commit failed or its outcome is unknown: reconnect, reload the state from the
    /// database and find out whether the batch is there, then answer truthfully.
    pub(super) async fn recover(&mut self, p: Prepared, err: StoreError) {
        tracing::warn!(error = %err, events = p.rows.len(), "batch commit failed; recovering");
        let committed = self.find_out(&p.rows).await;
        match committed {
            Some(true) => {
                let head = Head { size: self.planner.state.head, root: self.planner.state.frontier.root() };
                self.head_tx.send_replace(head);
                self.planner.stats.batches.fetch_add(1, Ordering::Relaxed);
                settle(p, Some(head.size));
            }
            Some(false) => answer_unwritten(p.batch, p.plans, self.planner.state.head),
            None => {
                for req in p.batch {
                    let _ = req.reply.send(Err(StoreError::OutcomeUnknown));
                }
            }
        }
    }

    /// After a failed commit of `rows`: reconnect, reload the state from the database and
    /// find out whether the rows are there (None: the database stayed unreachable).
    pub(super) async fn find_out(&mut self, rows: &[NewRow]) -> Option<bool> {
        self.conn = None;
        // The batch is there iff the rows at its first and last positions are its rows.
        let probe = rows.first().zip(rows.last()).map(|(a, b)| {
            ([a.position as i64, b.position as i64], [a.event.hash().to_vec(), b.event.hash().to_vec()])
        });
        for attempt in 0..self.planner.config.recovery_attempts {
            match self.reconnect().await {
                Ok(()) => match (self.conn.as_mut(), probe.as_ref()) {
                    (Some(conn), Some((positions, hashes))) => {
                        match count_probed(conn, positions, hashes).await {
                            Ok(found) => {
                                let want = if positions[0] == positions[1] { 1 } else { 2 };
                                return Some(found == want);
                            }
                            Err(_) => self.conn = None,
                        }
                    }
                    _ => return Some(false),
                },
                Err(e) => tracing::warn!(error = %e, attempt, "writer reconnect failed"),
            }
            tokio::time::sleep(Duration::from_millis(100 * (u64::from(attempt) + 1))).await;
        }
        None
    }

    /// A commit met an event id already stored, so nothing was written: queue `batch`
    /// first, to plan again with look-ups on the reloaded state.
    pub(super) async fn replan_after_id_conflict(
        &mut self,
        batch: Vec<AppendRequest>,
        carry: &mut VecDeque<AppendRequest>,
    ) {
        requeue_front(carry, batch, true);
        if let Err(e) = self.reload().await {
            tracing::warn!(error = %e, "reloading the ledger state failed");
            self.conn = None;
        }
    }

    /// Reload the state from the database on the writer's connection.
    pub(super) async fn reload(&mut self) -> Result<(), StoreError> {
        let conn = self.conn.as_mut().ok_or(StoreError::Closed)?;
        self.planner.state = load_state(conn).await?;
        self.planner.heads.clear();
        Ok(())
    }

    /// Reconnect (retaking the lock) and reload the state from the database.
    pub(super) async fn reconnect(&mut self) -> Result<(), StoreError> {
        let (mut conn, state) =
            connect_writer(&self.connect, Some(self.planner.config.recovery_lock_timeout)).await?;
        // A rotation whose outcome was unknown: the registry says whether it committed.
        if let Some(new) = self.unsettled_key.clone() {
            let registry = crate::load_key_registry(&mut conn).await?;
            if registry.get(&new.key_id()).is_some() {
                self.adopt_key(new);
            }
            self.unsettled_key = None;
        }
        self.conn = Some(conn);
        self.planner.state = state;
        self.planner.heads.clear();
        Ok(())
    }
}

/// How many of the rows at `positions` have the hashes given.
async fn count_probed(
    conn: &mut PgConnection,
    positions: &[i64; 2],
    hashes: &[Vec<u8>; 2],
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar::<_, i64>(
        "SELECT count(*) FROM ledger_events WHERE (position = $1 AND event_hash = $3) \
         OR (position = $2 AND event_hash = $4)",
    )
    .bind(positions[0])
    .bind(positions[1])
    .bind(&hashes[0])
    .bind(&hashes[1])
    .fetch_one(conn)
    .await
}

#[cfg(test)]
mod tests {
    use super::super::test_support::db_error;
    use super::*;

    #[test]
    fn connection_errors_are_told_from_statement_errors() {
        let io = sqlx::Error::Io(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset"));
        assert!(is_connection_error(&io));
        assert!(is_connection_error(&sqlx::Error::Protocol("unexpected message".into())));
        for code in ["08006", "08003", "57P01", "57P02", "57P03"] {
            assert!(is_connection_error(&db_error(code, None)), "{code}");
        }
        for code in ["23505", "40001", "57014", "53300"] {
            assert!(!is_connection_error(&db_error(code, None)), "{code}");
        }
        assert!(!is_connection_error(&sqlx::Error::RowNotFound));
        assert!(!is_connection_error(&sqlx::Error::PoolTimedOut));
        assert!(!is_connection_error(&sqlx::Error::WorkerCrashed), "not produced by the PostgreSQL driver");
    }

    #[test]
    fn the_stores_own_failures_are_not_connection_errors() {
        assert!(!is_broken_connection(&StoreError::RngUnavailable));
        assert!(!is_broken_connection(&StoreError::TaskFailed));
        assert!(!is_broken_connection(&StoreError::Closed));
        assert!(is_broken_connection(&StoreError::Database(db_error("57P01", None))));
        assert!(!is_broken_connection(&StoreError::Database(db_error("23505", None))));
    }

    #[test]
    fn only_the_event_id_index_is_an_event_id_conflict() {
        let conflict = StoreError::Database(db_error("23505", Some("ledger_events_event_id_key")));
        assert!(is_event_id_conflict(&conflict));
        let other = StoreError::Database(db_error("23505", Some("ledger_events_pkey")));
        assert!(!is_event_id_conflict(&other));
        assert!(!is_event_id_conflict(&StoreError::IdempotencyConflict { event_id: uuid::Uuid::nil() }));
        assert!(!is_event_id_conflict(&StoreError::Closed));
    }
}
