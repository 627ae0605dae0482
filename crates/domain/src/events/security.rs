//! Security and staff (`security.*` in `$security`, `staff.*` in `$staff`): logins,
//! sessions, second factors, refusals, users and their roles.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The roles of a clinic's users.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Physician,
    Nurse,
    Receptionist,
    Administrator,
    Auditor,
    Legal,
    Patient,
}

impl Role {
    pub const ALL: [Role; 7] = [
        Self::Physician,
        Self::Nurse,
        Self::Receptionist,
        Self::Administrator,
        Self::Auditor,
        Self::Legal,
        Self::Patient,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Physician => "physician",
            Self::Nurse => "nurse",
            Self::Receptionist => "receptionist",
            Self::Administrator => "administrator",
            Self::Auditor => "auditor",
            Self::Legal => "legal",
            Self::Patient => "patient",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }
    /// The role as the envelope spells it.
    pub fn role_name(self) -> ledger::RoleName {
        ledger::RoleName::new(self.as_str()).unwrap_or_else(|_| ledger::RoleName::system())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoginFailure {
    UnknownUser,
    BadPassword,
    BadMfaCode,
    Locked,
    Deactivated,
    /// The password was right, but the user holds several roles and named none.
    RoleRequired,
    /// The password was right, but the user does not hold the role named.
    RoleNotHeld,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionEnd {
    Logout,
    IdleTimeout,
    AbsoluteTimeout,
    Revoked,
}

/// `security.*` v1 events, in the `$security` stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginSucceeded {
    pub user_id: Uuid,
    pub session_id: Uuid,
    pub mfa: bool,
    #[serde(default)]
    pub client_addr: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginFailed {
    /// Absent when the user name matched nobody.
    #[serde(default)]
    pub user_id: Option<Uuid>,
    pub failure: LoginFailure,
    #[serde(default)]
    pub client_addr: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MfaEnrolled {
    pub user_id: Uuid,
}

/// `security.mfa_challenged` v1: the password was right and a second factor was asked for
/// (`session_id` is the pending session the code must complete).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MfaChallenged {
    pub user_id: Uuid,
    pub session_id: Uuid,
}

/// `security.password_changed` v1: the user replaced their password.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PasswordChanged {
    pub user_id: Uuid,
}

/// `security.access_denied` v1: an authenticated request was refused by the access
/// policy (role, care team, consent). `operation` and `reason` are stable codes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessDenied {
    pub user_id: Uuid,
    pub session_id: Uuid,
    #[serde(default)]
    pub patient_id: Option<Uuid>,
    pub operation: String,
    pub reason: String,
    #[serde(default)]
    pub client_addr: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionEnded {
    pub user_id: Uuid,
    pub session_id: Uuid,
    pub end: SessionEnd,
}

/// `staff.*` v1 events, in the `$staff` stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserCreated {
    pub user_id: Uuid,
    pub username: String,
    pub display_name: String,
    pub roles: BTreeSet<Role>,
    /// For patient users: their own record.
    #[serde(default)]
    pub patient_id: Option<Uuid>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleChanged {
    pub user_id: Uuid,
    pub role: Role,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserDeactivated {
    pub user_id: Uuid,
}
