//! Record proof bundles (`schema/proof-format.md`) assembled from the store.
//!
//! The functions on a pool only read (events, payloads, Merkle nodes, stored
//! checkpoints), so they work beside a running server without the ledger key; they prove
//! against the latest stored checkpoint and answer [`ProofExportError::NotCheckpointed`]
//! when the events are newer (the checkpointer writes one within its interval).
//! [`EventStore::entry_proof`] and [`EventStore::event_proof`] write a checkpoint first
//! in that case.

use std::collections::HashMap;

use ledger::merkle::{self, NodeId};
use ledger::{Hash, StreamId};
use proof::{ConsistencyItem, ProofBundle, Selection, Subject};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{checkpointer, decode_row, nodes, select_events, EventStore, RecordedEvent, StoreError};

/// Why a bundle could not be assembled.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProofExportError {
    /// No such entry in the patient's stream, or no such event.
    #[error("not found")]
    NotFound,
    /// The ledger has no checkpoint covering the events yet.
    #[error("no checkpoint covers position {needed} yet (latest checkpoint size {latest})")]
    NotCheckpointed { needed: u64, latest: u64 },
    /// No stored checkpoint of the requested older size.
    #[error("no checkpoint of size {0}")]
    NoSuchCheckpoint(u64),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored checkpoint note does not parse (the stored data is corrupt).
    #[error("stored checkpoint: {0}")]
    Checkpoint(proof::ProofError),
}

impl ProofExportError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound => "proof.not_found",
            Self::NotCheckpointed { .. } => "proof.not_checkpointed",
            Self::NoSuchCheckpoint(_) => "proof.no_such_checkpoint",
            Self::Store(e) => e.code(),
            Self::Checkpoint(e) => e.code(),
        }
    }
}

impl From<sqlx::Error> for ProofExportError {
    fn from(e: sqlx::Error) -> Self {
        Self::Store(StoreError::Database(e))
    }
}

async fn stream_events(pool: &PgPool, stream: &StreamId) -> Result<Vec<RecordedEvent>, ProofExportError> {
    let rows = sqlx::query(concat!(select_events!(), "WHERE stream_id = $1 ORDER BY stream_revision"))
        .bind(stream.as_str())
        .fetch_all(pool)
        .await?;
    Ok(rows.iter().map(decode_row).collect::<Result<_, _>>()?)
}

/// The bundle of one clinical entry (every version) of a patient, against the latest
/// stored checkpoint.
pub async fn entry_bundle(
    pool: &PgPool,
    patient_id: Uuid,
    entry_id: Uuid,
) -> Result<ProofBundle, ProofExportError> {
    let stream = stream_events(pool, &StreamId::patient(patient_id)).await?;
    let pairs: Vec<_> = stream.iter().map(|r| (&r.event, r.payload.as_ref())).collect();
    let selection = Selection::entry_versions(&pairs, entry_id);
    if selection.events.is_empty() {
        return Err(ProofExportError::NotFound);
    }
    assemble(pool, Subject::Entry { patient_id, entry_id }, &stream, &selection).await
}

/// The bundle of one event, against the latest stored checkpoint.
pub async fn event_bundle(pool: &PgPool, event_id: Uuid) -> Result<ProofBundle, ProofExportError> {
    let row = sqlx::query(concat!(select_events!(), "WHERE event_id = $1"))
        .bind(event_id)
        .fetch_optional(pool)
        .await?;
    let event = row.as_ref().map(decode_row).transpose()?.ok_or(ProofExportError::NotFound)?;
    assemble(pool, Subject::Event { event_id }, &[event], &Selection::linking(vec![0])).await
}

/// Add a consistency proof from the stored checkpoint of `old_size` to the bundle's.
pub async fn add_consistency(
    pool: &PgPool,
    bundle: &mut ProofBundle,
    old_size: u64,
) -> Result<(), ProofExportError> {
    let new_size = bundle.checkpoint.size;
    let old = checkpointer::get(pool, old_size).await?.ok_or(ProofExportError::NoSuchCheckpoint(old_size))?;
    let plan = merkle::consistency_plan(old_size, new_size)
        .map_err(|_| ProofExportError::NoSuchCheckpoint(old_size))?;
    let nodes = nodes::fetch_nodes(pool, &plan.nodes()).await?;
    let proof = plan.assemble(|n| nodes.get(&n).copied()).map_err(|_| missing(new_size))?;
    bundle.consistency =
        Some(ConsistencyItem { old_checkpoint: old.note, proof: proof::encode_hashes(&proof) });
    Ok(())
}

fn missing(size: u64) -> ProofExportError {
    ProofExportError::Store(StoreError::Corrupt { position: size, reason: "missing Merkle node" })
}

/// Prove `selection` of `stream` (one stream's events in revision order) and the whole
/// `$keys` stream against the latest checkpoint (format v2: one inclusion proof for the
/// last subject event, and one for the last key event only when the checkpoint does not
/// name the registry head).
async fn assemble(
    pool: &PgPool,
    subject: Subject,
    stream: &[RecordedEvent],
    selection: &Selection,
) -> Result<ProofBundle, ProofExportError> {
    let needed =
        selection.events.iter().filter_map(|&i| stream.get(i)).map(|r| r.position).max().unwrap_or(0);
    let latest = checkpointer::latest(pool).await?;
    let cp = match latest {
        Some(cp) if cp.tree_size > needed => cp,
        other => {
            return Err(ProofExportError::NotCheckpointed {
                needed,
                latest: other.map_or(0, |c| c.tree_size),
            })
        }
    };
    let size = cp.tree_size;
    let checkpoint = proof::checkpoint_item(&cp.note).map_err(ProofExportError::Checkpoint)?;
    let keys: Vec<RecordedEvent> =
        stream_events(pool, &StreamId::keys()).await?.into_iter().filter(|r| r.position < size).collect();
    let subject_events: Vec<&RecordedEvent> =
        selection.events.iter().filter_map(|&i| stream.get(i)).collect();

    // Only the last event of each list needs an inclusion proof (the others hash-link to
    // it), and no key event when the checkpoint names the registry head.
    let last_key = if checkpoint.keys_head.is_some() { None } else { keys.last() };
    let proven: Vec<&RecordedEvent> = last_key.into_iter().chain(subject_events.last().copied()).collect();
    let plans = proven
        .iter()
        .map(|r| merkle::inclusion_plan(r.position, size).map_err(|_| missing(size)))
        .collect::<Result<Vec<_>, _>>()?;
    let mut ids: Vec<NodeId> = plans.iter().flat_map(|p| p.nodes()).collect();
    ids.sort_unstable();
    ids.dedup();
    let nodes: HashMap<NodeId, Hash> = nodes::fetch_nodes(pool, &ids).await?;
    let mut paths: HashMap<u64, Vec<Hash>> = HashMap::new();
    for (r, plan) in proven.iter().zip(&plans) {
        paths.insert(r.position, plan.assemble(|n| nodes.get(&n).copied()).map_err(|_| missing(size))?);
    }
    let item = |r: &RecordedEvent| {
        let path = paths.get(&r.position).map(|p| (r.position, p.as_slice()));
        proof::event_item(&r.event, r.payload.as_ref(), path)
    };
    let keys_items = keys.iter().map(item).collect();
    let events = subject_events.iter().map(|r| item(r)).collect();
    let chain = selection
        .chain
        .iter()
        .filter_map(|&i| stream.get(i))
        .map(|r| proof::encode_bytes(&r.event.to_bytes()))
        .collect();
    Ok(ProofBundle {
        format: proof::FORMAT_V2.to_owned(),
        subject,
        checkpoint,
        keys: keys_items,
        events,
        chain,
        consistency: None,
    })
}

impl EventStore {
    /// [`entry_bundle`], writing a checkpoint first when the entry is newer than the latest.
    pub async fn entry_proof(
        &self,
        patient_id: Uuid,
        entry_id: Uuid,
    ) -> Result<ProofBundle, ProofExportError> {
        match entry_bundle(self.pool(), patient_id, entry_id).await {
            Err(ProofExportError::NotCheckpointed { .. }) => {
                self.checkpoint_now().await?;
                entry_bundle(self.pool(), patient_id, entry_id).await
            }
            other => other,
        }
    }

    /// [`event_bundle`], writing a checkpoint first when the event is newer than the latest.
    pub async fn event_proof(&self, event_id: Uuid) -> Result<ProofBundle, ProofExportError> {
        match event_bundle(self.pool(), event_id).await {
            Err(ProofExportError::NotCheckpointed { .. }) => {
                self.checkpoint_now().await?;
                event_bundle(self.pool(), event_id).await
            }
            other => other,
        }
    }
}
