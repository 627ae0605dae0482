//! Builders for the writer's unit tests: requests, a planner and a writer that never
//! connect (nothing here needs a database).

use std::sync::Arc;

use ed25519_dalek::SigningKey;
use ledger::merkle::Frontier;
use ledger::{Actor, EventType, LedgerSigningKey, RoleName, StreamId};
use sqlx::postgres::PgConnectOptions;
use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

use super::{AppendRequest, LedgerState, Planner, Request, RotateRequest, Writer};
use crate::error::StoreError;
use crate::types::{AppendResult, ExpectedRevision, KeyRotation, ProposedEvent};
use crate::{Head, StoreConfig};

pub(super) type Reply = oneshot::Receiver<Result<AppendResult, StoreError>>;

pub(super) fn key() -> Arc<LedgerSigningKey> {
    Arc::new(LedgerSigningKey::new("test.example/ledger", SigningKey::from_bytes(&[11u8; 32])).unwrap())
}

pub(super) fn stream(n: u32) -> StreamId {
    StreamId::patient(Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0000 | u128::from(n)))
}

pub(super) fn proposed(kind: &str, payload: &[u8]) -> ProposedEvent {
    ProposedEvent {
        event_id: Uuid::now_v7(),
        event_type: EventType::new(kind).unwrap(),
        schema_version: 1,
        actor: Actor { user_id: Uuid::from_u128(42), role: RoleName::new("physician").unwrap() },
        payload: payload.to_vec(),
    }
}

/// An append of `events` new events to `stream`, expecting `Any`.
pub(super) fn append(stream: StreamId, events: usize) -> (AppendRequest, Reply) {
    let events = (0..events).map(|i| proposed("test.event", &i.to_le_bytes())).collect();
    append_events(stream, ExpectedRevision::Any, events)
}

pub(super) fn append_events(
    stream: StreamId,
    expected: ExpectedRevision,
    events: Vec<ProposedEvent>,
) -> (AppendRequest, Reply) {
    let (reply, rx) = oneshot::channel();
    (AppendRequest { stream, expected, events, reply, look_up: false }, rx)
}

pub(super) fn rotate_request() -> (RotateRequest, oneshot::Receiver<Result<KeyRotation, StoreError>>) {
    let (reply, rx) = oneshot::channel();
    (RotateRequest { key: key(), reply }, rx)
}

/// A planner on an empty ledger, without connections.
pub(super) fn planner(config: StoreConfig) -> Planner {
    Planner {
        lookup: None,
        connect: PgConnectOptions::new(),
        key: key(),
        state: LedgerState { head: 0, frontier: Frontier::new(), last_micros: i64::MIN },
        heads: Default::default(),
        config,
        stats: Default::default(),
    }
}

/// A writer on an empty ledger, without a connection, and the sender of its queue.
pub(super) fn writer(config: StoreConfig) -> (Writer, mpsc::Sender<Request>) {
    let (tx, rx) = mpsc::channel(config.queue_capacity);
    let (head_tx, _) = watch::channel(Head { size: 0, root: Frontier::new().root() });
    let (key_tx, _) = watch::channel(key());
    let w = Writer {
        conn: None,
        connect: PgConnectOptions::new(),
        rx,
        head_tx,
        key_tx,
        unsettled_key: None,
        planner: planner(config),
    };
    (w, tx)
}

/// An error from the server with this SQLSTATE (and constraint), as sqlx reports it.
pub(crate) fn db_error(code: &'static str, constraint: Option<&'static str>) -> sqlx::Error {
    sqlx::Error::Database(Box::new(FakeDbError { code, constraint }))
}

#[derive(Debug)]
struct FakeDbError {
    code: &'static str,
    constraint: Option<&'static str>,
}

impl std::fmt::Display for FakeDbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "value 'secret' violates something")
    }
}

impl std::error::Error for FakeDbError {}

impl sqlx::error::DatabaseError for FakeDbError {
    fn message(&self) -> &str {
        "value 'secret' violates something"
    }

    fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
        Some(self.code.into())
    }

    fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self
    }

    fn constraint(&self) -> Option<&str> {
        self.constraint
    }

    fn kind(&self) -> sqlx::error::ErrorKind {
        sqlx::error::ErrorKind::Other
    }
}

impl Planner {
    /// Plan and sign `batch` without look-ups (nothing stored, the heads as cached).
    pub(super) fn prepare_now(&mut self, batch: Vec<AppendRequest>) -> super::Prepared {
        let (plans, drafts) = self.position(&batch, &Default::default(), &mut rand_core::OsRng);
        self.finish(batch, plans, drafts).unwrap()
    }
}
