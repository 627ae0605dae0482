//! Planning a batch: the [`Planner`] validates each request against the stream heads as
//! they will be once everything planned so far has committed, settles what needs no write
//! (replays, refusals), assigns positions and revisions to the new events ([`Draft`]s),
//! signs them and moves its optimistic state past them.
//!
//! Look-ups run on the planner's own connection (`chartledger-planner`, replaced once
//! before a batch fails if it broke), so the next batch is planned while the writer's
//! connection commits the previous one. Event ids are looked up only where a retry must
//! win over the revision check, or for requests marked `look_up`; see the module docs of
//! the writer on optimistic idempotency.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use ledger::envelope::Payload;
use ledger::merkle::Frontier;
use ledger::{Hash, SignedEvent, StreamId, Timestamp};
use rand_core::CryptoRngCore;
use sqlx::postgres::PgConnection;
use sqlx::Row;
use uuid::Uuid;

use super::commit::fail_all;
use super::recovery::{connect_session, is_broken_connection};
use super::sign::{sign_drafts, SIGN_INLINE_EVENTS};
use super::{AppendRequest, Draft, NewRow, Plan, Planner, Prepared};
use crate::error::StoreError;
use crate::types::{AppendResult, ExpectedRevision, ProposedEvent};
use crate::Head;

/// An event already stored, for idempotency checks.
pub(super) struct Existing {
    position: u64,
    event: SignedEvent,
    payload: Option<Vec<u8>>,
}

/// A batch validated and positioned: its requests, how each is settled, the new events.
pub(super) type Drafted = (Vec<AppendRequest>, Vec<Plan>, Vec<Draft>);

impl Planner {
    /// Plan and sign a batch; on a look-up failure, fail its requests (nothing was written).
    pub(super) async fn prepare(&mut self, batch: Vec<AppendRequest>) -> Option<Prepared> {
        let (batch, plans, drafts) = self.draft_or_fail(batch).await?;
        self.finish(batch, plans, drafts)
    }

    /// Validate and position `batch`; on a look-up failure, fail its requests (nothing was
    /// written).
    pub(super) async fn draft_or_fail(&mut self, batch: Vec<AppendRequest>) -> Option<Drafted> {
        // A look-up connection that broke since its last use (say, the server restarted)
        // is replaced once before the batch is failed. Drafting twice is harmless: it only
        // reads, and caches the stream heads it read.
        let mut last_error = None;
        for _attempt in 0..2 {
            if self.lookup.is_none() {
                match connect_session(&self.connect).await {
                    Ok(c) => self.lookup = Some(c),
                    Err(e) => {
                        last_error = Some(e);
                        break;
                    }
                }
            }
            match self.draft(&batch).await {
                Ok((plans, drafts)) => return Some((batch, plans, drafts)),
                Err(e) => {
                    self.lookup = None;
                    let broken = is_broken_connection(&e);
                    last_error = Some(e);
                    if !broken {
                        break;
                    }
                }
            }
        }
        if let Some(e) = last_error {
            tracing::warn!(error = %e, code = e.code(), "append planning failed");
        }
        fail_all(batch);
        None
    }

    /// Sign the drafts and move the optimistic state past them, as if they had committed.
    pub(super) fn finish(
        &mut self,
        batch: Vec<AppendRequest>,
        plans: Vec<Plan>,
        drafts: Vec<Draft>,
    ) -> Option<Prepared> {
        let now = self.next_time();
        let mut bases = self.chain_bases(&drafts);
        let mut frontier = self.state.frontier.clone();
        let key = Arc::clone(&self.key);
        // A few signatures (about 15 µs each) are not worth moving this worker's other
        // tasks away for (`block_in_place`).
        let signed = if drafts.len() <= SIGN_INLINE_EVENTS {
            sign_drafts(drafts, &key, now, &mut bases, &mut frontier)
        } else {
            crate::cpu_bound(|| sign_drafts(drafts, &key, now, &mut bases, &mut frontier))
        };
        match signed {
            Ok(rows) => {
                self.state.last_micros = now.as_micros();
                Some(self.prepared(batch, plans, rows, frontier))
            }
            Err(e) => {
                tracing::warn!(error = %e, "append signing failed");
                fail_all(batch);
                None
            }
        }
    }

    /// A planned batch, with the optimistic state moved past its rows.
    pub(super) fn prepared(
        &mut self,
        batch: Vec<AppendRequest>,
        plans: Vec<Plan>,
        rows: Vec<NewRow>,
        frontier: Frontier,
    ) -> Prepared {
        self.advance(&rows, frontier);
        let head = Head { size: self.state.head, root: self.state.frontier.root() };
        Prepared::new(batch, plans, rows, head)
    }

    /// Validate every request and assign positions and revisions to the new events.
    async fn draft(&mut self, batch: &[AppendRequest]) -> Result<(Vec<Plan>, Vec<Draft>), StoreError> {
        let existing = self.look_up(batch).await?;
        // Payload salts: a ChaCha20 stream seeded from the OS for each batch (one system
        // call per batch instead of one per event; salts stay unpredictable).
        let mut rng = <rand_chacha::ChaCha20Rng as rand_core::SeedableRng>::from_rng(rand_core::OsRng)
            .map_err(|_| StoreError::RngUnavailable)?;
        Ok(self.position(batch, &existing, &mut rng))
    }

    /// What drafting `batch` needs from the database: the stored events with its ids
    /// (where they are looked up), and the heads of its streams the cache lacks (cached).
    async fn look_up(&mut self, batch: &[AppendRequest]) -> Result<HashMap<Uuid, Existing>, StoreError> {
        let conn = self.lookup.as_mut().ok_or(StoreError::Closed)?;
        // Idempotency: which ids already exist?
        // Look ids up where a retry must win over the revision check (non-`Any`
        // expectations), and for requests marked `look_up` (held back for an uncommitted
        // id, or re-queued after an id conflict). Other retries surface as a unique
        // violation at commit, with nothing written, and are planned again.
        let ids: Vec<Uuid> = batch
            .iter()
            .filter(|r| r.look_up || r.expected != ExpectedRevision::Any)
            .flat_map(|r| r.events.iter().map(|e| e.event_id))
            .collect();
        let existing = if ids.is_empty() { HashMap::new() } else { load_existing(conn, &ids).await? };
        // Stream heads not in the cache.
        let missing: Vec<String> = batch
            .iter()
            .filter(|r| !self.heads.contains_key(&r.stream))
            .map(|r| r.stream.as_str().to_owned())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        if !missing.is_empty() {
            // One backward probe of the (stream_id, stream_revision) index per stream: never
            // reads a long stream whole, whatever plan is cached.
            let rows = sqlx::query(
                "SELECT s.id AS stream_id, e.stream_revision, e.event_hash FROM UNNEST($1::text[]) AS s(id) \
                 CROSS JOIN LATERAL (SELECT stream_revision, event_hash FROM ledger_events \
                 WHERE stream_id = s.id ORDER BY stream_revision DESC LIMIT 1) e",
            )
            .bind(&missing)
            .fetch_all(&mut *conn)
            .await?;
            for r in rows {
                let s: String = r.try_get("stream_id")?;
                let rev: i64 = r.try_get("stream_revision")?;
                let h: Vec<u8> = r.try_get("event_hash")?;
                let h: Hash =
                    h.try_into().map_err(|_| StoreError::Corrupt { position: 0, reason: "hash length" })?;
                let s = StreamId::new(s)?;
                self.heads.insert(s, (rev as u64, h));
            }
        }
        Ok(existing)
    }

    /// Settle or position each request of `batch`, given the stored events found and the
    /// cached stream heads: plans, and the drafts of the new events from the head on.
    pub(super) fn position(
        &self,
        batch: &[AppendRequest],
        existing: &HashMap<Uuid, Existing>,
        rng: &mut impl CryptoRngCore,
    ) -> (Vec<Plan>, Vec<Draft>) {
        // Revisions as they will be after the requests planned so far.
        let mut tentative: HashMap<&StreamId, Option<u64>> = HashMap::new();
        let mut seen_in_batch: HashMap<Uuid, usize> = HashMap::new();
        let mut plans = Vec::with_capacity(batch.len());
        let mut drafts: Vec<Draft> = Vec::new();
        let mut next_pos = self.state.head;
        for (ri, req) in batch.iter().enumerate() {
            let plan = self.plan_one(req, batch, existing, &mut seen_in_batch, &mut tentative);
            let plan = match plan {
                Some(p) => p,
                None => {
                    // Write: assign positions and revisions.
                    let base = tentative
                        .get(&req.stream)
                        .copied()
                        .unwrap_or_else(|| self.heads.get(&req.stream).map(|h| h.0));
                    match draft_request(req, base, next_pos, rng) {
                        Ok(new) => {
                            let first_row = drafts.len();
                            next_pos += new.len() as u64;
                            tentative.insert(&req.stream, new.last().map(|d| d.revision));
                            for e in &req.events {
                                seen_in_batch.insert(e.event_id, ri);
                            }
                            drafts.extend(new);
                            Plan::Write { first_row, count: req.events.len() }
                        }
                        Err(err) => Plan::Fail(err.into()),
                    }
                }
            };
            plans.push(plan);
        }
        (plans, drafts)
    }

    /// The recorded time of the next batch: now, never before the last one.
    pub(super) fn next_time(&self) -> Timestamp {
        Timestamp::from_micros(crate::now_micros().max(self.state.last_micros))
    }

    /// The hash each stream of `drafts` links to next (None: not in the cache, so new).
    pub(super) fn chain_bases(&self, drafts: &[Draft]) -> HashMap<StreamId, Option<Hash>> {
        let mut bases = HashMap::new();
        for d in drafts {
            if !bases.contains_key(&d.stream) {
                bases.insert(d.stream.clone(), self.heads.get(&d.stream).map(|h| h.1));
            }
        }
        bases
    }

    /// Forget cached stream heads, except those of streams written by the batch in flight
    /// (not committed yet, so they could not be looked up).
    pub(super) fn trim_heads(&mut self, in_flight: Option<&Prepared>) {
        let keep: HashMap<StreamId, (u64, Hash)> = in_flight
            .into_iter()
            .flat_map(|p| p.rows.iter())
            .filter_map(|r| self.heads.get(r.event.stream_id()).map(|h| (r.event.stream_id().clone(), *h)))
            .collect();
        self.heads = keep;
    }

    /// As if `rows` (ending at the frontier given) had committed.
    fn advance(&mut self, rows: &[NewRow], frontier: Frontier) {
        if let Some(last) = rows.last() {
            self.state.head = last.position + 1;
            self.state.frontier = frontier;
            for r in rows {
                self.heads.insert(r.event.stream_id().clone(), (r.event.stream_revision(), *r.event.hash()));
            }
        }
    }

    /// Settle a request without writing (replay, conflict, revision mismatch), or None to write it.
    fn plan_one<'a>(
        &self,
        req: &'a AppendRequest,
        batch: &[AppendRequest],
        existing: &HashMap<Uuid, Existing>,
        seen_in_batch: &mut HashMap<Uuid, usize>,
        tentative: &mut HashMap<&'a StreamId, Option<u64>>,
    ) -> Option<Plan> {
        if req.events.is_empty() {
            return Some(Plan::Fail(StoreError::EmptyAppend));
        }
        if req.events.len() > self.config.max_append_events
            || req.payload_bytes() > self.config.max_batch_bytes
        {
            return Some(Plan::Fail(StoreError::AppendTooLarge {
                events: req.events.len(),
                bytes: req.payload_bytes(),
                max: self.config.max_append_events,
                max_bytes: self.config.max_batch_bytes,
            }));
        }
        let mut ids = HashSet::with_capacity(req.events.len());
        for e in &req.events {
            if !ids.insert(e.event_id) {
                return Some(Plan::Fail(StoreError::DuplicateEventInAppend { event_id: e.event_id }));
            }
            if let Err(err) = ledger::ids::validate_event_id(e.event_id) {
                return Some(Plan::Fail(err.into()));
            }
        }
        // Idempotent retry of something already committed?
        let stored: Vec<Option<&Existing>> = req.events.iter().map(|e| existing.get(&e.event_id)).collect();
        if stored.iter().any(Option::is_some) {
            for (e, s) in req.events.iter().zip(&stored) {
                match s {
                    Some(s) if same_content(&req.stream, e, s) => {}
                    _ => return Some(Plan::Fail(StoreError::IdempotencyConflict { event_id: e.event_id })),
                }
            }
            let positions: Vec<u64> = stored.iter().flatten().map(|s| s.position).collect();
            let last_revision = stored.iter().flatten().map(|s| s.event.stream_revision()).max().unwrap_or(0);
            return Some(Plan::Replay(AppendResult {
                positions,
                last_revision,
                head: self.state.head,
                idempotent_replay: true,
            }));
        }
        // Retry of a request earlier in this same batch?
        if let Some(&earlier) = req.events.first().and_then(|e| seen_in_batch.get(&e.event_id)) {
            let same = batch[earlier].stream == req.stream && batch[earlier].events == req.events;
            return Some(if same {
                Plan::ReplayOf(earlier)
            } else {
                Plan::Fail(StoreError::IdempotencyConflict { event_id: req.events[0].event_id })
            });
        }
        if let Some(e) = req.events.iter().find(|e| seen_in_batch.contains_key(&e.event_id)) {
            return Some(Plan::Fail(StoreError::IdempotencyConflict { event_id: e.event_id }));
        }
        let current =
            tentative.get(&req.stream).copied().unwrap_or_else(|| self.heads.get(&req.stream).map(|h| h.0));
        if !req.expected.admits(current) {
            return Some(Plan::Fail(StoreError::WrongExpectedRevision {
                stream: req.stream.as_str().to_owned(),
                expected: req.expected,
                actual: current,
            }));
        }
        None
    }
}

/// The drafts of `req`'s events, at positions from `position` and revisions after `base`
/// (None: a new stream); nothing when a payload is refused.
fn draft_request(
    req: &AppendRequest,
    base: Option<u64>,
    position: u64,
    rng: &mut impl CryptoRngCore,
) -> Result<Vec<Draft>, ledger::LedgerError> {
    let first = base.map_or(0, |r| r + 1);
    (position..)
        .zip(first..)
        .zip(&req.events)
        .map(|((position, revision), e)| {
            Ok(Draft {
                position,
                stream: req.stream.clone(),
                revision,
                event_id: e.event_id,
                event_type: e.event_type.clone(),
                schema_version: e.schema_version,
                actor: e.actor.clone(),
                payload: Payload::new(e.payload.clone(), &mut *rng)?,
            })
        })
        .collect()
}

fn same_content(stream: &StreamId, p: &ProposedEvent, s: &Existing) -> bool {
    let b = s.event.body();
    &b.stream_id == stream
        && b.event_type == p.event_type
        && b.schema_version == p.schema_version
        && b.actor == p.actor
        && s.payload.as_deref() == Some(p.payload.as_slice())
}

async fn load_existing(conn: &mut PgConnection, ids: &[Uuid]) -> Result<HashMap<Uuid, Existing>, StoreError> {
    // Ids only (the unique index answers; almost always no row). Payloads are fetched by
    // primary key for the rare hits: joining here made the planner scan all payloads.
    let rows = sqlx::query("SELECT position, envelope FROM ledger_events WHERE event_id = ANY($1)")
        .bind(ids)
        .fetch_all(&mut *conn)
        .await?;
    let mut out = HashMap::with_capacity(rows.len());
    if rows.is_empty() {
        return Ok(out);
    }
    let mut positions = Vec::with_capacity(rows.len());
    for r in rows {
        let position: i64 = r.try_get("position")?;
        let envelope: Vec<u8> = r.try_get("envelope")?;
        let event = SignedEvent::from_bytes(&envelope).map_err(|_| StoreError::Corrupt {
            position: position as u64,
            reason: "envelope does not decode",
        })?;
        positions.push(position);
        out.insert(event.event_id(), Existing { position: position as u64, event, payload: None });
    }
    let payloads = sqlx::query("SELECT position, payload FROM ledger_payloads WHERE position = ANY($1)")
        .bind(&positions)
        .fetch_all(&mut *conn)
        .await?;
    let mut by_pos: HashMap<u64, Vec<u8>> = HashMap::with_capacity(payloads.len());
    for r in payloads {
        let p: i64 = r.try_get("position")?;
        by_pos.insert(p as u64, r.try_get("payload")?);
    }
    for e in out.values_mut() {
        e.payload = by_pos.remove(&e.position);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::sign::sign_drafts;
    use super::super::test_support::{append, append_events, planner, proposed, stream};
    use super::*;
    use rand_core::SeedableRng;

    fn rng() -> rand_chacha::ChaCha20Rng {
        rand_chacha::ChaCha20Rng::seed_from_u64(3)
    }

    fn planner_at(head: u64) -> Planner {
        let mut p = planner(crate::StoreConfig::default());
        p.state.head = head;
        p
    }

    fn plans_of(plans: &[Plan]) -> Vec<String> {
        plans
            .iter()
            .map(|p| match p {
                Plan::Write { first_row, count } => format!("write {first_row}+{count}"),
                Plan::Replay(r) => format!("replay {:?}", r.positions),
                Plan::ReplayOf(i) => format!("replay of {i}"),
                Plan::Fail(e) => e.code().to_owned(),
            })
            .collect()
    }

    #[test]
    fn writes_get_positions_from_the_head_and_revisions_after_the_stream_heads() {
        let mut p = planner_at(10);
        p.heads.insert(stream(1), (4, [1; 32]));
        let batch = vec![append(stream(1), 2).0, append(stream(2), 1).0, append(stream(1), 1).0];
        let (plans, drafts) = p.position(&batch, &HashMap::new(), &mut rng());
        assert_eq!(plans_of(&plans), ["write 0+2", "write 2+1", "write 3+1"]);
        let at: Vec<(u64, StreamId, u64)> =
            drafts.iter().map(|d| (d.position, d.stream.clone(), d.revision)).collect();
        assert_eq!(
            at,
            [(10, stream(1), 5), (11, stream(1), 6), (12, stream(2), 0), (13, stream(1), 7)],
            "a stream's second request follows its first, a new stream starts at 0"
        );
        assert_eq!(drafts[0].event_id, batch[0].events[0].event_id);
        assert_eq!(drafts[0].payload.bytes(), batch[0].events[0].payload.as_slice());
    }

    #[test]
    fn expected_revisions_are_checked_against_the_batch_so_far() {
        let p = planner_at(0);
        let batch = vec![
            append_events(stream(1), ExpectedRevision::NoStream, vec![proposed("a.b", b"1")]).0,
            append_events(stream(1), ExpectedRevision::NoStream, vec![proposed("a.b", b"2")]).0,
            append_events(stream(1), ExpectedRevision::Exact(0), vec![proposed("a.b", b"3")]).0,
        ];
        let (plans, drafts) = p.position(&batch, &HashMap::new(), &mut rng());
        assert_eq!(plans_of(&plans), ["write 0+1", "store.wrong_expected_revision", "write 1+1"]);
        assert!(matches!(&plans[1], Plan::Fail(StoreError::WrongExpectedRevision { actual: Some(0), .. })));
        assert_eq!(drafts.iter().map(|d| d.position).collect::<Vec<_>>(), [0, 1], "no gap for the refusal");
    }

    #[test]
    fn malformed_appends_are_refused_without_positions() {
        let mut p = planner_at(0);
        p.config.max_append_events = 2;
        let e = proposed("a.b", b"1");
        let batch = vec![
            append(stream(1), 0).0,
            append(stream(1), 3).0,
            append_events(stream(1), ExpectedRevision::Any, vec![e.clone(), e]).0,
            append(stream(1), 1).0,
        ];
        let (plans, drafts) = p.position(&batch, &HashMap::new(), &mut rng());
        assert_eq!(
            plans_of(&plans),
            ["store.empty_append", "store.append_too_large", "store.duplicate_event_in_append", "write 0+1"]
        );
        assert_eq!(drafts.len(), 1);
        assert_eq!(drafts[0].position, 0);
    }

    #[test]
    fn a_retry_within_the_batch_replays_the_earlier_request_or_conflicts() {
        let p = planner_at(0);
        let events = vec![proposed("a.b", b"1"), proposed("a.b", b"2")];
        let mut changed = events.clone();
        changed[1].payload = b"other".to_vec();
        let batch = vec![
            append_events(stream(1), ExpectedRevision::Any, events.clone()).0,
            append_events(stream(1), ExpectedRevision::Any, events.clone()).0,
            append_events(stream(1), ExpectedRevision::Any, changed).0,
            append_events(stream(1), ExpectedRevision::Any, vec![proposed("a.b", b"3"), events[1].clone()]).0,
        ];
        let (plans, drafts) = p.position(&batch, &HashMap::new(), &mut rng());
        assert_eq!(
            plans_of(&plans),
            ["write 0+2", "replay of 0", "store.idempotency_conflict", "store.idempotency_conflict"]
        );
        assert_eq!(drafts.len(), 2);
    }

    #[test]
    fn stored_events_replay_with_their_positions_or_conflict() {
        let p = planner_at(50);
        let events = vec![proposed("a.b", b"1"), proposed("a.b", b"2")];
        // The two events as stored (signed as they would have been), at positions 7 and 8.
        let (plans, drafts) = planner_at(0).position(
            &[append_events(stream(1), ExpectedRevision::Any, events.clone()).0],
            &HashMap::new(),
            &mut rng(),
        );
        assert_eq!(plans_of(&plans), ["write 0+2"]);
        let rows =
            sign_drafts(drafts, &p.key, Timestamp::from_micros(0), &mut HashMap::new(), &mut Frontier::new())
                .unwrap();
        let existing: HashMap<Uuid, Existing> = rows
            .into_iter()
            .zip(&events)
            .zip(7..)
            .map(|((r, e), position)| {
                (e.event_id, Existing { position, event: r.event, payload: Some(e.payload.clone()) })
            })
            .collect();
        let mut changed = events.clone();
        changed[0].payload = b"other".to_vec();
        let batch = vec![
            append_events(stream(1), ExpectedRevision::Exact(9), events.clone()).0,
            append_events(stream(1), ExpectedRevision::Any, changed).0,
            append_events(stream(2), ExpectedRevision::Any, events[..1].to_vec()).0,
        ];
        let (plans, drafts) = p.position(&batch, &existing, &mut rng());
        assert_eq!(
            plans_of(&plans),
            ["replay [7, 8]", "store.idempotency_conflict", "store.idempotency_conflict"],
            "a replay wins over the revision check; other content or another stream conflicts"
        );
        assert!(
            matches!(&plans[0], Plan::Replay(r) if r.head == 50 && r.last_revision == 1 && r.idempotent_replay)
        );
        assert!(drafts.is_empty());
    }

    #[test]
    fn chain_bases_come_from_the_cached_heads() {
        let mut p = planner_at(0);
        p.heads.insert(stream(1), (4, [1; 32]));
        let batch = vec![append(stream(1), 2).0, append(stream(2), 1).0];
        let (_, drafts) = p.position(&batch, &HashMap::new(), &mut rng());
        let bases = p.chain_bases(&drafts);
        assert_eq!(bases.len(), 2);
        assert_eq!(bases[&stream(1)], Some([1; 32]));
        assert_eq!(bases[&stream(2)], None, "not cached: a new stream");
    }

    #[test]
    fn finish_signs_and_moves_the_optimistic_state_then_trimming_keeps_the_streams_in_flight() {
        let mut p = planner_at(0);
        p.heads.insert(stream(9), (0, [9; 32]));
        let batch = vec![append(stream(1), 3).0, append(stream(2), 2).0];
        let (plans, drafts) = p.position(&batch, &HashMap::new(), &mut rng());
        let prepared = p.finish(batch, plans, drafts).unwrap();
        assert_eq!(prepared.rows.len(), 5);
        assert_eq!(p.state.head, 5);
        assert_eq!(prepared.head, Head { size: 5, root: p.state.frontier.root() });
        assert_eq!(p.state.frontier.size(), 5);
        assert!(p.state.last_micros > i64::MIN);
        assert_eq!(p.heads[&stream(1)], (2, *prepared.rows[2].event.hash()));
        assert_eq!(p.heads[&stream(2)], (1, *prepared.rows[4].event.hash()));
        assert_eq!(prepared.ids.len(), 5);
        // The next batch links to the planned (uncommitted) heads.
        let next = vec![append(stream(1), 1).0];
        let (_, drafts) = p.position(&next, &HashMap::new(), &mut rng());
        assert_eq!((drafts[0].position, drafts[0].revision), (5, 3));
        assert!(p.next_time().as_micros() >= p.state.last_micros);
        p.trim_heads(Some(&prepared));
        let mut kept: Vec<_> = p.heads.keys().cloned().collect();
        kept.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        assert_eq!(kept, [stream(1), stream(2)], "stream 9 is forgotten, the streams in flight are kept");
        p.trim_heads(None);
        assert!(p.heads.is_empty());
    }
}
