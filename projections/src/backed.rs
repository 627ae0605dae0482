//! The read-model rows that access decisions rest on, checked against the ledger when
//! they are read.
//!
//! The server decides who may do what to a record from three read models: the care team
//! (`care_team`: "their own patients", for physicians and nurses), the consent in force
//! (`consents`: purposes of use that need the patient's consent) and the staff directory
//! (`users`: the roles a user may log in with, whether the account is active, a patient
//! user's own record). A row written into those tables by hand, without a ledger event,
//! must not be honoured, so each read that a decision uses checks its rows against the
//! ledger tables (`ledger_events`, `ledger_payloads`: append-only for every role), in the
//! same statement or the next:
//!
//! - **care team** ([`CARE_BACKED`]): the row's assignment is a
//!   `care_team.member_assigned` event of the patient's stream, recorded at the row's
//!   `assigned_at` (the fold sets it to the event's recorded time; found through the
//!   ledger's `(stream_id, recorded_at)` index), whose payload names the row's clinician
//!   and care role, and no `care_team.member_removed` of that clinician follows it in the
//!   stream (found through the partial index `ledger_events_care_removed_idx` on the
//!   stream's removals, one probe instead of a walk over every later event of the
//!   stream, which an uncached chart load paid for each care-team member). A row that fails is left out (a warning names the patient and clinician):
//!   the clinician is not on the care team. Applied to the current chart's load (the
//!   cached chart is the loaded one, so a cache hit costs nothing more), to
//!   `is_on_care_team` (writes, searches, point-in-time reads), to `care_team` and to
//!   `patients_of`.
//! - **consents** ([`consent_history`]): every version row names the position of its
//!   event; that event must be a `consent.<change>` of the patient's stream, recorded at
//!   the row's `recorded_at`, whose payload has the row's consent id and the row's granted
//!   (recorded) or withdrawn purposes; versions must be numbered 1, 2, ... and a
//!   withdrawal's granted purposes must be the previous version's minus the withdrawn
//!   ones; and no consent event may follow the last version in the stream (a deleted
//!   withdrawal). Otherwise the read fails (`projection.unbacked`) and so does the
//!   decision.
//! - **users** ([`check_user`]): the row must equal the fold of the user's `$staff`
//!   events (created, roles granted and revoked, deactivated) read from the ledger: user
//!   name, display name, roles, patient, active, position. Otherwise `projection.unbacked`
//!   (a login fails). Logins are rare and pay an argon2 hash anyway; the fold reads the
//!   `$staff` stream.
//!
//! These checks trust that the ledger rows are the signed events (`ledger verify` checks
//! signatures and hash links) and that payloads keep their version-1 field names (an
//! upcast that renames a field must change them). They do not check who assigned a
//! member (the signed envelope's actor) or the content served (entries, demographics,
//! appointments, the access log): those are compared in full by
//! [`crate::verify::verify_read_models`] (`chartledger projections verify`).

use std::collections::BTreeSet;

use domain::chart::{ConsentChange, ConsentVersion};
use domain::events::{DomainEvent, Purpose};
use ledger::SignedEvent;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use crate::error::ProjectionError;
use crate::queries::UserRow;
use crate::records;
use crate::sqlmap::upos;

/// Whether the care-team row `c` (a row of `rm.care_team` under the alias `c`) is
/// accounted for by the ledger (see the module documentation).
pub(crate) const CARE_BACKED: &str = "EXISTS (SELECT 1 FROM ledger_events e \
     JOIN ledger_payloads p ON p.position = e.position \
     WHERE e.stream_id = 'patient-' || c.patient_id::text AND e.recorded_at = c.assigned_at \
     AND e.event_type = 'care_team.member_assigned' \
     AND convert_from(p.payload, 'UTF8')::jsonb ->> 'clinician_id' = c.clinician_id::text \
     AND convert_from(p.payload, 'UTF8')::jsonb ->> 'care_role' = c.care_role \
     AND NOT EXISTS (SELECT 1 FROM ledger_events r JOIN ledger_payloads rp ON rp.position = r.position \
       WHERE r.stream_id = e.stream_id AND r.position > e.position \
       AND r.event_type = 'care_team.member_removed' \
       AND convert_from(rp.payload, 'UTF8')::jsonb ->> 'clinician_id' = c.clinician_id::text))";

/// Log a row a decision leaves out and goes on without (ids only). A row that makes a
/// decision fail is not logged here: it is returned as [`ProjectionError::Unbacked`]
/// and logged where that error is handled.
pub(crate) fn unbacked(table: &'static str, patient: Option<Uuid>, subject: Uuid) {
    tracing::warn!(
        table,
        patient_id = ?patient,
        subject_id = %subject,
        code = "projection.unbacked",
        "read-model row not accounted for by the ledger; not honoured"
    );
}

/// The purposes of a JSON array, sorted, as text (SQL).
const SORTED_JSON: &str = "ARRAY(SELECT x FROM jsonb_array_elements_text(j.v -> '{field}') AS x ORDER BY 1)";
/// The elements of a text array, sorted (SQL).
const SORTED_ARRAY: &str = "ARRAY(SELECT x FROM unnest(c.{col}) AS x ORDER BY 1)";

fn consent_sql() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        let granted = format!(
            "{} = {}",
            SORTED_JSON.replace("{field}", "granted"),
            SORTED_ARRAY.replace("{col}", "granted")
        );
        let withdrawn = format!(
            "{} = {}",
            SORTED_JSON.replace("{field}", "purposes"),
            SORTED_ARRAY.replace("{col}", "withdrawn")
        );
        format!(
            "SELECT c.patient_id, c.version, c.consent_id, c.change, c.method, c.supersedes, c.withdrawn, c.granted, \
             c.witness_id, c.effective_at, c.recorded_at, c.recorded_by, c.position, \
             coalesce(e.stream_id = 'patient-' || c.patient_id::text AND e.event_type = 'consent.' || c.change \
               AND e.recorded_at = c.recorded_at AND j.v ->> 'consent_id' = c.consent_id::text \
               AND CASE c.change WHEN 'recorded' THEN {granted} WHEN 'withdrawn' THEN {withdrawn} ELSE false END, \
               false) AS backed, \
             EXISTS (SELECT 1 FROM ledger_events l WHERE l.stream_id = 'patient-' || c.patient_id::text \
               AND l.recorded_at >= c.recorded_at AND l.position > c.position \
               AND l.event_type IN ('consent.recorded', 'consent.withdrawn')) AS followed \
             FROM rm.consents c \
             LEFT JOIN ledger_events e ON e.position = c.position \
             LEFT JOIN ledger_payloads p ON p.position = c.position \
             LEFT JOIN LATERAL (SELECT convert_from(p.payload, 'UTF8')::jsonb AS v) j ON true \
             WHERE c.patient_id = $1 ORDER BY c.version"
        )
    })
}

/// Consent versions of a patient, oldest first, each checked against its event (see the
/// module documentation); `projection.unbacked` when one is not accounted for.
pub(crate) async fn consent_history(
    pool: &PgPool,
    patient_id: Uuid,
) -> Result<Vec<ConsentVersion>, ProjectionError> {
    let rows = sqlx::query(consent_sql()).bind(patient_id).fetch_all(pool).await?;
    let mut versions: Vec<ConsentVersion> = Vec::with_capacity(rows.len());
    let last = rows.len().saturating_sub(1);
    for (i, row) in rows.iter().enumerate() {
        let v = records::consent_from(row)?;
        let backed: bool = row.try_get("backed")?;
        // Only the last version may have nothing after it; the others are followed by
        // the next version's event, which is checked in its turn.
        let followed = i == last && row.try_get::<bool, _>("followed")?;
        let chained = v.version as usize == i + 1
            && match (&v.change, versions.last()) {
                (ConsentChange::Withdrawn { purposes }, Some(prev)) => {
                    v.consent_id == prev.consent_id
                        && v.granted
                            == prev.granted.difference(purposes).copied().collect::<BTreeSet<Purpose>>()
                }
                (ConsentChange::Withdrawn { .. }, None) => false,
                (ConsentChange::Recorded { .. }, _) => true,
            };
        if !backed || followed || !chained {
            return Err(ProjectionError::Unbacked { table: "consents", subject: v.consent_id });
        }
        versions.push(v);
    }
    Ok(versions)
}

/// Check a user row against the fold of the user's `$staff` events in the ledger (see the
/// module documentation); `projection.unbacked` when they differ.
pub(crate) async fn check_user(pool: &PgPool, row: &UserRow, position: u64) -> Result<(), ProjectionError> {
    let events = sqlx::query(
        "SELECT e.position, e.envelope, p.payload FROM ledger_events e \
         JOIN ledger_payloads p ON p.position = e.position \
         WHERE e.stream_id = '$staff' \
         AND e.event_type IN ('staff.user_created', 'staff.role_granted', 'staff.role_revoked', 'staff.user_deactivated', \
         'staff.role_grant_proposed', 'staff.role_grant_approved', 'staff.role_grant_cancelled') \
         AND convert_from(p.payload, 'UTF8')::jsonb ->> 'user_id' = $1::text ORDER BY e.position",
    )
    .bind(row.user_id)
    .fetch_all(pool)
    .await?;
    let mut fold: Option<(UserRow, u64)> = None;
    // Grants by id: (role, still pending). As in `staff::apply`, the first proposal of
    // an id stands, and only its first decision counts (an approval adds its role).
    let mut grants: std::collections::HashMap<Uuid, (domain::events::Role, bool)> = Default::default();
    for e in &events {
        let at = upos(e.try_get("position")?);
        let envelope: Vec<u8> = e.try_get("envelope")?;
        let payload: Vec<u8> = e.try_get("payload")?;
        let signed = SignedEvent::from_bytes(&envelope)
            .map_err(|_| ProjectionError::Corrupt { what: "staff event envelope" })?;
        let body = signed.body();
        // What the runner cannot decode it skips; so does this fold.
        let Ok(event) = DomainEvent::decode(body.event_type.as_str(), body.schema_version, &payload) else {
            continue;
        };
        // The same fold as `records::write_staff`.
        match (&event, fold.as_mut()) {
            (DomainEvent::UserCreated(u), None) if u.user_id == row.user_id => {
                let user = UserRow {
                    user_id: u.user_id,
                    username: u.username.clone(),
                    display_name: u.display_name.clone(),
                    roles: u.roles.clone(),
                    patient_id: u.patient_id,
                    active: true,
                };
                fold = Some((user, at));
            }
            (DomainEvent::RoleGranted(c), Some((u, p))) if c.user_id == row.user_id => {
                u.roles.insert(c.role);
                *p = at;
            }
            (DomainEvent::RoleRevoked(c), Some((u, p))) if c.user_id == row.user_id => {
                u.roles.remove(&c.role);
                *p = at;
            }
            (DomainEvent::UserDeactivated(d), Some((u, p))) if d.user_id == row.user_id => {
                u.active = false;
                *p = at;
            }
            (DomainEvent::RoleGrantProposed(g), Some(_)) if g.user_id == row.user_id => {
                grants.entry(g.grant_id).or_insert((g.role, true));
            }
            (DomainEvent::RoleGrantApproved(g) | DomainEvent::RoleGrantCancelled(g), Some((u, p)))
                if g.user_id == row.user_id =>
            {
                if let Some((role, pending)) = grants.get_mut(&g.grant_id).filter(|(r, p)| *p && *r == g.role)
                {
                    *pending = false;
                    if matches!(event, DomainEvent::RoleGrantApproved(_)) {
                        u.roles.insert(*role);
                        *p = at;
                    }
                }
            }
            _ => {}
        }
    }
    match fold {
        Some((user, at)) if user == *row && at == position => Ok(()),
        _ => Err(ProjectionError::Unbacked { table: "users", subject: row.user_id }),
    }
}
