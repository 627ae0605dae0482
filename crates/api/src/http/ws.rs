//! Subscriptions over WebSocket (`/graphql/ws`, graphql-transport-ws or the older
//! graphql-ws protocol). The bearer token comes in the `connection_init` payload
//! (`{"authorization": "Bearer …"}`), never in the URL.
//!
//! A refused `connection_init` closes the socket with the protocol's codes, which the
//! library does not use (it closes with 1002 and the error's text): **4401** when there
//! is no valid session, **4403** when the session may not subscribe yet (second factor
//! or password change pending). Any other close the library makes with 1002 (a message
//! that is not valid JSON of the protocol) becomes **4400** with a fixed reason, since
//! the library's reason quotes the offending input.

use std::net::SocketAddr;

use async_graphql::http::ALL_WEBSOCKET_PROTOCOLS;
use async_graphql::Data;
use async_graphql_axum::{GraphQLProtocol, GraphQLWebSocket};
use axum::extract::ws::{CloseFrame, Message, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};

use super::errors::HttpError;
use super::request::bearer_token;
use super::{client_info, declared_purpose, Http};
use crate::access::RequestCtx;
use crate::error::ApiError;

/// Close codes of graphql-transport-ws.
pub const CLOSE_BAD_MESSAGE: u16 = 4400;
pub const CLOSE_UNAUTHENTICATED: u16 = 4401;
pub const CLOSE_FORBIDDEN: u16 = 4403;

pub(super) async fn graphql_ws(
    State(h): State<Http>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    protocol: GraphQLProtocol,
    upgrade: WebSocketUpgrade,
) -> Response {
    let state = h.state.clone();
    let client = client_info(&state, &headers, peer);
    // A purpose the server does not know is refused, never replaced by the role's
    // default (which could skip a consent check the client meant to be subject to).
    let Ok(declared_purpose) = declared_purpose(&headers) else {
        return HttpError::new(StatusCode::BAD_REQUEST, "request.bad_purpose", "unknown purpose of use")
            .into_response();
    };
    upgrade.protocols(ALL_WEBSOCKET_PROTOCOLS).on_upgrade(move |socket| {
        let (sink, stream) = socket.split();
        let sink = sink.with(|m: Message| futures::future::ready(Ok::<_, axum::Error>(protocol_close(m))));
        GraphQLWebSocket::new_with_pair(sink, stream, h.schema.clone(), protocol)
            .on_connection_init(move |payload| async move {
                let token = payload.get("authorization").and_then(|v| v.as_str()).map(|v| {
                    // The scheme may be left out here; a token never contains a space.
                    bearer_token(v).unwrap_or(v.trim()).to_owned()
                });
                let principal = match token {
                    Some(t) => state.auth.authenticate(&t).await,
                    None => Err(ApiError::Unauthenticated),
                };
                let ctx = RequestCtx::new(principal, client, declared_purpose);
                // The reason is one of our codes; `protocol_close` maps it to 4401/4403.
                if let Err(e) = ctx.principal() {
                    return Err(async_graphql::Error::new(e.code()));
                }
                let mut data = Data::default();
                data.insert(std::sync::Arc::new(ctx));
                Ok(data)
            })
            .serve()
    })
}

/// The close the client sees for one the library makes.
fn protocol_close(m: Message) -> Message {
    let Message::Close(Some(frame)) = m else { return m };
    if frame.code != 1002 {
        return Message::Close(Some(frame));
    }
    let (code, reason) = match frame.reason.as_str() {
        "auth.unauthenticated" | "auth.session_expired" => (CLOSE_UNAUTHENTICATED, frame.reason.as_str()),
        "auth.mfa_required" | "auth.password_change_required" => (CLOSE_FORBIDDEN, frame.reason.as_str()),
        _ => (CLOSE_BAD_MESSAGE, "graphql.invalid_message"),
    };
    Message::Close(Some(CloseFrame { code, reason: reason.to_owned().into() }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(code: u16, reason: &str) -> Message {
        Message::Close(Some(CloseFrame { code, reason: reason.to_owned().into() }))
    }

    fn parts(m: Message) -> Option<(u16, String)> {
        match m {
            Message::Close(Some(f)) => Some((f.code, f.reason.as_str().to_owned())),
            _ => None,
        }
    }

    #[test]
    fn refusals_close_with_the_protocols_codes_and_never_quote_input() {
        assert_eq!(parts(protocol_close(close(1002, "auth.unauthenticated"))).map(|p| p.0), Some(4401));
        assert_eq!(parts(protocol_close(close(1002, "auth.session_expired"))).map(|p| p.0), Some(4401));
        assert_eq!(parts(protocol_close(close(1002, "auth.mfa_required"))).map(|p| p.0), Some(4403));
        let bad = parts(protocol_close(close(1002, "invalid type: string \"Secretname\"")));
        assert_eq!(bad, Some((4400, "graphql.invalid_message".to_owned())));
        assert_eq!(parts(protocol_close(close(4408, "timeout"))), Some((4408, "timeout".to_owned())));
        assert!(matches!(protocol_close(Message::Text("x".into())), Message::Text(_)));
    }
}
