//! The GraphQL schema: one module per domain, merged (`QueryRoot`, `MutationRoot`), with
//! depth and complexity limits. The SDL is committed at `schema/chartledger.graphql` and
//! a test fails when it drifts from this code.

mod appointments;
mod audit;
mod auth;
mod care;
mod chart;
mod consents;
pub mod parsed;
mod patients;
mod resolved;
pub mod sanitize;
mod staff;
pub mod types;
mod updates;

use std::sync::Arc;

use async_graphql::{Context, MergedObject, Schema};
use domain::chart::Chart;
use domain::commands::Command;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::access::{authorize, parts, wait_for};
use crate::error::ApiResult;
use crate::policy::Operation;
use crate::AppState;

#[derive(MergedObject, Debug, Default)]
pub struct QueryRoot(
    auth::AuthQuery,
    patients::PatientQuery,
    chart::ChartQuery,
    chart::ProofQuery,
    chart::EventProofQuery,
    consents::ConsentQuery,
    care::CareQuery,
    appointments::AppointmentQuery,
    audit::AuditQuery,
    staff::StaffQuery,
);

#[derive(MergedObject, Debug, Default)]
pub struct MutationRoot(
    auth::AuthMutation,
    patients::PatientMutation,
    chart::ChartMutation,
    consents::ConsentMutation,
    care::CareMutation,
    appointments::AppointmentMutation,
    staff::StaffMutation,
);

pub type ApiSchema = Schema<QueryRoot, MutationRoot, updates::SubscriptionRoot>;

/// The schema with the server's limits. `state` is `None` only for printing the SDL.
/// Serve it wrapped in [`sanitize::Sanitized`] ([`executor`]).
pub fn schema(state: Option<AppState>) -> ApiSchema {
    let (depth, complexity) =
        state.as_ref().map_or((12, 2000), |s| (s.config.max_depth, s.config.max_complexity));
    let mut b = Schema::build(QueryRoot::default(), MutationRoot::default(), updates::SubscriptionRoot)
        .limit_depth(depth)
        .limit_complexity(complexity)
        .limit_recursive_depth(32)
        .limit_directives(8);
    if let Some(state) = state {
        // Entry lists are kept only beside kept charts (without them, every read has a
        // chart of its own and nothing could be reused).
        if state.read.chart_cache().keeps_any() {
            b = b.data(Arc::new(resolved::ResolvedLists::new(&state.metrics)));
        }
        b = b.data(state);
    }
    b.finish()
}

/// What the server executes: the schema, with the library's own errors sanitized.
pub fn executor(state: AppState) -> sanitize::Sanitized {
    sanitize::Sanitized::new(schema(Some(state)))
}

/// The SDL as committed in `schema/chartledger.graphql`.
pub fn sdl() -> String {
    schema(None).sdl()
}

/// A command on a patient's record: authorize `op` for it (recorded as an access),
/// then decide and append the command (a retry with the same `event_id` is answered
/// with the original result).
async fn execute(
    ctx: &Context<'_>,
    op: Operation,
    patient_id: Uuid,
    event_id: Uuid,
    command: Command,
) -> ApiResult<types::Written> {
    let (state, _) = parts(ctx)?;
    let p = authorize(ctx, op, Some(patient_id)).await?;
    Ok(state.records.execute(patient_id, p.actor(), event_id, command).await?.into())
}

/// The operation a read of a record is decided as: `present`, or point-in-time access
/// when it asks for the record as of an earlier time.
fn record_op(present: Operation, point_in_time: bool) -> Operation {
    if point_in_time {
        Operation::PointInTime
    } else {
        present
    }
}

/// Read a patient's record: authorize `present` (or, with `as_of`, point-in-time
/// access), wait for `min_position`, and load the chart from the read model (now) or by
/// replaying the ledger (as of a time). The current chart is the one the care-team
/// decision read, unless the request waited for a position.
async fn read_chart(
    ctx: &Context<'_>,
    present: Operation,
    patient_id: Uuid,
    as_of: Option<OffsetDateTime>,
    min_position: Option<u64>,
) -> ApiResult<Option<Arc<Chart>>> {
    let (state, req) = parts(ctx)?;
    authorize(ctx, record_op(present, as_of.is_some()), Some(patient_id)).await?;
    wait_for(state, min_position).await?;
    Ok(match as_of {
        Some(t) => {
            let pit = state.projections.chart_as_of(patient_id, types::ts(t)).await?;
            Some(Arc::new(pit.chart))
        }
        None => req.current_chart(state, patient_id, min_position.is_some()).await?,
    })
}
