//! Chartledger's read side.
//!
//! - [`runner`]: the projection runner. It follows `$all`, applies events in batches
//!   with the pure folds of the `domain` crate, and commits its position in the same
//!   transaction as the read-model rows (exactly once, across crashes). A rebuild fills
//!   a fresh generation of the tables from position 0 while the active one keeps
//!   serving, then switches the `rm.*` views over in one transaction (blue/green).
//! - [`records`]: the `records` projection's SQL (tables in `projections/sql/records.sql`):
//!   loading the entities a batch touches, and writing them back.
//! - [`queries`]: what the API reads: patient index, charts, entry history, consents,
//!   care teams, appointments, the access log and the staff directory.
//! - [`current`]: current charts kept in memory, each checked against the patient row's
//!   position on every read.
//! - [`pit`]: point-in-time replay for auditors: a chart as of a recorded time, folded
//!   in memory from the ledger with the same fold, from the nearest [`snapshot`] of it.
//! - [`staff`]: the staff directory and role grants (fold and queries).
//! - [`verify`]: the read-model check: fold the ledger again and compare every table of
//!   the active generation with the result, naming the first difference.
//! - [`write`]: the write side, here for now (see there why): load a patient's stream,
//!   `decide`, append with the expected revision (retrying on a race), idempotent on the
//!   client's event id.

mod backed;
mod copy;
pub mod current;
pub mod error;
pub mod pit;
pub mod probe;
pub mod queries;
pub mod records;
pub mod runner;
pub mod snapshot;
mod sqlmap;
pub mod staff;
pub mod verify;
pub mod write;

pub use error::ProjectionError;
pub use queries::ReadModels;
pub use runner::{Projections, RunnerConfig};
pub use write::{service, Executed, Records, RecordsError};
