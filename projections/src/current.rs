//! Current charts, served from memory when they have not changed.
//!
//! A patient's chart in the read model is a function of the last event of the patient's
//! stream that was applied to it: the patient row's `position` names that event (every
//! event of a patient stream rewrites it, in the same transaction as the rest of the
//! chart). So a chart loaded when the row said position P is exactly the chart whenever
//! the row says P again, in any generation of the tables (the fold is deterministic).
//! [`CurrentCharts::get`] asks the database for that one column (a primary-key probe)
//! and returns the cached chart when its position matches, else loads the chart in full
//! and keeps it. Nothing is invalidated by messages, so several servers (or a projection
//! runner in another process) can write the read models without this cache ever serving
//! a chart older than the row it was checked against.
//!
//! The cache holds PHI in this process's memory, like the projection runner's; it is
//! bounded by weight (about one unit per entry version, consent version, care-team member
//! and appointment). Erasing a payload (a later feature) must clear it.

use std::sync::Arc;

use domain::chart::Chart;
use quick_cache::sync::Cache;
use quick_cache::Weighter;
use uuid::Uuid;

/// Default weight capacity: roughly the number of entry versions (and other chart items)
/// kept in memory across all cached charts.
pub const DEFAULT_CAPACITY: u64 = 250_000;

#[derive(Clone, Copy, Debug)]
struct ChartWeight;

impl Weighter<Uuid, Arc<Chart>> for ChartWeight {
    fn weight(&self, _: &Uuid, chart: &Arc<Chart>) -> u64 {
        let versions: usize = chart.entries.values().map(|e| e.versions.len()).sum();
        let items =
            1 + versions + chart.consent.versions.len() + chart.care_team.len() + chart.appointments.len();
        u64::try_from(items).unwrap_or(u64::MAX)
    }
}

/// Charts by patient, each as loaded at its `position`.
pub struct CurrentCharts {
    cache: Cache<Uuid, Arc<Chart>, ChartWeight>,
}

impl std::fmt::Debug for CurrentCharts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CurrentCharts").field("charts", &self.cache.len()).finish()
    }
}

impl CurrentCharts {
    /// A cache of about `capacity` weight units (0: keep nothing).
    pub fn new(capacity: u64) -> Self {
        let items = usize::try_from(capacity / 16).unwrap_or(usize::MAX).max(16);
        Self { cache: Cache::with_weighter(items, capacity, ChartWeight) }
    }

    /// The cached chart of `patient_id` when it was loaded at `position`.
    pub fn at(&self, patient_id: Uuid, position: u64) -> Option<Arc<Chart>> {
        self.cache.get(&patient_id).filter(|c| c.position == Some(position))
    }

    /// Keep `chart` (replacing an older one; a chart older than the one kept is ignored,
    /// so a slow reader cannot put back what a faster one replaced).
    pub fn keep(&self, chart: &Arc<Chart>) {
        let newer = |kept: &Arc<Chart>| kept.position >= chart.position;
        if self.cache.get(&chart.patient_id).is_some_and(|kept| newer(&kept)) {
            return;
        }
        self.cache.insert(chart.patient_id, chart.clone());
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
        let cache = CurrentCharts::new(1000);
        let p = Uuid::now_v7();
        assert!(cache.at(p, 5).is_none());
        cache.keep(&chart(p, 5));
        assert_eq!(cache.at(p, 5).and_then(|c| c.position), Some(5));
        assert!(cache.at(p, 6).is_none(), "a newer row is a miss");
        assert!(cache.at(p, 4).is_none(), "an older row (a rebuilt generation behind) is a miss");
        cache.keep(&chart(p, 9));
        assert_eq!(cache.at(p, 9).and_then(|c| c.position), Some(9));
        cache.keep(&chart(p, 7));
        assert!(cache.at(p, 7).is_none(), "an older load does not replace a newer one");
        assert!(cache.at(p, 9).is_some());
        cache.clear();
        assert!(cache.is_empty());
    }

    #[test]
    fn bounded_by_weight() {
        let cache = CurrentCharts::new(64);
        for i in 0..1000 {
            cache.keep(&chart(Uuid::now_v7(), i));
        }
        assert!(cache.len() <= 64, "{} charts kept", cache.len());
    }
}
