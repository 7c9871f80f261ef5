//! The shape of a compact JWS access token (RFC 7515 §7.1, RFC 9068 §2.1): three
//! base64url segments, and a protected header that names an allow-listed algorithm,
//! the `at+jwt` type and a key id.
//!
//! Everything here is attacker-controlled and unauthenticated. The header only says
//! which key to look up; the algorithm it names must agree with that key, and any
//! `jwk`, `x5c`, `jku` or `x5u` member is ignored, never followed.

use std::borrow::Cow;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use baton_proto::claims::{JwsAlgorithm, TOKEN_TYP};
use baton_proto::json::{UniqueJsonError, from_slice_unique};
use serde::Deserialize;

use super::VerifyError;

/// Length of an ES256 (RFC 7518 §3.4, fixed r‖s) or Ed25519 (RFC 8037 §3.1) signature.
const SIGNATURE_BYTES: usize = 64;

/// A compact JWS cut into its segments, the signature decoded.
pub(super) struct Compact<'a> {
    pub(super) header_b64: &'a str,
    pub(super) payload_b64: &'a str,
    /// RFC 7515 §5.2: the signing input is the encoded header and payload as sent.
    pub(super) signing_input: &'a [u8],
    signature: [u8; SIGNATURE_BYTES],
    /// Whether the signature segment decoded to exactly 64 bytes.
    signature_ok: bool,
}

impl<'a> Compact<'a> {
    /// Splits `token` into exactly three segments and decodes the signature.
    pub(super) fn split(token: &'a str) -> Result<Self, VerifyError> {
        let mut segments = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) = (
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
        ) else {
            return Err(VerifyError::Malformed(
                "a compact JWS has exactly three base64url segments (RFC 7515 §7.1)",
            ));
        };
        let mut signature = [0u8; SIGNATURE_BYTES];
        // A signature of any other length cannot verify; that is decided at the
        // signature step, so the rejection order stays the one a reader expects.
        let signature_ok = match URL_SAFE_NO_PAD.decode_slice(signature_b64, &mut signature) {
            Ok(n) => n == SIGNATURE_BYTES,
            Err(base64::DecodeSliceError::OutputSliceTooSmall) => false,
            Err(base64::DecodeSliceError::DecodeError(_)) => {
                return Err(VerifyError::Malformed("the signature is not base64url"));
            }
        };
        let signing_input = &token.as_bytes()[..header_b64.len() + 1 + payload_b64.len()];
        Ok(Self {
            header_b64,
            payload_b64,
            signing_input,
            signature,
            signature_ok,
        })
    }

    /// The decoded signature, or `None` when it is not 64 bytes long.
    pub(super) fn signature(&self) -> Option<&[u8]> {
        self.signature_ok.then_some(&self.signature[..])
    }
}

/// Decodes one base64url segment (RFC 7515 §2: no padding; the engine also refuses
/// non-canonical trailing bits, so a token has exactly one encoding).
pub(super) fn decode(segment: &str, what: &'static str) -> Result<Vec<u8>, VerifyError> {
    URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| VerifyError::Malformed(what))
}

/// The members of the protected header the verifier reads. Strings are borrowed from
/// the decoded header when they carry no escapes.
#[derive(Deserialize)]
struct RawHeader<'a> {
    #[serde(borrow, default)]
    alg: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    typ: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    kid: Option<Cow<'a, str>>,
    #[serde(default, deserialize_with = "present")]
    crit: bool,
}

/// A checked header: an allow-listed algorithm, the access-token type, a key id.
pub(super) struct Header<'a> {
    pub(super) alg: JwsAlgorithm,
    pub(super) kid: Cow<'a, str>,
}

impl<'a> Header<'a> {
    /// Parses and checks a decoded header: algorithm, then type, then key id.
    pub(super) fn parse(json: &'a [u8]) -> Result<Self, VerifyError> {
        // RFC 7515 §4: a JSON object (serde would also take the struct as an array).
        if json.trim_ascii_start().first() != Some(&b'{') {
            return Err(VerifyError::Malformed("the header is not a JSON object"));
        }
        // RFC 7515 §4: member names are unique, known or not, so no two readers of
        // the header can disagree on it (one parse: the names are checked as read).
        let raw: RawHeader<'a> = from_slice_unique(json).map_err(|e| match e {
            UniqueJsonError::DuplicateMember => {
                VerifyError::Malformed("the header has a duplicate member (RFC 7515 §4)")
            }
            UniqueJsonError::Invalid(_) => {
                VerifyError::Malformed("the header is not a JSON object with string members")
            }
        })?;
        if raw.crit {
            // RFC 7515 §4.1.11: Baton understands no extension, so a critical one
            // makes the JWS invalid.
            return Err(VerifyError::Malformed(
                "the header lists critical extensions (crit), which Baton does not support",
            ));
        }
        // RFC 7518 §3.1: algorithm names are case-sensitive. `none`, HS*, RS* and every
        // other name stop here, before any key is looked up.
        let alg = match raw.alg.as_deref() {
            Some("ES256") => JwsAlgorithm::Es256,
            Some("EdDSA") => JwsAlgorithm::EdDsa,
            Some(_) => return Err(VerifyError::UnsupportedAlgorithm),
            None => return Err(VerifyError::Malformed("the header has no alg")),
        };
        // RFC 9068 §2.1 / §4: `at+jwt`, or the full media type; media types compare
        // case-insensitively (RFC 7515 §4.1.9).
        if !raw.typ.as_deref().is_some_and(is_access_token_type) {
            return Err(VerifyError::WrongType);
        }
        let kid = raw
            .kid
            .filter(|kid| !kid.is_empty())
            .ok_or(VerifyError::MissingKeyId)?;
        Ok(Self { alg, kid })
    }
}

/// `at+jwt` or `application/at+jwt`, in any case.
fn is_access_token_type(typ: &str) -> bool {
    const PREFIX: &str = "application/";
    let subtype = match typ.split_at_checked(PREFIX.len()) {
        Some((prefix, rest)) if prefix.eq_ignore_ascii_case(PREFIX) => rest,
        _ => typ,
    };
    subtype.eq_ignore_ascii_case(TOKEN_TYP)
}

/// Deserializes any value (even `null`) as "the member is present".
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    serde::de::IgnoredAny::deserialize(d).map(|_| true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(json: &str) -> Result<(JwsAlgorithm, String), VerifyError> {
        Header::parse(json.as_bytes()).map(|h| (h.alg, h.kid.into_owned()))
    }

    #[test]
    fn header_checks_run_in_order_alg_typ_kid() {
        assert_eq!(
            header(r#"{"alg":"ES256","typ":"at+jwt","kid":"k"}"#),
            Ok((JwsAlgorithm::Es256, "k".to_owned()))
        );
        assert_eq!(
            header(r#"{"alg":"EdDSA","typ":"application/AT+JWT","kid":"k\u0031"}"#),
            Ok((JwsAlgorithm::EdDsa, "k1".to_owned()))
        );
        for alg in ["none", "HS256", "RS256", "es256", "ES384", "Ed25519", ""] {
            let json = format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#);
            assert_eq!(
                header(&json),
                Err(VerifyError::UnsupportedAlgorithm),
                "{alg}"
            );
        }
        for typ in [
            r#""typ":"JWT","#,
            "",
            r#""typ":"at+jwt2","#,
            r#""typ":"application/jwt","#,
            r#""typ":"applicationXat+jwt","#,
        ] {
            let json = format!(r#"{{"alg":"ES256",{typ}"kid":"k"}}"#);
            assert_eq!(header(&json), Err(VerifyError::WrongType), "{json}");
        }
        for kid in ["", r#","kid":"""#, r#","kid":null"#] {
            let json = format!(r#"{{"alg":"ES256","typ":"at+jwt"{kid}}}"#);
            assert_eq!(header(&json), Err(VerifyError::MissingKeyId), "{json}");
        }
    }

    #[test]
    fn duplicate_header_members_are_malformed_whatever_their_name() {
        for json in [
            r#"{"alg":"ES256","alg":"EdDSA","typ":"at+jwt","kid":"k"}"#,
            r#"{"alg":"ES256","a\u006cg":"none","typ":"at+jwt","kid":"k"}"#,
            r#"{"alg":"ES256","typ":"at+jwt","kid":"k","kid":"j"}"#,
            // Members the verifier ignores must not repeat either: another reader
            // might take the first, or the last.
            r#"{"alg":"ES256","typ":"at+jwt","kid":"k","jku":"a","jku":"b"}"#,
            r#"{"alg":"ES256","typ":"at+jwt","kid":"k","x":1,"x":1}"#,
        ] {
            assert_eq!(
                header(json),
                Err(VerifyError::Malformed(
                    "the header has a duplicate member (RFC 7515 §4)"
                )),
                "{json}"
            );
        }
    }

    #[test]
    fn ambiguous_or_critical_headers_are_malformed() {
        for json in [
            r#"{"alg":"ES256","alg":"EdDSA","typ":"at+jwt","kid":"k"}"#,
            r#"{"alg":"ES256","typ":"at+jwt","kid":"k","crit":["exp"]}"#,
            r#"{"alg":"ES256","typ":"at+jwt","kid":"k","crit":null}"#,
            r#"{"typ":"at+jwt","kid":"k"}"#,
            r#"{"alg":256,"typ":"at+jwt","kid":"k"}"#,
            r#"["ES256"]"#,
            r#"["ES256","at+jwt","k"]"#,
            "",
        ] {
            assert!(
                matches!(header(json), Err(VerifyError::Malformed(_))),
                "{json}"
            );
        }
    }

    #[test]
    fn split_needs_exactly_three_segments_and_a_base64url_signature() {
        for token in ["", "a", "a.b", "a.b.c.d", "a.b.c.", "...."] {
            assert!(
                matches!(Compact::split(token), Err(VerifyError::Malformed(_))),
                "{token}"
            );
        }
        assert!(matches!(
            Compact::split("a.b.c+d"),
            Err(VerifyError::Malformed(_))
        ));
        let short = Compact::split("a.b.AAAA").unwrap();
        assert_eq!(short.signature(), None);
        let long = format!("a.b.{}", "A".repeat(200));
        let long = Compact::split(&long).unwrap();
        assert_eq!(long.signature(), None);
        let sig = URL_SAFE_NO_PAD.encode([7u8; 64]);
        let ok = format!("hh.pp.{sig}");
        let ok = Compact::split(&ok).unwrap();
        assert_eq!(ok.signature(), Some(&[7u8; 64][..]));
        assert_eq!(ok.signing_input, b"hh.pp");
        assert_eq!((ok.header_b64, ok.payload_b64), ("hh", "pp"));
    }
}
