//! The staff directory and role grants: the fold of `$staff` in SQL (staff events are
//! rare: one statement each), and what the API reads of it.
//!
//! A role takes effect when `users.roles` has it: at `staff.user_created`,
//! `staff.role_granted` (roles one administrator may grant) or
//! `staff.role_grant_approved` (roles that need a second administrator,
//! `domain::staff`). A proposal is a `role_grants` row in status `pending`; its approval
//! or cancellation decides it (once: a later decision of a decided grant is not
//! applied, so the row keeps its first decider).

use domain::events::{DomainEvent, Role};
use domain::staff::{GrantState, GrantStatus, RoleGrant};
use domain::Recorded;
use ledger::Timestamp;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::ProjectionError;
use crate::queries::ReadModels;
use crate::sqlmap::*;

/// Whether the event belongs to the staff directory fold.
pub(crate) fn is_staff(e: &DomainEvent) -> bool {
    matches!(
        e,
        DomainEvent::UserCreated(_)
            | DomainEvent::RoleGranted(_)
            | DomainEvent::RoleRevoked(_)
            | DomainEvent::UserDeactivated(_)
            | DomainEvent::RoleGrantProposed(_)
            | DomainEvent::RoleGrantApproved(_)
            | DomainEvent::RoleGrantCancelled(_)
    )
}

/// Apply one staff event.
pub(crate) async fn write_staff(
    conn: &mut PgConnection,
    schema: &str,
    r: &Recorded,
) -> Result<(), ProjectionError> {
    let at = r.recorded_at.to_datetime();
    let position = pos(r.position);
    match &r.event {
        DomainEvent::UserCreated(u) => {
            let sql = format!(
                "INSERT INTO {schema}.users (user_id, username, display_name, roles, patient_id, active, updated_at, position) \
                 VALUES ($1, $2, $3, $4, $5, true, $6, $7) ON CONFLICT (user_id) DO NOTHING"
            );
            sqlx::query(&sql)
                .bind(u.user_id)
                .bind(&u.username)
                .bind(&u.display_name)
                .bind(names(&u.roles))
                .bind(u.patient_id)
                .bind(at)
                .bind(position)
                .execute(conn)
                .await?;
        }
        DomainEvent::RoleGranted(c) => add_role(conn, schema, c.user_id, c.role, at, position).await?,
        DomainEvent::RoleRevoked(c) => {
            let sql = format!(
                "UPDATE {schema}.users SET roles = array_remove(roles, $2), updated_at = $3, position = $4 WHERE user_id = $1"
            );
            sqlx::query(&sql)
                .bind(c.user_id)
                .bind(name(&c.role))
                .bind(at)
                .bind(position)
                .execute(conn)
                .await?;
        }
        DomainEvent::UserDeactivated(d) => {
            let sql = format!(
                "UPDATE {schema}.users SET active = false, updated_at = $2, position = $3 WHERE user_id = $1"
            );
            sqlx::query(&sql).bind(d.user_id).bind(at).bind(position).execute(conn).await?;
        }
        DomainEvent::RoleGrantProposed(g) => {
            let sql = format!(
                "INSERT INTO {schema}.role_grants (grant_id, user_id, role, status, proposed_by, proposed_at, position) \
                 VALUES ($1, $2, $3, 'pending', $4, $5, $6) ON CONFLICT (grant_id) DO NOTHING"
            );
            sqlx::query(&sql)
                .bind(g.grant_id)
                .bind(g.user_id)
                .bind(name(&g.role))
                .bind(r.actor.user_id)
                .bind(at)
                .bind(position)
                .execute(conn)
                .await?;
        }
        DomainEvent::RoleGrantApproved(g) => {
            let decided = decide(conn, schema, g, GrantStatus::Approved, r).await?;
            if decided {
                add_role(conn, schema, g.user_id, g.role, at, position).await?;
            }
        }
        DomainEvent::RoleGrantCancelled(g) => {
            decide(conn, schema, g, GrantStatus::Cancelled, r).await?;
        }
        _ => {}
    }
    Ok(())
}

async fn add_role(
    conn: &mut PgConnection,
    schema: &str,
    user_id: Uuid,
    role: Role,
    at: OffsetDateTime,
    position: i64,
) -> Result<(), ProjectionError> {
    let sql = format!(
        "UPDATE {schema}.users SET roles = ARRAY(SELECT DISTINCT x FROM unnest(array_append(roles, $2)) AS x ORDER BY x), \
         updated_at = $3, position = $4 WHERE user_id = $1"
    );
    sqlx::query(&sql).bind(user_id).bind(name(&role)).bind(at).bind(position).execute(conn).await?;
    Ok(())
}

/// Decide a pending grant that matches the event's user and role; whether it did.
async fn decide(
    conn: &mut PgConnection,
    schema: &str,
    g: &RoleGrant,
    status: GrantStatus,
    r: &Recorded,
) -> Result<bool, ProjectionError> {
    let sql = format!(
        "UPDATE {schema}.role_grants SET status = $4, decided_by = $5, decided_at = $6, position = $7 \
         WHERE grant_id = $1 AND user_id = $2 AND role = $3 AND status = 'pending'"
    );
    let done = sqlx::query(&sql)
        .bind(g.grant_id)
        .bind(g.user_id)
        .bind(name(&g.role))
        .bind(status.as_str())
        .bind(r.actor.user_id)
        .bind(r.recorded_at.to_datetime())
        .bind(pos(r.position))
        .execute(conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// A role grant as the read model has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrantRow {
    pub state: GrantState,
    pub proposed_at: ledger::Timestamp,
    pub decided_by: Option<Uuid>,
    pub decided_at: Option<ledger::Timestamp>,
    pub position: u64,
}

const GRANT_COLUMNS: &str =
    "grant_id, user_id, role, status, proposed_by, proposed_at, decided_by, decided_at, position";

fn grant_from(r: &PgRow) -> Result<GrantRow, ProjectionError> {
    let status: String = r.try_get("status")?;
    Ok(GrantRow {
        state: GrantState {
            grant: RoleGrant {
                grant_id: r.try_get("grant_id")?,
                user_id: r.try_get("user_id")?,
                role: parse(&r.try_get::<String, _>("role")?, "role")?,
            },
            proposed_by: r.try_get("proposed_by")?,
            status: GrantStatus::parse(&status).ok_or(ProjectionError::Corrupt { what: "grant status" })?,
        },
        proposed_at: Timestamp::from_datetime(r.try_get("proposed_at")?),
        decided_by: r.try_get("decided_by")?,
        decided_at: r.try_get::<Option<OffsetDateTime>, _>("decided_at")?.map(Timestamp::from_datetime),
        position: upos(r.try_get("position")?),
    })
}

impl ReadModels {
    pub async fn role_grant(&self, grant_id: Uuid) -> Result<Option<GrantRow>, ProjectionError> {
        let sql = format!("SELECT {GRANT_COLUMNS} FROM rm.role_grants WHERE grant_id = $1");
        let row = sqlx::query(&sql).bind(grant_id).fetch_optional(self.pool()).await?;
        row.as_ref().map(grant_from).transpose()
    }

    /// Grants, oldest first: in `status` if given, of `user_id` if given; at most
    /// `limit` (1 to 1000).
    pub async fn role_grants(
        &self,
        status: Option<GrantStatus>,
        user_id: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<GrantRow>, ProjectionError> {
        let sql = format!(
            "SELECT {GRANT_COLUMNS} FROM rm.role_grants WHERE ($1::text IS NULL OR status = $1) \
             AND ($2::uuid IS NULL OR user_id = $2) ORDER BY proposed_at, grant_id LIMIT $3"
        );
        let rows = sqlx::query(&sql)
            .bind(status.map(GrantStatus::as_str))
            .bind(user_id)
            .bind(i64::from(limit.clamp(1, 1000)))
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(grant_from).collect()
    }

    /// Whether an installation may still use the first-administrator exception
    /// (`domain::staff::Approval::FirstAdministrator`): at most one user holds the
    /// administrator role (active or not) and no administrator grant but `grant_id` was
    /// ever proposed.
    pub async fn first_administrator_grant_open(&self, grant_id: Uuid) -> Result<bool, ProjectionError> {
        let open: bool = sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM rm.users WHERE 'administrator' = ANY(roles)) <= 1 \
             AND NOT EXISTS (SELECT 1 FROM rm.role_grants WHERE role = 'administrator' AND grant_id <> $1)",
        )
        .bind(grant_id)
        .fetch_one(self.pool())
        .await?;
        Ok(open)
    }
}
