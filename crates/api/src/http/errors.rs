//! One shape for every HTTP error: a GraphQL-style JSON body
//! `{"errors":[{"message":…,"extensions":{"code":…}}]}` with a stable code and a fixed
//! message, whatever produced it (a handler, the body limit, the timeout, the router).
//! Nothing from the request is ever echoed: the libraries' own rejection texts quote
//! input (a multipart map, a JSON fragment) and are replaced.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// An HTTP-level refusal, before any GraphQL runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: &'static str,
}

impl HttpError {
    pub const fn new(status: StatusCode, code: &'static str, message: &'static str) -> Self {
        Self { status, code, message }
    }

    /// The error answering a bare status (a library's rejection, a layer's refusal).
    pub fn for_status(status: StatusCode) -> Self {
        let (code, message) = match status {
            StatusCode::BAD_REQUEST => ("http.bad_request", "the request could not be read"),
            StatusCode::UNAUTHORIZED => ("auth.unauthenticated", "authentication required"),
            StatusCode::FORBIDDEN => ("authz.forbidden", "not allowed"),
            StatusCode::NOT_FOUND => ("http.not_found", "not found"),
            StatusCode::METHOD_NOT_ALLOWED => ("http.method_not_allowed", "method not allowed; use POST"),
            StatusCode::REQUEST_TIMEOUT => ("http.timeout", "the request took too long"),
            StatusCode::PAYLOAD_TOO_LARGE => ("http.body_too_large", "the request body is too large"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                ("http.unsupported_media_type", "send the request as application/json")
            }
            StatusCode::SERVICE_UNAVAILABLE => ("http.unavailable", "the service is unavailable"),
            s if s.is_client_error() => ("http.bad_request", "the request could not be read"),
            _ => ("http.internal", "internal error"),
        };
        Self::new(status, code, message)
    }

    pub fn body(&self) -> String {
        serde_json::json!({ "errors": [{ "message": self.message, "extensions": { "code": self.code } }] })
            .to_string()
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        (self.status, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], self.body())
            .into_response()
    }
}

/// Outermost response mapping: an error status whose body is not already JSON of ours
/// (plain text from a rejection, an empty 404, 408 or 413) gets the common shape.
/// Headers such as `Allow` stay; the body and its length are replaced.
pub async fn json_errors(resp: Response) -> Response {
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) || is_json(&resp) {
        return resp;
    }
    let (mut parts, _) = resp.into_parts();
    let err = HttpError::for_status(status);
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Response::from_parts(parts, axum::body::Body::from(err.body()))
}

fn is_json(resp: &Response) -> bool {
    resp.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_gets_a_stable_code_and_a_fixed_message() {
        for s in [400u16, 401, 403, 404, 405, 408, 413, 415, 418, 422, 500, 502, 503] {
            let status = StatusCode::from_u16(s).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let e = HttpError::for_status(status);
            assert!(e.code.contains('.'), "{s}: {}", e.code);
            let body: serde_json::Value = serde_json::from_str(&e.body()).unwrap_or_default();
            assert_eq!(body["errors"][0]["extensions"]["code"], e.code);
        }
    }
}
