//! Patients: registration, demographics and merges (`patient.*`).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::serde_time;

/// A person's name as used clinically.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HumanName {
    pub given: Vec<String>,
    pub family: String,
}

/// Administrative sex (FHIR `AdministrativeGender`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sex {
    Female,
    Male,
    Other,
    Unknown,
}

impl Sex {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Female => "female",
            Self::Male => "male",
            Self::Other => "other",
            Self::Unknown => "unknown",
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Address {
    pub lines: Vec<String>,
    pub city: Option<String>,
    pub postal_code: Option<String>,
    pub country: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contact {
    #[serde(default)]
    pub phone: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub address: Option<Address>,
}

/// `patient.registered` v2. (v1 kept `phone` and `email` at the top level; see [`upcast`].)
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatientRegistered {
    pub patient_id: Uuid,
    /// Medical record number, as issued by the clinic.
    pub mrn: String,
    pub name: HumanName,
    #[serde(with = "serde_time::date")]
    pub birth_date: time::Date,
    pub sex: Sex,
    #[serde(default)]
    pub contact: Contact,
}

/// `patient.demographics_updated` v1: only the fields present change.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DemographicsUpdated {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<HumanName>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "serde_time::opt_date")]
    pub birth_date: Option<time::Date>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sex: Option<Sex>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact: Option<Contact>,
}

/// `patient.merged` v1: this record is a duplicate of `into_patient_id`; it is closed
/// for writes and readers are sent to the surviving record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatientMerged {
    pub into_patient_id: Uuid,
}
