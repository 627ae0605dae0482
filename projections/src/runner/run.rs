//! The runner's loop: catch up by pages, then follow `$all` live, until the generation
//! is retired; after an error, wait and start again from the stored position.
//!
//! **Catching up.** Pages are read and decoded ahead by a reader task; consecutive pages
//! are applied together up to `commit_events` per transaction. A runner whose cache is
//! fresh (it started on empty tables and has kept every chart) prepares batch k+1 in
//! memory while batch k's transaction runs in a task of its own; each transaction still
//! checks and moves the position, so a failed write drops the cache and the runner
//! resumes from the stored position as after any failure.
//!
//! The batch written in the background is waited for in one place ([`catch_up`]'s call
//! of [`settle`]), once per transaction's worth of pages: after the next batch has been
//! gathered and prepared and before it is written, after the last batch, and before
//! giving up on an error (so that a write under way finishes, and counts, first).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use store::AllFilter;
use tokio::sync::mpsc;

use super::commit::{commit, publish, settle, Writing};
use super::generations::{create_indexes, generations, stored_position, try_switch};
use super::reading::{decode_all, read_ahead, AbortOnDrop, Decoded};
use super::{schema_of, Inner};
use crate::error::ProjectionError;
use crate::records::{self, ChartCache, Prepared};

/// Why a runner stops for good.
enum Exit {
    Retired,
}

pub(super) async fn run(inner: Arc<Inner>, generation: i32, building: bool) {
    let mut building = building;
    let mut generation = generation;
    loop {
        match run_once(&inner, generation, &mut building).await {
            Ok(Exit::Retired) => {
                // Retired by this process's own switch: its builder is now the active
                // runner. Retired by another process: follow the new active generation.
                if inner.active_generation.load(Ordering::Acquire) != generation {
                    tracing::info!(generation, "projection generation retired; runner stops");
                    return;
                }
                match generations(&inner.pool).await.map(|g| g.into_iter().find(|g| g.status == "active")) {
                    Ok(Some(active)) => {
                        tracing::info!(
                            from = generation,
                            to = active.generation,
                            "following the active generation"
                        );
                        inner.active_generation.store(active.generation, Ordering::Release);
                        generation = active.generation;
                    }
                    Ok(None) => tokio::time::sleep(inner.config.retry_backoff).await,
                    Err(e) => {
                        tracing::warn!(code = e.code(), "projection generations unreadable; retrying");
                        tokio::time::sleep(inner.config.retry_backoff).await;
                    }
                }
            }
            Err(e) => {
                tracing::warn!(generation, code = e.code(), error = %e, "projection runner failed; retrying");
                tokio::time::sleep(inner.config.retry_backoff).await;
            }
        }
    }
}

/// Catch up by pages, then follow live; returns only when retired or on an error.
async fn run_once(inner: &Arc<Inner>, generation: i32, building: &mut bool) -> Result<Exit, ProjectionError> {
    let schema = schema_of(generation);
    let position = stored_position(&inner.pool, generation).await?;
    if inner.active_generation.load(Ordering::Acquire) == generation {
        // Another process's runner may have applied events this one has not seen.
        publish(inner, position);
    }
    let mut cache = if position == 0 { ChartCache::fresh() } else { ChartCache::default() };
    cache.content_jsonb = records::content_is_jsonb(&mut *inner.pool.acquire().await?, &schema).await?;
    let runner = Runner { inner, generation, schema: &schema };
    let CaughtUp::At { position, newer } = runner.catch_up(&mut cache, position).await? else {
        return Ok(Exit::Retired);
    };
    create_indexes(&inner.pool, &schema).await?;
    if let Some(position) = newer {
        return Err(ProjectionError::NewerEvent { position });
    }
    if *building && try_switch(inner, generation).await? {
        *building = false;
    }
    runner.follow_live(&mut cache, position, building).await
}

/// Where a catch-up by pages ended.
enum CaughtUp {
    /// At `position`: the end of the backlog, or the event written by a newer build
    /// (`newer`) that cut the last page short.
    At {
        position: u64,
        newer: Option<u64>,
    },
    Retired,
}

/// One run of one generation's runner.
struct Runner<'a> {
    inner: &'a Arc<Inner>,
    generation: i32,
    schema: &'a str,
}

impl Runner<'_> {
    /// Catch up by pages: a reader task keeps `READ_CONCURRENCY` pages being read and
    /// decoded at once (positions are gapless, so page k starts at `position + k * page`)
    /// and queues up to a transaction's worth of them while the runner applies the ones
    /// before, committing once `commit_events` have arrived (or at the end of the
    /// backlog). Returns the position after the backlog, or `Retired`.
    async fn catch_up(&self, cache: &mut ChartCache, mut position: u64) -> Result<CaughtUp, ProjectionError> {
        let config = &self.inner.config;
        let page = config.page_events.max(1);
        let queued = (config.commit_events / page).clamp(1, 64);
        let (pages, arriving) = mpsc::channel(queued);
        // Pages read past the end of the backlog are not used (live mode reads them
        // again): the reader stops when this returns.
        let _reader = AbortOnDrop(tokio::spawn(read_ahead(self.inner.store.clone(), position, page, pages)));
        let mut batches = Batches { arriving, page, commit_events: config.commit_events, ended: None };
        let mut writing: Option<Writing> = None;
        loop {
            let next = batches.next(cache).await;
            let settled = settle(&mut writing, self.inner, self.generation, cache, position).await;
            let next = next?;
            let Some(p) = settled? else { return Ok(CaughtUp::Retired) };
            position = p;
            let Some((batch, prepared)) = next else {
                return Ok(CaughtUp::At { position, newer: batches.ended.flatten() });
            };
            match prepared {
                Some(rows) => {
                    writing =
                        Some(Writing::start(self.inner, self.generation, self.schema, position, &batch, rows))
                }
                None if batch.count > 0 => {
                    let Some(p) =
                        commit(self.inner, self.generation, self.schema, cache, position, &batch).await?
                    else {
                        return Ok(CaughtUp::Retired);
                    };
                    position = p;
                }
                None => {}
            }
        }
    }

    /// Follow `$all` live from `position`, a batch of what has arrived at a time;
    /// returns only when retired or on an error. A building generation switches as soon
    /// as it has caught up.
    async fn follow_live(
        &self,
        cache: &mut ChartCache,
        mut position: u64,
        building: &mut bool,
    ) -> Result<Exit, ProjectionError> {
        let (inner, generation) = (self.inner, self.generation);
        let mut sub = inner.store.subscribe_all(position, AllFilter::default());
        loop {
            let Some(first) = sub.next().await else { return Err(ProjectionError::Stopped) };
            let mut raw = vec![first?];
            while raw.len() < inner.config.batch_events {
                match sub.try_next() {
                    Some(e) => raw.push(e?),
                    None => break,
                }
            }
            let decoded = decode_all(position, &raw)?;
            if decoded.count > 0 {
                let Some(p) = commit(inner, generation, self.schema, cache, position, &decoded).await? else {
                    return Ok(Exit::Retired);
                };
                position = p;
            }
            if let Some(position) = decoded.newer {
                return Err(ProjectionError::NewerEvent { position });
            }
            // Switching is safe at any batch boundary: the switch compares positions itself.
            if *building && try_switch(inner, generation).await? {
                *building = false;
            }
        }
    }
}

/// The pages arriving from the reader, gathered into transactions.
struct Batches {
    arriving: mpsc::Receiver<Result<Decoded, ProjectionError>>,
    page: usize,
    commit_events: usize,
    /// Set once the last page has arrived, with the position of the event written by a
    /// newer build that cut it short, if one did.
    ended: Option<Option<u64>>,
}

impl Batches {
    /// The next transaction's worth of pages (`None` after the last), folded and encoded
    /// ahead when the cache is fresh: a fresh cache folds and encodes this batch while
    /// the previous one is being written; otherwise the batch loads what it lacks once
    /// the previous one has committed.
    async fn next(
        &mut self,
        cache: &mut ChartCache,
    ) -> Result<Option<(Decoded, Option<Prepared>)>, ProjectionError> {
        if self.ended.is_some() {
            return Ok(None);
        }
        let mut batch = Decoded::default();
        loop {
            let decoded = match self.arriving.recv().await {
                Some(decoded) => decoded?,
                None => return Err(ProjectionError::Stopped),
            };
            let more = decoded.count == self.page && decoded.newer.is_none();
            // A full page means more are coming: make room for a transaction's worth.
            batch.extend(decoded, if more { self.commit_events + self.page } else { 0 });
            if !more {
                self.ended = Some(batch.newer);
                break;
            }
            if batch.count >= self.commit_events {
                break;
            }
        }
        if batch.count == 0 {
            return Ok(Some((batch, None)));
        }
        let prepared = records::prepare_fresh(cache, &batch.events)?;
        if prepared.is_some() {
            // Encoded: the decoded events are not needed any more.
            batch.events = Vec::new();
        }
        Ok(Some((batch, prepared)))
    }
}
