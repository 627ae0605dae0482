//! Appointments (`appointment.*`): scheduled, rescheduled, cancelled, completed.

use ledger::Timestamp;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::serde_time;

/// Administrative visit types: what a receptionist may see (no clinical reason).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VisitType {
    FirstVisit,
    FollowUp,
    Procedure,
    Telehealth,
    LabDraw,
}

impl VisitType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FirstVisit => "first_visit",
            Self::FollowUp => "follow_up",
            Self::Procedure => "procedure",
            Self::Telehealth => "telehealth",
            Self::LabDraw => "lab_draw",
        }
    }
}

/// `appointment.scheduled` v1.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppointmentScheduled {
    pub appointment_id: Uuid,
    pub clinician_id: Uuid,
    pub visit_type: VisitType,
    #[serde(with = "serde_time::instant")]
    pub start: Timestamp,
    #[serde(with = "serde_time::instant")]
    pub end: Timestamp,
}

/// `appointment.rescheduled` v1.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppointmentRescheduled {
    pub appointment_id: Uuid,
    #[serde(with = "serde_time::instant")]
    pub start: Timestamp,
    #[serde(with = "serde_time::instant")]
    pub end: Timestamp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelledBy {
    Patient,
    Clinic,
}

/// `appointment.cancelled` v1.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppointmentCancelled {
    pub appointment_id: Uuid,
    pub cancelled_by: CancelledBy,
}

/// `appointment.completed` v1.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppointmentCompleted {
    pub appointment_id: Uuid,
}
