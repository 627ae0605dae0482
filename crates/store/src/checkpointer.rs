//! Signed checkpoints: written every `checkpoint_every_events` events or at most
//! `checkpoint_interval` after the head moved, whichever comes first; stored append-only.

use std::sync::Arc;

use base64::Engine;
use ledger::checkpoint::Checkpoint;
use ledger::LedgerSigningKey;
use sqlx::{PgPool, Row};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::StoreError;
use crate::types::StoredCheckpoint;
use crate::{now_micros, Head, StoreConfig};

/// Aborts the checkpointer when the store is dropped.
#[derive(Debug)]
pub(crate) struct Handle(JoinHandle<()>);

impl Drop for Handle {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub(crate) fn spawn(
    pool: PgPool,
    key: watch::Receiver<Arc<LedgerSigningKey>>,
    config: StoreConfig,
    mut head_rx: watch::Receiver<Head>,
) -> Handle {
    Handle(tokio::spawn(async move {
        let mut last = match latest(&pool).await {
            Ok(c) => c.map_or(0, |c| c.tree_size),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read checkpoints");
                0
            }
        };
        let mut deadline: Option<tokio::time::Instant> = None;
        loop {
            let head = *head_rx.borrow_and_update();
            if head.size > last {
                let due = head.size - last >= config.checkpoint_every_events
                    || deadline.is_some_and(|d| d <= tokio::time::Instant::now())
                    || last == 0;
                if due {
                    // The current key (it changes when the writer rotates it).
                    let key = Arc::clone(&key.borrow());
                    match write(&pool, &key, &config.origin, head).await {
                        Ok(c) => {
                            last = c.tree_size;
                            deadline = None;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "checkpoint failed; retrying");
                            deadline = Some(tokio::time::Instant::now() + config.checkpoint_interval / 4);
                        }
                    }
                    continue;
                }
                deadline.get_or_insert_with(|| tokio::time::Instant::now() + config.checkpoint_interval);
            }
            match deadline {
                Some(d) => {
                    tokio::select! {
                        r = head_rx.changed() => if r.is_err() { return },
                        () = tokio::time::sleep_until(d) => {}
                    }
                }
                None => {
                    if head_rx.changed().await.is_err() {
                        return;
                    }
                }
            }
        }
    }))
}

/// Sign and store a checkpoint of `head` (a no-op if that size is already checkpointed).
pub(crate) async fn write(
    pool: &PgPool,
    key: &LedgerSigningKey,
    origin: &str,
    head: Head,
) -> Result<StoredCheckpoint, StoreError> {
    let micros = now_micros();
    let mut cp =
        Checkpoint { origin: origin.to_owned(), size: head.size, root_hash: head.root, extensions: vec![] }
            .with_timestamp_micros(micros);
    // The registry head among the checkpoint's events (all committed: the head only moves
    // past committed positions), so proofs can show their `$keys` is complete.
    if let Some((revision, hash)) = keys_head(pool, head.size).await? {
        cp = cp.with_keys_head(revision, &hash);
    }
    let signer = key.note_signer()?;
    let note = cp
        .sign(&[&signer])
        .map_err(|_| StoreError::Corrupt { position: head.size, reason: "checkpoint signing failed" })?;
    sqlx::query(
        "INSERT INTO ledger_checkpoints (tree_size, root_hash, note, created_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (tree_size) DO NOTHING",
    )
    .bind(head.size as i64)
    .bind(head.root.to_vec())
    .bind(&note)
    .bind(ledger::Timestamp::from_micros(micros).to_datetime())
    .execute(pool)
    .await?;
    tracing::debug!(tree_size = head.size, root = %base64::engine::general_purpose::STANDARD.encode(head.root), "checkpoint");
    get(pool, head.size)
        .await?
        .ok_or(StoreError::Corrupt { position: head.size, reason: "checkpoint vanished" })
}

/// Revision and event hash of the last `$keys` event before position `size`.
pub(crate) async fn keys_head(pool: &PgPool, size: u64) -> Result<Option<(u64, [u8; 32])>, StoreError> {
    let row = sqlx::query(
        "SELECT stream_revision, event_hash FROM ledger_events \
         WHERE stream_id = $1 AND position < $2 ORDER BY stream_revision DESC LIMIT 1",
    )
    .bind(ledger::StreamId::KEYS)
    .bind(size as i64)
    .fetch_optional(pool)
    .await?;
    let Some(r) = row else { return Ok(None) };
    let revision: i64 = r.try_get("stream_revision")?;
    let hash: Vec<u8> = r.try_get("event_hash")?;
    let hash =
        hash.try_into().map_err(|_| StoreError::Corrupt { position: size, reason: "event hash length" })?;
    Ok(Some((revision as u64, hash)))
}

fn decode(r: &sqlx::postgres::PgRow) -> Result<StoredCheckpoint, StoreError> {
    let size: i64 = r.try_get("tree_size")?;
    let root: Vec<u8> = r.try_get("root_hash")?;
    let root_hash = root
        .try_into()
        .map_err(|_| StoreError::Corrupt { position: size as u64, reason: "checkpoint root length" })?;
    Ok(StoredCheckpoint { tree_size: size as u64, root_hash, note: r.try_get("note")? })
}

pub(crate) async fn get(pool: &PgPool, size: u64) -> Result<Option<StoredCheckpoint>, StoreError> {
    let r = sqlx::query("SELECT tree_size, root_hash, note FROM ledger_checkpoints WHERE tree_size = $1")
        .bind(size as i64)
        .fetch_optional(pool)
        .await?;
    r.as_ref().map(decode).transpose()
}

pub(crate) async fn latest(pool: &PgPool) -> Result<Option<StoredCheckpoint>, StoreError> {
    let r = sqlx::query(
        "SELECT tree_size, root_hash, note FROM ledger_checkpoints ORDER BY tree_size DESC LIMIT 1",
    )
    .fetch_optional(pool)
    .await?;
    r.as_ref().map(decode).transpose()
}

pub(crate) async fn all(pool: &PgPool) -> Result<Vec<StoredCheckpoint>, StoreError> {
    let rows = sqlx::query("SELECT tree_size, root_hash, note FROM ledger_checkpoints ORDER BY tree_size")
        .fetch_all(pool)
        .await?;
    rows.iter().map(decode).collect()
}
