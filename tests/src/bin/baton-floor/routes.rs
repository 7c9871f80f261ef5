//! The floor's HTTP surface: the issuer's three paths on a bare axum router (no
//! middleware, no fallback), handlers that read parameters from the raw body and hand
//! the cryptography to [`crate::jws`].

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Extension, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum_server::tls::TlsInfo;
use baton_proto::claims::MAX_BATCH_COUNT;
use baton_proto::metadata::{INTROSPECT_PATH, METADATA_PATH, TOKEN_PATH};

use crate::jws::{Caller, Minter, Request, TTL_SECS};

/// What every handler shares.
pub(crate) struct Floor {
    caller: Caller,
    minter: Minter,
    /// The RFC 8414 document, serialized once.
    metadata: String,
}

impl Floor {
    pub(crate) fn new(issuer: String, caller: Caller, minter: Minter) -> Self {
        let metadata = serde_json::json!({
            "issuer": issuer,
            "token_endpoint": format!("{issuer}{TOKEN_PATH}"),
            "introspection_endpoint": format!("{issuer}{INTROSPECT_PATH}"),
        })
        .to_string();
        Self {
            caller,
            minter,
            metadata,
        }
    }
}

pub(crate) fn app(floor: Floor) -> Router {
    Router::new()
        .route(TOKEN_PATH, post(token))
        .route(INTROSPECT_PATH, post(introspect))
        .route(METADATA_PATH, get(metadata))
        .with_state(Arc::new(floor))
}

/// The raw value of form parameter `name` (`name=value` at the start of the body or
/// after `&`), undecoded.
fn param<'a>(body: &'a [u8], name: &str) -> Option<&'a [u8]> {
    body.split(|b| *b == b'&').find_map(|pair| {
        pair.strip_prefix(name.as_bytes())
            .and_then(|rest| rest.strip_prefix(b"="))
    })
}

/// `application/x-www-form-urlencoded` decoding of one value (`+`, `%XX`).
fn form_decode(raw: &[u8]) -> Option<String> {
    let mut out = Vec::with_capacity(raw.len());
    let mut bytes = raw.iter();
    while let Some(&b) = bytes.next() {
        out.push(match b {
            b'+' => b' ',
            b'%' => {
                let hex = [*bytes.next()?, *bytes.next()?];
                u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?
            }
            b => b,
        });
    }
    String::from_utf8(out).ok()
}

fn json(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// As the issuer's answers carrying tokens or their claims: RFC 6749 §5.1, never cached.
fn no_store(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

fn error(status: StatusCode, code: &str, description: &str) -> Response {
    json(
        status,
        serde_json::json!({"error": code, "error_description": description}).to_string(),
    )
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The client certificate of the connection (its leaf), if one was presented.
fn leaf(tls: Option<&TlsInfo>) -> Option<&[u8]> {
    tls?.peer_certificates.first().map(Vec::as_slice)
}

async fn token(
    State(floor): State<Arc<Floor>>,
    tls: Option<Extension<Arc<TlsInfo>>>,
    body: Bytes,
) -> Response {
    let count = match param(&body, "count") {
        None => 1,
        Some(raw) => match std::str::from_utf8(raw).ok().and_then(|s| s.parse().ok()) {
            Some(n) if (1..=MAX_BATCH_COUNT).contains(&n) => n,
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "count must be between 1 and 64",
                );
            }
        },
    };
    let Some(audience) = param(&body, "audience").and_then(form_decode) else {
        return error(StatusCode::BAD_REQUEST, "invalid_request", "no audience");
    };
    let leaf = match param(&body, "client_assertion") {
        // JWS characters (base64url and '.') need no form decoding.
        Some(assertion) if floor.caller.verifies(assertion) => None,
        Some(_) => {
            return error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "the client assertion's signature does not verify",
            );
        }
        None => match leaf(tls.as_deref().map(Arc::as_ref)) {
            Some(leaf) => Some(leaf),
            None => {
                return error(
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    "no client assertion and no client certificate",
                );
            }
        },
    };
    let minted = floor.minter.mint(&Request {
        audience: &audience,
        leaf,
        count,
        now: unix_now(),
    });
    let Some(tokens) = minted else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "minting failed",
        );
    };
    // Tokens are base64url and dots: nothing to escape.
    let mut body =
        String::with_capacity(tokens.iter().map(|t| 2 * t.len() + 4).sum::<usize>() + 80);
    body.push_str(r#"{"access_token":""#);
    body.push_str(tokens.first().map_or("", String::as_str));
    body.push_str(r#"","token_type":"Bearer","expires_in":"#);
    body.push_str(&TTL_SECS.to_string());
    if tokens.len() > 1 {
        body.push_str(r#","access_tokens":["#);
        for (i, t) in tokens.iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            body.push('"');
            body.push_str(t);
            body.push('"');
        }
        body.push(']');
    }
    body.push('}');
    no_store(json(StatusCode::OK, body))
}

async fn introspect(
    State(floor): State<Arc<Floor>>,
    tls: Option<Extension<Arc<TlsInfo>>>,
    body: Bytes,
) -> Response {
    if leaf(tls.as_deref().map(Arc::as_ref)).is_none() {
        return error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "introspection needs a client certificate",
        );
    }
    let claims = param(&body, "token").and_then(|t| floor.minter.claims_of(t));
    let answer = match claims {
        // The floor's own JSON object: its members follow "active" as they are.
        Some(c) if c.len() > 2 && c.first() == Some(&b'{') && c.last() == Some(&b'}') => {
            let mut out = Vec::with_capacity(c.len() + 16);
            out.extend_from_slice(br#"{"active":true,"#);
            out.extend_from_slice(&c[1..]);
            String::from_utf8(out).ok()
        }
        _ => None,
    };
    // RFC 7662 §2.2: an inactive token carries no other member.
    no_store(json(
        StatusCode::OK,
        answer.unwrap_or_else(|| r#"{"active":false}"#.to_owned()),
    ))
}

async fn metadata(State(floor): State<Arc<Floor>>) -> Response {
    json(StatusCode::OK, floor.metadata.clone())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parameters_are_found_only_at_pair_boundaries() {
        let body = b"grant_type=client_credentials&client_assertion_type=urn%3Ax&client_assertion=a.b.c&count=64";
        assert_eq!(param(body, "client_assertion"), Some(&b"a.b.c"[..]));
        assert_eq!(param(body, "count"), Some(&b"64"[..]));
        assert_eq!(param(body, "type"), None);
        assert_eq!(param(b"audience=x", "audience"), Some(&b"x"[..]));
    }

    #[test]
    fn form_values_are_decoded() {
        assert_eq!(
            form_decode(b"spiffe%3A%2F%2Fexample.org%2Ffn%2Fa+b").unwrap(),
            "spiffe://example.org/fn/a b"
        );
        assert_eq!(form_decode(b"%4"), None);
    }
}
