//! Point-in-time replay for auditors: what a patient's record said at a recorded time,
//! folded in memory from the ledger by the same `Chart::apply` the read models use,
//! starting from the nearest chart snapshot ([`crate::snapshot`]) at or before that time.

use domain::chart::{Chart, Entry, EntryVersion, VersionChange};
use domain::{streams, Recorded};
use ledger::{StreamId, Timestamp};
use sqlx::Row;
use store::{Direction, EventStore, RecordedEvent};
use uuid::Uuid;

use crate::error::ProjectionError;
use crate::snapshot::{self, SnapshotPolicy};
use crate::sqlmap::{pos, upos};

/// A chart rebuilt from the ledger.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PointInTime {
    pub chart: Chart,
    /// The time asked for (`None`: the head).
    pub as_of: Option<Timestamp>,
    /// Events folded.
    pub events: u64,
    /// Events of the stream that could not be decoded (erased payloads): the chart
    /// shows the record without them, and says so.
    pub skipped: u64,
}

/// Apply one raw event of a patient stream to `chart`: the one place the read side folds
/// raw events in memory. An undecodable (erased) event is left out: answers `false`, for
/// the caller to count.
fn apply_raw(chart: &mut Chart, r: &RecordedEvent) -> bool {
    match Recorded::decode(r.position, &r.event, r.payload.as_ref()) {
        Ok(e) => {
            chart.apply(&e);
            true
        }
        Err(_) => false,
    }
}

/// Fold raw events of a patient stream; undecodable (erased) events are left out and
/// counted.
pub(crate) fn fold(patient_id: Uuid, raw: &[RecordedEvent], as_of: Option<Timestamp>) -> PointInTime {
    let mut chart = Chart::new(patient_id);
    let mut skipped = 0;
    for r in raw {
        if !apply_raw(&mut chart, r) {
            skipped += 1;
        }
    }
    PointInTime { chart, as_of, events: raw.len() as u64, skipped }
}

/// The chart as it stood at `at`: every event of the patient's stream recorded at or
/// before `at` (recorded times never decrease along the log), folded from the nearest
/// chart snapshot at or before that point (see [`crate::snapshot`]).
pub async fn chart_as_of(
    store: &EventStore,
    patient_id: Uuid,
    at: Timestamp,
) -> Result<PointInTime, ProjectionError> {
    chart_as_of_writing(store, store.pool(), patient_id, at).await
}

/// [`chart_as_of`], storing new snapshots through `writer` (the projection runner's pool,
/// when the store's role may not write the read models).
pub(crate) async fn chart_as_of_writing(
    store: &EventStore,
    writer: &sqlx::PgPool,
    patient_id: Uuid,
    at: Timestamp,
) -> Result<PointInTime, ProjectionError> {
    replay_writing(store, writer, patient_id, Some(at), Some(&SnapshotPolicy::default())).await
}

/// The chart at the head of the ledger, folded from the stream (not the read model).
pub async fn chart_at_head(store: &EventStore, patient_id: Uuid) -> Result<PointInTime, ProjectionError> {
    replay(store, patient_id, None, Some(&SnapshotPolicy::default())).await
}

/// Fold the patient's stream through `at` (or the head). With a policy, start from the
/// nearest usable snapshot at or before that point and store a snapshot at the last
/// snapshot point passed; without one, fold every event from revision 0 and touch no
/// snapshot.
pub async fn replay(
    store: &EventStore,
    patient_id: Uuid,
    at: Option<Timestamp>,
    snapshots: Option<&SnapshotPolicy>,
) -> Result<PointInTime, ProjectionError> {
    replay_writing(store, store.pool(), patient_id, at, snapshots).await
}

/// [`replay`], storing the new snapshot through `writer`.
async fn replay_writing(
    store: &EventStore,
    writer: &sqlx::PgPool,
    patient_id: Uuid,
    at: Option<Timestamp>,
    snapshots: Option<&SnapshotPolicy>,
) -> Result<PointInTime, ProjectionError> {
    let stream = streams::patient(patient_id);
    let start = match snapshots {
        Some(_) => nearest_snapshot(store, &stream, patient_id, at).await?,
        None => Start { last: last_revision(store, &stream, at).await?, snapshot: None },
    };
    let Some(last) = start.last else {
        return Ok(PointInTime { chart: Chart::new(patient_id), as_of: at, events: 0, skipped: 0 });
    };
    let (mut chart, mut events, mut skipped) = match start.snapshot {
        Some(s) => (s.chart, s.events, s.skipped),
        None => (Chart::new(patient_id), 0, 0),
    };
    // Where a new snapshot will be taken: the last snapshot point the tail passes.
    let take = snapshots.and_then(|p| p.last_boundary(events, last + 1).map(|n| (n, p.write_inline)));
    let mut taken = None;
    let mut from = events;
    while from <= last {
        let want = usize::try_from(last + 1 - from).unwrap_or(TAIL_PAGE).min(TAIL_PAGE);
        let page = store.read_stream(&stream, from, Direction::Forwards, want).await?;
        if page.is_empty() {
            break;
        }
        for r in &page {
            if r.event.stream_revision() != events {
                return Err(ProjectionError::Corrupt { what: "stream revisions are not contiguous" });
            }
            if !apply_raw(&mut chart, r) {
                skipped += 1;
            }
            events += 1;
            if take.is_some_and(|(n, _)| n == events) {
                taken = Some(NewSnapshot {
                    revision: events - 1,
                    event_hash: r.event.hash().to_vec(),
                    events,
                    skipped,
                    state: snapshot::encode(&chart),
                });
            }
        }
        from += page.len() as u64;
    }
    if let (Some(new), Some((_, inline))) = (taken, take) {
        let pool = writer.clone();
        if inline {
            new.write(&pool, patient_id).await;
        } else {
            tokio::spawn(async move { new.write(&pool, patient_id).await });
        }
    }
    Ok(PointInTime { chart, as_of: at, events, skipped })
}

/// Events per read of a stream's tail.
const TAIL_PAGE: usize = 4096;

struct Start {
    /// The last revision recorded at or before the time asked for (`None`: no event yet).
    last: Option<u64>,
    snapshot: Option<Stored>,
}

struct Stored {
    chart: Chart,
    events: u64,
    skipped: u64,
}

/// The last revision of `stream` recorded at or before `at` (or its last revision).
async fn last_revision(
    store: &EventStore,
    stream: &StreamId,
    at: Option<Timestamp>,
) -> Result<Option<u64>, ProjectionError> {
    let last: Option<i64> = sqlx::query_scalar(
        "SELECT max(stream_revision) FROM ledger_events WHERE stream_id = $1 AND recorded_at <= $2",
    )
    .bind(stream.as_str())
    .bind(at.map_or(MAX_TIME, Timestamp::to_datetime))
    .fetch_one(store.pool())
    .await?;
    Ok(last.and_then(|l| u64::try_from(l).ok()))
}

const MAX_TIME: time::OffsetDateTime = time::PrimitiveDateTime::MAX.assume_utc();

/// In one round trip: the last revision through `at`, and the latest snapshot at or
/// before it whose revision's event the ledger still holds with the same hash.
async fn nearest_snapshot(
    store: &EventStore,
    stream: &StreamId,
    patient_id: Uuid,
    at: Option<Timestamp>,
) -> Result<Start, ProjectionError> {
    let row = sqlx::query(
        "WITH last AS (SELECT max(stream_revision) AS r FROM ledger_events \
                       WHERE stream_id = $1 AND recorded_at <= $2) \
         SELECT last.r AS last, s.revision, s.events, s.skipped, s.state, e.event_hash = s.event_hash AS bound \
         FROM last LEFT JOIN LATERAL ( \
             SELECT revision, events, skipped, state, event_hash FROM rm.chart_snapshots \
             WHERE patient_id = $3 AND format = $4 AND revision <= last.r \
             ORDER BY revision DESC LIMIT 1) s ON true \
         LEFT JOIN ledger_events e ON e.stream_id = $1 AND e.stream_revision = s.revision",
    )
    .bind(stream.as_str())
    .bind(at.map_or(MAX_TIME, Timestamp::to_datetime))
    .bind(patient_id)
    .bind(snapshot::FORMAT)
    .fetch_one(store.pool())
    .await;
    let row = match row {
        Ok(row) => row,
        // No projection generation (or one created before snapshots): fold from 0.
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => {
            return Ok(Start { last: last_revision(store, stream, at).await?, snapshot: None });
        }
        Err(e) => return Err(e.into()),
    };
    let last = row.try_get::<Option<i64>, _>("last")?.map(upos);
    let Some(revision) = row.try_get::<Option<i64>, _>("revision")?.map(upos) else {
        return Ok(Start { last, snapshot: None });
    };
    if row.try_get::<Option<bool>, _>("bound")? != Some(true) {
        tracing::warn!(revision, code = "projection.snapshot_unbound", "chart snapshot ignored");
        return Ok(Start { last, snapshot: None });
    }
    let events = upos(row.try_get("events")?);
    let state: Vec<u8> = row.try_get("state")?;
    match snapshot::decode(&state) {
        Ok(chart) if events == revision + 1 && chart.patient_id == patient_id => Ok(Start {
            last,
            snapshot: Some(Stored { chart, events, skipped: upos(row.try_get("skipped")?) }),
        }),
        _ => {
            tracing::warn!(revision, code = "projection.snapshot_corrupt", "chart snapshot ignored");
            Ok(Start { last, snapshot: None })
        }
    }
}

/// A snapshot taken during a replay, to be stored.
struct NewSnapshot {
    revision: u64,
    event_hash: Vec<u8>,
    events: u64,
    skipped: u64,
    state: Vec<u8>,
}

impl NewSnapshot {
    /// Best effort: a replay never fails because its snapshot could not be stored (no
    /// generation yet, a read-only role, a concurrent switch-over).
    async fn write(self, pool: &sqlx::PgPool, patient_id: Uuid) {
        let result = sqlx::query(
            "INSERT INTO rm.chart_snapshots (patient_id, revision, format, event_hash, events, skipped, state) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (patient_id, revision) DO NOTHING",
        )
        .bind(patient_id)
        .bind(pos(self.revision))
        .bind(snapshot::FORMAT)
        .bind(self.event_hash)
        .bind(pos(self.events))
        .bind(pos(self.skipped))
        .bind(self.state)
        .execute(pool)
        .await;
        if let Err(e) = result {
            let code = match &e {
                sqlx::Error::Database(d) => d.code().map(|c| c.into_owned()),
                _ => None,
            };
            tracing::debug!(
                revision = self.revision,
                sqlstate = code.as_deref(),
                "chart snapshot not stored"
            );
        }
    }
}

/// Refold the patient's whole stream and compare every stored snapshot of the active
/// generation with the fold's state at its revision (and its event hash with the
/// ledger's). Returns the revisions whose snapshot differs: none, unless a snapshot
/// was altered or the fold changed without a rebuild.
pub async fn check_snapshots(store: &EventStore, patient_id: Uuid) -> Result<Vec<u64>, ProjectionError> {
    let rows = sqlx::query(
        "SELECT revision, format, event_hash, events, skipped, state FROM rm.chart_snapshots \
         WHERE patient_id = $1 ORDER BY revision",
    )
    .bind(patient_id)
    .fetch_all(store.pool())
    .await?;
    let raw = store.read_whole_stream(&streams::patient(patient_id)).await?;
    let mut bad = Vec::new();
    let mut chart = Chart::new(patient_id);
    let mut skipped = 0u64;
    let mut next = 0usize;
    for row in &rows {
        let revision = upos(row.try_get("revision")?);
        while (next as u64) <= revision && next < raw.len() {
            if !apply_raw(&mut chart, &raw[next]) {
                skipped += 1;
            }
            next += 1;
        }
        let same = next as u64 == revision + 1
            && row.try_get::<i16, _>("format")? == snapshot::FORMAT
            && row.try_get::<Vec<u8>, _>("event_hash")? == raw[next - 1].event.hash().to_vec()
            && upos(row.try_get("events")?) == revision + 1
            && upos(row.try_get("skipped")?) == skipped
            && snapshot::decode(&row.try_get::<Vec<u8>, _>("state")?).ok().as_ref() == Some(&chart);
        if !same {
            bad.push(revision);
        }
    }
    Ok(bad)
}

/// Every version of one entry as of `at` (or the head): who wrote each, when, and why.
/// `entry_id` names the entry or one of its amendments, as for
/// [`ReadModels::entry_history`](crate::queries::ReadModels::entry_history): an entry with
/// that id first, else the entry that has an amendment with that id.
pub async fn entry_history_as_of(
    store: &EventStore,
    patient_id: Uuid,
    entry_id: Uuid,
    at: Option<Timestamp>,
) -> Result<Option<Vec<EntryVersion>>, ProjectionError> {
    let pit = match at {
        Some(at) => chart_as_of(store, patient_id, at).await?,
        None => chart_at_head(store, patient_id).await?,
    };
    Ok(entry_named(&pit.chart, entry_id).map(|e| e.versions.clone()))
}

/// The entry `id` names in `chart`: the entry with that id, else the entry amended by the
/// amendment with that id (the earliest such amendment, should ids ever collide).
pub fn entry_named(chart: &Chart, id: Uuid) -> Option<&Entry> {
    if let Some(e) = chart.entries.get(&id) {
        return Some(e);
    }
    chart
        .entries
        .values()
        .filter_map(|e| {
            e.versions
                .iter()
                .find(|v| matches!(&v.change, VersionChange::Amended { amendment_id, .. } if *amendment_id == id))
                .map(|v| (v.position, e))
        })
        .min_by_key(|(position, _)| *position)
        .map(|(_, e)| e)
}
