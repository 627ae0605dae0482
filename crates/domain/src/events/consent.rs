//! Consent (`consent.*`): which purposes of use a patient granted, and withdrawals.

use std::collections::BTreeSet;

use ledger::Timestamp;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::serde_time;

/// What a patient's data may be used for (GDPR Art. 9 purposes, kept apart).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    Treatment,
    Insurance,
    Research,
    Marketing,
}

impl Purpose {
    pub const ALL: [Purpose; 4] = [Self::Treatment, Self::Insurance, Self::Research, Self::Marketing];
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Treatment => "treatment",
            Self::Insurance => "insurance",
            Self::Research => "research",
            Self::Marketing => "marketing",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsentMethod {
    Written,
    Electronic,
    Verbal,
}

/// `consent.recorded` v1: a new consent, superseding the one in force (if any).
/// Purposes not listed are refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentRecorded {
    pub consent_id: Uuid,
    pub granted: BTreeSet<Purpose>,
    pub method: ConsentMethod,
    /// The staff member who witnessed it, if anyone did.
    #[serde(default)]
    pub witness_id: Option<Uuid>,
    /// When the patient gave it.
    #[serde(with = "serde_time::instant")]
    pub given_at: Timestamp,
    /// The consent it replaces (set by the command handler from the state).
    #[serde(default)]
    pub supersedes: Option<Uuid>,
}

/// `consent.withdrawn` v1: the patient withdraws some (or all) purposes of the consent
/// in force.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentWithdrawn {
    pub consent_id: Uuid,
    pub purposes: BTreeSet<Purpose>,
    #[serde(default)]
    pub witness_id: Option<Uuid>,
    #[serde(with = "serde_time::instant")]
    pub withdrawn_at: Timestamp,
}
