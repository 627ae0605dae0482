//! Committing a batch and answering its callers.
//!
//! A batch is written with **one autocommit statement**: a CTE whose two `UNNEST` inserts
//! (events, and payloads at the same positions) and `pg_notify` share one round trip, one
//! transaction and one WAL flush. Callers are answered after the commit returned: with
//! their positions ([`settle`]), or, when nothing was written, with a retryable error
//! ([`answer_unwritten`], [`fail_all`]); replays and refusals stand either way.

use sqlx::postgres::PgConnection;

use super::{AppendRequest, NewRow, Plan, Prepared, NOTIFY_CHANNEL};
use crate::error::StoreError;
use crate::types::AppendResult;

/// Insert a batch in one transaction and commit (one WAL flush).
pub(super) async fn commit_rows(conn: &mut PgConnection, rows: &[NewRow]) -> Result<(), StoreError> {
    match rows.last() {
        Some(last) => insert_rows(conn, rows, last.position + 1).await,
        None => Ok(()),
    }
}

/// Insert rows in one statement (in autocommit: one transaction, one WAL flush), with a
/// notification of the head the commit will reach (identical notifications of one
/// transaction are delivered once).
pub(super) async fn insert_rows(
    conn: &mut PgConnection,
    rows: &[NewRow],
    head: u64,
) -> Result<(), StoreError> {
    let n = rows.len();
    let mut positions = Vec::with_capacity(n);
    let mut streams = Vec::with_capacity(n);
    let mut revisions = Vec::with_capacity(n);
    let mut ids = Vec::with_capacity(n);
    let mut types = Vec::with_capacity(n);
    let mut times = Vec::with_capacity(n);
    let mut envelopes = Vec::with_capacity(n);
    let mut hashes = Vec::with_capacity(n);
    let mut nodes = Vec::with_capacity(n);
    let mut salts = Vec::with_capacity(n);
    let mut payloads = Vec::with_capacity(n);
    for r in rows {
        positions.push(r.position as i64);
        streams.push(r.event.stream_id().as_str().to_owned());
        revisions.push(r.event.stream_revision() as i64);
        ids.push(r.event.event_id());
        types.push(r.event.body().event_type.as_str().to_owned());
        times.push(r.event.recorded_at().to_datetime());
        envelopes.push(r.event.to_bytes());
        hashes.push(r.event.hash().to_vec());
        nodes.push(r.merkle_nodes.clone());
        salts.push(r.payload.salt().to_vec());
        payloads.push(r.payload.bytes().to_vec());
    }
    // One statement in autocommit: one round trip, one transaction, one WAL flush. The
    // gapless trigger runs at the end of the statement; payload positions are the ones
    // just assigned to the events (there is no per-row foreign key, see the migration).
    sqlx::query(
        "WITH e AS (INSERT INTO ledger_events (position, stream_id, stream_revision, event_id, event_type, \
         recorded_at, envelope, event_hash, merkle_nodes) \
         SELECT * FROM UNNEST($1::int8[], $2::text[], $3::int8[], $4::uuid[], $5::text[], $6::timestamptz[], \
         $7::bytea[], $8::bytea[], $9::bytea[]) RETURNING 1), \
         p AS (INSERT INTO ledger_payloads (position, salt, payload) \
         SELECT * FROM UNNEST($1::int8[], $10::bytea[], $11::bytea[]) RETURNING 1) \
         SELECT pg_notify($12, $13), (SELECT count(*) FROM e), (SELECT count(*) FROM p)",
    )
    .bind(&positions)
    .bind(&streams)
    .bind(&revisions)
    .bind(&ids)
    .bind(&types)
    .bind(&times)
    .bind(&envelopes)
    .bind(&hashes)
    .bind(&nodes)
    .bind(&salts)
    .bind(&payloads)
    .bind(NOTIFY_CHANNEL)
    .bind(head.to_string())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Answer every caller of a committed batch. `head` overrides the head reported to
/// replays (after a reload).
pub(super) fn settle(p: Prepared, head: Option<u64>) {
    let head = head.unwrap_or(p.head.size);
    let mut results: Vec<Result<AppendResult, StoreError>> = Vec::with_capacity(p.plans.len());
    for plan in p.plans {
        results.push(match plan {
            Plan::Write { first_row, count } => {
                let slice = &p.rows[first_row..first_row + count];
                Ok(AppendResult {
                    positions: slice.iter().map(|r| r.position).collect(),
                    last_revision: slice.last().map_or(0, |r| r.event.stream_revision()),
                    head,
                    idempotent_replay: false,
                })
            }
            Plan::Replay(r) => Ok(AppendResult { head: head.max(r.head), ..r }),
            Plan::ReplayOf(i) => match results.get(i) {
                Some(Ok(r)) => Ok(AppendResult { idempotent_replay: true, ..r.clone() }),
                _ => Err(StoreError::OutcomeUnknown),
            },
            Plan::Fail(e) => Err(e),
        });
    }
    for (req, r) in p.batch.into_iter().zip(results) {
        let _ = req.reply.send(r);
    }
}

/// A planned batch was not written: replays and refusals stand (a replay reports `head`,
/// the committed head, not the optimistic one it was planned at); writes fail, and
/// retrying them is safe.
pub(super) fn answer_unwritten(batch: Vec<AppendRequest>, plans: Vec<Plan>, head: u64) {
    for (req, plan) in batch.into_iter().zip(plans) {
        let r = match plan {
            Plan::Fail(e) => Err(e),
            Plan::Replay(r) => Ok(AppendResult { head, ..r }),
            _ => Err(StoreError::NotWritten),
        };
        let _ = req.reply.send(r);
    }
}

/// Nothing of this batch was written: tell every caller (retrying is safe).
pub(super) fn fail_all(batch: impl IntoIterator<Item = AppendRequest>) {
    for r in batch {
        let _ = r.reply.send(Err(StoreError::NotWritten));
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{append, append_events, planner, stream, Reply};
    use super::*;
    use crate::StoreConfig;

    /// A batch planned on an empty ledger: stream 1 gets 2 events, then a retry of them
    /// (replay of request 0), an empty append, and stream 2 one event; with one more
    /// request settled as a replay of something stored at position 40.
    fn planned() -> (Prepared, Vec<Reply>) {
        let mut p = planner(StoreConfig::default());
        let (first, r0) = append(stream(1), 2);
        let (retry, r1) = append_events(stream(1), first.expected, first.events.clone());
        let (empty, r2) = append(stream(1), 0);
        let (other, r3) = append(stream(2), 1);
        let (stored, r4) = append(stream(3), 1);
        let batch = vec![first, retry, empty, other];
        let (mut batch, mut plans, drafts) = {
            let (plans, drafts) = p.position(&batch, &Default::default(), &mut rand_core::OsRng);
            (batch, plans, drafts)
        };
        batch.push(stored);
        plans.push(Plan::Replay(AppendResult {
            positions: vec![40],
            last_revision: 0,
            head: 41,
            idempotent_replay: true,
        }));
        let prepared = p.finish(batch, plans, drafts).unwrap();
        (prepared, vec![r0, r1, r2, r3, r4])
    }

    #[test]
    fn settle_answers_writes_with_their_positions_and_replays_with_the_head() {
        let (p, mut replies) = planned();
        assert_eq!(p.head.size, 3);
        settle(p, None);
        let mut answer = |i: usize| replies[i].try_recv().unwrap();
        let w = answer(0).unwrap();
        assert_eq!((w.positions, w.last_revision, w.head, w.idempotent_replay), (vec![0, 1], 1, 3, false));
        let again = answer(1).unwrap();
        assert_eq!((again.positions, again.head, again.idempotent_replay), (vec![0, 1], 3, true));
        assert_eq!(answer(2).unwrap_err().code(), "store.empty_append");
        let w = answer(3).unwrap();
        assert_eq!((w.positions, w.last_revision), (vec![2], 0));
        let replay = answer(4).unwrap();
        assert_eq!((replay.positions, replay.head), (vec![40], 41), "the larger head of the two");
    }

    #[test]
    fn settle_after_a_reload_reports_the_reloaded_head() {
        let (p, mut replies) = planned();
        settle(p, Some(90));
        assert_eq!(replies[0].try_recv().unwrap().unwrap().head, 90);
        assert_eq!(replies[4].try_recv().unwrap().unwrap().head, 90);
    }

    #[test]
    fn unwritten_writes_fail_retryably_while_replays_and_refusals_stand() {
        let (p, mut replies) = planned();
        answer_unwritten(p.batch, p.plans, 7);
        let mut answer = |i: usize| replies[i].try_recv().unwrap();
        assert_eq!(answer(0).unwrap_err().code(), "store.not_written");
        assert_eq!(answer(1).unwrap_err().code(), "store.not_written", "a replay of an unwritten write");
        assert_eq!(answer(2).unwrap_err().code(), "store.empty_append");
        assert_eq!(answer(3).unwrap_err().code(), "store.not_written");
        let replay = answer(4).unwrap();
        assert_eq!((replay.positions, replay.head), (vec![40], 7), "the committed head, not the planned one");
    }

    #[test]
    fn fail_all_answers_every_caller() {
        let (a, mut ra) = append(stream(1), 1);
        let (b, mut rb) = append(stream(2), 1);
        fail_all(vec![a, b]);
        assert_eq!(ra.try_recv().unwrap().unwrap_err().code(), "store.not_written");
        assert_eq!(rb.try_recv().unwrap().unwrap_err().code(), "store.not_written");
    }
}
