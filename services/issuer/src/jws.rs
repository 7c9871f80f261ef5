//! The shape of a compact JWS (RFC 7515 §7.1), shared by everything the issuer reads:
//! client assertions (attest) and its own access tokens (introspect, revoke). Only
//! shape — segments, canonical base64url, the JOSE header and its `typ` — never trust:
//! callers choose the key and verify the signature.

use std::borrow::Cow;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use baton_proto::claims::JoseHeader;
use baton_proto::json::{UniqueJsonError, from_slice_unique};
use serde::Deserialize;

/// Why a string is not a compact JWS Baton reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JwsError {
    /// Longer than the caller's bound; nothing was decoded.
    TooLarge,
    /// Not exactly three dot-separated segments.
    Segments,
    /// A segment is not canonical unpadded base64url.
    Encoding(&'static str),
    /// The header names an algorithm other than ES256 or EdDSA (`none`, HMAC, RSA …).
    UnsupportedAlgorithm,
    /// The header is not a JOSE header Baton accepts (not an object, a duplicate
    /// member, `crit`, …).
    Header,
}

/// A compact JWS split into its segments, header decoded.
#[derive(Debug)]
pub(crate) struct CompactJws<'a> {
    /// The protected header.
    pub(crate) header: JoseHeader,
    /// `BASE64URL(header) || '.' || BASE64URL(payload)`, as sent (RFC 7515 §5.2).
    pub(crate) signing_input: &'a str,
    payload_b64: &'a str,
    signature_b64: &'a str,
}

impl<'a> CompactJws<'a> {
    /// Splits `jws` (at most `max_len` bytes) and decodes its header.
    pub(crate) fn parse(jws: &'a str, max_len: usize) -> Result<Self, JwsError> {
        // Bounded before anything is decoded.
        if jws.len() > max_len {
            return Err(JwsError::TooLarge);
        }
        let mut segments = jws.split('.');
        let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) = (
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
        ) else {
            return Err(JwsError::Segments);
        };
        let header = parse_header(&decode(header_b64, "the header is not base64url")?)?;
        Ok(Self {
            header,
            signing_input: &jws[..header_b64.len() + 1 + payload_b64.len()],
            payload_b64,
            signature_b64,
        })
    }

    /// The signature bytes.
    pub(crate) fn signature(&self) -> Result<Vec<u8>, JwsError> {
        decode(self.signature_b64, "the signature is not base64url")
    }

    /// The payload bytes; decode them only after the signature verified.
    pub(crate) fn payload(&self) -> Result<Vec<u8>, JwsError> {
        decode(self.payload_b64, "the payload is not base64url")
    }
}

/// RFC 7515 §2: base64url without padding; the engine also refuses non-canonical
/// trailing bits, so each JWS has exactly one encoding.
fn decode(segment: &str, what: &'static str) -> Result<Vec<u8>, JwsError> {
    URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| JwsError::Encoding(what))
}

fn parse_header(json: &[u8]) -> Result<JoseHeader, JwsError> {
    // RFC 7515 §4: member names are unique, known or not; checked in the one parse.
    from_slice_unique::<JoseHeader>(json).map_err(|e| {
        if let UniqueJsonError::DuplicateMember = e {
            return JwsError::Header;
        }
        // Only on failure: tell an unsupported algorithm from a broken header, for the
        // operator's metrics.
        #[derive(Deserialize)]
        struct Probe<'a> {
            #[serde(borrow, default)]
            alg: Option<Cow<'a, str>>,
        }
        match from_slice_unique::<Probe<'_>>(json) {
            Ok(Probe { alg: Some(alg) }) if !matches!(alg.as_ref(), "ES256" | "EdDSA") => {
                JwsError::UnsupportedAlgorithm
            }
            _ => JwsError::Header,
        }
    })
}

/// Whether `typ` is one of `accepted` (RFC 7515 §4.1.9: case-insensitive, the
/// `application/` prefix may be omitted).
pub(crate) fn typ_is(typ: &str, accepted: &[&str]) -> bool {
    let bare = match typ.get(..12) {
        Some(prefix) if prefix.eq_ignore_ascii_case("application/") => &typ[12..],
        _ => typ,
    };
    accepted.iter().any(|a| bare.eq_ignore_ascii_case(a))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        URL_SAFE_NO_PAD.encode(s)
    }

    #[test]
    fn splits_a_compact_jws_and_keeps_the_signing_input_as_sent() {
        let jws = format!(
            "{}.{}.{}",
            b64(r#"{"alg":"ES256","typ":"at+jwt","kid":"k"}"#),
            b64("{}"),
            b64("sig")
        );
        let parsed = CompactJws::parse(&jws, 1024).unwrap();
        assert_eq!(parsed.header.kid.as_deref(), Some("k"));
        assert_eq!(parsed.signing_input, &jws[..jws.rfind('.').unwrap()]);
        assert_eq!(parsed.signature().unwrap(), b"sig");
        assert_eq!(parsed.payload().unwrap(), b"{}");
    }

    #[test]
    fn each_shape_error_is_named() {
        let ok_header = b64(r#"{"alg":"EdDSA"}"#);
        let cases = [
            ("x".repeat(20), 10, JwsError::TooLarge),
            ("a.b".to_owned(), 100, JwsError::Segments),
            ("a.b.c.d".to_owned(), 100, JwsError::Segments),
            (
                format!("{ok_header}=.e30.AA"),
                100,
                JwsError::Encoding("the header is not base64url"),
            ),
            (
                format!("{}.e30.AA", b64(r#"{"alg":"none"}"#)),
                100,
                JwsError::UnsupportedAlgorithm,
            ),
            (
                format!("{}.e30.AA", b64(r#"{"alg":"HS256"}"#)),
                100,
                JwsError::UnsupportedAlgorithm,
            ),
            (
                format!("{}.e30.AA", b64(r#"{"alg":"ES256","crit":["b64"]}"#)),
                100,
                JwsError::Header,
            ),
            (format!("{}.e30.AA", b64("[]")), 100, JwsError::Header),
            (
                format!("{}.e30.AA", b64(r#"{"alg":"ES256","alg":"none"}"#)),
                100,
                JwsError::Header,
            ),
            (
                format!("{}.e30.AA", b64(r#"{"alg":"ES256","x5u":"a","x5u":"b"}"#)),
                100,
                JwsError::Header,
            ),
        ];
        for (jws, max, want) in cases {
            assert_eq!(CompactJws::parse(&jws, max).unwrap_err(), want, "{jws}");
        }
    }

    #[test]
    fn typ_comparison_follows_rfc_7515() {
        assert!(typ_is("at+jwt", &["at+jwt"]));
        assert!(typ_is("application/AT+JWT", &["at+jwt"]));
        assert!(!typ_is("jwt", &["at+jwt"]));
        assert!(typ_is("JWT", &["JWT", "client-authentication+jwt"]));
        assert!(!typ_is("applicatio", &["at+jwt"]));
    }
}
