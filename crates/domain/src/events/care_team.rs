//! The care team (`care_team.*`): who treats a patient, in which role.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CareRole {
    PrimaryCare,
    Attending,
    Consultant,
    Nurse,
}

impl CareRole {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PrimaryCare => "primary_care",
            Self::Attending => "attending",
            Self::Consultant => "consultant",
            Self::Nurse => "nurse",
        }
    }
}

/// `care_team.member_assigned` v1.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CareTeamMemberAssigned {
    pub clinician_id: Uuid,
    pub care_role: CareRole,
}

/// `care_team.member_removed` v1.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CareTeamMemberRemoved {
    pub clinician_id: Uuid,
}
