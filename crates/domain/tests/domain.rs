//! Domain properties: generated activity is always accepted, folds without anomalies,
//! round-trips through its payload encoding, and obeys the locality invariant the SQL
//! projection relies on. Plus the refusals a command handler must give.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeSet, HashMap};

use domain::chart::{Chart, EntityKey};
use domain::commands::{decide, Command};
use domain::events::*;
use domain::sim::{Sim, Step};
use domain::{DomainError, Recorded};
use ledger::{Actor, StreamId, Timestamp};
use proptest::prelude::*;
use uuid::Uuid;

const NOW: i64 = 1_795_435_200_000_000; // 2026-11-23T12:00:00Z

/// Run the simulator for `steps` steps over `patients` patients, returning every patient
/// stream's recorded events in order.
fn simulate(seed: u64, patients: usize, steps: usize) -> HashMap<Uuid, Vec<Recorded>> {
    let mut sim = Sim::new(seed);
    let mut charts: Vec<Chart> = Vec::new();
    let mut streams: HashMap<Uuid, Vec<Recorded>> = HashMap::new();
    let mut position = 0u64;
    let mut now = NOW;
    let mut record = |chart: &mut Chart,
                      event: DomainEvent,
                      role: Role,
                      now: i64,
                      streams: &mut HashMap<Uuid, Vec<Recorded>>| {
        let stream = streams.entry(chart.patient_id).or_default();
        let r = Recorded {
            position,
            stream: StreamId::patient(chart.patient_id),
            stream_revision: stream.len() as u64,
            event_id: Uuid::now_v7(),
            recorded_at: Timestamp::from_micros(now),
            actor: Actor { user_id: Uuid::now_v7(), role: role.role_name() },
            event,
        };
        position += 1;
        chart.apply(&r);
        stream.push(r);
    };
    for _ in 0..patients {
        let (id, cmd) = sim.register();
        let mut chart = Chart::new(id);
        let event = decide(&chart, cmd, Timestamp::from_micros(now)).expect("registration accepted");
        record(&mut chart, event, Role::Receptionist, now, &mut streams);
        charts.push(chart);
    }
    for i in 0..steps {
        now += 1_000_000;
        let idx = sim.rng.below(charts.len() as u64) as usize;
        let chart = &mut charts[idx];
        match sim.step(chart, Timestamp::from_micros(now)) {
            Step::Command { command, author_role, .. } => {
                let event = decide(chart, command, Timestamp::from_micros(now))
                    .unwrap_or_else(|e| panic!("step {i}: generated command refused: {}", e.code()));
                record(chart, event, author_role, now, &mut streams);
            }
            Step::Access { event, .. } => event.validate().expect("generated access is valid"),
        }
    }
    streams
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn generated_activity_folds_cleanly_and_round_trips(seed in any::<u64>(), steps in 1usize..400) {
        let streams = simulate(seed, 3, steps);
        for (id, events) in &streams {
            let chart = Chart::replay(*id, events);
            prop_assert_eq!(chart.anomalies, 0);
            prop_assert!(chart.is_registered());
            for r in events {
                let bytes = r.event.to_payload();
                let back = DomainEvent::decode(r.event.type_name(), r.event.schema_version(), &bytes);
                prop_assert_eq!(back.as_ref(), Ok(&r.event));
            }
        }
    }

    /// The locality invariant: applying an event to a chart that holds only the entity
    /// the event touches gives that entity exactly as the full fold does.
    #[test]
    fn folds_are_local_to_the_touched_entity(seed in any::<u64>(), steps in 1usize..300) {
        let streams = simulate(seed, 2, steps);
        for (id, events) in &streams {
            let mut full = Chart::new(*id);
            for r in events {
                let Some(key) = EntityKey::of(&r.event) else { continue };
                let mut partial = Chart::new(*id);
                copy_entity(&full, &mut partial, key);
                full.apply(r);
                partial.apply(r);
                prop_assert_eq!(partial.anomalies, 0);
                let mut expected = Chart::new(*id);
                copy_entity(&full, &mut expected, key);
                let mut got = Chart::new(*id);
                copy_entity(&partial, &mut got, key);
                prop_assert_eq!(got, expected);
            }
        }
    }

    #[test]
    fn replaying_a_prefix_equals_the_fold_at_that_point(seed in any::<u64>(), steps in 1usize..200, cut in 0usize..200) {
        let streams = simulate(seed, 1, steps);
        let (id, events) = streams.iter().next().expect("one patient");
        let cut = cut.min(events.len());
        let mut incremental = Chart::new(*id);
        for r in &events[..cut] {
            incremental.apply(r);
        }
        prop_assert_eq!(Chart::replay(*id, &events[..cut]), incremental);
    }
}

fn copy_entity(from: &Chart, to: &mut Chart, key: EntityKey) {
    to.patient_id = from.patient_id;
    match key {
        EntityKey::Demographics => to.demographics = from.demographics.clone(),
        EntityKey::Entry(id) => {
            if let Some(e) = from.entries.get(&id) {
                to.entries.insert(id, e.clone());
            }
        }
        EntityKey::Consent => to.consent = from.consent.clone(),
        EntityKey::CareTeamMember(id) => {
            if let Some(m) = from.care_team.get(&id) {
                to.care_team.insert(id, m.clone());
            }
        }
        EntityKey::Appointment(id) => {
            if let Some(a) = from.appointments.get(&id) {
                to.appointments.insert(id, a.clone());
            }
        }
    }
}

fn registered() -> (Chart, Sim) {
    let mut sim = Sim::new(7);
    let (id, cmd) = sim.register();
    let mut chart = Chart::new(id);
    let event = decide(&chart, cmd, Timestamp::from_micros(NOW)).expect("registered");
    chart.apply(&Recorded {
        position: 0,
        stream: StreamId::patient(id),
        stream_revision: 0,
        event_id: Uuid::now_v7(),
        recorded_at: Timestamp::from_micros(NOW),
        actor: Actor::system(),
        event,
    });
    (chart, sim)
}

/// Decide `cmd` against `chart` and fold the event in as the stream's next revision.
fn decide_and_apply(chart: &mut Chart, cmd: Command, now: Timestamp) -> Result<(), DomainError> {
    let event = decide(chart, cmd, now)?;
    let next = chart.revision.map_or(0, |r| r + 1);
    chart.apply(&Recorded {
        position: next,
        stream: StreamId::patient(chart.patient_id),
        stream_revision: next,
        event_id: Uuid::now_v7(),
        recorded_at: now,
        actor: Actor::system(),
        event,
    });
    Ok(())
}

#[test]
fn commands_are_refused_with_typed_errors() {
    let now = Timestamp::from_micros(NOW);
    let (chart, mut sim) = registered();
    let content = sim.content(Some(EntryKind::LabResult));
    let cases: Vec<(Command, DomainError)> = vec![
        (
            Command::AmendEntry {
                amendment_id: Uuid::now_v7(),
                entry_id: Uuid::now_v7(),
                content: content.clone(),
                reason: "typo".into(),
                effective_at: now,
            },
            DomainError::UnknownEntry,
        ),
        (
            Command::WithdrawConsent { purposes: BTreeSet::new(), witness_id: None, withdrawn_at: now },
            DomainError::UnknownConsent,
        ),
        (
            Command::ScheduleAppointment {
                appointment_id: Uuid::now_v7(),
                clinician_id: Uuid::now_v7(),
                visit_type: VisitType::FollowUp,
                start: Timestamp::from_micros(NOW - 1),
                end: Timestamp::from_micros(NOW + 1_000_000),
            },
            DomainError::AppointmentInPast,
        ),
        (
            Command::RecordEntry {
                entry_id: Uuid::now_v7(),
                content: EntryContent::Condition {
                    code: domain::codes::Coding::new(domain::codes::CodeSystem::SnomedCt, "44054007", None),
                    clinical_status: ConditionStatus::Active,
                    onset: None,
                },
                effective_at: now,
            },
            DomainError::MalformedCode { field: "code" },
        ),
        (
            Command::RecordEntry {
                entry_id: Uuid::now_v7(),
                content: content.clone(),
                effective_at: Timestamp::from_micros(NOW + 3_600_000_000),
            },
            DomainError::EffectiveInFuture,
        ),
        (Command::RemoveCareTeamMember { clinician_id: Uuid::now_v7() }, DomainError::NotOnCareTeam),
        (Command::CompleteAppointment { appointment_id: Uuid::now_v7() }, DomainError::UnknownAppointment),
    ];
    for (cmd, expected) in cases {
        assert_eq!(decide(&chart, cmd, now), Err(expected));
    }
    // A user name must be a token; a display name bounded text without NULs.
    let user = UserCreated {
        user_id: Uuid::now_v7(),
        username: "Dr Who".into(),
        display_name: "Dr Who".into(),
        roles: [Role::Physician].into_iter().collect(),
        patient_id: None,
    };
    assert_eq!(user.validate(), Err(DomainError::MalformedValue { field: "username" }));
    let user = UserCreated { username: "dr.who".into(), display_name: "Dr\0Who".into(), ..user };
    assert_eq!(user.validate(), Err(DomainError::MalformedValue { field: "display_name" }));
    // Anything but registration needs a registered patient.
    let unknown = Chart::new(Uuid::now_v7());
    let cmd = Command::RecordEntry { entry_id: Uuid::now_v7(), content, effective_at: now };
    assert_eq!(decide(&unknown, cmd, now), Err(DomainError::UnknownPatient));
}

#[test]
fn amendments_keep_history_and_retractions_freeze_the_entry() {
    let now = Timestamp::from_micros(NOW);
    let (mut chart, mut sim) = registered();
    let entry_id = Uuid::now_v7();
    let apply = |chart: &mut Chart, cmd: Command| decide_and_apply(chart, cmd, now);
    let first = sim.content(Some(EntryKind::Observation));
    apply(&mut chart, Command::RecordEntry { entry_id, content: first.clone(), effective_at: now }).unwrap();
    let amendment_id = Uuid::now_v7();
    let second = sim.content(Some(EntryKind::Observation));
    apply(
        &mut chart,
        Command::AmendEntry {
            amendment_id,
            entry_id,
            content: second.clone(),
            reason: "wrong unit".into(),
            effective_at: now,
        },
    )
    .unwrap();
    // Amending through the amendment's id resolves to the original entry.
    let third = sim.content(Some(EntryKind::Observation));
    apply(
        &mut chart,
        Command::AmendEntry {
            amendment_id: Uuid::now_v7(),
            entry_id: amendment_id,
            content: third.clone(),
            reason: "again".into(),
            effective_at: now,
        },
    )
    .unwrap();
    let wrong_kind = sim.content(Some(EntryKind::SoapNote));
    assert_eq!(
        apply(
            &mut chart,
            Command::AmendEntry {
                amendment_id: Uuid::now_v7(),
                entry_id,
                content: wrong_kind,
                reason: "x".into(),
                effective_at: now
            }
        ),
        Err(DomainError::EntryKindChanged)
    );
    apply(&mut chart, Command::MarkEnteredInError { entry_id, reason: "wrong patient".into() }).unwrap();
    let entry = &chart.entries[&entry_id];
    assert_eq!(entry.versions.len(), 4);
    assert_eq!(entry.versions[0].content, first);
    assert_eq!(entry.versions[1].content, second);
    assert_eq!(entry.versions[2].content, third);
    assert_eq!(entry.versions[3].change.as_str(), "entered_in_error");
    assert_eq!(
        apply(
            &mut chart,
            Command::AmendEntry {
                amendment_id: Uuid::now_v7(),
                entry_id,
                content: third,
                reason: "x".into(),
                effective_at: now
            }
        ),
        Err(DomainError::EntryRetracted)
    );
    assert!(chart.section(EntryKind::Observation).is_empty());
    assert_eq!(chart.anomalies, 0);
}

#[test]
fn consent_supersedes_and_withdraws_by_purpose() {
    let now = Timestamp::from_micros(NOW);
    let (mut chart, _) = registered();
    let apply = |chart: &mut Chart, cmd: Command| decide_and_apply(chart, cmd, now).expect("accepted");
    let all: BTreeSet<Purpose> = Purpose::ALL.into_iter().collect();
    let first = Uuid::now_v7();
    apply(
        &mut chart,
        Command::RecordConsent {
            consent_id: first,
            granted: all,
            method: ConsentMethod::Written,
            witness_id: None,
            given_at: now,
        },
    );
    apply(
        &mut chart,
        Command::WithdrawConsent {
            purposes: [Purpose::Marketing].into_iter().collect(),
            witness_id: None,
            withdrawn_at: now,
        },
    );
    assert!(chart.consent.permits(Purpose::Research));
    assert!(!chart.consent.permits(Purpose::Marketing));
    let second = Uuid::now_v7();
    apply(
        &mut chart,
        Command::RecordConsent {
            consent_id: second,
            granted: [Purpose::Treatment].into_iter().collect(),
            method: ConsentMethod::Verbal,
            witness_id: Some(Uuid::now_v7()),
            given_at: now,
        },
    );
    assert!(!chart.consent.permits(Purpose::Research));
    assert_eq!(chart.consent.versions.len(), 3);
    assert_eq!(
        chart.consent.current().map(|c| &c.change),
        Some(&domain::chart::ConsentChange::Recorded {
            method: ConsentMethod::Verbal,
            supersedes: Some(first)
        })
    );
}
