//! `chartledger projections verify` against a real database, clean and tampered.

use std::time::Duration;

use domain::commands::Command as DomainCommand;
use domain::events::{CareRole, Role};
use store::{EventStore, StoreConfig};
use uuid::Uuid;

use super::run_blocking;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projections_verify_names_a_tampered_table_and_exits_non_zero() {
    let db = testdb::TestDb::new().await.unwrap();
    let key =
        ledger::LedgerSigningKey::new("cli.example/ledger", ed25519_dalek::SigningKey::from_bytes(&[6; 32]))
            .unwrap();
    let store = EventStore::open(db.pool().clone(), key, StoreConfig::default()).await.unwrap();
    let projections = projections::Projections::start(store.clone(), Default::default()).await.unwrap();
    let records = projections::Records::new(store.clone());
    let actor = |role: Role| ledger::Actor { user_id: Uuid::from_u128(0xad), role: role.role_name() };
    let mut sim = domain::sim::Sim::new(7);
    let (patient, register) = sim.register();
    records.execute(patient, actor(Role::Receptionist), Uuid::now_v7(), register).await.unwrap();
    let assign =
        DomainCommand::AssignCareTeamMember { clinician_id: Uuid::now_v7(), care_role: CareRole::Attending };
    let done = records.execute(patient, actor(Role::Administrator), Uuid::now_v7(), assign).await.unwrap();
    projections.wait_for(done.position, Duration::from_secs(20)).await.unwrap();
    projections.shutdown().await;

    let args = || vec!["projections".to_owned(), "verify".to_owned()];
    let env = vec![("DATABASE_URL".to_owned(), db.url().to_owned())];
    let ok = run_blocking(args(), env.clone());
    let out = String::from_utf8_lossy(&ok.stdout);
    assert!(ok.status.success(), "{out}{}", String::from_utf8_lossy(&ok.stderr));
    assert!(out.contains("read models OK") && out.contains("care_team"), "{out}");

    // A nurse put on the care team by hand, without a ledger event.
    let nurse = Uuid::now_v7();
    sqlx::query("INSERT INTO rm.care_team VALUES ($1, $2, 'nurse', now(), $2)")
        .bind(patient)
        .bind(nurse)
        .execute(db.pool())
        .await
        .unwrap();
    let bad = run_blocking(args(), env);
    assert_eq!(bad.status.code(), Some(1), "{}", String::from_utf8_lossy(&bad.stdout));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("table care_team")
            && err.contains(&nurse.to_string())
            && err.contains("projection.row_unaccounted"),
        "{err}"
    );
}
