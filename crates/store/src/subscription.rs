//! Catch-up subscriptions: read history from a position, then follow live commits, woken
//! by LISTEN/NOTIFY with a polling fallback. Because positions are gapless and assigned in
//! commit order, "everything after the last delivered position" never skips an event that
//! commits late and never repeats one; reconnects resume from the last delivered position.

use std::time::Duration;

use ledger::StreamId;
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::error::StoreError;
use crate::select_events;
use crate::types::{AllFilter, RecordedEvent};
use crate::writer::NOTIFY_CHANNEL;

const PAGE: usize = 512;

/// A running subscription. Dropping it stops the reader task.
#[derive(Debug)]
pub struct Subscription {
    rx: mpsc::Receiver<Result<RecordedEvent, StoreError>>,
    task: JoinHandle<()>,
}

impl Subscription {
    /// The next event, in order. `Some(Err(_))` reports a database problem; the subscription
    /// keeps retrying and continues where it stopped.
    pub async fn next(&mut self) -> Option<Result<RecordedEvent, StoreError>> {
        self.rx.recv().await
    }

    /// The next event if one is already buffered, without waiting (to batch what is ready).
    pub fn try_next(&mut self) -> Option<Result<RecordedEvent, StoreError>> {
        self.rx.try_recv().ok()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.task.abort();
    }
}

enum Source {
    All(AllFilter),
    Stream(StreamId),
}

pub(crate) fn spawn_all(pool: PgPool, from: u64, filter: AllFilter, poll: Duration) -> Subscription {
    spawn(pool, Source::All(filter), from, poll)
}

pub(crate) fn spawn_stream(
    pool: PgPool,
    stream: StreamId,
    from_revision: u64,
    poll: Duration,
) -> Subscription {
    spawn(pool, Source::Stream(stream), from_revision, poll)
}

fn spawn(pool: PgPool, source: Source, from: u64, poll: Duration) -> Subscription {
    let (tx, rx) = mpsc::channel(PAGE * 2);
    let task = tokio::spawn(async move {
        // `next` is the next position (for $all) or revision (for a stream) to deliver.
        let mut next = from;
        let mut listener: Option<PgListener> = None;
        let mut backoff = Duration::from_millis(50);
        loop {
            if listener.is_none() {
                // Listen *before* reading, so a commit between the read and the wait wakes us.
                // The listener gets its own connection: it must not hold one of the pool's.
                let own = sqlx::postgres::PgPoolOptions::new()
                    .max_connections(1)
                    .connect_lazy_with(pool.connect_options().as_ref().clone());
                match PgListener::connect_with(&own).await {
                    Ok(mut l) => {
                        if l.listen(NOTIFY_CHANNEL).await.is_ok() {
                            listener = Some(l);
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "subscription listener unavailable; polling"),
                }
            }
            let page = match &source {
                // Scan every position (the filter is applied here), so `next` advances past the page.
                Source::All(f) => read_all_page(&pool, next, f).await,
                Source::Stream(s) => read_stream_page(&pool, s, next).await,
            };
            let (events, advance_to) = match page {
                Ok(p) => {
                    backoff = Duration::from_millis(50);
                    p
                }
                Err(e) => {
                    if tx.send(Err(e)).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    listener = None;
                    continue;
                }
            };
            let full = advance_to.is_some_and(|a| a - next >= PAGE as u64);
            for ev in events {
                if tx.send(Ok(ev)).await.is_err() {
                    return;
                }
            }
            if let Some(a) = advance_to {
                next = a;
            }
            if full {
                continue;
            }
            // Caught up: wait for a notification or the poll interval.
            match listener.as_mut() {
                Some(l) => match tokio::time::timeout(poll, l.recv()).await {
                    Ok(Ok(_)) | Err(_) => {}
                    Ok(Err(_)) => listener = None,
                },
                None => tokio::time::sleep(poll).await,
            }
            if tx.is_closed() {
                return;
            }
        }
    });
    Subscription { rx, task }
}

/// One page of `$all` from `next`: the matching events, and the position to continue from
/// (past every row scanned, matching or not).
async fn read_all_page(
    pool: &PgPool,
    next: u64,
    filter: &AllFilter,
) -> Result<(Vec<RecordedEvent>, Option<u64>), StoreError> {
    let scanned = crate::read_all(pool, next, PAGE, &AllFilter::default()).await?;
    let advance = scanned.last().map(|e| e.position + 1);
    for (i, e) in scanned.iter().enumerate() {
        if e.position != next + i as u64 {
            return Err(StoreError::Corrupt { position: next + i as u64, reason: "gap in $all" });
        }
    }
    let events = scanned.into_iter().filter(|e| filter.matches(&e.event)).collect();
    Ok((events, advance))
}

async fn read_stream_page(
    pool: &PgPool,
    stream: &StreamId,
    next: u64,
) -> Result<(Vec<RecordedEvent>, Option<u64>), StoreError> {
    let rows = sqlx::query(concat!(
        select_events!(),
        "WHERE stream_id = $1 AND stream_revision >= $2 ORDER BY stream_revision LIMIT $3"
    ))
    .bind(stream.as_str())
    .bind(next as i64)
    .bind(PAGE as i64)
    .fetch_all(pool)
    .await?;
    let events = rows.iter().map(crate::decode_row).collect::<Result<Vec<_>, _>>()?;
    let advance = events.last().map(|e| e.event.stream_revision() + 1);
    Ok((events, advance))
}
