//! Subscriptions over WebSocket (graphql-ws and graphql-transport-ws): a notification
//! when a patient's chart changes. A notification carries ids and positions only, no
//! record content: the client reads the chart (with `minPosition`), which is audited
//! like any read. Subscribing is itself an audited access; each notification re-checks
//! that the session is still live (automatic logoff ends the stream) and that the
//! subscriber may still see the record.

use std::sync::Arc;

use async_graphql::{Context, SimpleObject, Subscription};
use domain::streams;
use futures::Stream;
use store::Direction;
use uuid::Uuid;

use crate::access::{authorize, parts, recheck, RequestCtx};
use crate::error::{ApiError, ApiResult};
use crate::policy::Operation;

#[derive(SimpleObject, Clone, Debug)]
pub struct ChartUpdate {
    pub patient_id: Uuid,
    /// The global position of the change: pass it as `minPosition` when reading.
    pub position: u64,
    pub revision: u64,
    pub event_type: String,
}

#[derive(Debug, Default)]
pub struct SubscriptionRoot;

#[Subscription]
impl SubscriptionRoot {
    /// Changes to a patient's chart from now on.
    async fn chart_updates(
        &self,
        ctx: &Context<'_>,
        patient_id: Uuid,
    ) -> async_graphql::Result<impl Stream<Item = ApiResult<ChartUpdate>>> {
        let (state, req) = parts(ctx)?;
        authorize(ctx, Operation::ReadClinical, Some(patient_id)).await?;
        req.collector.flush(state, req).await?;
        let req: Arc<RequestCtx> = ctx.data::<Arc<RequestCtx>>()?.clone();
        let state = state.clone();
        let stream = streams::patient(patient_id);
        let last = state
            .store
            .read_stream(&stream, u64::MAX, Direction::Backwards, 1)
            .await
            .map_err(ApiError::from)?;
        let from = last.first().map_or(0, |e| e.event.stream_revision() + 1);
        let sub = state.store.subscribe_stream(stream, from);
        Ok(futures::stream::unfold(Some((sub, state, req)), move |st| async move {
            let (mut sub, state, req) = st?;
            let event = match sub.next().await? {
                Ok(e) => e,
                Err(e) => return Some((Err(ApiError::from(e)), None)),
            };
            // Let the read models catch up first: the client's read must find the change,
            // and the access check must see it (a removal from the care team included).
            let _ = state.projections.wait_for(event.position, state.config.max_wait).await;
            if let Err(e) = recheck(&state, &req, Operation::ReadClinical, patient_id).await {
                return Some((Err(e), None));
            }
            let update = ChartUpdate {
                patient_id,
                position: event.position,
                revision: event.event.stream_revision(),
                event_type: event.event.body().event_type.as_str().to_owned(),
            };
            Some((Ok(update), Some((sub, state, req))))
        }))
    }
}
