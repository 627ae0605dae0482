//! The GraphQL schema: one module per domain, merged (`QueryRoot`, `MutationRoot`), with
//! depth and complexity limits. The SDL is committed at `schema/chartledger.graphql` and
//! a test fails when it drifts from this code.

mod appointments;
mod audit;
mod auth;
mod care;
mod chart;
mod consents;
pub mod exec;
mod grants;
mod patients;
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

use exec::resolved;
use exec::{guard, sanitize};

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
    grants::GrantQuery,
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
    grants::GrantMutation,
);

pub type ApiSchema = Schema<QueryRoot, MutationRoot, updates::SubscriptionRoot>;

/// The depth and complexity limits of a schema without a state (the SDL, tests).
pub const DEFAULT_LIMITS: guard::Limits = guard::Limits { max_depth: 12, max_complexity: 2000 };

fn limits(state: Option<&AppState>) -> guard::Limits {
    state.map_or(DEFAULT_LIMITS, |s| guard::Limits {
        max_depth: s.config.max_depth,
        max_complexity: s.config.max_complexity,
    })
}

/// The schema with the server's limits. `state` is `None` only for printing the SDL.
/// Serve it wrapped in [`sanitize::Sanitized`] ([`executor`]).
pub fn schema(state: Option<AppState>) -> ApiSchema {
    let limits = limits(state.as_ref());
    let mut b = Schema::build(QueryRoot::default(), MutationRoot::default(), updates::SubscriptionRoot)
        .limit_depth(limits.max_depth)
        .limit_complexity(limits.max_complexity)
        .limit_recursive_depth(32)
        .limit_directives(8);
    if let Some(state) = state {
        if !(state.config.introspection || state.config.graphiql) {
            b = b.disable_introspection();
        }
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
    let limits = limits(Some(&state));
    sanitize::Sanitized::new(schema(Some(state)), limits)
}

/// The SDL as committed in `schema/chartledger.graphql`.
pub fn sdl() -> String {
    schema(None).sdl()
}

/// A command on a patient's record: authorize `op` for it, record the access, then
/// decide and append the command (a retry with the same `event_id` is answered with the
/// original result; another command with it is refused).
///
/// The access event is written first: a write is never stored without it (if it cannot
/// be written, nothing is, and the client is told `audit.unavailable`). A command then
/// refused, or a crash between the two, leaves the access event of an attempt.
async fn execute(
    ctx: &Context<'_>,
    op: Operation,
    patient_id: Uuid,
    event_id: Uuid,
    command: Command,
) -> ApiResult<types::Written> {
    execute_timed(ctx, op, patient_id, event_id, command, true).await
}

/// [`execute`], where `times_given: false` says the server filled in the command's time.
async fn execute_timed(
    ctx: &Context<'_>,
    op: Operation,
    patient_id: Uuid,
    event_id: Uuid,
    command: Command,
    times_given: bool,
) -> ApiResult<types::Written> {
    let (state, req) = parts(ctx)?;
    let p = authorize(ctx, op, Some(patient_id)).await?;
    req.collector.flush_patient(state, req, patient_id).await?;
    Ok(state.records.execute_retryable(patient_id, p.actor(), event_id, command, times_given).await?.into())
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
/// access; `as_of` not in the future, and the case named where the role must name one:
/// [`crate::access::authorize_read`]), wait for `min_position`, and load the chart from
/// the read model (now) or by replaying the ledger (as of a time). The current chart is
/// the one the care-team decision read, unless the request waited for a position.
async fn read_chart(
    ctx: &Context<'_>,
    present: Operation,
    patient_id: Uuid,
    as_of: Option<OffsetDateTime>,
    case_ref: Option<&str>,
    min_position: Option<u64>,
) -> ApiResult<Option<Arc<Chart>>> {
    let (state, req) = parts(ctx)?;
    let op = record_op(present, as_of.is_some());
    crate::access::authorize_read(ctx, op, patient_id, as_of, case_ref).await?;
    wait_for(state, min_position).await?;
    Ok(match as_of {
        Some(t) => {
            let pit = state.projections.chart_as_of(patient_id, types::ts(t)?).await?;
            Some(Arc::new(pit.chart))
        }
        None => req.current_chart(state, patient_id, min_position.is_some()).await?,
    })
}
