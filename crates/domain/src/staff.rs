//! Separation of duties for roles, and the case reference of audited reads.
//!
//! **Nobody grants a role to themselves**, and a role that reads clinical content or
//! grants roles ([`Role::needs_second_approval`]) takes effect only when a *second*
//! administrator approves it. That is two signed events in `$staff`:
//! `staff.role_grant_proposed` (actor: the proposer; the grant's id is the proposal's
//! event id) and `staff.role_grant_approved` (actor: an administrator who is neither the
//! proposer nor the grantee), which is when the role is added. A pending grant can be
//! withdrawn with `staff.role_grant_cancelled`. The receptionist role, which sees no
//! clinical content and grants nothing, is granted at once (`staff.role_granted`).
//!
//! Which roles need a second administrator, and why:
//! - physician, nurse: clinical content of their care team's patients, and of anyone
//!   through break-glass;
//! - auditor, legal: any patient's record as it stood at any time (history,
//!   point-in-time reads, record proofs with their payloads);
//! - patient: the clinical content of the record the account names, so an
//!   administrator who creates a patient account with a password they know could read
//!   that record;
//! - administrator: does not read clinical content, but an administrator who could mint
//!   administrators alone could mint their own approver and defeat the rule.
//!
//! **The one approval by the proposer** ([`Approval::FirstAdministrator`]): a new
//! installation has one (bootstrap) administrator, who could otherwise never get the
//! second one. Its first administrator grant, while it is the only administrator and
//! no administrator grant exists yet, is approved by itself; both events are written
//! like any others, so the exception is visible in the ledger and happens once (the
//! caller decides the condition from the read models and serializes it).
//!
//! **Case references** ([`validate_case_ref`]): auditors and legal staff name the case or
//! matter a history or point-in-time read is made for; it is recorded in the access event
//! (`access.recorded` v2) for review.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::DomainError;
use crate::events::Role;

/// `staff.role_grant_proposed`, `staff.role_grant_approved` and
/// `staff.role_grant_cancelled` v1 (the same payload): the grant, the user it grants the
/// role to, and the role. Approval and cancellation repeat the user and role so that
/// each event can be folded on its own.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleGrant {
    pub grant_id: Uuid,
    pub user_id: Uuid,
    pub role: Role,
}

impl Role {
    /// Whether granting this role needs a second administrator's approval (see the
    /// module documentation for why each role does or does not).
    pub fn needs_second_approval(self) -> bool {
        !matches!(self, Role::Receptionist)
    }
}

/// Where a grant stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GrantStatus {
    Pending,
    Approved,
    Cancelled,
}

impl GrantStatus {
    pub const ALL: [GrantStatus; 3] = [Self::Pending, Self::Approved, Self::Cancelled];
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Cancelled => "cancelled",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|g| g.as_str() == s)
    }
}

/// What is known of a grant when deciding on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrantState {
    pub grant: RoleGrant,
    pub proposed_by: Uuid,
    pub status: GrantStatus,
}

/// Who approves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Approval {
    /// An administrator other than the proposer (the rule).
    SecondAdministrator,
    /// The proposer, for an installation's first administrator grant while it is the
    /// only administrator (the exception; see the module documentation).
    FirstAdministrator,
}

/// Proposing (or granting at once) `grant` by `proposer`: never to oneself.
pub fn propose(proposer: Uuid, grant: &RoleGrant) -> Result<(), DomainError> {
    if proposer == grant.user_id {
        return Err(DomainError::SelfGrant);
    }
    Ok(())
}

/// Approving a pending grant by `approver`: neither its grantee nor (but for the
/// first-administrator exception, for the administrator role only) its proposer.
pub fn approve(state: &GrantState, approver: Uuid, approval: Approval) -> Result<RoleGrant, DomainError> {
    pending(state)?;
    if approver == state.grant.user_id {
        return Err(DomainError::SelfGrant);
    }
    let exception = approval == Approval::FirstAdministrator && state.grant.role == Role::Administrator;
    if approver == state.proposed_by && !exception {
        return Err(DomainError::SelfApproval);
    }
    Ok(state.grant.clone())
}

/// Cancelling a pending grant (any administrator, its proposer included).
pub fn cancel(state: &GrantState) -> Result<RoleGrant, DomainError> {
    pending(state)?;
    Ok(state.grant.clone())
}

fn pending(state: &GrantState) -> Result<(), DomainError> {
    match state.status {
        GrantStatus::Pending => Ok(()),
        other => Err(DomainError::GrantNotPending { state: other.as_str() }),
    }
}

/// The longest case reference, in characters.
pub const CASE_REF_MAX: usize = 128;

/// A case or matter reference: 1 to [`CASE_REF_MAX`] characters, no leading or trailing
/// white space, printable: no control characters (newlines and tabs included), no
/// bidirectional controls or other invisible format characters (which can make a
/// reference display as something else in a review), no line or paragraph separators.
pub fn validate_case_ref(s: &str) -> Result<(), DomainError> {
    const FIELD: &str = "case_ref";
    if s.trim().is_empty() {
        return Err(DomainError::MissingField { field: FIELD });
    }
    if s.chars().count() > CASE_REF_MAX {
        return Err(DomainError::TooLong { field: FIELD, max: CASE_REF_MAX });
    }
    if s.trim() != s || s.chars().any(|c| c.is_control() || invisible(c)) {
        return Err(DomainError::MalformedValue { field: FIELD });
    }
    Ok(())
}

/// Unicode format (Cf) and separator (Zl, Zp) characters that render invisibly or
/// reorder text: bidirectional marks, embeddings, overrides and isolates, zero-width
/// characters, the soft hyphen, the word joiner and invisible operators, the byte order
/// mark, interlinear annotation controls, tag characters.
fn invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{061C}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{FEFF}'
            | '\u{FFF9}'..='\u{FFFB}'
            | '\u{E0000}'..='\u{E007F}'
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(proposed_by: Uuid, role: Role, status: GrantStatus) -> GrantState {
        GrantState {
            grant: RoleGrant { grant_id: Uuid::now_v7(), user_id: Uuid::now_v7(), role },
            proposed_by,
            status,
        }
    }

    #[test]
    fn only_the_receptionist_role_is_granted_by_one_administrator() {
        for role in Role::ALL {
            assert_eq!(role.needs_second_approval(), role != Role::Receptionist, "{role:?}");
        }
    }

    #[test]
    fn nobody_grants_or_approves_for_themselves() {
        let a = Uuid::now_v7();
        let b = Uuid::now_v7();
        let s = state(a, Role::Physician, GrantStatus::Pending);
        assert_eq!(propose(s.grant.user_id, &s.grant), Err(DomainError::SelfGrant));
        assert_eq!(propose(a, &s.grant), Ok(()));
        assert_eq!(approve(&s, a, Approval::SecondAdministrator), Err(DomainError::SelfApproval));
        // The exception is for the administrator role only.
        assert_eq!(approve(&s, a, Approval::FirstAdministrator), Err(DomainError::SelfApproval));
        assert_eq!(approve(&s, s.grant.user_id, Approval::SecondAdministrator), Err(DomainError::SelfGrant));
        assert_eq!(approve(&s, b, Approval::SecondAdministrator), Ok(s.grant.clone()));
        let admin = state(a, Role::Administrator, GrantStatus::Pending);
        assert_eq!(approve(&admin, a, Approval::FirstAdministrator), Ok(admin.grant.clone()));
        assert_eq!(
            approve(&admin, admin.grant.user_id, Approval::FirstAdministrator),
            Err(DomainError::SelfGrant)
        );
    }

    #[test]
    fn only_pending_grants_are_decided() {
        for status in [GrantStatus::Approved, GrantStatus::Cancelled] {
            let s = state(Uuid::now_v7(), Role::Nurse, status);
            let err = DomainError::GrantNotPending { state: status.as_str() };
            assert_eq!(approve(&s, Uuid::now_v7(), Approval::SecondAdministrator), Err(err.clone()));
            assert_eq!(cancel(&s), Err(err));
        }
        for s in GrantStatus::ALL {
            assert_eq!(GrantStatus::parse(s.as_str()), Some(s));
        }
    }

    #[test]
    fn case_references_are_bounded_printable_text() {
        assert_eq!(validate_case_ref("CASE-2026/0042 (court order)"), Ok(()));
        assert_eq!(validate_case_ref("Aktenzeichen 3 O 12/26 – Müller"), Ok(()));
        assert_eq!(validate_case_ref(&"x".repeat(CASE_REF_MAX)), Ok(()));
        let missing = Err(DomainError::MissingField { field: "case_ref" });
        assert_eq!(validate_case_ref(""), missing);
        assert_eq!(validate_case_ref(" \t "), missing);
        let long = Err(DomainError::TooLong { field: "case_ref", max: CASE_REF_MAX });
        assert_eq!(validate_case_ref(&"x".repeat(CASE_REF_MAX + 1)), long);
        let malformed = Err(DomainError::MalformedValue { field: "case_ref" });
        for bad in [
            "CASE\u{202E}1-ESAC",
            "CASE\u{2066}1",
            "CASE\u{200B}1",
            "CASE\n1",
            "CASE\t1",
            "CASE\u{0}1",
            "CASE\u{7F}1",
            "CASE\u{85}1",
            "CASE\u{2028}1",
            "CASE\u{FEFF}",
            "CASE\u{E0041}",
            " CASE-1",
            "CASE-1 ",
        ] {
            assert_eq!(validate_case_ref(bad), malformed, "{bad:?}");
        }
    }
}
