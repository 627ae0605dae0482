//! Errors raised by the GraphQL library itself (parsing, validation, limits) carry no
//! code of ours and may quote what the client sent (a string literal in a query can be a
//! patient's name). This extension, on every request and every subscription message,
//! gives them the stable code `graphql.invalid_request` and a generic message; locations
//! and paths stay, and clients validate against the committed SDL. The fixed limit
//! messages ("Query is nested too deep.", "Query is too complex.") quote nothing and stay.

use std::sync::Arc;

use async_graphql::extensions::{Extension, ExtensionContext, ExtensionFactory, NextRequest, NextSubscribe};
use async_graphql::{Response, ServerError};
use futures::stream::BoxStream;
use futures::StreamExt;

#[derive(Debug)]
pub struct Sanitize;

impl ExtensionFactory for Sanitize {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(Sanitize)
    }
}

#[async_graphql::async_trait::async_trait]
impl Extension for Sanitize {
    async fn request(&self, ctx: &ExtensionContext<'_>, next: NextRequest<'_>) -> Response {
        let mut response = next.run(ctx).await;
        sanitize(&mut response.errors);
        response
    }

    fn subscribe<'s>(
        &self,
        ctx: &ExtensionContext<'_>,
        stream: BoxStream<'s, Response>,
        next: NextSubscribe<'_>,
    ) -> BoxStream<'s, Response> {
        next.run(ctx, stream)
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
