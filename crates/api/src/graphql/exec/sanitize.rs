//! Errors raised by the GraphQL library itself (parsing, validation, limits) carry no
//! code of ours and may quote what the client sent (a string literal in a query can be a
//! patient's name). [`Sanitized`], on every request and every subscription message,
//! gives them the stable code `graphql.invalid_request` and a generic message; locations
//! and paths stay, and clients validate against the committed SDL. The fixed limit
//! messages ("Query is nested too deep.", "Query is too complex.") quote nothing and stay,
//! with the codes `graphql.too_deep` and `graphql.too_complex`.
//!
//! Before the library sees a request, [`super::guard`] refuses documents nested or
//! expanding beyond the limits (the library's own checks could crash or stall a worker).
//!
//! It wraps the schema as an [`Executor`] rather than being a schema extension: with any
//! extension installed, async-graphql routes every field of every response through the
//! extension chain (two registry look-ups and a boxed future per field).

use std::future::Future;
use std::sync::Arc;

use async_graphql::parser::types::{DocumentOperations, OperationType};
use async_graphql::{Data, Executor, Pos, Request, Response, ServerError};
use futures::stream::BoxStream;
use futures::StreamExt;

use super::guard::{self, Limits, Refusal};
use super::parsed::ParsedQueries;
use crate::error::ApiError;
use crate::graphql::ApiSchema;

/// The schema, answering requests and subscription messages with sanitized errors, and
/// parsing each query text once ([`ParsedQueries`]). Serve this, never the bare schema.
#[derive(Clone)]
pub struct Sanitized {
    schema: ApiSchema,
    parsed: Arc<ParsedQueries>,
    limits: Limits,
}

impl Sanitized {
    /// `limits` must be the schema's own depth and complexity limits.
    pub fn new(schema: ApiSchema, limits: Limits) -> Self {
        Self { schema, parsed: Arc::new(ParsedQueries::default()), limits }
    }

    /// Give `request` its parsed document (kept or parsed now; the latter is returned for
    /// [`ParsedQueries::keep`]), unless [`guard`] refuses it. A text that does not parse
    /// is left to the schema, which refuses it.
    fn prepare(&self, request: &mut Request) -> Result<Option<super::parsed::Fresh>, Refusal> {
        guard::scan_nesting(&request.query, guard::MAX_NESTING)?;
        let fresh = self.parsed.prepare(request);
        if let Ok(doc) = request.parsed_query() {
            guard::check_cost(doc, self.limits)?;
        }
        Ok(fresh)
    }
}

fn refused(r: Refusal) -> Response {
    Response::from_errors(vec![r.into_server_error()])
}

impl std::fmt::Debug for Sanitized {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sanitized")
    }
}

impl Executor for Sanitized {
    fn execute(&self, mut request: Request) -> impl Future<Output = Response> + Send {
        let prepared = self.prepare(&mut request);
        let (schema, parsed) = (self.schema.clone(), self.parsed.clone());
        async move {
            let fresh = match prepared {
                Ok(fresh) => fresh,
                Err(r) => return refused(r),
            };
            let mut response = schema.execute(request).await;
            // Errors of the library (parsing, validation, limits) have no code of ours;
            // a request without any passed validation, and its document is kept.
            if let Some(fresh) = fresh.filter(|_| response.errors.iter().all(has_code)) {
                parsed.keep(fresh);
            }
            sanitize(&mut response.errors);
            response
        }
    }

    /// Subscriptions (over WebSocket). Queries and mutations are refused there: the HTTP
    /// handler is what writes a request's access events before its response, and a query
    /// over the socket would return PHI without them.
    fn execute_stream(
        &self,
        mut request: Request,
        session_data: Option<Arc<Data>>,
    ) -> BoxStream<'static, Response> {
        // Subscriptions use documents kept by requests; they keep none themselves.
        if let Err(r) = self.prepare(&mut request) {
            return futures::stream::once(async move { refused(r) }).boxed();
        }
        if runs_other_than_a_subscription(&mut request) {
            let err: async_graphql::Error =
                ApiError::InvalidInput { code: "graphql.subscriptions_only" }.into();
            let refused = Response::from_errors(vec![err.into_server_error(Pos::default())]);
            return futures::stream::once(async move { refused }).boxed();
        }
        Executor::execute_stream(&self.schema, request, session_data)
            .map(|mut response| {
                sanitize(&mut response.errors);
                response
            })
            .boxed()
    }
}

/// Whether the request names (or is) a query or a mutation. A document that does not
/// parse, or does not say which operation to run, is left to the schema, which refuses it
/// with a sanitized error.
fn runs_other_than_a_subscription(request: &mut Request) -> bool {
    let name = request.operation_name.clone();
    let Ok(doc) = request.parsed_query() else { return false };
    let op = match (&doc.operations, name) {
        (DocumentOperations::Single(op), _) => Some(op),
        (DocumentOperations::Multiple(ops), Some(n)) => {
            ops.iter().find(|(k, _)| k.as_str() == n).map(|(_, op)| op)
        }
        (DocumentOperations::Multiple(ops), None) if ops.len() == 1 => ops.values().next(),
        (DocumentOperations::Multiple(_), None) => None,
    };
    op.is_some_and(|op| op.node.ty != OperationType::Subscription)
}

fn has_code(e: &ServerError) -> bool {
    e.extensions.as_ref().is_some_and(|x| x.get("code").is_some())
}

fn sanitize(errors: &mut [ServerError]) {
    for e in errors {
        if has_code(e) {
            continue;
        }
        let code = if e.message.starts_with("Query is nested too deep") {
            Refusal::TooDeep.code()
        } else if e.message.starts_with("Query is too complex") {
            Refusal::TooComplex.code()
        } else {
            e.message = "invalid request".into();
            "graphql.invalid_request"
        };
        let mut ext = e.extensions.take().unwrap_or_default();
        ext.set("code", code);
        e.extensions = Some(ext);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sanitized() -> Sanitized {
        Sanitized::new(crate::graphql::schema(None), crate::graphql::DEFAULT_LIMITS)
    }

    #[tokio::test]
    async fn a_kept_document_still_runs_with_each_requests_own_variables() {
        let s = sanitized();
        let q = "query($v: Boolean!, $n: String!) { __type(name: $n) @include(if: $v) { name } }";
        let run = |v: bool, n: &'static str| {
            let s = s.clone();
            async move {
                let vars = async_graphql::Variables::from_json(serde_json::json!({ "v": v, "n": n }));
                let r = Executor::execute(&s, Request::new(q).variables(vars)).await;
                assert!(r.errors.is_empty(), "{:?}", r.errors);
                r.data.into_json().ok().map(|d| d.to_string())
            }
        };
        assert_eq!(run(true, "QueryRoot").await.as_deref(), Some(r#"{"__type":{"name":"QueryRoot"}}"#));
        assert_eq!(s.parsed.len(), 1, "kept once it passed validation");
        assert_eq!(run(false, "QueryRoot").await.as_deref(), Some("null"), "skipped by this request only");
        assert_eq!(run(true, "MutationRoot").await.as_deref(), Some(r#"{"__type":{"name":"MutationRoot"}}"#));
        assert_eq!(s.parsed.hits(), 2);
    }

    #[tokio::test]
    async fn a_refused_document_is_refused_every_time_and_never_kept() {
        let s = sanitized();
        // Unbalanced: does not parse.
        let broken = "{ __schema { types { fields { type { ofType { ofType { ofType { ofType { ofType { \
                    ofType { ofType { ofType { name } } } } } } } } } } } }";
        // 13 fields deep, one more than the limit.
        let too_deep = "{ __schema { types { fields { type { ofType { ofType { ofType { ofType { ofType { \
                    ofType { ofType { ofType { name } } } } } } } } } } } } }";
        let missing = "{ noSuchField }";
        let cases = [
            (broken, "graphql.invalid_request"),
            (too_deep, "graphql.too_deep"),
            (missing, "graphql.invalid_request"),
        ];
        for (q, want) in cases.repeat(2) {
            let r = Executor::execute(&s, Request::new(q)).await;
            assert_eq!(r.errors.len(), 1, "{q}");
            let code = r.errors[0].extensions.as_ref().and_then(|x| x.get("code").cloned());
            assert_eq!(code, Some(async_graphql::Value::from(want)));
        }
        assert!(s.parsed.is_empty());
        assert_eq!(s.parsed.hits(), 0);
    }

    #[test]
    fn only_subscriptions_run_over_the_socket() {
        let q = |query: &str, name: Option<&str>| {
            let mut r = Request::new(query);
            if let Some(n) = name {
                r = r.operation_name(n);
            }
            runs_other_than_a_subscription(&mut r)
        };
        assert!(q("query($p: UUID!) { chart(patientId: $p) { patientId } }", None));
        assert!(q("{ me { userId } }", None));
        assert!(q("mutation { logout }", None));
        assert!(q("query A { me { userId } } subscription B { x }", Some("A")));
        assert!(!q("query A { me { userId } } subscription B { x }", Some("B")));
        assert!(!q("subscription { chartUpdates(patientId: 1) { position } }", None));
        assert!(!q("query A { a } query B { b }", None), "ambiguous: the schema refuses it");
        assert!(!q("subscription {", None), "unparsable: the schema refuses it");
    }
}
