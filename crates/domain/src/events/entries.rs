//! Clinical entries (`entry.*`): what each kind of entry says, and its versions
//! (recorded, amended, entered in error).

use ledger::Timestamp;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::codes::{Coding, Quantity, ReferenceRange};
use crate::serde_time;

/// The kinds of clinical entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    SoapNote,
    Prescription,
    LabResult,
    Observation,
    Assessment,
    Condition,
    Allergy,
}

impl EntryKind {
    pub const ALL: [EntryKind; 7] = [
        Self::SoapNote,
        Self::Prescription,
        Self::LabResult,
        Self::Observation,
        Self::Assessment,
        Self::Condition,
        Self::Allergy,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SoapNote => "soap_note",
            Self::Prescription => "prescription",
            Self::LabResult => "lab_result",
            Self::Observation => "observation",
            Self::Assessment => "assessment",
            Self::Condition => "condition",
            Self::Allergy => "allergy",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// A coded measurement: a lab result or a vital-sign observation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Measurement {
    /// LOINC.
    pub code: Coding,
    pub value: Quantity,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference_range: Option<ReferenceRange>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConditionStatus {
    Active,
    Recurrence,
    Relapse,
    Inactive,
    Remission,
    Resolved,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Criticality {
    Low,
    High,
    UnableToAssess,
}

/// The clinical content of an entry; the variant is the entry's kind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EntryContent {
    SoapNote {
        #[serde(default)]
        subjective: String,
        #[serde(default)]
        objective: String,
        #[serde(default)]
        assessment: String,
        #[serde(default)]
        plan: String,
    },
    /// A medication request.
    Prescription {
        /// RxNorm (or SNOMED CT).
        medication: Coding,
        dosage: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        quantity: Option<Quantity>,
        #[serde(default)]
        refills: u8,
    },
    LabResult(Measurement),
    Observation(Measurement),
    Assessment {
        text: String,
        #[serde(default)]
        codes: Vec<Coding>,
    },
    /// A diagnosis or problem (SNOMED CT or ICD-10).
    Condition {
        code: Coding,
        clinical_status: ConditionStatus,
        #[serde(default, skip_serializing_if = "Option::is_none", with = "serde_time::opt_date")]
        onset: Option<time::Date>,
    },
    Allergy {
        /// SNOMED CT or RxNorm.
        substance: Coding,
        criticality: Criticality,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reaction: Option<String>,
    },
}

impl EntryContent {
    pub fn kind(&self) -> EntryKind {
        match self {
            Self::SoapNote { .. } => EntryKind::SoapNote,
            Self::Prescription { .. } => EntryKind::Prescription,
            Self::LabResult(_) => EntryKind::LabResult,
            Self::Observation(_) => EntryKind::Observation,
            Self::Assessment { .. } => EntryKind::Assessment,
            Self::Condition { .. } => EntryKind::Condition,
            Self::Allergy { .. } => EntryKind::Allergy,
        }
    }
}

/// `entry.recorded` v1. The author is the event's actor; `effective_at` is when the
/// entry clinically took effect (the envelope's recorded-at is when it was written down).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryRecorded {
    pub entry_id: Uuid,
    pub content: EntryContent,
    #[serde(with = "serde_time::instant")]
    pub effective_at: Timestamp,
}

/// `entry.amended` v1: a new version of the entry `amendment_of_id`, by the actor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryAmended {
    pub amendment_id: Uuid,
    pub amendment_of_id: Uuid,
    pub content: EntryContent,
    pub reason: String,
    #[serde(with = "serde_time::instant")]
    pub effective_at: Timestamp,
}

/// `entry.entered_in_error` v1: a retraction. The entry stays in the history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryEnteredInError {
    pub entry_id: Uuid,
    pub reason: String,
}
