//! Access records (`access.recorded`): who read or changed which parts of a record, why,
//! and from where.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// What part of a record was touched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResourceKind {
    Demographics,
    ClinicalEntries,
    Consents,
    CareTeam,
    Appointments,
    AccessLog,
    History,
    Proof,
    Export,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessAction {
    View,
    Create,
    Update,
    Export,
    Print,
}

impl AccessAction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::View => "view",
            Self::Create => "create",
            Self::Update => "update",
            Self::Export => "export",
            Self::Print => "print",
        }
    }
}

/// Purpose of use (after HL7 `PurposeOfUse`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PurposeOfUse {
    Treatment,
    Payment,
    Operations,
    Emergency,
    PatientRequest,
    Legal,
    Audit,
    /// Secondary use for research: needs the patient's research consent.
    Research,
    /// Marketing: needs the patient's marketing consent.
    Marketing,
}

impl PurposeOfUse {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Treatment => "treatment",
            Self::Payment => "payment",
            Self::Operations => "operations",
            Self::Emergency => "emergency",
            Self::PatientRequest => "patient_request",
            Self::Legal => "legal",
            Self::Audit => "audit",
            Self::Research => "research",
            Self::Marketing => "marketing",
        }
    }
}

/// `access.recorded` v2, in the patient's access stream: who (the actor, with the role
/// held), what, why, and from where.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordAccessed {
    pub patient_id: Uuid,
    pub resources: BTreeSet<ResourceKind>,
    pub action: AccessAction,
    pub purpose: PurposeOfUse,
    /// Present exactly when access was granted by break-glass.
    #[serde(default)]
    pub break_glass_reason: Option<String>,
    #[serde(default)]
    pub client_addr: Option<String>,
    #[serde(default)]
    pub user_agent: Option<String>,
    #[serde(default)]
    pub session_id: Option<Uuid>,
    /// v2: the case or matter the access was made for (auditors and legal staff must
    /// name one for history and point-in-time reads); free text, bounded, validated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub case_ref: Option<String>,
}
