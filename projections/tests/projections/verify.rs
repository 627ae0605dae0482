//! The read-model check (`projections::verify`) against tampered read models, and the
//! decision path's refusal of read-model rows no ledger event accounts for.

use projections::verify::{verify_read_models, verify_read_models_with, Mismatch, VerifyOptions};

use super::*;

/// The active generation's schema.
async fn active_schema(env: &Env) -> String {
    sqlx::query_scalar("SELECT schema_name FROM projection_generations WHERE status = 'active'")
        .fetch_one(env.store.pool())
        .await
        .unwrap()
}

async fn exec(env: &Env, sql: &str) -> u64 {
    sqlx::query(sql).execute(env.store.pool()).await.unwrap().rows_affected()
}

fn key(d: &projections::verify::Difference) -> Vec<(&str, &str)> {
    d.key.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_database_verifies_even_behind_the_head() {
    let env = env().await;
    let ids = drive(&env, 41, 4, 150, NoOp).await;
    caught_up(&env).await;
    let report = verify_read_models(env.store.pool()).await.unwrap();
    assert!(report.ok(), "{:?}", report.first_difference);
    assert_eq!(report.position, env.store.head().size);
    assert_eq!(report.generation, 1);
    let rows: std::collections::BTreeMap<_, _> = report.rows.iter().copied().collect();
    assert_eq!(rows["patients"], ids.len() as u64);
    assert!(rows["entry_versions"] > 0 && rows["access_log"] > 0, "{rows:?}");

    // Small pages and a cache that overflows: the fold reloads from its own tables, as a
    // runner does, and still agrees.
    let small = VerifyOptions { page_events: 17, cache_charts: 2 };
    assert!(verify_read_models_with(env.store.pool(), &small).await.unwrap().ok());

    // The projection stops; the ledger goes on: the generation is compared as of its own
    // position, and events it has not applied are not differences.
    env.projections.shutdown().await;
    let behind = env.store.head().size;
    drive(&env, 42, 2, 30, NoOp).await;
    let report = verify_read_models(env.store.pool()).await.unwrap();
    assert!(report.ok(), "{:?}", report.first_difference);
    assert_eq!(report.position, behind);
    assert!(report.head > behind);

    // A generation that claims more than the ledger holds is reported.
    exec(&env, "UPDATE projection_generations SET position = position + 1000 WHERE status = 'active'").await;
    let d = verify_read_models(env.store.pool()).await.unwrap().first_difference.unwrap();
    assert_eq!((d.table, d.mismatch), ("projection_generations", Mismatch::Column("position")));
}

/// Each kind of tampering is reported with its table, key and column, never a value.
/// Tampering accumulates, from the last table checked to the first, so that each step's
/// report is the newest tampering (the check names the first difference in table order).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_rows_are_reported_with_their_table() {
    let env = env().await;
    let ids = drive(&env, 43, 4, 200, NoOp).await;
    caught_up(&env).await;
    env.projections.shutdown().await;
    let schema = active_schema(&env).await;
    let pool = env.store.pool();
    assert!(verify_read_models(pool).await.unwrap().ok());

    // A deleted access-log row: missing.
    let position: i64 = sqlx::query_scalar(&format!("SELECT min(position) FROM {schema}.access_log"))
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(exec(&env, &format!("DELETE FROM {schema}.access_log WHERE position = {position}")).await, 1);
    let d = verify_read_models(pool).await.unwrap().first_difference.unwrap();
    assert_eq!((d.table, &d.mismatch), ("access_log", &Mismatch::Missing));
    assert_eq!(key(&d), vec![("position", position.to_string().as_str())]);
    assert_eq!(d.code(), "projection.row_missing");

    // A care-team member nobody assigned: not accounted for.
    let nurse = Uuid::now_v7();
    exec(
        &env,
        &format!(
            "INSERT INTO {schema}.care_team VALUES ('{}', '{nurse}', 'nurse', now(), '{nurse}')",
            ids[0]
        ),
    )
    .await;
    let d = verify_read_models(pool).await.unwrap().first_difference.unwrap();
    assert_eq!((d.table, &d.mismatch), ("care_team", &Mismatch::Unaccounted));
    let (patient, clinician) = (ids[0].to_string(), nurse.to_string());
    assert_eq!(key(&d), vec![("patient_id", patient.as_str()), ("clinician_id", clinician.as_str())]);
    let shown = d.to_string();
    assert!(shown.contains("care_team") && shown.contains(&clinician), "{shown}");

    // An edited entry version: its content differs.
    let (p, e, v): (Uuid, Uuid, i32) = sqlx::query_as(&format!(
        "SELECT patient_id, entry_id, version FROM {schema}.entry_versions ORDER BY position DESC LIMIT 1"
    ))
    .fetch_one(pool)
    .await
    .unwrap();
    let secret = "TAMPERED-CONTENT-VALUE";
    let edited = exec(
        &env,
        &format!(
            "UPDATE {schema}.entry_versions SET content = json_build_object('note', '{secret}') \
             WHERE patient_id = '{p}' AND entry_id = '{e}' AND version = {v}"
        ),
    )
    .await;
    assert_eq!(edited, 1);
    let d = verify_read_models(pool).await.unwrap().first_difference.unwrap();
    assert_eq!((d.table, &d.mismatch), ("entry_versions", &Mismatch::Column("content")));
    let (p, e, v) = (p.to_string(), e.to_string(), v.to_string());
    assert_eq!(key(&d), vec![("patient_id", p.as_str()), ("entry_id", e.as_str()), ("version", v.as_str())]);
    assert!(!format!("{d} {d:?}").contains(secret), "values are never shown");

    // An edited demographics column.
    let family = "TAMPERED-FAMILY-NAME";
    exec(&env, &format!("UPDATE {schema}.patients SET family = '{family}' WHERE patient_id = '{}'", ids[1]))
        .await;
    let d = verify_read_models(pool).await.unwrap().first_difference.unwrap();
    assert_eq!((d.table, &d.mismatch), ("patients", &Mismatch::Column("family")));
    let patient = ids[1].to_string();
    assert_eq!(key(&d), vec![("patient_id", patient.as_str())]);
    assert!(!format!("{d} {d:?}").contains(family));
}
