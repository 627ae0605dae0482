//! Current charts, served from memory when they have not changed.
//!
//! A patient's chart in a generation of the read model is a function of the last event
//! of the patient's stream applied to it: the patient row's `position` names that event
//! (every event of a patient stream rewrites it, in the same transaction as the rest of
//! the chart). So a chart loaded from generation G when the row said position P is
//! exactly the chart whenever G's row says P again. Generations are told apart because a
//! rebuild may fold differently (a newer build, or payloads erased since): `rm.patients`
//! names its generation in every row. [`crate::ReadModels::current_chart`] reads those
//! two columns (a primary-key probe) and returns the cached chart when both match, else
//! loads the chart in full (the load names its generation too) and keeps it. Nothing is
//! invalidated by messages, so several servers (or a projection runner in another
//! process) can write the read models without this cache ever serving a chart other than
//! the one the row it was checked against stands for.
//!
//! The cache holds PHI in this process's memory, like the projection runner's; it is
//! bounded by an estimate of the charts' size in bytes ([`footprint`]). Erasing a payload
//! (a later feature) must clear it here; other processes stop serving the chart once the
//! erased generation is rebuilt.

use std::sync::Arc;

use domain::chart::Chart;
use quick_cache::sync::Cache;
use quick_cache::Weighter;
use uuid::Uuid;

/// Default capacity: 256 MiB of charts, as estimated by [`footprint`].
pub const DEFAULT_CAPACITY: u64 = 256 << 20;

/// A chart as kept, with its estimated size (computed once, when it is kept).
#[derive(Clone)]
struct Kept {
    chart: Arc<Chart>,
    /// The read-model generation it was loaded from.
    generation: i32,
    bytes: u64,
}

#[derive(Clone, Copy, Debug)]
struct ChartWeight;

impl Weighter<Uuid, Kept> for ChartWeight {
    fn weight(&self, _: &Uuid, kept: &Kept) -> u64 {
        kept.bytes.max(1)
    }
}

/// Counts what is written to it.
struct Counter(u64);

impl std::io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// About how much memory a chart holds: a fixed amount per item, plus the JSON length of
/// each version's content (the part that varies: a note can be long).
pub fn footprint(chart: &Chart) -> u64 {
    let mut content = Counter(0);
    let mut versions = 0u64;
    for e in chart.entries.values() {
        for v in &e.versions {
            versions += 1;
            // Writing to a counter cannot fail; a content that cannot be encoded is
            // counted as what was written of it.
            let _ = serde_json::to_writer(&mut content, &v.content);
        }
    }
    let items = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
    512 + 256 * versions
        + content.0
        + 256 * items(chart.consent.versions.len())
        + 128 * items(chart.care_team.len())
        + 256 * items(chart.appointments.len())
}

/// Charts by patient, each with the generation and `position` it was loaded at.
pub struct CurrentCharts {
    cache: Cache<Uuid, Kept, ChartWeight>,
    capacity: u64,
}

impl std::fmt::Debug for CurrentCharts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CurrentCharts").field("charts", &self.cache.len()).finish()
    }
}

impl CurrentCharts {
    /// A cache of about `capacity` bytes of charts (0: keep nothing).
    pub fn new(capacity: u64) -> Self {
        // quick_cache sizes its tables from an expected count: guess 16 KiB a chart.
        let items = usize::try_from(capacity / (16 << 10)).unwrap_or(usize::MAX).max(16);
        Self { cache: Cache::with_weighter(items, capacity, ChartWeight), capacity }
    }

    /// Whether any chart can be kept (a cache of capacity 0 keeps none, so a reader need
    /// not probe nor weigh what it loads).
    pub fn keeps_any(&self) -> bool {
        self.capacity > 0
    }

    /// The cached chart of `patient_id` when it was loaded from `generation` at `position`.
    pub fn at(&self, patient_id: Uuid, generation: i32, position: u64) -> Option<Arc<Chart>> {
        self.cache
            .get(&patient_id)
            .filter(|k| k.generation == generation && k.chart.position == Some(position))
            .map(|k| k.chart)
    }

    /// Keep `chart`, loaded from `generation` (replacing an older one; a chart older than
    /// the one kept, or from an older generation, is ignored, so a slow reader cannot put
    /// back what a faster one replaced).
    pub fn keep(&self, chart: &Arc<Chart>, generation: i32) {
        let newer = |kept: &Kept| (kept.generation, kept.chart.position) >= (generation, chart.position);
        if self.cache.get(&chart.patient_id).is_some_and(|kept| newer(&kept)) {
            return;
        }
        let kept = Kept { chart: chart.clone(), generation, bytes: footprint(chart) };
        self.cache.insert(chart.patient_id, kept);
    }

    /// Drop every chart (an erasure, or a test).
    pub fn clear(&self) {
        self.cache.clear();
    }

    pub fn len(&self) -> usize {
        self.cache.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart(patient: Uuid, position: u64) -> Arc<Chart> {
        let mut c = Chart::new(patient);
        c.position = Some(position);
        c.revision = Some(position);
        Arc::new(c)
    }

    #[test]
    fn serves_only_the_position_it_was_loaded_at() {
        let cache = CurrentCharts::new(1 << 20);
        let p = Uuid::now_v7();
        assert!(cache.at(p, 1, 5).is_none());
        cache.keep(&chart(p, 5), 1);
        assert_eq!(cache.at(p, 1, 5).and_then(|c| c.position), Some(5));
        assert!(cache.at(p, 1, 6).is_none(), "a newer row is a miss");
        assert!(cache.at(p, 1, 4).is_none(), "an older row is a miss");
        assert!(cache.at(p, 2, 5).is_none(), "another generation is a miss at the same position");
        cache.keep(&chart(p, 9), 1);
        assert_eq!(cache.at(p, 1, 9).and_then(|c| c.position), Some(9));
        cache.keep(&chart(p, 7), 1);
        assert!(cache.at(p, 1, 7).is_none(), "an older load does not replace a newer one");
        assert!(cache.at(p, 1, 9).is_some());
        cache.keep(&chart(p, 9), 2);
        assert!(cache.at(p, 2, 9).is_some(), "a newer generation replaces");
        cache.keep(&chart(p, 9), 1);
        assert!(cache.at(p, 2, 9).is_some(), "an older generation does not");
        cache.clear();
        assert!(cache.is_empty());
    }

    #[test]
    fn bounded_by_size() {
        let empty = footprint(&chart(Uuid::now_v7(), 0));
        let cache = CurrentCharts::new(64 * empty);
        for i in 0..1000 {
            cache.keep(&chart(Uuid::now_v7(), i), 1);
        }
        assert!(cache.len() <= 64, "{} charts kept", cache.len());
        assert!(!cache.is_empty());
    }

    #[test]
    fn a_long_note_weighs_more() {
        use domain::sim::Sim;
        let mut sim = Sim::new(1);
        let mut c = Chart::new(Uuid::now_v7());
        let base = footprint(&c);
        let id = Uuid::now_v7();
        let mut e = domain::chart::Entry {
            entry_id: id,
            kind: domain::events::EntryKind::SoapNote,
            status: domain::chart::EntryStatus::Active,
            versions: Vec::new(),
        };
        let content = sim.content(Some(domain::events::EntryKind::SoapNote));
        let json = serde_json::to_vec(&content).map(|v| v.len() as u64).unwrap_or(0);
        e.versions.push(domain::chart::EntryVersion {
            version: 1,
            change: domain::chart::VersionChange::Recorded,
            content,
            effective_at: ledger::Timestamp::from_micros(0),
            author: ledger::Actor::system(),
            recorded_at: ledger::Timestamp::from_micros(0),
            event_id: id,
            position: 1,
        });
        c.entries.insert(id, e);
        assert_eq!(footprint(&c), base + 256 + json);
    }
}
