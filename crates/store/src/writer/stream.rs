//! Streamed commits: a **large batch with nothing else waiting** (at least
//! [`STREAM_MIN_EVENTS`] new events, typically one client's bulk append) is not pipelined
//! but streamed ([`Writer::stream_commit`]): a blocking thread signs it in chunks (32, 64,
//! 128, then 256 events) and the writer's task inserts each chunk as soon as it is signed,
//! in one transaction, so the database works while the chain is signed (a stream's chain
//! is sequential, so one stream's batch is signed on one core).
//!
//! A failure before COMMIT was sent leaves nothing committed: the batch's writes are
//! answered with a retryable error and the connection (and the ledger lock) is kept if it
//! still answers; an id conflict is planned again like any batch's; a failed COMMIT goes
//! to the recovery.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use ledger::merkle::Frontier;
use sqlx::Connection;
use tokio::sync::mpsc;

use super::commit::{answer_unwritten, insert_rows, settle};
use super::recovery::is_event_id_conflict;
use super::sign::sign_drafts;
use super::{AppendRequest, Draft, NewRow, Plan, Prepared, Writer};
use crate::error::StoreError;
use crate::Head;

/// Batches with at least this many new events, planned while nothing is in flight and
/// nothing else waits, are signed and inserted chunk by chunk (`Writer::stream_commit`).
/// Smaller ones, and any when other requests wait, go through the pipeline, which signs
/// the next batch while this one commits.
pub(super) const STREAM_MIN_EVENTS: usize = 64;

/// `drafts` in chunks to sign and insert one after the other. The first chunks are small,
/// so the database starts early; later ones are larger (fewer statements).
fn into_chunks(drafts: Vec<Draft>) -> Vec<Vec<Draft>> {
    let mut chunks: Vec<Vec<Draft>> = Vec::new();
    let mut size = 32;
    let mut rest = drafts.into_iter().peekable();
    while rest.peek().is_some() {
        chunks.push(rest.by_ref().take(size).collect());
        size = (size * 2).min(256);
    }
    chunks
}

impl Writer {
    /// Sign and insert `drafts` chunk by chunk in one transaction, then commit, publish and
    /// answer; failures are handled as for a batch commit.
    pub(super) async fn stream_commit(
        &mut self,
        batch: Vec<AppendRequest>,
        plans: Vec<Plan>,
        drafts: Vec<Draft>,
        carry: &mut VecDeque<AppendRequest>,
    ) {
        let planner = &mut self.planner;
        let now = planner.next_time();
        let mut bases = planner.chain_bases(&drafts);
        let mut frontier = planner.state.frontier.clone();
        let key = Arc::clone(&planner.key);
        let head = drafts.last().map_or(planner.state.head, |d| d.position + 1);
        let chunks = into_chunks(drafts);
        // One thread signs the chunks in order and hands each over as soon as it is signed;
        // this task inserts them as they come. Dropping the receiver stops the signer.
        let (chunk_tx, mut chunk_rx) = mpsc::channel::<Result<Vec<NewRow>, StoreError>>(2);
        let signer = tokio::task::spawn_blocking(move || {
            for drafts in chunks {
                let r = sign_drafts(drafts, &key, now, &mut bases, &mut frontier);
                let failed = r.is_err();
                if chunk_tx.blocking_send(r).is_err() || failed {
                    break;
                }
            }
            frontier
        });
        let mut rows: Vec<NewRow> = Vec::new();
        let mut chunk_count = 0u64;
        // Was COMMIT sent? Before, a failure leaves nothing committed.
        let mut commit_sent = false;
        let conn = self.conn.as_mut();
        let result: Result<Frontier, StoreError> = async {
            let conn = conn.ok_or(StoreError::Closed)?;
            let mut tx = conn.begin().await?;
            while let Some(signed) = chunk_rx.recv().await {
                let signed = signed?;
                insert_rows(&mut tx, &signed, head).await?;
                chunk_count += 1;
                rows.extend(signed);
            }
            let frontier = signer.await.map_err(|_| StoreError::TaskFailed)?;
            if rows.last().map(|r| r.position + 1) != Some(head) {
                // The signer stopped early without an error: nothing may commit.
                return Err(StoreError::TaskFailed);
            }
            commit_sent = true;
            tx.commit().await?;
            Ok(frontier)
        }
        .await;
        drop(chunk_rx);
        match result {
            Ok(frontier) => {
                self.planner.state.last_micros = now.as_micros();
                let p = self.planner.prepared(batch, plans, rows, frontier);
                self.publish(&p);
                // Counted before the callers hear of it.
                self.planner.stats.batches.fetch_add(1, Ordering::Relaxed);
                self.planner.stats.streamed_batches.fetch_add(1, Ordering::Relaxed);
                self.planner.stats.streamed_chunks.fetch_add(chunk_count, Ordering::Relaxed);
                settle(p, None);
            }
            Err(e) if is_event_id_conflict(&e) => {
                // Nothing was written (the transaction rolls back).
                self.replan_after_id_conflict(batch, carry).await;
            }
            Err(e) if !commit_sent => {
                // Nothing was committed (the transaction rolls back when the connection is
                // next used). Keep the connection, and the ledger lock, if it still
                // answers, and reload the state from it in case the failure showed that it
                // differs from the database (the state never moved past this batch).
                tracing::warn!(error = %e, code = e.code(), events = head - self.planner.state.head, "streamed batch failed before commit");
                let alive = match self.conn.as_mut() {
                    Some(c) => sqlx::query("SELECT 1").execute(c).await.is_ok(),
                    None => false,
                };
                if !alive || self.reload().await.is_err() {
                    self.conn = None;
                }
                answer_unwritten(batch, plans, self.planner.state.head);
            }
            Err(e) => {
                // The COMMIT's outcome is unknown: the recovery finds out.
                let head = Head { size: head, root: self.planner.state.frontier.root() };
                self.recover(Prepared::new(batch, plans, rows, head), e).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{append, planner};
    use super::*;

    #[test]
    fn chunks_start_small_and_grow_to_256() {
        let p = planner(crate::StoreConfig::default());
        let batch = vec![append(super::super::test_support::stream(1), 1500).0];
        let (_, drafts) = p.position(&batch, &Default::default(), &mut rand_core::OsRng);
        let chunks = into_chunks(drafts);
        let sizes: Vec<usize> = chunks.iter().map(Vec::len).collect();
        assert_eq!(sizes, [32, 64, 128, 256, 256, 256, 256, 252]);
        let positions: Vec<u64> = chunks.iter().flatten().map(|d| d.position).collect();
        assert_eq!(positions, (0..1500).collect::<Vec<u64>>(), "in order, none lost");
        assert!(into_chunks(Vec::new()).is_empty());
    }
}
