//! `chartledger serve --demo`: synthetic data to try the product with, seeded on the first
//! start of a new installation only (the caller decides that: the bootstrap administrator
//! was just created). Never real patients: every name, number and note comes from the
//! deterministic simulator [`domain::sim`], through the same command service
//! ([`projections::Records`]) as the API, so every event is validated, signed and
//! projected like any other.
//!
//! What it writes:
//! - one account for each staff role (physician, nurse, receptionist, administrator,
//!   auditor, legal) and a patient account, with random passwords shown once on stdout;
//!   roles that need a second factor enrol their TOTP at their first login;
//! - two colleagues who appear in the history but cannot log in (no credentials);
//! - [`PATIENTS`] synthetic patients, each with an intake consent and a history of
//!   entries, amendments, consents, care-team changes, appointments and record accesses;
//! - the first [`ASSIGNED`] patients on the demo physician's and nurse's care team (the
//!   simulated care-team changes add them to a few others), each with an upcoming visit
//!   with the demo physician; the patient account's record is the first of them.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::Context;
use api::AppState;
use domain::commands::Command;
use domain::events::{CareRole, ConsentMethod, DomainEvent, Purpose, Role, UserCreated, VisitType};
use domain::sim::{Sim, Step};
use ledger::{Actor, Timestamp};
use projections::Records;
use uuid::Uuid;

/// How many synthetic patients.
pub const PATIENTS: usize = 50;
/// How many of them the demo physician and nurse care for.
pub const ASSIGNED: usize = 12;
/// The simulator's seed (patient `i` uses `SEED + i`): the same demo every time.
const SEED: u64 = 0x0c4a_271e_d6e2_2026;
/// How long the read models may take to catch up with the seed.
const CATCH_UP: Duration = Duration::from_secs(120);

/// The accounts that can log in: (user name, display name, role).
const STAFF: &[(&str, &str, Role)] = &[
    ("demo.physician", "Dr. Demo Physician", Role::Physician),
    ("demo.nurse", "Demo Nurse", Role::Nurse),
    ("demo.reception", "Demo Receptionist", Role::Receptionist),
    ("demo.admin", "Demo Administrator", Role::Administrator),
    ("demo.auditor", "Demo Auditor", Role::Auditor),
    ("demo.legal", "Demo Legal Counsel", Role::Legal),
];
const PATIENT_ACCOUNT: (&str, &str) = ("demo.patient", "Demo Patient");
/// Colleagues in the history, without credentials.
const COLLEAGUES: &[(&str, &str, Role)] = &[
    ("demo.colleague.md", "Dr. Demo Colleague", Role::Physician),
    ("demo.colleague.rn", "Demo Colleague, RN", Role::Nurse),
];

/// One demo account's credentials (shown once).
#[derive(Debug)]
pub struct DemoLogin {
    pub username: String,
    pub role: Role,
    pub password: String,
}

/// What [`seed`] wrote.
#[derive(Debug)]
pub struct Seeded {
    pub logins: Vec<DemoLogin>,
    pub patients: usize,
    /// Patients on the demo physician's and the demo nurse's care team.
    pub physician_patients: usize,
    pub nurse_patients: usize,
    /// The ledger's size after the seed.
    pub events: u64,
    /// Roles that must enrol a second factor at their first login.
    pub mfa_roles: Vec<Role>,
}

impl Seeded {
    /// The credentials, once, on stdout (never in the log).
    pub fn print(&self) {
        println!(
            "demo data seeded: {} synthetic patients, {} events (synthetic, never real patients)",
            self.patients, self.events
        );
        println!("demo accounts (shown once):");
        for l in &self.logins {
            println!("  {:<16} {:<14} {}", l.username, l.role.as_str(), l.password);
        }
        if !self.mfa_roles.is_empty() {
            let roles: Vec<&str> = self.mfa_roles.iter().map(|r| r.as_str()).collect();
            println!(
                "  {} accounts enrol a TOTP second factor at their first login (enrollMfa, then verifyMfa)",
                roles.join(", ")
            );
        }
        println!(
            "  {} cares for {} patients and {} for {} (myPatients); {} is one of them",
            STAFF[0].0, self.physician_patients, STAFF[1].0, self.nurse_patients, PATIENT_ACCOUNT.0
        );
    }
}

/// The people who act in the synthetic history.
#[derive(Clone, Copy, Debug)]
struct Cast {
    physician: Uuid,
    nurse: Uuid,
    reception: Uuid,
    admin: Uuid,
    colleague_md: Uuid,
    colleague_rn: Uuid,
    patient_account: Uuid,
}

impl Cast {
    /// Who authors a command the simulator attributes to `role`: the demo clinicians for
    /// their own patients, colleagues for the others.
    fn author(&self, role: Role, assigned: bool) -> Actor {
        let user_id = match role {
            Role::Physician if assigned => self.physician,
            Role::Physician => self.colleague_md,
            Role::Nurse if assigned => self.nurse,
            Role::Nurse => self.colleague_rn,
            Role::Administrator => self.admin,
            _ => self.reception,
        };
        let role = match role {
            Role::Physician | Role::Nurse | Role::Administrator => role,
            _ => Role::Receptionist,
        };
        Actor { user_id, role: role.role_name() }
    }

    /// Who made a simulated access; patients only read their own record.
    fn accessor(&self, role: Role, assigned: bool, own_record: bool) -> Option<Actor> {
        match role {
            Role::Patient if own_record => {
                Some(Actor { user_id: self.patient_account, role: Role::Patient.role_name() })
            }
            Role::Patient => None,
            role => Some(self.author(role, assigned)),
        }
    }
}

use store::now;

const MINUTE: i64 = 60_000_000;
const DAY: i64 = 24 * 60 * MINUTE;

/// Seed the demo. Call it on a new installation only.
pub async fn seed(state: &AppState) -> anyhow::Result<Seeded> {
    let mut logins = Vec::new();
    let mut staff_ids = Vec::new();
    for (username, display_name, role) in STAFF {
        let password = api::bootstrap::random_password();
        let user_id = create_user(state, username, display_name, *role, None, Some(&password)).await?;
        staff_ids.push(user_id);
        logins.push(DemoLogin { username: (*username).to_owned(), role: *role, password });
    }
    let mut colleague_ids = Vec::new();
    for (username, display_name, role) in COLLEAGUES {
        colleague_ids.push(create_user(state, username, display_name, *role, None, None).await?);
    }
    let cast = Cast {
        physician: staff_ids[0],
        nurse: staff_ids[1],
        reception: staff_ids[2],
        admin: staff_ids[3],
        colleague_md: colleague_ids[0],
        colleague_rn: colleague_ids[1],
        patient_account: Uuid::now_v7(),
    };

    // Every patient's history on its own task: the store's group commit takes them
    // together, and commands for one patient stay in order.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..PATIENTS {
        let records = state.records.clone();
        tasks.spawn(async move { patient_history(&records, cast, i).await });
    }
    let mut first_patient = None;
    let (mut physician_patients, mut nurse_patients) = (0, 0);
    let mut last = 0;
    while let Some(done) = tasks.join_next().await {
        let h = done.context("demo: a seeding task failed")??;
        last = last.max(h.last_position);
        physician_patients += usize::from(h.physician);
        nurse_patients += usize::from(h.nurse);
        if h.index == 0 {
            first_patient = Some(h.patient_id);
        }
    }
    let patient_id = first_patient.context("demo: no first patient")?;
    let password = api::bootstrap::random_password();
    let (username, display_name) = PATIENT_ACCOUNT;
    let event = UserCreated {
        user_id: cast.patient_account,
        username: username.to_owned(),
        display_name: display_name.to_owned(),
        roles: BTreeSet::from([Role::Patient]),
        patient_id: Some(patient_id),
    };
    last = last.max(write_user(state, event, Some(&password)).await?);
    logins.push(DemoLogin { username: username.to_owned(), role: Role::Patient, password });

    state
        .projections
        .wait_for(last, CATCH_UP)
        .await
        .map_err(|e| anyhow::anyhow!("demo: the read models did not catch up [{}]", e.code()))?;
    let mfa_roles =
        logins.iter().map(|l| l.role).filter(|r| state.config.mfa_required_roles.contains(r)).collect();
    Ok(Seeded {
        logins,
        patients: PATIENTS,
        physician_patients,
        nurse_patients,
        events: state.store.head().size,
        mfa_roles,
    })
}

/// Create an account (with a password, or none: it cannot log in). Returns its id.
async fn create_user(
    state: &AppState,
    username: &str,
    display_name: &str,
    role: Role,
    patient_id: Option<Uuid>,
    password: Option<&str>,
) -> anyhow::Result<Uuid> {
    let user_id = Uuid::now_v7();
    let event = UserCreated {
        user_id,
        username: username.to_owned(),
        display_name: display_name.to_owned(),
        roles: BTreeSet::from([role]),
        patient_id,
    };
    write_user(state, event, password).await?;
    Ok(user_id)
}

/// Credentials first, then the `staff.user_created` event (as the bootstrap does).
/// Returns the event's position.
async fn write_user(state: &AppState, event: UserCreated, password: Option<&str>) -> anyhow::Result<u64> {
    let username = event.username.clone();
    event.validate().map_err(|e| anyhow::anyhow!("demo: account {username} is invalid [{}]", e.code()))?;
    if let Some(password) = password {
        state.auth.set_credentials(event.user_id, &username, password, false).await.map_err(|e| {
            anyhow::anyhow!("demo: cannot store the credentials of {username} [{}]", e.code())
        })?;
    }
    let done = state
        .records
        .record_system(Actor::system(), Uuid::now_v7(), DomainEvent::UserCreated(event))
        .await
        .map_err(|e| anyhow::anyhow!("demo: cannot create {username} [{}]", e.code()))?;
    Ok(done.position)
}

/// One synthetic patient's history.
struct History {
    index: usize,
    patient_id: Uuid,
    last_position: u64,
    /// Whether the demo physician (nurse) is on the patient's care team at the end.
    physician: bool,
    nurse: bool,
}

async fn patient_history(records: &Records, cast: Cast, index: usize) -> anyhow::Result<History> {
    let assigned = index < ASSIGNED;
    let mut sim = Sim::new(SEED.wrapping_add(index as u64));
    sim.access_percent = 25;
    sim.clinicians = vec![cast.physician, cast.nurse, cast.colleague_md, cast.colleague_rn];
    let exec = |actor: Actor, patient_id: Uuid, command: Command| async move {
        records
            .execute(patient_id, actor, Uuid::now_v7(), command)
            .await
            .map(|done| done.position)
            .map_err(|e| anyhow::anyhow!("demo: a synthetic command was refused [{}]", e.code()))
    };
    let (patient_id, register) = sim.register();
    exec(cast.author(Role::Receptionist, assigned), patient_id, register).await?;

    // Intake: consent to treatment and insurance billing, some to research.
    let mut granted = BTreeSet::from([Purpose::Treatment, Purpose::Insurance]);
    if sim.rng.chance(30) {
        granted.insert(Purpose::Research);
    }
    let consent = Command::RecordConsent {
        consent_id: Uuid::now_v7(),
        granted,
        method: ConsentMethod::Written,
        witness_id: Some(if assigned { cast.nurse } else { cast.colleague_rn }),
        given_at: Timestamp::from_micros(now().as_micros() - 90 * DAY),
    };
    let mut last = exec(cast.author(Role::Nurse, assigned), patient_id, consent).await?;

    let steps = 10 + sim.rng.below(21);
    for _ in 0..steps {
        let chart = records
            .current_chart(patient_id)
            .await
            .map_err(|e| anyhow::anyhow!("demo: cannot read a synthetic chart [{}]", e.code()))?;
        last = match sim.step(&chart, now()) {
            Step::Command { command, author_role, .. } => {
                exec(cast.author(author_role, assigned), patient_id, command).await?
            }
            Step::Access { event, role } => {
                let Some(actor) = cast.accessor(role, assigned, index == 0) else { continue };
                records
                    .record_access(actor, Uuid::now_v7(), event)
                    .await
                    .map_err(|e| anyhow::anyhow!("demo: a synthetic access was refused [{}]", e.code()))?
                    .position
            }
        };
    }

    if assigned {
        let chart = records
            .current_chart(patient_id)
            .await
            .map_err(|e| anyhow::anyhow!("demo: cannot read a synthetic chart [{}]", e.code()))?;
        for (clinician_id, care_role) in
            [(cast.physician, CareRole::Attending), (cast.nurse, CareRole::Nurse)]
        {
            if !chart.care_team.contains_key(&clinician_id) {
                let assign = Command::AssignCareTeamMember { clinician_id, care_role };
                exec(cast.author(Role::Administrator, assigned), patient_id, assign).await?;
            }
        }
        // A visit with the demo physician in the next two weeks, in office hours.
        let day = (now().as_micros() / DAY + 1 + (index as i64 % 14)) * DAY;
        let start = day + (8 * 60 + 30 * (index as i64 % 16)) * MINUTE;
        let visit = Command::ScheduleAppointment {
            appointment_id: Uuid::now_v7(),
            clinician_id: cast.physician,
            visit_type: VisitType::FollowUp,
            start: Timestamp::from_micros(start),
            end: Timestamp::from_micros(start + 30 * MINUTE),
        };
        last = exec(cast.author(Role::Receptionist, assigned), patient_id, visit).await?;
    }
    let chart = records
        .current_chart(patient_id)
        .await
        .map_err(|e| anyhow::anyhow!("demo: cannot read a synthetic chart [{}]", e.code()))?;
    Ok(History {
        index,
        patient_id,
        last_position: last,
        physician: chart.care_team.contains_key(&cast.physician),
        nurse: chart.care_team.contains_key(&cast.nurse),
    })
}
