//! Stream naming. A patient's record is `patient-<uuid>`; who accessed it is kept apart
//! in `access-<uuid>` (so that reading a chart never contends with writing it, and a
//! chart replay does not wade through its access log); security and staff events go to
//! the system streams `$security` and `$staff`.

use ledger::StreamId;
use uuid::Uuid;

pub const SECURITY: &str = "$security";
pub const STAFF: &str = "$staff";
pub const PATIENT_PREFIX: &str = "patient-";
pub const ACCESS_PREFIX: &str = "access-";

pub fn patient(patient_id: Uuid) -> StreamId {
    StreamId::patient(patient_id)
}

#[allow(clippy::expect_used)] // `access-` + a hyphenated UUID is always a valid stream id
pub fn access(patient_id: Uuid) -> StreamId {
    StreamId::new(format!("{ACCESS_PREFIX}{}", patient_id.as_hyphenated())).expect("valid stream id")
}

#[allow(clippy::expect_used)] // constant, valid
pub fn security() -> StreamId {
    StreamId::new(SECURITY).expect("valid stream id")
}

#[allow(clippy::expect_used)] // constant, valid
pub fn staff() -> StreamId {
    StreamId::new(STAFF).expect("valid stream id")
}

/// The patient a `patient-…` or `access-…` stream belongs to.
pub fn patient_of(stream: &StreamId) -> Option<Uuid> {
    let s = stream.as_str();
    let id = s.strip_prefix(PATIENT_PREFIX).or_else(|| s.strip_prefix(ACCESS_PREFIX))?;
    Uuid::parse_str(id).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_round_trip() {
        let id = Uuid::now_v7();
        assert_eq!(patient_of(&patient(id)), Some(id));
        assert_eq!(patient_of(&access(id)), Some(id));
        assert_eq!(patient_of(&security()), None);
        assert!(staff().is_system());
    }
}
