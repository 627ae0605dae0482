//! Reading a GraphQL request from an HTTP request: the body must be `application/json`
//! (GraphQL over HTTP), one operation, parsed by `serde_json` (whose recursion limit
//! bounds nested variables). Multipart bodies (file uploads, which no field takes) and
//! batches are refused. A refusal names a stable code and never quotes the body.

use axum::http::{header, HeaderMap, StatusCode};

use super::errors::HttpError;

pub const UNSUPPORTED_MEDIA_TYPE: HttpError = HttpError::new(
    StatusCode::UNSUPPORTED_MEDIA_TYPE,
    "http.unsupported_media_type",
    "send the request as application/json",
);
pub const INVALID_JSON: HttpError =
    HttpError::new(StatusCode::BAD_REQUEST, "http.invalid_json", "the body is not a GraphQL request in JSON");

/// The credentials of an `Authorization` header value: the `Bearer` scheme, in any case
/// (RFC 9110 §11.1), then the token. `None` for any other scheme or an empty token.
pub fn bearer_token(value: &str) -> Option<&str> {
    let value = value.trim_start();
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The GraphQL request in a `POST /graphql` body.
pub fn graphql_request(headers: &HeaderMap, body: &[u8]) -> Result<async_graphql::Request, HttpError> {
    let media = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let essence = media.split(';').next().unwrap_or("").trim();
    if !essence.eq_ignore_ascii_case("application/json") {
        return Err(UNSUPPORTED_MEDIA_TYPE);
    }
    serde_json::from_slice::<async_graphql::Request>(body).map_err(|_| INVALID_JSON)
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(ct: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
        h
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer abc"), Some("abc"));
        assert_eq!(bearer_token("BEARER  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("Bearerabc"), None);
        assert_eq!(bearer_token("abc"), None);
    }

    #[test]
    fn only_json_bodies_with_one_request_are_read() {
        let ok =
            graphql_request(&headers("application/json; charset=utf-8"), br#"{"query":"{ me { userId } }"}"#);
        assert_eq!(ok.map(|r| r.query).ok().as_deref(), Some("{ me { userId } }"));
        let multipart = graphql_request(&headers("multipart/form-data; boundary=x"), b"--x");
        assert_eq!(multipart.err(), Some(UNSUPPORTED_MEDIA_TYPE));
        assert_eq!(graphql_request(&HeaderMap::new(), b"{}").err(), Some(UNSUPPORTED_MEDIA_TYPE));
        for bad in [&b"{\"query\": \"Secretname"[..], b"[{\"query\":\"{a}\"}]", b"{\"query\": 5}", b"\xff"] {
            assert_eq!(graphql_request(&headers("application/json"), bad).err(), Some(INVALID_JSON));
        }
        let deep = format!(
            "{{\"query\":\"{{a}}\",\"variables\":{{\"v\":{}1{}}}}}",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert_eq!(graphql_request(&headers("application/json"), deep.as_bytes()).err(), Some(INVALID_JSON));
    }
}
