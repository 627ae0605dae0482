//! Appointments: a patient's, a clinician's schedule, and the booking commands.

use async_graphql::{Context, Object, SimpleObject};
use domain::chart::Appointment as DAppointment;
use domain::commands::Command;
use domain::events::{AccessAction, ResourceKind, Role};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::ApiResult;

use super::execute;
use super::types::{ts, CancelledBy, VisitType, Written};
use crate::access::{authorize, parts, wait_for};
use crate::error::ApiError;
use crate::policy::{self, Operation, Rule};

#[derive(SimpleObject, Clone)]
pub struct Appointment {
    pub appointment_id: Uuid,
    pub clinician_id: Uuid,
    pub visit_type: VisitType,
    pub start: OffsetDateTime,
    pub end: OffsetDateTime,
    /// `scheduled`, `cancelled_by_patient`, `cancelled_by_clinic` or `completed`.
    pub status: String,
    pub version: u32,
    pub updated_at: OffsetDateTime,
}

impl From<&DAppointment> for Appointment {
    fn from(a: &DAppointment) -> Self {
        Self {
            appointment_id: a.appointment_id,
            clinician_id: a.clinician_id,
            visit_type: a.visit_type.into(),
            start: a.start.to_datetime(),
            end: a.end.to_datetime(),
            status: a.status.as_str().to_owned(),
            version: a.version,
            updated_at: a.updated_at.to_datetime(),
        }
    }
}

#[derive(SimpleObject)]
pub struct ScheduledVisit {
    pub patient_id: Uuid,
    pub appointment: Appointment,
}

#[derive(Debug, Default)]
pub struct AppointmentQuery;

#[Object]
impl AppointmentQuery {
    async fn appointments(
        &self,
        ctx: &Context<'_>,
        patient_id: Uuid,
        min_position: Option<u64>,
    ) -> ApiResult<Vec<Appointment>> {
        let (state, _) = parts(ctx)?;
        authorize(ctx, Operation::ReadAppointments, Some(patient_id)).await?;
        wait_for(state, min_position).await?;
        Ok(state.read.appointments_of_patient(patient_id).await?.iter().map(Into::into).collect())
    }

    /// A clinician's schedule in `[from, to)`: front desk for anyone, clinicians their own.
    async fn schedule(
        &self,
        ctx: &Context<'_>,
        clinician_id: Uuid,
        from: OffsetDateTime,
        to: OffsetDateTime,
    ) -> ApiResult<Vec<ScheduledVisit>> {
        let (state, req) = parts(ctx)?;
        let p = req.principal()?;
        let own = matches!(p.role, Role::Physician | Role::Nurse) && p.user_id == clinician_id;
        if policy::rule(p.role, Operation::ReadAppointments) != Rule::Allow && !own {
            // Through the one gate, so that the refusal is recorded like any other.
            authorize(ctx, Operation::ReadAppointments, None).await?;
            return Err(ApiError::Forbidden);
        }
        if to <= from || to - from > time::Duration::days(31) {
            return Err(ApiError::InvalidInput { code: "schedule.bad_range" });
        }
        let rows = state.read.schedule(clinician_id, ts(from)?, ts(to)?).await?;
        Ok(rows
            .iter()
            .map(|(patient_id, a)| {
                req.collector.add(*patient_id, ResourceKind::Appointments, AccessAction::View, None);
                ScheduledVisit { patient_id: *patient_id, appointment: a.into() }
            })
            .collect())
    }
}

#[derive(Debug, Default)]
pub struct AppointmentMutation;

#[Object]
impl AppointmentMutation {
    #[allow(clippy::too_many_arguments)]
    async fn schedule_appointment(
        &self,
        ctx: &Context<'_>,
        patient_id: Uuid,
        appointment_id: Uuid,
        clinician_id: Uuid,
        visit_type: VisitType,
        start: OffsetDateTime,
        end: OffsetDateTime,
        event_id: Uuid,
    ) -> ApiResult<Written> {
        let cmd = Command::ScheduleAppointment {
            appointment_id,
            clinician_id,
            visit_type: visit_type.into(),
            start: ts(start)?,
            end: ts(end)?,
        };
        execute(ctx, Operation::ManageAppointments, patient_id, event_id, cmd).await
    }

    async fn reschedule_appointment(
        &self,
        ctx: &Context<'_>,
        patient_id: Uuid,
        appointment_id: Uuid,
        start: OffsetDateTime,
        end: OffsetDateTime,
        event_id: Uuid,
    ) -> ApiResult<Written> {
        let cmd = Command::RescheduleAppointment { appointment_id, start: ts(start)?, end: ts(end)? };
        execute(ctx, Operation::ManageAppointments, patient_id, event_id, cmd).await
    }

    async fn cancel_appointment(
        &self,
        ctx: &Context<'_>,
        patient_id: Uuid,
        appointment_id: Uuid,
        cancelled_by: CancelledBy,
        event_id: Uuid,
    ) -> ApiResult<Written> {
        let cmd = Command::CancelAppointment { appointment_id, cancelled_by: cancelled_by.into() };
        execute(ctx, Operation::ManageAppointments, patient_id, event_id, cmd).await
    }

    async fn complete_appointment(
        &self,
        ctx: &Context<'_>,
        patient_id: Uuid,
        appointment_id: Uuid,
        event_id: Uuid,
    ) -> ApiResult<Written> {
        let cmd = Command::CompleteAppointment { appointment_id };
        execute(ctx, Operation::ManageAppointments, patient_id, event_id, cmd).await
    }
}
