//! The access policy: which role may do which operation, and on what condition. This
//! table is the one place where minimum-necessary access is decided; [`crate::access`]
//! enforces it for every resolver, and a test covers every (role × operation) cell.

use domain::events::{AccessAction, PurposeOfUse, ResourceKind, Role};

/// Everything a client can ask for, at the granularity access is decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Operation {
    SearchPatients,
    ReadDemographics,
    RegisterPatient,
    UpdateDemographics,
    ReadClinical,
    WriteClinical,
    ReadHistory,
    ReadConsents,
    WriteConsents,
    ReadCareTeam,
    ManageCareTeam,
    ReadAppointments,
    ManageAppointments,
    /// Who accessed one patient's record.
    ReadAccessLog,
    /// The access log across patients (by user, by time), and security events.
    ReadAuditTrail,
    /// A chart or entry as of an earlier time.
    PointInTime,
    ReadStaff,
    ManageStaff,
    BreakGlass,
    /// Signed record proofs (legal teams).
    ReadProof,
}

impl Operation {
    pub const ALL: [Operation; 20] = [
        Self::SearchPatients,
        Self::ReadDemographics,
        Self::RegisterPatient,
        Self::UpdateDemographics,
        Self::ReadClinical,
        Self::WriteClinical,
        Self::ReadHistory,
        Self::ReadConsents,
        Self::WriteConsents,
        Self::ReadCareTeam,
        Self::ManageCareTeam,
        Self::ReadAppointments,
        Self::ManageAppointments,
        Self::ReadAccessLog,
        Self::ReadAuditTrail,
        Self::PointInTime,
        Self::ReadStaff,
        Self::ManageStaff,
        Self::BreakGlass,
        Self::ReadProof,
    ];

    /// The stable code (in `security.access_denied` events and docs).
    pub fn code(self) -> &'static str {
        match self {
            Self::SearchPatients => "search_patients",
            Self::ReadDemographics => "read_demographics",
            Self::RegisterPatient => "register_patient",
            Self::UpdateDemographics => "update_demographics",
            Self::ReadClinical => "read_clinical",
            Self::WriteClinical => "write_clinical",
            Self::ReadHistory => "read_history",
            Self::ReadConsents => "read_consents",
            Self::WriteConsents => "write_consents",
            Self::ReadCareTeam => "read_care_team",
            Self::ManageCareTeam => "manage_care_team",
            Self::ReadAppointments => "read_appointments",
            Self::ManageAppointments => "manage_appointments",
            Self::ReadAccessLog => "read_access_log",
            Self::ReadAuditTrail => "read_audit_trail",
            Self::PointInTime => "point_in_time",
            Self::ReadStaff => "read_staff",
            Self::ManageStaff => "manage_staff",
            Self::BreakGlass => "break_glass",
            Self::ReadProof => "read_proof",
        }
    }

    /// What an access event records for this operation on one patient's record
    /// (`None`: the operation touches no patient's record).
    pub fn audited_as(self) -> Option<(ResourceKind, AccessAction)> {
        use AccessAction::{Create, Update, View};
        use ResourceKind::{
            AccessLog, Appointments, CareTeam, ClinicalEntries, Consents, Demographics, History, Proof,
        };
        Some(match self {
            Self::SearchPatients | Self::ReadDemographics => (Demographics, View),
            Self::RegisterPatient => (Demographics, Create),
            Self::UpdateDemographics => (Demographics, Update),
            Self::ReadClinical => (ClinicalEntries, View),
            Self::WriteClinical => (ClinicalEntries, Create),
            Self::ReadHistory | Self::PointInTime => (History, View),
            Self::ReadConsents => (Consents, View),
            Self::WriteConsents => (Consents, Update),
            Self::ReadCareTeam => (CareTeam, View),
            Self::ManageCareTeam => (CareTeam, Update),
            Self::ReadAppointments => (Appointments, View),
            Self::ManageAppointments => (Appointments, Update),
            Self::ReadAccessLog => (AccessLog, View),
            Self::ReadProof => (Proof, AccessAction::Export),
            Self::ReadAuditTrail | Self::ReadStaff | Self::ManageStaff | Self::BreakGlass => return None,
        })
    }

    /// Whether the operation reads or writes a patient's record (and so is subject to
    /// the purpose-of-use consent check).
    pub fn touches_record(self) -> bool {
        self.audited_as().is_some()
    }
}

/// The condition under which a role may perform an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// Never.
    Deny,
    /// On any patient.
    Allow,
    /// Only for patients on the user's care team, or under an active break-glass grant.
    CareTeam,
    /// Only on the user's own record (patient accounts).
    OwnRecord,
}

/// The table. Read it as: `rule(role, op)`.
pub fn rule(role: Role, op: Operation) -> Rule {
    use Operation::*;
    use Rule::*;
    match role {
        // Scheduling and demographics (and who the care team is, to book with them);
        // never clinical content, nor consents.
        Role::Receptionist => match op {
            SearchPatients | ReadDemographics | RegisterPatient | UpdateDemographics | ReadCareTeam
            | ReadAppointments | ManageAppointments => Allow,
            _ => Deny,
        },
        // Clinical read and write for their own patients; others only by break-glass.
        Role::Physician | Role::Nurse => match op {
            SearchPatients => Allow,
            ReadDemographics | ReadClinical | WriteClinical | ReadHistory | ReadConsents | WriteConsents
            | ReadCareTeam | ReadAppointments | ManageAppointments => CareTeam,
            ManageCareTeam if role == Role::Physician => CareTeam,
            BreakGlass => Allow,
            _ => Deny,
        },
        // Staff, roles and audit logs; never clinical content. Care-team assignment is
        // an administrative act that names ids only.
        Role::Administrator => match op {
            ReadStaff | ManageStaff | ReadAuditTrail | ReadAccessLog | ManageCareTeam => Allow,
            _ => Deny,
        },
        // The audit trail, access logs and what the record said at any time.
        Role::Auditor => match op {
            SearchPatients | ReadDemographics | ReadHistory | PointInTime | ReadAccessLog
            | ReadAuditTrail | ReadConsents | ReadCareTeam | ReadStaff | ReadProof => Allow,
            _ => Deny,
        },
        // Record proofs, and what is needed to find the entry to prove.
        Role::Legal => match op {
            SearchPatients | ReadDemographics | ReadHistory | PointInTime | ReadProof => Allow,
            _ => Deny,
        },
        // Their own chart, consents, appointments and who accessed their record.
        Role::Patient => match op {
            ReadDemographics | ReadClinical | ReadHistory | ReadConsents | WriteConsents | ReadCareTeam
            | ReadAppointments | ReadAccessLog | ReadProof => OwnRecord,
            _ => Deny,
        },
    }
}

/// Whether `role` must name a case or matter (`caseRef`) for `op`. Auditors and legal
/// staff read any patient's record without a care-team or consent condition; for what
/// the record says (its history, or the record as of a time) they must say which case
/// the read is for, and the access event records it for review.
pub fn needs_case_ref(role: Role, op: Operation) -> bool {
    matches!(role, Role::Auditor | Role::Legal)
        && matches!(op, Operation::PointInTime | Operation::ReadHistory)
}

/// The purpose of use a role's requests declare when the client names none.
pub fn default_purpose(role: Role) -> PurposeOfUse {
    match role {
        Role::Physician | Role::Nurse => PurposeOfUse::Treatment,
        Role::Receptionist | Role::Administrator => PurposeOfUse::Operations,
        Role::Auditor => PurposeOfUse::Audit,
        Role::Legal => PurposeOfUse::Legal,
        Role::Patient => PurposeOfUse::PatientRequest,
    }
}

/// The consent purpose a purpose of use needs, if any. Treatment, operations, audit,
/// legal and emergency access rest on other legal bases (HIPAA TPO, GDPR Art. 9(2)(c),
/// (f), (h)); payment, research and marketing need the patient's consent.
pub fn consent_needed(purpose: PurposeOfUse) -> Option<domain::events::Purpose> {
    use domain::events::Purpose;
    match purpose {
        PurposeOfUse::Payment => Some(Purpose::Insurance),
        PurposeOfUse::Research => Some(Purpose::Research),
        PurposeOfUse::Marketing => Some(Purpose::Marketing),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_role_but_clinicians_and_patients_reads_clinical_content_of_the_present() {
        for role in Role::ALL {
            let r = rule(role, Operation::ReadClinical);
            match role {
                Role::Physician | Role::Nurse => assert_eq!(r, Rule::CareTeam),
                Role::Patient => assert_eq!(r, Rule::OwnRecord),
                _ => assert_eq!(r, Rule::Deny, "{role:?}"),
            }
        }
    }

    #[test]
    fn receptionists_and_administrators_never_see_clinical_content() {
        for role in [Role::Receptionist, Role::Administrator] {
            for op in [
                Operation::ReadClinical,
                Operation::WriteClinical,
                Operation::ReadHistory,
                Operation::PointInTime,
            ] {
                assert_eq!(rule(role, op), Rule::Deny);
            }
        }
    }

    #[test]
    fn auditors_and_legal_name_a_case_for_every_clinical_read_they_may_make() {
        for role in Role::ALL {
            for op in Operation::ALL {
                let clinical =
                    matches!(op, Operation::ReadClinical | Operation::ReadHistory | Operation::PointInTime);
                if matches!(role, Role::Auditor | Role::Legal) && clinical && rule(role, op) != Rule::Deny {
                    assert!(needs_case_ref(role, op), "{role:?} {op:?}");
                }
                if !matches!(role, Role::Auditor | Role::Legal) {
                    assert!(!needs_case_ref(role, op), "{role:?} {op:?}");
                }
            }
        }
    }

    #[test]
    fn every_record_operation_is_audited_and_the_others_are_not() {
        for op in Operation::ALL {
            let record = !matches!(
                op,
                Operation::ReadAuditTrail
                    | Operation::ReadStaff
                    | Operation::ManageStaff
                    | Operation::BreakGlass
            );
            assert_eq!(op.touches_record(), record, "{op:?}");
        }
        let codes: std::collections::BTreeSet<_> = Operation::ALL.iter().map(|o| o.code()).collect();
        assert_eq!(codes.len(), Operation::ALL.len());
    }
}
