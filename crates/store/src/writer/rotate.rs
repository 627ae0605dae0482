//! Events the store signs itself: `$keys` is written only by the store (the anchor at
//! first open; [`Writer::rotate`] introduces a new key, signed by the old, and retires the
//! old, signed by the new, once everything queued before it has committed); `append`
//! refuses it. Such events are signed before they reach the writer, which gives them
//! positions and Merkle nodes ([`Writer::signed_rows`]) and commits them as their own
//! batch.

use std::sync::Arc;

use ledger::envelope::Payload;
use ledger::merkle::{self, Frontier};
use ledger::{LedgerSigningKey, SignedEvent, Timestamp};
use uuid::Uuid;

use super::commit::commit_rows;
use super::{NewRow, Writer};
use crate::error::StoreError;
use crate::types::KeyRotation;
use crate::Head;

/// Rows of events signed elsewhere, with the frontier as it will be after them.
struct SignedRows(Vec<NewRow>, Frontier);

impl Writer {
    /// Append events signed elsewhere (system events such as `$keys`), as their own batch
    /// in one statement. The caller built them against the current stream heads.
    pub(crate) async fn append_signed(
        &mut self,
        events: Vec<(SignedEvent, Payload)>,
    ) -> Result<(), StoreError> {
        let rows = self.signed_rows(events)?;
        let conn = self.conn.as_mut().ok_or(StoreError::Closed)?;
        commit_rows(conn, &rows.0).await?;
        self.committed_signed(rows);
        Ok(())
    }

    /// Positions and Merkle nodes for events signed elsewhere, from the current head.
    fn signed_rows(&self, events: Vec<(SignedEvent, Payload)>) -> Result<SignedRows, StoreError> {
        let mut frontier = self.planner.state.frontier.clone();
        let mut rows = Vec::with_capacity(events.len());
        for (position, (event, payload)) in (self.planner.state.head..).zip(events) {
            let nodes = frontier
                .append(merkle::leaf_hash(event.hash()))
                .map_err(|_| StoreError::Corrupt { position, reason: "Merkle tree full" })?;
            let merkle_nodes: Vec<u8> =
                nodes.iter().filter(|(id, _)| id.level > 0).flat_map(|(_, h)| *h).collect();
            rows.push(NewRow { position, event, payload, merkle_nodes });
        }
        Ok(SignedRows(rows, frontier))
    }

    /// The state after `rows` committed.
    fn committed_signed(&mut self, SignedRows(rows, frontier): SignedRows) {
        let Some(last) = rows.last() else { return };
        let st = &mut self.planner.state;
        st.head = last.position + 1;
        st.frontier = frontier;
        for row in &rows {
            st.last_micros = st.last_micros.max(row.event.recorded_at().as_micros());
            self.planner
                .heads
                .insert(row.event.stream_id().clone(), (row.event.stream_revision(), *row.event.hash()));
        }
        self.head_tx.send_replace(Head { size: st.head, root: st.frontier.root() });
    }

    /// Sign everything from now on (events and checkpoints) with `key`.
    pub(super) fn adopt_key(&mut self, key: Arc<LedgerSigningKey>) {
        self.planner.key = Arc::clone(&key);
        self.key_tx.send_replace(key);
    }

    /// Rotate the ledger key (nothing is in flight): introduce `new` with a `key.introduced`
    /// signed by the current key and recorded at `t`, valid from `t`; retire the current
    /// key with a `key.retired` (reason rotation) signed by `new` and recorded at `t + 1µs`,
    /// valid until then. Both events commit in one statement; every later event is
    /// recorded at `t + 1µs` or later (recorded times never decrease), so the old key's
    /// period covers exactly the events it signed and the new key's every event after.
    pub(super) async fn rotate(&mut self, new: &Arc<LedgerSigningKey>) -> Result<KeyRotation, StoreError> {
        use ledger::keys::{KeyIntroduced, KeyRetired, RetireReason, KEY_INTRODUCED, KEY_RETIRED};
        if self.conn.is_none() {
            self.reconnect().await?;
        }
        let conn = self.conn.as_mut().ok_or(StoreError::Closed)?;
        let registry = crate::load_key_registry(&mut *conn).await?;
        let old = Arc::clone(&self.planner.key);
        let t1 = Timestamp::from_micros(crate::now_micros().max(self.planner.state.last_micros));
        let t2 = Timestamp::from_micros(
            t1.as_micros()
                .checked_add(1)
                .ok_or(StoreError::Corrupt { position: self.planner.state.head, reason: "time overflow" })?,
        );
        if registry.key_valid_at(&old.key_id(), t1).is_err() {
            return Err(StoreError::SigningKeyNotRegistered);
        }
        let mut next = registry;
        let mut rng = rand_core::OsRng;
        let intro =
            KeyIntroduced { public_key: new.verifying_key(), name: new.name().to_owned(), valid_from: t1 };
        let (intro_ev, intro_p) =
            next.next_event(KEY_INTRODUCED, intro.to_bytes()?, &old, Uuid::now_v7(), t1, &mut rng)?;
        // Applying checks every registry rule (e.g. a key introduced twice) before writing.
        next.apply(&intro_ev, &intro_p)?;
        let retire = KeyRetired { key_id: old.key_id(), valid_until: t2, reason: RetireReason::Rotation };
        let (retire_ev, retire_p) =
            next.next_event(KEY_RETIRED, retire.to_bytes()?, new, Uuid::now_v7(), t2, &mut rng)?;
        next.apply(&retire_ev, &retire_p)?;
        let introduced_at = self.planner.state.head;
        let rows = self.signed_rows(vec![(intro_ev, intro_p), (retire_ev, retire_p)])?;
        let conn = self.conn.as_mut().ok_or(StoreError::Closed)?;
        // The new key is adopted before the head moves, so the checkpointer signs the
        // rotated tree with it.
        match commit_rows(conn, &rows.0).await {
            Ok(()) => {
                self.adopt_key(Arc::clone(new));
                self.committed_signed(rows);
            }
            Err(e) => {
                tracing::warn!(error = %e, "key rotation commit failed; recovering");
                match self.find_out(&rows.0).await {
                    Some(true) => {
                        self.adopt_key(Arc::clone(new));
                        let st = &self.planner.state;
                        self.head_tx.send_replace(Head { size: st.head, root: st.frontier.root() });
                    }
                    Some(false) => return Err(e),
                    None => {
                        self.unsettled_key = Some(Arc::clone(new));
                        return Err(StoreError::OutcomeUnknown);
                    }
                }
            }
        }
        tracing::info!(old = %old.key_id(), new = %new.key_id(), "ledger key rotated");
        Ok(KeyRotation {
            old_key: old.key_id(),
            new_key: new.key_id(),
            introduced_at,
            retired_at: introduced_at + 1,
            valid_from: t1,
            valid_until: t2,
        })
    }
}
