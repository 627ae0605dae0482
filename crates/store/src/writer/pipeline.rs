//! The pipeline: while batch k commits, batch k+1 is looked up and signed.
//!
//! The [`Planner`] looks up and signs batch k+1 on a second connection
//! (`chartledger-planner`), against the state as it will be after batch k, while batch k
//! commits (the commit's statement is sent first), and keeps taking what arrives until
//! that commit returns ([`Pipeline::commit_and_plan_next`]: each arrival is planned on top
//! of the ones before and merged into k+1), so k+1 is ready when k ends and a request
//! waits for the rest of one commit before its own, not for a further one. Requests
//! touching an event id still uncommitted wait a round; if k fails, k+1 is planned again
//! from reloaded state.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use sqlx::postgres::PgConnection;
use tokio::sync::mpsc;

use super::commit::commit_rows;
use super::gather::{take_queued, Gathering};
use super::{AppendRequest, Plan, Planner, Prepared, Request, RotateRequest};
use crate::error::StoreError;

/// What committing one batch while planning the next works with: the writer's connection
/// (for the commit) and, apart from it, what planning and gathering need.
pub(super) struct Pipeline<'a> {
    /// The writer's connection (None: lost, so the commit fails at once).
    pub conn: Option<&'a mut PgConnection>,
    pub planner: &'a mut Planner,
    pub rx: &'a mut mpsc::Receiver<Request>,
    /// Requests waiting for the next gathering, in order.
    pub carry: &'a mut VecDeque<AppendRequest>,
    /// A rotation request received; it stops the gathering.
    pub rotation: &'a mut Option<RotateRequest>,
}

impl Pipeline<'_> {
    /// Commit `p` and meanwhile plan (and sign) the next batch: `batch` at once, then every
    /// request that arrives before the commit returns, so that the next commit starts the
    /// moment this one ends. A request then waits for the rest of one commit before its own
    /// starts, not for a whole further commit. Requests touching an event id still
    /// uncommitted (in `p` or in the next batch) wait in `carry` for its outcome; so do
    /// requests beyond the batch limits. A rotation request stops the gathering: it runs
    /// once nothing is in flight.
    ///
    /// Planning is never cancelled half-way: the commit is polled while a plan runs, and
    /// new requests are taken only between plans.
    pub(super) async fn commit_and_plan_next(
        self,
        p: &Prepared,
        batch: Vec<AppendRequest>,
    ) -> (Result<(), StoreError>, Option<Prepared>) {
        let Self { conn, planner, rx, carry, rotation } = self;
        let commit = async {
            match conn {
                Some(c) => commit_rows(c, &p.rows).await,
                None => Err(StoreError::Closed),
            }
        };
        tokio::pin!(commit);
        let stats = Arc::clone(&planner.stats);
        let mut committed: Option<Result<(), StoreError>> = None;
        let mut next: Option<Prepared> = None;
        let mut gathering = Gathering::new(&planner.config, &batch);
        // Take new requests only while nothing waits in `carry` (order is kept) and no
        // rotation is pending.
        let mut open = rotation.is_none() && carry.is_empty();
        let mut pending = batch;
        loop {
            if !pending.is_empty() {
                let prep = planner.prepare(std::mem::take(&mut pending));
                tokio::pin!(prep);
                // The commit is polled first, so its statement is on its way before this plan
                // signs (on this task).
                let planned = loop {
                    tokio::select! {
                        biased;
                        c = &mut commit, if committed.is_none() => committed = Some(c),
                        n = &mut prep => break n,
                    }
                };
                if let Some(n) = planned {
                    if next.is_some() {
                        stats.merged_parts.fetch_add(1, Ordering::Relaxed);
                    }
                    merge_prepared(&mut next, n);
                }
            }
            if let Some(c) = committed {
                return (c, next);
            }
            if !open {
                return (commit.await, next);
            }
            let first = tokio::select! {
                biased;
                c = &mut commit => {
                    committed = Some(c);
                    None
                }
                r = rx.recv() => r,
            };
            open = take_queued(rx, first, rotation, |mut r| {
                let touches_uncommitted = r.events.iter().any(|e| {
                    p.ids.contains(&e.event_id) || next.as_ref().is_some_and(|x| x.ids.contains(&e.event_id))
                });
                if touches_uncommitted || !gathering.fits(&r) {
                    // Waits, in order, for the next gathering.
                    r.look_up |= touches_uncommitted;
                    carry.push_back(r);
                    return false;
                }
                gathering.add(&r);
                pending.push(r);
                true
            });
            if committed.is_none() && pending.is_empty() && !open {
                // Nothing more to plan: only the commit remains.
                return (commit.await, next);
            }
            if rx.is_closed() && rx.is_empty() {
                open = false;
            }
        }
    }
}

/// Append the plan of `b` (planned on top of `a`) to `a`.
fn merge_prepared(a: &mut Option<Prepared>, b: Prepared) {
    let Some(a) = a else {
        *a = Some(b);
        return;
    };
    let (row_base, req_base) = (a.rows.len(), a.batch.len());
    a.plans.extend(b.plans.into_iter().map(|plan| match plan {
        Plan::Write { first_row, count } => Plan::Write { first_row: first_row + row_base, count },
        Plan::ReplayOf(i) => Plan::ReplayOf(i + req_base),
        other => other,
    }));
    a.batch.extend(b.batch);
    a.rows.extend(b.rows);
    a.ids.extend(b.ids);
    a.head = b.head;
}

#[cfg(test)]
mod tests {
    use super::super::commit::settle;
    use super::super::test_support::{append, append_events, planner};
    use super::*;
    use crate::StoreConfig;

    #[test]
    fn a_part_planned_on_top_merges_with_its_rows_and_requests_shifted() {
        let mut p = planner(StoreConfig::default());
        let s = super::super::test_support::stream;
        let (a0, mut ra0) = append(s(1), 2);
        let first = p.prepare_now(vec![a0]);
        let (b0, mut rb0) = append(s(2), 1);
        let (b1, mut rb1) = append_events(s(2), b0.expected, b0.events.clone());
        let (b2, mut rb2) = append(s(1), 1);
        let ids_b: Vec<_> = b0.events.iter().chain(&b2.events).map(|e| e.event_id).collect();
        let second = p.prepare_now(vec![b0, b1, b2]);
        let second_head = second.head;
        let mut merged = None;
        merge_prepared(&mut merged, first);
        merge_prepared(&mut merged, second);
        let merged = merged.unwrap();
        assert_eq!(merged.batch.len(), 4);
        assert_eq!(merged.rows.len(), 4);
        assert_eq!(merged.head, second_head);
        assert!(ids_b.iter().all(|id| merged.ids.contains(id)));
        assert_eq!(merged.ids.len(), 4);
        assert!(matches!(merged.plans[1], Plan::Write { first_row: 2, count: 1 }));
        assert!(
            matches!(merged.plans[2], Plan::ReplayOf(1)),
            "the replay points at its request in the merge"
        );
        settle(merged, None);
        assert_eq!(ra0.try_recv().unwrap().unwrap().positions, [0, 1]);
        assert_eq!(rb0.try_recv().unwrap().unwrap().positions, [2]);
        let replay = rb1.try_recv().unwrap().unwrap();
        assert_eq!((replay.positions, replay.idempotent_replay), (vec![2], true));
        let w = rb2.try_recv().unwrap().unwrap();
        assert_eq!((w.positions, w.last_revision), (vec![3], 2), "planned on top of the first part");
    }
}
