//! Prometheus metrics. Labels are operation names, outcome codes and roles only: never a
//! patient id, a user name or anything a request carried.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    denied: IntCounterVec,
    access_events: IntCounterVec,
    pub projection_lag: IntGauge,
    /// Entry lists reused or kept (`graphql/exec/resolved.rs`).
    pub entry_lists: IntCounterVec,
    /// The event store writer's counters (`EventStore::writer_stats`), copied at each scrape.
    store_writer: IntGaugeVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    #[allow(clippy::expect_used)] // constant, valid metric definitions registered once
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("chartledger".into()), None).expect("valid prefix");
        let requests = IntCounterVec::new(
            Opts::new("graphql_requests_total", "GraphQL requests by outcome"),
            &["outcome"],
        )
        .expect("valid metric");
        let latency = HistogramVec::new(
            HistogramOpts::new("graphql_request_seconds", "GraphQL request latency, audit write included")
                .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]),
            &["outcome"],
        )
        .expect("valid metric");
        let denied =
            IntCounterVec::new(Opts::new("access_denied_total", "Refused operations"), &["operation"])
                .expect("valid metric");
        let access_events = IntCounterVec::new(
            Opts::new("access_events_total", "Access events written (ok) or failed (error)"),
            &["result"],
        )
        .expect("valid metric");
        let entry_lists = IntCounterVec::new(
            Opts::new("entry_lists_total", "Resolved entry lists reused from memory or kept there"),
            &["result"],
        )
        .expect("valid metric");
        let store_writer = IntGaugeVec::new(
            Opts::new(
                "store_writer",
                "Event store writer since the process started: batches committed, parts merged into a \
                 batch while the one before committed, batches streamed in chunks, chunk statements",
            ),
            &["counter"],
        )
        .expect("valid metric");
        let projection_lag =
            IntGauge::new("projection_lag_events", "Events the read models are behind the ledger")
                .expect("valid metric");
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(latency.clone()),
            Box::new(denied.clone()),
            Box::new(access_events.clone()),
            Box::new(projection_lag.clone()),
            Box::new(entry_lists.clone()),
            Box::new(store_writer.clone()),
        ] {
            registry.register(c).expect("registered once");
        }
        Self { registry, requests, latency, denied, access_events, projection_lag, entry_lists, store_writer }
    }

    /// Copy the store writer's counters.
    pub fn store_writer(&self, s: store::WriterStats) {
        for (name, v) in [
            ("batches", s.batches),
            ("merged_parts", s.merged_parts),
            ("streamed_batches", s.streamed_batches),
            ("streamed_chunks", s.streamed_chunks),
        ] {
            self.store_writer.with_label_values(&[name]).set(i64::try_from(v).unwrap_or(i64::MAX));
        }
    }

    pub fn request(&self, outcome: &str, seconds: f64) {
        self.requests.with_label_values(&[outcome]).inc();
        self.latency.with_label_values(&[outcome]).observe(seconds);
    }

    pub fn denied(&self, operation: &str) {
        self.denied.with_label_values(&[operation]).inc();
    }

    pub fn access_events(&self, ok: bool, n: usize) {
        let label = if ok { "ok" } else { "error" };
        self.access_events.with_label_values(&[label]).inc_by(n as u64);
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if TextEncoder::new().encode(&self.registry.gather(), &mut buf).is_err() {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}
