//! Validated identifiers that appear inside the signed bytes.
//!
//! Every string in an envelope is a validated ASCII token, so that a decoded envelope is
//! always canonical (re-encoding gives the same bytes) and no free text (let alone PHI)
//! can end up in the signed, never-erasable part of the ledger.

use std::fmt;

use uuid::Uuid;

use crate::error::LedgerError;

/// Longest stream id, in bytes.
pub const MAX_STREAM_ID_LEN: usize = 128;
/// Longest event type, in bytes.
pub const MAX_EVENT_TYPE_LEN: usize = 64;
/// Longest role name, in bytes.
pub const MAX_ROLE_LEN: usize = 32;

/// A stream id: `[$]? [a-z0-9] [a-z0-9._:-]*`, at most 128 bytes.
///
/// Patient streams are `patient-<uuid>`; system streams start with `$` (`$keys`,
/// `$staff`, `$security`). The *category* is the part before the first `-`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(String);

impl StreamId {
    /// The stream holding the key registry.
    pub const KEYS: &'static str = "$keys";

    pub fn new(s: impl Into<String>) -> Result<Self, LedgerError> {
        let s = s.into();
        let body = s.strip_prefix('$').unwrap_or(&s);
        let ok = !body.is_empty()
            && s.len() <= MAX_STREAM_ID_LEN
            && body.as_bytes()[0].is_ascii_lowercase() | body.as_bytes()[0].is_ascii_digit()
            && body.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._:-".contains(&b));
        if ok {
            Ok(Self(s))
        } else {
            Err(LedgerError::InvalidStreamId)
        }
    }

    /// The stream of one patient's record.
    pub fn patient(patient_id: Uuid) -> Self {
        Self(format!("patient-{}", patient_id.as_hyphenated()))
    }

    /// The key registry stream.
    pub fn keys() -> Self {
        Self(Self::KEYS.to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `$`-prefixed streams belong to the system (keys, staff, security events).
    pub fn is_system(&self) -> bool {
        self.0.starts_with('$')
    }

    /// The part before the first `-` (`patient` for `patient-…`).
    pub fn category(&self) -> &str {
        self.0.split_once('-').map_or(self.0.as_str(), |(c, _)| c)
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StreamId({})", self.0)
    }
}

fn is_token(s: &str, max: usize, extra: &[u8]) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.as_bytes()[0].is_ascii_lowercase()
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || extra.contains(&b))
}

/// An event type: `[a-z][a-z0-9_.]*`, at most 64 bytes, e.g. `clinical.entry_recorded`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventType(String);

impl EventType {
    pub fn new(s: impl Into<String>) -> Result<Self, LedgerError> {
        let s = s.into();
        if is_token(&s, MAX_EVENT_TYPE_LEN, b"_.") {
            Ok(Self(s))
        } else {
            Err(LedgerError::InvalidEventType)
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventType({})", self.0)
    }
}

/// The name of the role an actor held when the event was recorded: `[a-z][a-z0-9_]*`,
/// at most 32 bytes. The set of roles is the domain's business (it can grow without a
/// format change); the ledger only fixes the spelling.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoleName(String);

impl RoleName {
    /// The role of events written by Chartledger itself (key registry, checkpoints).
    pub const SYSTEM: &'static str = "system";

    pub fn new(s: impl Into<String>) -> Result<Self, LedgerError> {
        let s = s.into();
        if is_token(&s, MAX_ROLE_LEN, b"_") {
            Ok(Self(s))
        } else {
            Err(LedgerError::InvalidRole)
        }
    }
    pub fn system() -> Self {
        Self(Self::SYSTEM.to_owned())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RoleName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RoleName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RoleName({})", self.0)
    }
}

/// Who recorded an event: a unique user id and the role held at that moment.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Actor {
    pub user_id: Uuid,
    pub role: RoleName,
}

impl Actor {
    /// Chartledger itself (nil user id, role `system`).
    pub fn system() -> Self {
        Self { user_id: Uuid::nil(), role: RoleName::system() }
    }
}

/// Event ids are UUIDv7 (RFC 9562): time-ordered, 128 bits, chosen by the client so that
/// retries are idempotent.
pub fn validate_event_id(id: Uuid) -> Result<Uuid, LedgerError> {
    if id.get_version_num() == 7 && id.get_variant() == uuid::Variant::RFC4122 {
        Ok(id)
    } else {
        Err(LedgerError::InvalidEventId)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids() {
        for ok in ["$keys", "patient-0190a0b8-2c1a-7c3e-8f00-000000000001", "a", "9.x:y_z-w"] {
            assert!(StreamId::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", "$", "$$keys", "Patient-1", "-x", "a b", "é", "a/b", &"a".repeat(129)] {
            assert_eq!(StreamId::new(bad), Err(LedgerError::InvalidStreamId), "{bad}");
        }
        assert_eq!(StreamId::new("patient-1").map(|s| s.category().to_owned()), Ok("patient".into()));
        assert!(StreamId::keys().is_system());
    }

    #[test]
    fn tokens() {
        assert!(EventType::new("clinical.entry_recorded").is_ok());
        assert!(EventType::new("1x").is_err());
        assert!(EventType::new("a-b").is_err());
        assert!(RoleName::new("physician").is_ok());
        assert!(RoleName::new("phys.ician").is_err());
        assert!(RoleName::new("").is_err());
    }

    #[test]
    fn event_ids_must_be_v7() {
        assert!(validate_event_id(Uuid::now_v7()).is_ok());
        assert!(validate_event_id(Uuid::nil()).is_err());
        assert!(validate_event_id(Uuid::from_u128(0x0190a0b8_2c1a_4c3e_8f00_000000000001)).is_err());
    }
}
