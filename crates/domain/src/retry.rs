//! Retries: a command sent again with the event id of an event already stored is a
//! retry only if it asks for the same change. Anything else reusing the id is a
//! conflict, never a silent success that drops the new content.
//!
//! The stored event is compared with the command field by field. Fields the command
//! does not determine on its own are not compared: what `decide` derived from the chart
//! (an amendment's root entry, the consent a new one supersedes, the purposes a blanket
//! withdrawal expanded to) and times the server filled in when the client left them out
//! (`times_given: false`; the server's clock differs between the attempts).

use crate::commands::Command;
use crate::events::DomainEvent;

impl Command {
    /// Whether `stored` (the event already written under this command's event id) is
    /// what this command asks for. `times_given`: the client gave the command's
    /// effective or given time itself (compare it too).
    pub fn is_retry_of(&self, stored: &DomainEvent, times_given: bool) -> bool {
        use Command as C;
        use DomainEvent as E;
        let time = |a, b| !times_given || a == b;
        match (self, stored) {
            (C::RegisterPatient(c), E::PatientRegistered(s)) => c == s,
            (C::UpdateDemographics(c), E::DemographicsUpdated(s)) => c == s,
            (C::MergePatient { into_patient_id }, E::PatientMerged(s)) => {
                *into_patient_id == s.into_patient_id
            }
            (C::RecordEntry { entry_id, content, effective_at }, E::EntryRecorded(s)) => {
                *entry_id == s.entry_id && *content == s.content && time(*effective_at, s.effective_at)
            }
            (C::AmendEntry { amendment_id, content, reason, effective_at, .. }, E::EntryAmended(s)) => {
                *amendment_id == s.amendment_id
                    && *content == s.content
                    && *reason == s.reason
                    && time(*effective_at, s.effective_at)
            }
            (C::MarkEnteredInError { reason, .. }, E::EntryEnteredInError(s)) => *reason == s.reason,
            (
                C::RecordConsent { consent_id, granted, method, witness_id, given_at },
                E::ConsentRecorded(s),
            ) => {
                *consent_id == s.consent_id
                    && *granted == s.granted
                    && *method == s.method
                    && *witness_id == s.witness_id
                    && time(*given_at, s.given_at)
            }
            (C::WithdrawConsent { purposes, witness_id, .. }, E::ConsentWithdrawn(s)) => {
                *witness_id == s.witness_id && (purposes.is_empty() || *purposes == s.purposes)
            }
            (C::AssignCareTeamMember { clinician_id, care_role }, E::CareTeamMemberAssigned(s)) => {
                *clinician_id == s.clinician_id && *care_role == s.care_role
            }
            (C::RemoveCareTeamMember { clinician_id }, E::CareTeamMemberRemoved(s)) => {
                *clinician_id == s.clinician_id
            }
            (
                C::ScheduleAppointment { appointment_id, clinician_id, visit_type, start, end },
                E::AppointmentScheduled(s),
            ) => {
                *appointment_id == s.appointment_id
                    && *clinician_id == s.clinician_id
                    && *visit_type == s.visit_type
                    && *start == s.start
                    && *end == s.end
            }
            (C::RescheduleAppointment { appointment_id, start, end }, E::AppointmentRescheduled(s)) => {
                *appointment_id == s.appointment_id && *start == s.start && *end == s.end
            }
            (C::CancelAppointment { appointment_id, cancelled_by }, E::AppointmentCancelled(s)) => {
                *appointment_id == s.appointment_id && *cancelled_by == s.cancelled_by
            }
            (C::CompleteAppointment { appointment_id }, E::AppointmentCompleted(s)) => {
                *appointment_id == s.appointment_id
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use ledger::Timestamp;
    use uuid::Uuid;

    use crate::commands::Command;
    use crate::events::*;

    #[test]
    fn the_same_command_is_a_retry_and_any_other_change_is_not() {
        let note = |text: &str| EntryContent::SoapNote {
            subjective: text.to_owned(),
            objective: "BP 120/80".to_owned(),
            assessment: "well".to_owned(),
            plan: "review".to_owned(),
        };
        let (content, other_content) = (note("first"), note("second"));
        let entry = |content: &EntryContent, at: i64| Command::RecordEntry {
            entry_id: Uuid::from_u128(7),
            content: content.clone(),
            effective_at: Timestamp::from_micros(at),
        };
        let stored = DomainEvent::EntryRecorded(EntryRecorded {
            entry_id: Uuid::from_u128(7),
            content: content.clone(),
            effective_at: Timestamp::from_micros(10),
        });
        assert!(entry(&content, 10).is_retry_of(&stored, true));
        assert!(!entry(&other_content, 10).is_retry_of(&stored, true));
        assert!(!entry(&other_content, 10).is_retry_of(&stored, false), "content always counts");
        assert!(!entry(&content, 20).is_retry_of(&stored, true), "another time, given");
        assert!(entry(&content, 20).is_retry_of(&stored, false), "a time the server filled in");
        let other = Command::RemoveCareTeamMember { clinician_id: Uuid::from_u128(7) };
        assert!(!other.is_retry_of(&stored, false), "another kind of change");
    }
}
