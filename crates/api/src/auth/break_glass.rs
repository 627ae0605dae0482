//! Break-glass: emergency access to one patient's record for one session, with a
//! stated reason, for a limited time (the reason is shown only to auditors and the
//! patient).

use sqlx::Row;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{dur, Auth, Principal};
use crate::error::ApiResult;

impl Auth {
    /// Grant break-glass access to one patient for this session.
    pub async fn grant_break_glass(
        &self,
        p: &Principal,
        patient_id: Uuid,
        reason: &str,
    ) -> ApiResult<OffsetDateTime> {
        let now = OffsetDateTime::now_utc();
        let expires = now + dur(self.config.break_glass_duration);
        sqlx::query(
            "INSERT INTO auth_break_glass (session_id, patient_id, reason, granted_at, expires_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (session_id, patient_id) DO UPDATE SET reason = EXCLUDED.reason, granted_at = EXCLUDED.granted_at, \
             expires_at = EXCLUDED.expires_at",
        )
        .bind(p.session_id)
        .bind(patient_id)
        .bind(reason)
        .bind(now)
        .bind(expires)
        .execute(&self.pool)
        .await?;
        Ok(expires)
    }

    /// The reason of a live break-glass grant of this session for this patient.
    pub async fn break_glass_reason(&self, p: &Principal, patient_id: Uuid) -> ApiResult<Option<String>> {
        let row = sqlx::query(
            "SELECT reason FROM auth_break_glass WHERE session_id = $1 AND patient_id = $2 AND expires_at > $3",
        )
        .bind(p.session_id)
        .bind(patient_id)
        .bind(OffsetDateTime::now_utc())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| r.try_get("reason")).transpose()?)
    }
}
