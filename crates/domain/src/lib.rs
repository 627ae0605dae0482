//! The clinical domain, pure: no IO, no async, no database.
//!
//! - [`codes`]: coded values (SNOMED CT, LOINC, RxNorm, ICD-10, UCUM) with their validation.
//! - [`events`]: the versioned event catalog, its JSON payload encoding and the upcasters
//!   that lift older schema versions step by step to the current one.
//! - [`commands`]: commands, validated against the current state into events, or refused
//!   with a typed [`DomainError`] that changes nothing.
//! - [`chart`]: the pure fold `Chart::apply(&mut self, &Recorded)` that builds a patient's
//!   chart. The projection runner applies the same fold into PostgreSQL; point-in-time
//!   replay applies it in memory.
//! - [`streams`]: which stream each event belongs to.
//! - [`staff`]: role grants under separation of duties (who may propose, approve or
//!   cancel a grant) and the case reference rule for audited reads.

pub mod chart;
pub mod codes;
pub mod commands;
pub mod error;
pub mod events;
mod retry;
mod serde_time;
pub mod sim;
pub mod staff;
pub mod streams;

pub use chart::Chart;
pub use commands::Command;
pub use error::DomainError;
pub use events::{DomainEvent, Recorded};
