//! One module per command group.

pub mod checkpoint;
pub mod keys;
pub mod ledger;
pub mod proof;
