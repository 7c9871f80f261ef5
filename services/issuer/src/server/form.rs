//! `application/x-www-form-urlencoded` bodies (RFC 6749 §3.2) with RFC-shaped errors:
//! axum's own rejections are plain text, and a client of an OAuth endpoint expects
//! `{error, error_description}`.
//!
//! The decoder is Baton's own because it sits on every request's path: a token request
//! carries a client assertion of one to several KiB, and the general decoder (axum's
//! `Form`, through `form_urlencoded`) walks every byte three times — for `&` and `=`,
//! for `%`, and again to validate UTF-8 — which measured about 6 µs a request. Values
//! that need no decoding (JWS, SPIFFE IDs, counts: base64url and unreserved
//! characters) are borrowed after one vectorised scan; only a pair holding `%` or `+`
//! goes through the WHATWG decoding, so the result is the same either way.

use std::borrow::Cow;

use axum::extract::rejection::RawFormRejection;
use axum::extract::{FromRequest, RawForm, Request};
use axum::http::StatusCode;
use serde::de::value::{Error as DeError, MapDeserializer};
use serde::de::{DeserializeOwned, IntoDeserializer, Visitor};

use super::AppState;
use super::error::ApiError;

/// A decoded form body.
pub(super) struct ApiForm<T>(pub(super) T);

impl<T> FromRequest<AppState> for ApiForm<T>
where
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        // RawForm checks the content type and reads the body under the body limit.
        let RawForm(body) = RawForm::from_request(req, state)
            .await
            .map_err(|rejection| match rejection {
                _ if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                    ApiError::too_large(state.max_body_bytes)
                }
                RawFormRejection::InvalidFormContentType(_) => {
                    ApiError::invalid_request("the body must be application/x-www-form-urlencoded")
                }
                _ => ApiError::invalid_request("unreadable request body"),
            })?;
        // serde's message names the missing, repeated or mistyped parameter, never a
        // value, so it is safe to return.
        decode(&body)
            .map(Self)
            .map_err(|e| ApiError::invalid_request(format!("malformed form: {e}")))
    }
}

/// Decodes a form body into `T`: unknown parameters are ignored and a repeated one is
/// an error (serde refuses duplicate fields), as with `serde_urlencoded`.
fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, serde_path_to_error::Error<DeError>> {
    serde_path_to_error::deserialize(MapDeserializer::new(Pairs { rest: body }))
}

/// The name/value pairs of a form body, in order; empty pairs (`a=1&&b=2`) are skipped
/// and a pair without `=` has an empty value (WHATWG URL §5.1).
struct Pairs<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Pairs<'a> {
    type Item = (Text<'a>, Text<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.rest.is_empty() {
                return None;
            }
            let (pair, rest) = match memchr::memchr(b'&', self.rest) {
                Some(i) => (&self.rest[..i], &self.rest[i + 1..]),
                None => (self.rest, &[][..]),
            };
            self.rest = rest;
            if !pair.is_empty() {
                return Some(decode_pair(pair));
            }
        }
    }
}

fn decode_pair(pair: &[u8]) -> (Text<'_>, Text<'_>) {
    if memchr::memchr2(b'%', b'+', pair).is_none()
        && let Ok(text) = std::str::from_utf8(pair)
    {
        let (name, value) = text.split_once('=').unwrap_or((text, ""));
        return (Text(Cow::Borrowed(name)), Text(Cow::Borrowed(value)));
    }
    // `+` is a space, `%XX` a byte, and invalid UTF-8 is replaced, as every form
    // decoder does; a non-empty pair always yields one name/value.
    let (name, value) = form_urlencoded::parse(pair).next().unwrap_or_default();
    (Text(name), Text(value))
}

/// One decoded name or value: a string to serde, and `Some` to an `Option` field (a
/// parameter that is present has a value; whether an empty one counts is the field's
/// own rule, see `baton_proto::requests`).
struct Text<'a>(Cow<'a, str>);

impl<'de> IntoDeserializer<'de, DeError> for Text<'_> {
    type Deserializer = Self;

    fn into_deserializer(self) -> Self {
        self
    }
}

impl<'de> serde::Deserializer<'de> for Text<'_> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.0 {
            Cow::Borrowed(s) => visitor.visit_str(s),
            Cow::Owned(s) => visitor.visit_string(s),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_some(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
        byte_buf unit unit_struct newtype_struct seq tuple tuple_struct map struct enum
        identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_proto::requests::{IntrospectRequest, TokenRequest};
    use proptest::prelude::*;

    /// What axum's `Form` decodes, for comparison.
    fn reference<T: DeserializeOwned>(body: &[u8]) -> Result<T, String> {
        serde_urlencoded::from_bytes(body).map_err(|e| e.to_string())
    }

    #[test]
    fn a_token_request_decodes_borrowed_and_escaped_values_alike() {
        let body = b"grant_type=client_credentials&audience=spiffe%3A%2F%2Fexample.org%2Ffn%2Fpay\
            &scope=a+b%20c&count=64&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3A\
            client-assertion-type%3Ajwt-bearer&client_assertion=eyJh.eyJi.c2ln";
        let req: TokenRequest = decode(body).unwrap();
        assert_eq!(req.audience, "spiffe://example.org/fn/pay");
        assert_eq!(req.scope.as_deref(), Some("a b c"));
        assert_eq!(req.count, Some(64));
        assert_eq!(req.client_assertion.as_deref(), Some("eyJh.eyJi.c2ln"));
        assert_eq!(Ok(req), reference::<TokenRequest>(body));
    }

    #[test]
    fn rfc_6749_rules_hold_repeated_parameters_fail_and_empty_ones_are_omitted() {
        let repeated = b"token=a&token=b";
        let e = decode::<IntrospectRequest>(repeated)
            .unwrap_err()
            .to_string();
        assert!(e.contains("duplicate field `token`"), "{e}");
        assert!(reference::<IntrospectRequest>(repeated).is_err());

        let missing = decode::<IntrospectRequest>(b"token_type_hint=x")
            .unwrap_err()
            .to_string();
        assert!(missing.contains("missing field `token`"), "{missing}");

        let req: IntrospectRequest = decode(b"token=t&token_type_hint=&other=1&&flag").unwrap();
        assert_eq!(req.token, "t");
        assert_eq!(req.token_type_hint, None);
    }

    #[test]
    fn a_bad_count_is_named_without_echoing_it() {
        let e = decode::<TokenRequest>(b"grant_type=g&audience=a&count=1e9")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("count: "), "{e}");
        assert!(!e.contains("1e9"), "{e}");
    }

    proptest! {
        /// Whatever the bytes, Baton's decoder and the general one agree on the
        /// outcome and, when both decode, on every field.
        #[test]
        fn agrees_with_the_general_decoder(
            pairs in proptest::collection::vec(
                (
                    prop::sample::select(vec![
                        "grant_type", "audience", "scope", "count", "client_assertion",
                        "client_assertion_type", "x", "",
                    ]),
                    proptest::collection::vec(any::<u8>(), 0..12),
                ),
                0..8,
            )
        ) {
            let mut body = Vec::new();
            for (name, value) in &pairs {
                if !body.is_empty() {
                    body.push(b'&');
                }
                body.extend_from_slice(name.as_bytes());
                body.push(b'=');
                body.extend_from_slice(value);
            }
            let ours = decode::<TokenRequest>(&body).map_err(|e| e.to_string());
            let theirs = reference::<TokenRequest>(&body);
            prop_assert_eq!(ours.is_ok(), theirs.is_ok(), "{:?} vs {:?}", ours, theirs);
            if let (Ok(ours), Ok(theirs)) = (ours, theirs) {
                prop_assert_eq!(ours, theirs);
            }
        }
    }
}
