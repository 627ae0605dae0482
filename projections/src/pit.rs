//! Point-in-time replay for auditors: what a patient's record said at a recorded time,
//! folded in memory from the ledger by the same `Chart::apply` the read models use.

use domain::chart::{Chart, Entry, EntryVersion, VersionChange};
use domain::{streams, Recorded};
use ledger::Timestamp;
use store::{EventStore, RecordedEvent};
use uuid::Uuid;

use crate::error::ProjectionError;

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

/// Fold raw events of a patient stream; undecodable (erased) events are left out and
/// counted. The one place the read side folds raw events in memory.
pub(crate) fn fold(patient_id: Uuid, raw: &[RecordedEvent], as_of: Option<Timestamp>) -> PointInTime {
    let mut chart = Chart::new(patient_id);
    let mut skipped = 0;
    for r in raw {
        match Recorded::decode(r.position, &r.event, r.payload.as_ref()) {
            Ok(e) => chart.apply(&e),
            Err(_) => skipped += 1,
        }
    }
    PointInTime { chart, as_of, events: raw.len() as u64, skipped }
}

/// The chart as it stood at `at`: every event of the patient's stream recorded at or
/// before `at` (recorded times never decrease along the log).
pub async fn chart_as_of(
    store: &EventStore,
    patient_id: Uuid,
    at: Timestamp,
) -> Result<PointInTime, ProjectionError> {
    let raw = store.read_stream_as_of(&streams::patient(patient_id), at).await?;
    Ok(fold(patient_id, &raw, Some(at)))
}

/// The chart at the head of the ledger, folded from the stream (not the read model).
pub async fn chart_at_head(store: &EventStore, patient_id: Uuid) -> Result<PointInTime, ProjectionError> {
    let raw = store.read_whole_stream(&streams::patient(patient_id)).await?;
    Ok(fold(patient_id, &raw, None))
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
