//! Executor plumbing, apart from the per-domain resolvers: what happens to a request
//! before and around the schema's execution, whatever it asks for.
//!
//! - [`guard`] refuses documents nested or expanding beyond the limits before the
//!   library parses them recursively.
//! - [`parsed`] keeps parsed documents by their text.
//! - [`sanitize`] wraps the schema as an executor that gives the library's own errors
//!   stable codes and quotes nothing the client sent.
//! - [`resolved`] keeps resolved entry lists of unchanged charts.

pub mod guard;
pub mod parsed;
pub(crate) mod resolved;
pub mod sanitize;
