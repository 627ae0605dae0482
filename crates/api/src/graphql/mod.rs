//! The GraphQL schema: one module per domain, merged (`QueryRoot`, `MutationRoot`), with
//! depth and complexity limits. The SDL is committed at `schema/chartledger.graphql` and
//! a test fails when it drifts from this code.

mod appointments;
mod audit;
mod auth;
mod care;
mod chart;
mod consents;
mod patients;
mod staff;
pub mod types;
mod updates;

use async_graphql::{MergedObject, Schema};

use crate::AppState;

#[derive(MergedObject, Debug, Default)]
pub struct QueryRoot(
    auth::AuthQuery,
    patients::PatientQuery,
    chart::ChartQuery,
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
pub fn schema(state: Option<AppState>) -> ApiSchema {
    let (depth, complexity) =
        state.as_ref().map_or((12, 2000), |s| (s.config.max_depth, s.config.max_complexity));
    let mut b = Schema::build(QueryRoot::default(), MutationRoot::default(), updates::SubscriptionRoot)
        .limit_depth(depth)
        .limit_complexity(complexity)
        .limit_recursive_depth(32)
        .limit_directives(8);
    if let Some(state) = state {
        b = b.data(state);
    }
    b.finish()
}

/// The SDL as committed in `schema/chartledger.graphql`.
pub fn sdl() -> String {
    schema(None).sdl()
}
