//! A deterministic generator of realistic, valid clinical activity, for property tests
//! and benchmarks: registrations, entries of every kind, amendments, retractions,
//! consents, care-team changes, appointments and (many) record accesses.
//!
//! Every command it emits is valid against the chart it was given, so `decide` accepts
//! it; a caller keeps the charts up to date by applying the resulting events
//! ([`decide_and_apply`], [`Sim::new_patient`], [`Sim::history`]: what the benchmarks
//! of every crate seed their ledgers with).

use std::collections::BTreeSet;

use ledger::Timestamp;
use uuid::Uuid;

use crate::chart::{AppointmentStatus, Chart, EntryStatus};
use crate::codes::{CodeSystem, Coding, Decimal, Quantity, ReferenceRange};
use crate::commands::{decide, Command};
use crate::events::*;
use crate::{streams, DomainError, Recorded};

/// SplitMix64: tiny, seedable and good enough for test data (not for secrets).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
    /// A UUIDv7-shaped id from the generator (deterministic).
    pub fn uuid_v7(&mut self) -> Uuid {
        let ms = 1_790_000_000_000u64 + self.below(1 << 30);
        let rand = self.next_u64();
        let rand2 = self.next_u64();
        uuid::Builder::from_unix_timestamp_millis(ms, &{
            let mut b = [0u8; 10];
            b[..8].copy_from_slice(&rand.to_le_bytes());
            b[8..].copy_from_slice(&rand2.to_le_bytes()[..2]);
            b
        })
        .into_uuid()
    }
}

const GIVEN: &[&str] = &["Ada", "Grace", "Alan", "Mary", "Wei", "Amara", "José", "Noor", "Ivan", "Yuki"];
const FAMILY: &[&str] =
    &["Lovelace", "Hopper", "Turing", "Seacole", "Zhang", "Okafor", "García", "Haddad", "Petrov", "Sato"];
const LOINC: &[(&str, &str, &str, i64, i64)] = &[
    ("2345-7", "Glucose", "mg/dL", 70, 99),
    ("8867-4", "Heart rate", "/min", 60, 100),
    ("8480-6", "Systolic blood pressure", "mm[Hg]", 90, 120),
    ("4548-4", "Hemoglobin A1c", "%", 4, 6),
    ("8310-5", "Body temperature", "Cel", 36, 38),
];
const SNOMED: &[&str] = &["44054006", "195967001", "38341003", "91936005"];
const ICD10: &[&str] = &["E11.9", "J45", "I10", "Z00.00"];
const RXNORM: &[&str] = &["197361", "314076", "860975"];

/// What the simulator emits.
#[derive(Clone, Debug)]
pub enum Step {
    Command { patient_id: Uuid, command: Command, author_role: Role },
    Access { event: RecordAccessed, role: Role },
}

/// Fold `event` into `chart` as its stream's next event, recorded at `at` (no
/// database: the simulator's charts stay current in memory).
pub fn apply(chart: &mut Chart, event: &DomainEvent, at: Timestamp) {
    let revision = chart.revision.map_or(0, |r| r + 1);
    chart.apply(&Recorded {
        position: revision,
        stream: streams::patient(chart.patient_id),
        stream_revision: revision,
        event_id: Uuid::nil(),
        recorded_at: at,
        actor: ledger::Actor::system(),
        event: event.clone(),
    });
}

/// [`decide`] `command` against `chart` at `at`, then [`apply`] the event it gives.
pub fn decide_and_apply(
    chart: &mut Chart,
    command: Command,
    at: Timestamp,
) -> Result<DomainEvent, DomainError> {
    let event = decide(chart, command, at)?;
    apply(chart, &event, at);
    Ok(event)
}

/// One clinical step of [`Sim::history`]: who wrote it, the command and its event.
pub type Written = (Role, Command, DomainEvent);

/// The generator. `access_percent` sets the share of steps that are record accesses.
#[derive(Clone, Debug)]
pub struct Sim {
    pub rng: Rng,
    pub access_percent: u64,
    pub clinicians: Vec<Uuid>,
}

impl Sim {
    pub fn new(seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let clinicians = (0..8).map(|_| rng.uuid_v7()).collect();
        Self { rng, access_percent: 40, clinicians }
    }

    /// A new patient's registration command.
    pub fn register(&mut self) -> (Uuid, Command) {
        let patient_id = self.rng.uuid_v7();
        let given = vec![(*self.rng.pick(GIVEN)).to_owned()];
        let family = (*self.rng.pick(FAMILY)).to_owned();
        let year = 1930 + self.rng.below(90) as i32;
        let birth_date =
            time::Date::from_ordinal_date(year, 1 + self.rng.below(365) as u16).unwrap_or(time::Date::MIN);
        let sex = *self.rng.pick(&[Sex::Female, Sex::Male, Sex::Other, Sex::Unknown]);
        let mrn = format!("MRN-{:08}", self.rng.below(100_000_000));
        let contact = Contact {
            phone: Some(format!("+1 555 {:04}", self.rng.below(10_000))),
            email: None,
            address: None,
        };
        let cmd = Command::RegisterPatient(PatientRegistered {
            patient_id,
            mrn,
            name: HumanName { given, family },
            birth_date,
            sex,
            contact,
        });
        (patient_id, cmd)
    }

    /// A registered patient: the chart after registration, the command and its event.
    pub fn new_patient(&mut self, at: Timestamp) -> Result<(Chart, Command, DomainEvent), DomainError> {
        let (id, command) = self.register();
        let mut chart = Chart::new(id);
        let event = decide_and_apply(&mut chart, command.clone(), at)?;
        Ok((chart, command, event))
    }

    /// Clinical history for `chart` (accesses are skipped), decided and applied, for
    /// as long as `more(chart, steps written so far)` says.
    pub fn history(
        &mut self,
        chart: &mut Chart,
        at: Timestamp,
        mut more: impl FnMut(&Chart, usize) -> bool,
    ) -> Result<Vec<Written>, DomainError> {
        let mut out = Vec::new();
        while more(chart, out.len()) {
            if let Step::Command { command, author_role, .. } = self.step(chart, at) {
                let event = decide_and_apply(chart, command.clone(), at)?;
                out.push((author_role, command, event));
            }
        }
        Ok(out)
    }

    /// A valid next step for `chart` (which must be registered) at time `now`.
    pub fn step(&mut self, chart: &Chart, now: Timestamp) -> Step {
        let patient_id = chart.patient_id;
        if self.rng.chance(self.access_percent) {
            let role = *self.rng.pick(&[Role::Physician, Role::Nurse, Role::Receptionist, Role::Patient]);
            let emergency = self.rng.chance(3);
            let mut resources = BTreeSet::new();
            resources.insert(*self.rng.pick(&[
                ResourceKind::Demographics,
                ResourceKind::ClinicalEntries,
                ResourceKind::Appointments,
            ]));
            return Step::Access {
                role,
                event: RecordAccessed {
                    patient_id,
                    resources,
                    action: *self.rng.pick(&[
                        AccessAction::View,
                        AccessAction::View,
                        AccessAction::Print,
                        AccessAction::Export,
                    ]),
                    purpose: if emergency { PurposeOfUse::Emergency } else { PurposeOfUse::Treatment },
                    break_glass_reason: emergency.then(|| "unconscious patient in ED".to_owned()),
                    client_addr: Some(format!("10.0.{}.{}", self.rng.below(255), self.rng.below(255))),
                    user_agent: Some("Mozilla/5.0".to_owned()),
                    session_id: Some(self.rng.uuid_v7()),
                    case_ref: None,
                },
            };
        }
        let command = self.clinical(chart, now);
        let author_role = match &command {
            Command::ScheduleAppointment { .. }
            | Command::RescheduleAppointment { .. }
            | Command::CancelAppointment { .. }
            | Command::CompleteAppointment { .. }
            | Command::UpdateDemographics(_) => Role::Receptionist,
            Command::RecordConsent { .. } | Command::WithdrawConsent { .. } => Role::Nurse,
            _ => Role::Physician,
        };
        Step::Command { patient_id, command, author_role }
    }

    fn clinical(&mut self, chart: &Chart, now: Timestamp) -> Command {
        let past = |rng: &mut Rng| {
            Timestamp::from_micros(now.as_micros() - 1 - rng.below(30 * 86_400_000_000) as i64)
        };
        let active: Vec<Uuid> =
            chart.entries.values().filter(|e| e.status == EntryStatus::Active).map(|e| e.entry_id).collect();
        let scheduled: Vec<Uuid> = chart
            .appointments
            .values()
            .filter(|a| a.status == AppointmentStatus::Scheduled)
            .map(|a| a.appointment_id)
            .collect();
        match self.rng.below(100) {
            0..=44 => {
                let content = self.content(None);
                Command::RecordEntry {
                    entry_id: self.rng.uuid_v7(),
                    content,
                    effective_at: past(&mut self.rng),
                }
            }
            45..=59 if !active.is_empty() => {
                let entry_id = *self.rng.pick(&active);
                let kind = chart.entries.get(&entry_id).map(|e| e.kind);
                Command::AmendEntry {
                    amendment_id: self.rng.uuid_v7(),
                    entry_id,
                    content: self.content(kind),
                    reason: "corrected after review".to_owned(),
                    effective_at: past(&mut self.rng),
                }
            }
            60..=62 if !active.is_empty() => Command::MarkEnteredInError {
                entry_id: *self.rng.pick(&active),
                reason: "wrong patient".to_owned(),
            },
            63..=67 => {
                let mut granted = BTreeSet::new();
                for p in Purpose::ALL {
                    if self.rng.chance(60) {
                        granted.insert(p);
                    }
                }
                Command::RecordConsent {
                    consent_id: self.rng.uuid_v7(),
                    granted,
                    method: ConsentMethod::Electronic,
                    witness_id: Some(*self.rng.pick(&self.clinicians)),
                    given_at: past(&mut self.rng),
                }
            }
            68..=69 if chart.consent.current().is_some_and(|c| !c.granted.is_empty()) => {
                Command::WithdrawConsent {
                    purposes: BTreeSet::new(),
                    witness_id: None,
                    withdrawn_at: past(&mut self.rng),
                }
            }
            70..=74 => {
                let clinician_id = *self.rng.pick(&self.clinicians);
                if chart.care_team.contains_key(&clinician_id) {
                    Command::RemoveCareTeamMember { clinician_id }
                } else {
                    Command::AssignCareTeamMember { clinician_id, care_role: CareRole::Attending }
                }
            }
            75..=76 => Command::UpdateDemographics(DemographicsUpdated {
                contact: Some(Contact {
                    phone: Some(format!("+1 555 {:04}", self.rng.below(10_000))),
                    email: None,
                    address: None,
                }),
                ..DemographicsUpdated::default()
            }),
            77..=87 => {
                let start = now.as_micros() + 86_400_000_000 * (1 + self.rng.below(60) as i64);
                Command::ScheduleAppointment {
                    appointment_id: self.rng.uuid_v7(),
                    clinician_id: *self.rng.pick(&self.clinicians),
                    visit_type: VisitType::FollowUp,
                    start: Timestamp::from_micros(start),
                    end: Timestamp::from_micros(start + 1_800_000_000),
                }
            }
            88..=99 if !scheduled.is_empty() => {
                let appointment_id = *self.rng.pick(&scheduled);
                match self.rng.below(3) {
                    0 => {
                        let start = now.as_micros() + 86_400_000_000 * (1 + self.rng.below(60) as i64);
                        Command::RescheduleAppointment {
                            appointment_id,
                            start: Timestamp::from_micros(start),
                            end: Timestamp::from_micros(start + 900_000_000),
                        }
                    }
                    1 => Command::CancelAppointment { appointment_id, cancelled_by: CancelledBy::Patient },
                    _ => Command::CompleteAppointment { appointment_id },
                }
            }
            _ => {
                let content = self.content(None);
                Command::RecordEntry {
                    entry_id: self.rng.uuid_v7(),
                    content,
                    effective_at: past(&mut self.rng),
                }
            }
        }
    }

    /// Entry content of `kind` (or a random kind).
    pub fn content(&mut self, kind: Option<EntryKind>) -> EntryContent {
        let kind = kind.unwrap_or_else(|| *self.rng.pick(&EntryKind::ALL));
        let measurement = |rng: &mut Rng| {
            let (code, display, unit, low, high) = *rng.pick(LOINC);
            let q = |v: i64| Quantity { value: Decimal::from_int(v), unit: unit.to_owned() };
            Measurement {
                code: Coding::new(CodeSystem::Loinc, code, Some(display.to_owned())),
                value: q(low + rng.below((high - low + 10) as u64) as i64),
                reference_range: Some(ReferenceRange { low: Some(q(low)), high: Some(q(high)) }),
                note: None,
            }
        };
        match kind {
            EntryKind::SoapNote => EntryContent::SoapNote {
                subjective: "Patient reports mild headache for two days.".to_owned(),
                objective: "BP 128/82, afebrile.".to_owned(),
                assessment: "Tension-type headache.".to_owned(),
                plan: "Hydration, review in two weeks.".to_owned(),
            },
            EntryKind::Prescription => EntryContent::Prescription {
                medication: Coding::new(CodeSystem::RxNorm, *self.rng.pick(RXNORM), None),
                dosage: "1 tablet by mouth twice daily".to_owned(),
                quantity: None,
                refills: self.rng.below(3) as u8,
            },
            EntryKind::LabResult => EntryContent::LabResult(measurement(&mut self.rng)),
            EntryKind::Observation => EntryContent::Observation(measurement(&mut self.rng)),
            EntryKind::Assessment => EntryContent::Assessment { text: "Stable.".to_owned(), codes: vec![] },
            EntryKind::Condition => EntryContent::Condition {
                code: if self.rng.chance(50) {
                    Coding::new(CodeSystem::SnomedCt, *self.rng.pick(SNOMED), None)
                } else {
                    Coding::new(CodeSystem::Icd10, *self.rng.pick(ICD10), None)
                },
                clinical_status: ConditionStatus::Active,
                onset: None,
            },
            EntryKind::Allergy => EntryContent::Allergy {
                substance: Coding::new(CodeSystem::SnomedCt, "91936005", None),
                criticality: Criticality::High,
                reaction: Some("hives".to_owned()),
            },
        }
    }
}
