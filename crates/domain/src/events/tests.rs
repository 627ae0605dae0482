use std::collections::BTreeSet;

use super::*;

#[test]
fn catalog_names_are_valid_and_unique() {
    let mut seen = BTreeSet::new();
    for (name, version) in CATALOG {
        assert!(EventType::new(*name).is_ok(), "{name}");
        assert!(*version >= 1);
        assert!(seen.insert(*name), "duplicate {name}");
    }
}

#[test]
fn patient_registered_v1_upcasts_to_v2() {
    let v1 = br#"{"patient_id":"0193a4b2-0000-7000-8000-000000000001","mrn":"MRN-1","name":{"given":["Ada"],"family":"Lovelace"},"birth_date":"1815-12-10","sex":"female","phone":"+44 20 0000","email":null}"#;
    let e = DomainEvent::decode("patient.registered", 1, v1).unwrap();
    let DomainEvent::PatientRegistered(p) = e else { panic!("wrong variant") };
    assert_eq!(p.contact.phone.as_deref(), Some("+44 20 0000"));
    assert_eq!(p.contact.email, None);
    assert_eq!(p.mrn, "MRN-1");
}

#[test]
fn access_recorded_v1_decodes_without_a_case_and_v2_keeps_it() {
    let v1 = br#"{"patient_id":"0193a4b2-0000-7000-8000-000000000001","resources":["history"],"action":"view","purpose":"audit","break_glass_reason":null,"client_addr":null,"user_agent":null,"session_id":null,"case_ref":"smuggled"}"#;
    let DomainEvent::RecordAccessed(a) = DomainEvent::decode("access.recorded", 1, v1).unwrap() else {
        panic!("wrong variant")
    };
    assert_eq!(a.case_ref, None);
    let v2 = DomainEvent::RecordAccessed(RecordAccessed { case_ref: Some("CASE-1".into()), ..a.clone() });
    assert_eq!(DomainEvent::decode("access.recorded", 2, &v2.to_payload()).unwrap(), v2);
    // Without a case, a v2 payload is byte for byte what v1 wrote.
    let plain = DomainEvent::RecordAccessed(a).to_payload();
    assert!(!String::from_utf8(plain).unwrap().contains("case_ref"));
}

#[test]
fn future_and_unknown_versions_are_refused() {
    assert_eq!(
        DomainEvent::decode("patient.registered", 3, b"{}"),
        Err(DomainError::FutureSchemaVersion { found: 3, supported: 2 })
    );
    assert_eq!(DomainEvent::decode("nope.nope", 1, b"{}"), Err(DomainError::UnknownEventType));
}

#[test]
fn malformed_payload_errors_do_not_quote_the_payload() {
    let bad = br#"{"entry_id":"not-a-uuid-SECRET-DIAGNOSIS","content":{},"effective_at":"x"}"#;
    let err = DomainEvent::decode("entry.recorded", 1, bad).unwrap_err();
    assert_eq!(err.code(), "domain.malformed_payload");
    assert!(!err.to_string().contains("SECRET"));
}
