//! Errors raised by the GraphQL library itself (parsing, validation, limits) carry no
//! code of ours and may quote what the client sent (a string literal in a query can be a
//! patient's name). [`Sanitized`], on every request and every subscription message,
//! gives them the stable code `graphql.invalid_request` and a generic message; locations
//! and paths stay, and clients validate against the committed SDL. The fixed limit
//! messages ("Query is nested too deep.", "Query is too complex.") quote nothing and stay.
//!
//! It wraps the schema as an [`Executor`] rather than being a schema extension: with any
//! extension installed, async-graphql routes every field of every response through the
//! extension chain (two registry look-ups and a boxed future per field).

use std::future::Future;
use std::sync::Arc;

use async_graphql::{Data, Executor, Request, Response, ServerError};
use futures::stream::BoxStream;
use futures::StreamExt;

use super::ApiSchema;

/// The schema, answering requests and subscription messages with sanitized errors. Serve
/// this, never the bare schema.
#[derive(Clone)]
pub struct Sanitized(pub ApiSchema);

impl std::fmt::Debug for Sanitized {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sanitized")
    }
}

impl Executor for Sanitized {
    fn execute(&self, request: Request) -> impl Future<Output = Response> + Send {
        let schema = self.0.clone();
        async move {
            let mut response = schema.execute(request).await;
            sanitize(&mut response.errors);
            response
        }
    }

    fn execute_stream(
        &self,
        request: Request,
        session_data: Option<Arc<Data>>,
    ) -> BoxStream<'static, Response> {
        Executor::execute_stream(&self.0, request, session_data)
            .map(|mut response| {
                sanitize(&mut response.errors);
                response
            })
            .boxed()
    }
}

fn sanitize(errors: &mut [ServerError]) {
    for e in errors {
        if e.extensions.as_ref().is_some_and(|x| x.get("code").is_some()) {
            continue;
        }
        if !e.message.starts_with("Query is") {
            e.message = "invalid request".into();
        }
        let mut ext = e.extensions.take().unwrap_or_default();
        ext.set("code", "graphql.invalid_request");
        e.extensions = Some(ext);
    }
}
