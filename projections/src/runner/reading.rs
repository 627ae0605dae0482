//! Reading `$all` for the runner: pages read and decoded ahead, several at a time, while
//! the runner applies the ones before; and the decoding itself, which decides what the
//! runner skips and where it must stop.

use domain::{DomainError, Recorded};
use store::{AllFilter, EventStore, RecordedEvent};
use tokio::task::JoinHandle;

use crate::error::ProjectionError;

/// A page of `$all`, decoded: the domain events, how many raw events it covers (the
/// positions `from..from + count`), how many of those were skipped because they could
/// not be decoded, and the position of an event written by a newer build, where the
/// page was cut short.
#[derive(Default)]
pub(crate) struct Decoded {
    pub(crate) events: Vec<Recorded>,
    pub(crate) count: usize,
    pub(crate) skipped: u64,
    pub(crate) newer: Option<u64>,
}

impl Decoded {
    /// Append the page that follows this one (nothing follows a page cut short). The
    /// first page's events are taken as they are, with room for `expected` in all, so a
    /// transaction's worth of pages is not copied again each time the batch grows.
    pub(super) fn extend(&mut self, next: Decoded, expected: usize) {
        debug_assert!(self.newer.is_none());
        if self.events.is_empty() {
            self.events = next.events;
            self.events.reserve(expected.saturating_sub(self.events.len()));
        } else {
            self.events.extend(next.events);
        }
        self.count += next.count;
        self.skipped += next.skipped;
        self.newer = next.newer;
    }
}

async fn read_page(store: &EventStore, from: u64, max: usize) -> Result<Decoded, ProjectionError> {
    let raw = store.read_all(from, max, &AllFilter::default()).await?;
    decode_all(from, &raw)
}

/// Pages read at once while catching up (each a query and its decoding, on any core).
const READ_CONCURRENCY: usize = 3;

/// Read and decode the pages of `max` events from `from` on, `READ_CONCURRENCY` at a
/// time, into `pages` in order, until a short page (the end of the backlog), a page cut
/// short by a newer event, an error, or the runner hanging up.
pub(super) async fn read_ahead(
    store: EventStore,
    from: u64,
    max: usize,
    pages: tokio::sync::mpsc::Sender<Result<Decoded, ProjectionError>>,
) {
    use futures::stream::StreamExt;
    let starts = (0u64..).map(move |k| from + k * max as u64);
    let mut reads = futures::stream::iter(starts)
        .map(|at| {
            let store = store.clone();
            let task = AbortOnDrop(tokio::spawn(async move { read_page(&store, at, max).await }));
            async move {
                let mut task = task;
                (&mut task.0).await.map_err(|_| ProjectionError::Stopped)?
            }
        })
        .buffered(READ_CONCURRENCY);
    while let Some(page) = reads.next().await {
        let last = match &page {
            Ok(d) => d.count < max || d.newer.is_some(),
            Err(_) => true,
        };
        if pages.send(page).await.is_err() || last {
            return;
        }
    }
}

/// A task that stops when its owner drops it.
pub(super) struct AbortOnDrop<T>(pub(super) JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Decode what can be decoded. Key-registry events are not domain events. An erased or
/// malformed payload can never be decoded: it is skipped, counted and logged by position
/// and error code. An event type or schema version this build does not know was written
/// by a newer build: the page is cut short before it, and the runner applies what comes
/// before it and then stops (and retries) rather than leave it out of the read models for
/// good.
///
/// The batch must be exactly the positions `from, from + 1, ...`: the runner moves its
/// stored position by the number of events it applied, so a gap or a repeat here would
/// skip or re-apply events.
pub(crate) fn decode_all(from: u64, raw: &[RecordedEvent]) -> Result<Decoded, ProjectionError> {
    let mut events = Vec::with_capacity(raw.len());
    let mut skipped = 0;
    for (i, r) in raw.iter().enumerate() {
        if Some(r.position) != from.checked_add(i as u64) {
            return Err(ProjectionError::Corrupt {
                what: "batch is not contiguous from the stored position",
            });
        }
        match Recorded::decode(r.position, &r.event, r.payload.as_ref()) {
            Ok(e) => events.push(e),
            Err(DomainError::UnknownEventType) if r.event.stream_id().as_str() == ledger::StreamId::KEYS => {}
            Err(DomainError::UnknownEventType | DomainError::FutureSchemaVersion { .. }) => {
                return Ok(Decoded { events, count: i, skipped, newer: Some(r.position) });
            }
            Err(e) => {
                skipped += 1;
                tracing::warn!(position = r.position, code = e.code(), "event skipped by the projection");
            }
        }
    }
    Ok(Decoded { events, count: raw.len(), skipped, newer: None })
}
