//! The command side: validate a command against the patient's current chart (folded
//! from the ledger, not the possibly lagging read model), append the resulting event
//! with the stream's revision as the expected revision, and retry from a fresh fold if
//! another writer got there first. Retrying a command with the same event id returns
//! the original result (idempotency), whatever the chart says now.

use std::sync::Arc;
use std::time::Duration;

use domain::commands::{decide, Command};
use domain::events::{DomainEvent, RecordAccessed};
use domain::{streams, Chart, DomainError};
use ledger::{Actor, StreamId};
use store::{now, EventStore, ExpectedRevision, ProposedEvent, StoreError};
use uuid::Uuid;

/// How often a command is re-decided after losing an expected-revision race (which,
/// within one process, only a writer in another process can cause: see `LOCK_SHARDS`).
pub const MAX_ATTEMPTS: u32 = 8;

/// Commands for one patient are serialized within a process by one of these locks
/// (sharded by patient id), so racing requests queue instead of failing each other's
/// expected-revision checks; the optimistic retry remains for other processes.
const LOCK_SHARDS: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum RecordsError {
    #[error(transparent)]
    Domain(#[from] DomainError),
    #[error("the record kept changing; the command was not applied")]
    Contention,
    #[error("this event id was already used for a different event")]
    IdempotencyConflict,
    #[error(transparent)]
    Store(StoreError),
    #[error(transparent)]
    Projection(#[from] crate::ProjectionError),
}

impl From<StoreError> for RecordsError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::IdempotencyConflict { .. } => Self::IdempotencyConflict,
            e => Self::Store(e),
        }
    }
}

impl RecordsError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::Domain(e) => e.code(),
            Self::Contention => "records.contention",
            Self::IdempotencyConflict => "records.idempotency_conflict",
            Self::Store(e) => e.code(),
            Self::Projection(e) => e.code(),
        }
    }
}

/// What a command appended (or, for a retry, had appended).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Executed {
    pub position: u64,
    pub revision: u64,
    pub event_id: Uuid,
    pub event_type: &'static str,
    pub idempotent_replay: bool,
}

/// What a command sent again must match to be answered as a retry.
#[derive(Clone, Copy)]
struct Retry<'a> {
    actor: &'a Actor,
    command: &'a Command,
    times_given: bool,
}

#[derive(Clone, Debug)]
pub struct Records {
    store: EventStore,
    locks: Arc<[tokio::sync::Mutex<()>]>,
}

impl Records {
    pub fn new(store: EventStore) -> Self {
        let locks = (0..LOCK_SHARDS).map(|_| tokio::sync::Mutex::new(())).collect();
        Self { store, locks }
    }

    fn lock_for(&self, patient_id: Uuid) -> &tokio::sync::Mutex<()> {
        let shard = (patient_id.as_u128() % LOCK_SHARDS as u128) as usize;
        &self.locks[shard]
    }

    pub fn store(&self) -> &EventStore {
        &self.store
    }

    /// The patient's chart at the head, from the ledger.
    pub async fn current_chart(&self, patient_id: Uuid) -> Result<Chart, RecordsError> {
        Ok(self.chart_and_revision(patient_id).await?.0)
    }

    /// The chart, and the stream's last revision (which an undecodable last event makes
    /// differ from the chart's).
    async fn chart_and_revision(&self, patient_id: Uuid) -> Result<(Chart, Option<u64>), RecordsError> {
        let raw = self.store.read_whole_stream(&streams::patient(patient_id)).await?;
        let chart = crate::pit::fold(patient_id, &raw, None).chart;
        Ok((chart, raw.last().map(|r| r.event.stream_revision())))
    }

    /// Validate and append `command` for `patient_id` as `actor`. `event_id` is the
    /// client's UUIDv7: sending the same command again with it is safe, and answers the
    /// original result; sending a different one with it is refused
    /// ([`RecordsError::IdempotencyConflict`], see [`Command::is_retry_of`]).
    pub async fn execute(
        &self,
        patient_id: Uuid,
        actor: Actor,
        event_id: Uuid,
        command: Command,
    ) -> Result<Executed, RecordsError> {
        self.execute_retryable(patient_id, actor, event_id, command, true).await
    }

    /// [`Records::execute`], where `times_given: false` says the command's effective or
    /// given time was filled in by the server (a retry's differs, and is not compared).
    pub async fn execute_retryable(
        &self,
        patient_id: Uuid,
        actor: Actor,
        event_id: Uuid,
        command: Command,
        times_given: bool,
    ) -> Result<Executed, RecordsError> {
        ledger::ids::validate_event_id(event_id).map_err(StoreError::from)?;
        let stream = streams::patient(patient_id);
        let retry = Retry { actor: &actor, command: &command, times_given };
        if let Some(done) = self.replayed(&stream, event_id, Some(retry)).await? {
            return Ok(done);
        }
        let _serialized = self.lock_for(patient_id).lock().await;
        for attempt in 0..MAX_ATTEMPTS {
            if attempt > 0 {
                // Another process won the race: back off a little, with jitter, so that
                // two processes do not keep colliding in lock step.
                let jitter = u64::from(event_id.as_u128() as u16 % 1000) + u64::from(attempt) * 1000;
                tokio::time::sleep(Duration::from_micros(jitter << attempt.min(4))).await;
            }
            let (chart, revision) = self.chart_and_revision(patient_id).await?;
            let event = match decide(&chart, command.clone(), now()) {
                Ok(event) => event,
                Err(refused) => {
                    // A retry racing its own first attempt: answer the original result.
                    if let Some(done) = self.replayed(&stream, event_id, Some(retry)).await? {
                        return Ok(done);
                    }
                    return Err(refused.into());
                }
            };
            let expected = revision.map_or(ExpectedRevision::NoStream, ExpectedRevision::Exact);
            match self.append(&stream, expected, actor.clone(), event_id, &event).await {
                Err(RecordsError::Store(StoreError::WrongExpectedRevision { .. })) => continue,
                other => return other,
            }
        }
        Err(RecordsError::Contention)
    }

    /// Record an access to a patient's record, in the patient's access stream.
    pub async fn record_access(
        &self,
        actor: Actor,
        event_id: Uuid,
        access: RecordAccessed,
    ) -> Result<Executed, RecordsError> {
        access.validate()?;
        let stream = streams::access(access.patient_id);
        self.append(&stream, ExpectedRevision::Any, actor, event_id, &DomainEvent::RecordAccessed(access))
            .await
    }

    /// Append a security or staff event to its system stream.
    pub async fn record_system(
        &self,
        actor: Actor,
        event_id: Uuid,
        event: DomainEvent,
    ) -> Result<Executed, RecordsError> {
        let stream = match &event {
            DomainEvent::LoginSucceeded(_)
            | DomainEvent::LoginFailed(_)
            | DomainEvent::MfaEnrolled(_)
            | DomainEvent::SessionEnded(_)
            | DomainEvent::MfaChallenged(_)
            | DomainEvent::PasswordChanged(_) => streams::security(),
            DomainEvent::AccessDenied(d) => {
                d.validate()?;
                streams::security()
            }
            DomainEvent::UserCreated(u) => {
                u.validate()?;
                streams::staff()
            }
            DomainEvent::RoleGranted(_)
            | DomainEvent::RoleRevoked(_)
            | DomainEvent::UserDeactivated(_)
            | DomainEvent::RoleGrantProposed(_)
            | DomainEvent::RoleGrantApproved(_)
            | DomainEvent::RoleGrantCancelled(_) => streams::staff(),
            _ => return Err(DomainError::UnknownEventType.into()),
        };
        self.append(&stream, ExpectedRevision::Any, actor, event_id, &event).await
    }

    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedRevision,
        actor: Actor,
        event_id: Uuid,
        event: &DomainEvent,
    ) -> Result<Executed, RecordsError> {
        let proposed = ProposedEvent {
            event_id,
            event_type: event.event_type(),
            schema_version: event.schema_version(),
            actor,
            payload: event.to_payload(),
        };
        let r = self.store.append(stream, expected, vec![proposed]).await?;
        Ok(Executed {
            position: r.last_position(),
            revision: r.last_revision,
            event_id,
            event_type: event.type_name(),
            idempotent_replay: r.idempotent_replay,
        })
    }

    /// The original result if `event_id` is already stored in `stream` (and, given
    /// `retry`, is what that command asks for: else a conflict).
    async fn replayed(
        &self,
        stream: &StreamId,
        event_id: Uuid,
        retry: Option<Retry<'_>>,
    ) -> Result<Option<Executed>, RecordsError> {
        let Some(found) = self.store.event_by_id(event_id).await? else { return Ok(None) };
        if found.event.stream_id() != stream {
            return Err(RecordsError::IdempotencyConflict);
        }
        if let Some(retry) = retry {
            let body = found.event.body();
            // An erased payload cannot be compared: not taken for a retry.
            let stored = found.payload.as_ref().and_then(|p| {
                DomainEvent::decode(body.event_type.as_str(), body.schema_version, p.bytes()).ok()
            });
            let same = body.actor == *retry.actor
                && stored.is_some_and(|s| retry.command.is_retry_of(&s, retry.times_given));
            if !same {
                return Err(RecordsError::IdempotencyConflict);
            }
        }
        let event_type = domain::events::CATALOG
            .iter()
            .find(|(n, _)| *n == found.event.body().event_type.as_str())
            .map_or("unknown", |(n, _)| *n);
        Ok(Some(Executed {
            position: found.position,
            revision: found.event.stream_revision(),
            event_id,
            event_type,
            idempotent_replay: true,
        }))
    }
}
