//! The write side: commands, not read models. [`Records`] loads a patient's stream,
//! folds the chart, `decide`s the command against it and appends the one resulting event
//! with the stream's revision as the expected revision, re-deciding after a lost race;
//! a retry with the same event id returns the first result (see [`service`]).
//!
//! **Why it lives in this crate, for now.** Nothing else here is the write side: the rest
//! of `projections` is the read side, derived data. A command is decided on the ledger,
//! never on a read model, but the chart it is decided on is folded by the read side's
//! code: `crate::pit::fold`, the fold point-in-time replay uses, over the patient's
//! whole stream; and its error wraps the read side's ([`crate::ProjectionError`]). Until
//! that fold has a home both sides can depend on, the write side sits beside the read
//! side in a module of its own, and the crate's root re-exports it
//! (`projections::Records`, `projections::service`) so that its callers need no change.
//!
pub mod service;

pub use service::{Executed, Records, RecordsError, MAX_ATTEMPTS};
