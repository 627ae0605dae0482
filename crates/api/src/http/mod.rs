//! The HTTP surface: `POST /graphql` (bearer token in the `Authorization` header, never
//! in the URL), subscriptions at `/graphql/ws` ([`ws`]), `/healthz`, `/readyz`, and, where
//! the configuration turns them on, `/metrics` and GraphiQL at `/`. Request bodies and
//! times are limited; security headers on every response; every error, whatever
//! produced it, has one JSON shape with a stable code ([`errors`]).
//!
//! The access events a request collected are written before its response is returned:
//! if that write fails, the client gets `audit.unavailable` and no data (fail closed).

mod errors;
mod request;
mod ws;

use std::net::SocketAddr;
use std::time::Instant;

use async_graphql::dataloader::DataLoader;
use async_graphql::http::GraphiQLSource;
use async_graphql_axum::GraphQLResponse;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use base64::Engine as _;
use domain::events::PurposeOfUse;
use sha2::Digest as _;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::timeout::TimeoutLayer;

use crate::access::RequestCtx;
use crate::auth::ClientInfo;
use crate::error::ApiError;
use crate::graphql;
use crate::graphql::exec::sanitize::Sanitized;
use crate::graphql::types::UserNames;
use crate::AppState;

pub use errors::HttpError;
pub use request::bearer_token;
pub use ws::{CLOSE_BAD_MESSAGE, CLOSE_FORBIDDEN, CLOSE_UNAUTHENTICATED};

#[derive(Clone)]
struct Http {
    state: AppState,
    schema: Sanitized,
}

/// The application's router. Serve it with `into_make_service_with_connect_info::<SocketAddr>()`.
pub fn router(state: AppState, tls: bool) -> Router {
    let schema = graphql::executor(state.clone());
    let config = state.config.clone();
    let mut app = Router::new()
        .route("/graphql", get(graphiql_or_405).post(graphql_handler))
        .route("/graphql/ws", get(ws::graphql_ws))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz));
    if config.metrics {
        app = app.route("/metrics", get(metrics));
    }
    if config.graphiql {
        app = app.route("/", get(graphiql));
    }
    let mut app = app
        .with_state(Http { state, schema })
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .layer(RequestBodyLimitLayer::new(config.max_body_bytes))
        .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, config.request_timeout))
        .layer(axum::middleware::map_response(errors::json_errors))
        .layer(SetResponseHeaderLayer::overriding(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ))
        .layer(SetResponseHeaderLayer::overriding(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
        ));
    if tls {
        app = app.layer(SetResponseHeaderLayer::overriding(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000; includeSubDomains"),
        ));
    }
    app
}

/// GraphiQL (development only). Its page loads React and GraphiQL from unpkg.com; the
/// page's Content-Security-Policy admits scripts from there and its own inline scripts
/// by hash, and nothing else.
async fn graphiql() -> Response {
    let html = GraphiQLSource::build().endpoint("/graphql").subscription_endpoint("/graphql/ws").finish();
    let hashes: String = inline_scripts(&html)
        .map(|script| {
            let digest = sha2::Sha256::digest(script.as_bytes());
            format!(" 'sha256-{}'", base64::engine::general_purpose::STANDARD.encode(digest))
        })
        .collect();
    let csp = format!(
        "default-src 'none'; script-src https://unpkg.com{hashes}; style-src https://unpkg.com 'unsafe-inline'; \
         font-src https://unpkg.com data:; img-src 'self' data: https://unpkg.com; connect-src 'self'; \
         frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    );
    let mut resp = Html(html).into_response();
    if let Ok(v) = HeaderValue::from_str(&csp) {
        resp.headers_mut().insert(header::CONTENT_SECURITY_POLICY, v);
    }
    resp
}

/// The contents of the `<script>` elements without a `src`.
fn inline_scripts(html: &str) -> impl Iterator<Item = &str> {
    html.split("<script").skip(1).filter_map(|rest| {
        let (attrs, rest) = rest.split_once('>')?;
        let (body, _) = rest.split_once("</script>")?;
        (!attrs.contains("src=")).then_some(body)
    })
}

async fn graphiql_or_405() -> Response {
    // Queries in a URL would put PHI in URLs (and proxy logs): GET is not served.
    HttpError::for_status(StatusCode::METHOD_NOT_ALLOWED).into_response()
}

async fn readyz(State(h): State<Http>) -> Response {
    match sqlx::query("SELECT 1").execute(h.state.store.pool()).await {
        Ok(_) => "ready".into_response(),
        Err(_) => HttpError::for_status(StatusCode::SERVICE_UNAVAILABLE).into_response(),
    }
}

async fn metrics(State(h): State<Http>) -> Response {
    if let Ok(lag) = h.state.projections.lag().await {
        h.state.metrics.projection_lag.set(i64::try_from(lag).unwrap_or(i64::MAX));
    }
    h.state.metrics.store_writer(h.state.store.writer_stats());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], h.state.metrics.render()).into_response()
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The purpose of use the client declared in `X-Purpose-Of-Use`, if any.
fn declared_purpose(headers: &HeaderMap) -> Result<Option<PurposeOfUse>, ApiError> {
    header_str(headers, "x-purpose-of-use")
        .map(|v| {
            serde_json::from_value::<PurposeOfUse>(serde_json::Value::String(v.to_owned()))
                .map_err(|_| ApiError::InvalidInput { code: "request.bad_purpose" })
        })
        .transpose()
}

fn client_info(state: &AppState, headers: &HeaderMap, peer: SocketAddr) -> ClientInfo {
    let forwarded = state
        .config
        .trust_forwarded_for
        .then(|| header_str(headers, "x-forwarded-for"))
        .flatten()
        .and_then(|v| v.split(',').next())
        .map(|s| clean(s, 64))
        .filter(|s| !s.is_empty());
    ClientInfo {
        addr: Some(forwarded.unwrap_or_else(|| peer.ip().to_string())),
        // Whatever a client sends here must not be able to make the audit write fail.
        user_agent: header_str(headers, "user-agent").map(|s| clean(s, 512)).filter(|s| !s.is_empty()),
    }
}

/// Printable characters only, trimmed, at most `max` of them.
fn clean(s: &str, max: usize) -> String {
    s.chars().filter(|c| !c.is_control()).take(max).collect::<String>().trim().to_owned()
}

async fn graphql_handler(
    State(h): State<Http>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let state = &h.state;
    let req = match request::graphql_request(&headers, &body) {
        Ok(req) => req,
        Err(e) => {
            state.metrics.request(e.code, started.elapsed().as_secs_f64());
            return e.into_response();
        }
    };
    let principal = match header_str(&headers, "authorization").and_then(bearer_token) {
        Some(token) => state.auth.authenticate(token).await,
        None => Err(ApiError::Unauthenticated),
    };
    let declared_purpose = match declared_purpose(&headers) {
        Ok(p) => p,
        Err(e) => return error_response(state, started, e),
    };
    let ctx =
        std::sync::Arc::new(RequestCtx::new(principal, client_info(state, &headers, peer), declared_purpose));
    let loader = DataLoader::new(UserNames(state.read.clone()), tokio::spawn);
    let response = async_graphql::Executor::execute(&h.schema, req.data(ctx.clone()).data(loader)).await;
    match ctx.collector.flush(state, &ctx).await {
        Ok(n) => state.metrics.access_events(true, n),
        Err(e) => {
            state.metrics.access_events(false, 1);
            return error_response(state, started, e);
        }
    }
    let outcome = if response.errors.is_empty() { "ok" } else { "error" };
    state.metrics.request(outcome, started.elapsed().as_secs_f64());
    GraphQLResponse::from(response).into_response()
}

fn error_response(state: &AppState, started: Instant, e: ApiError) -> Response {
    state.metrics.request(e.code(), started.elapsed().as_secs_f64());
    let err: async_graphql::Error = e.into();
    let resp =
        async_graphql::Response::from_errors(vec![err.into_server_error(async_graphql::Pos::default())]);
    GraphQLResponse::from(resp).into_response()
}
