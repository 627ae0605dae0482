//! Documents checked against the code they describe, so that they cannot drift.

mod error_codes;
mod tokens;
