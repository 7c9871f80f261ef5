//! The hostile-token corpus (SPEC §4 "Verifiers reject", §5 introspect row): one table
//! of named tokens, each made from real keys and certificates, run against both
//! verifiers Baton ships — the SDK's `Verifier` and the issuer's RFC 7662
//! `POST /v1/introspect` of a real `baton serve` on loopback over mTLS.
//!
//! Every hostile token must be refused, by the SDK with the exact `VerifyError` (the
//! rule it broke) and by introspection with exactly `{"active":false}` (RFC 7662 §2.2:
//! nothing else, so the token is never echoed) while `/metrics` counts the refusal
//! under the expected `reason`. The positive controls — including the edges just
//! inside each limit — must be accepted by both. Refusals change no state: every
//! hostile token that reaches the claims carries the jti of one control token, which
//! must still verify once, and be introspected active once, after the whole corpus.
//!
//! Tokens signed "by the issuer" are signed with the issuer's real active key,
//! unsealed from its data directory with its KEK (as its operator could): a hostile
//! claim set behind a valid signature is the strongest form of each case. Attackers'
//! keys and certificates come from the SDK's fixtures (rcgen, ring) and `openssl`.
//! `docs/hostile-tokens.md` lists the same cases; `corpus_table_matches_the_doc`
//! keeps the two equal.

// Test code: a failed step should fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[allow(dead_code, unreachable_pub, clippy::all)]
#[path = "../../client-sdk/tests/verify_support/mod.rs"]
mod verify_support;

use std::collections::BTreeMap;
use std::net::TcpListener;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use baton_issuer::seal::Kek;
use baton_sdk::{SpiffeId, Verifier, VerifyError};
use baton_tests::{Sandbox, Server, https_client, kids_in_state, pem_blocks};
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair,
    RSA_PKCS1_SHA256, RsaKeyPair,
};
use serde_json::{Value, json};
use verify_support::{Alg, Ca, Signer, random_id};

const ORDERS: &str = "spiffe://example.org/fn/orders";
const PAYMENTS: &str = "spiffe://example.org/fn/payments";
const LEDGER: &str = "spiffe://example.org/fn/ledger";
const ISSUER_URL: &str = "https://localhost:8443";
const POLICY: &str = r#"
[[allow]]
caller = "spiffe://example.org/fn/orders"
audience = "spiffe://example.org/fn/payments"
scopes = ["payments:charge"]
"#;
/// The SPEC §4 leeway, which both verifiers use by default.
const LEEWAY: i64 = 5;
const MAX_TOKEN_BYTES: usize = 8192;

// The SDK's `Malformed` texts, one per broken rule.
const SEGMENTS: &str = "a compact JWS has exactly three base64url segments (RFC 7515 §7.1)";
const SIG_B64: &str = "the signature is not base64url";
const HEADER_B64: &str = "the header is not base64url";
const CLAIMS_B64: &str = "the claims are not base64url";
const HEADER_NOT_OBJECT: &str = "the header is not a JSON object";
const HEADER_SHAPE: &str = "the header is not a JSON object with string members";
const HEADER_NO_ALG: &str = "the header has no alg";
const HEADER_DUP: &str = "the header has a duplicate member (RFC 7515 §4)";
const CRIT: &str = "the header lists critical extensions (crit), which Baton does not support";
const CLAIMS: &str = "the claims are not a Baton access token's claim set";
const CLAIMS_DUP: &str = "the claims have a duplicate member (RFC 7519 §4)";
const AUD_ARRAY: &str = "aud is an array; a Baton token names one audience";
const EXP_IAT: &str = "exp is not later than iat";
const SUB_CLIENT: &str = "sub and client_id differ";
const SUB_FOREIGN: &str = "sub is of another trust domain";

fn now() -> i64 {
    verify_support::unix_now()
}

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// `header.claims.signature` with the signature `sign` makes over the signing input.
fn compact(header: &str, claims: &str, sign: impl FnOnce(&[u8]) -> Vec<u8>) -> String {
    let input = format!("{}.{}", b64(header), b64(claims));
    let sig = sign(input.as_bytes());
    format!("{input}.{}", b64(sig))
}

fn pem(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// Everything the cases are made from: the issuer's real key and public material, the
/// attackers' keys, a real workload's key and certificate.
struct Kit {
    kid: String,
    issuer_key: EcdsaKeyPair,
    /// The same private key, signing ASN.1 DER signatures (not JWS's fixed r‖s).
    issuer_key_der: EcdsaKeyPair,
    /// The active key's certificate (x5c[0]), its SubjectPublicKeyInfo and raw point.
    cert_der: Vec<u8>,
    spki_der: Vec<u8>,
    sec1_point: Vec<u8>,
    /// A token signer of another CA for the same trust domain (reserved ID and all).
    attacker: Signer,
    attacker_ed: Signer,
    /// The `orders` workload's real key and X.509-SVID, which chain to the bundle.
    workload_key: EcdsaKeyPair,
    workload_x5c: Vec<String>,
    rsa: RsaKeyPair,
    /// A loopback URL nobody should ever fetch (`jku`, `x5u`).
    trap_url: String,
    /// The jti every hostile token that gets as far as its claims carries.
    control_jti: String,
}

impl Kit {
    fn header(&self) -> Value {
        json!({"alg": "ES256", "typ": "at+jwt", "kid": self.kid})
    }

    /// Valid claims at `t0` with the control jti.
    fn claims(&self, t0: i64) -> Value {
        json!({
            "iss": ISSUER_URL, "sub": ORDERS, "client_id": ORDERS, "aud": PAYMENTS,
            "iat": t0, "nbf": t0, "exp": t0 + 60, "jti": self.control_jti,
            "sid": "hostile-corpus", "scope": "payments:charge",
        })
    }

    fn sign(&self, input: &[u8]) -> Vec<u8> {
        self.issuer_key
            .sign(&SystemRandom::new(), input)
            .unwrap()
            .as_ref()
            .to_vec()
    }

    /// Header and claims as written, signed by the issuer's key.
    fn signed_text(&self, header: &str, claims: &str) -> String {
        compact(header, claims, |input| self.sign(input))
    }

    /// As [`Self::signed_text`], for bytes that need not be UTF-8.
    fn signed_bytes(&self, header: &[u8], claims: &[u8]) -> String {
        let input = format!("{}.{}", b64(header), b64(claims));
        format!("{input}.{}", b64(self.sign(input.as_bytes())))
    }

    fn signed(&self, header: &Value, claims: &Value) -> String {
        self.signed_text(&header.to_string(), &claims.to_string())
    }

    /// The control token: the issuer's header and valid claims with the control jti.
    fn control(&self, t0: i64) -> String {
        self.signed(&self.header(), &self.claims(t0))
    }

    fn with_claims(&self, t0: i64, edit: impl FnOnce(&mut Value)) -> String {
        let mut claims = self.claims(t0);
        edit(&mut claims);
        self.signed(&self.header(), &claims)
    }

    /// A positive control: like `with_claims`, with a jti of its own to consume.
    fn fresh(&self, t0: i64, edit: impl FnOnce(&mut Value)) -> String {
        self.with_claims(t0, |c| {
            c["jti"] = json!(random_id());
            edit(c);
        })
    }

    fn with_header(&self, t0: i64, edit: impl FnOnce(&mut Value)) -> String {
        let mut header = self.header();
        edit(&mut header);
        self.signed(&header, &self.claims(t0))
    }

    /// Valid claims under `header`, signed by `signer` (an attacker's key).
    fn by(&self, signer: &Signer, header: Value, t0: i64) -> String {
        compact(&header.to_string(), &self.claims(t0).to_string(), |input| {
            signer.sign(input)
        })
    }

    /// The issuer's header and claims JSON with `extra` members first, so a reader
    /// keeping the last of two values sees the valid one.
    fn dup_claims(&self, t0: i64, extra: &str) -> String {
        let header = self.header().to_string();
        let claims = self.claims(t0).to_string();
        self.signed_text(&header, &format!("{{{extra},{}", &claims[1..]))
    }

    fn dup_header(&self, t0: i64, extra: &str) -> String {
        let header = self.header().to_string();
        self.signed_text(
            &format!("{{{extra},{}", &header[1..]),
            &self.claims(t0).to_string(),
        )
    }

    /// The control token with its segments replaced by `edit`.
    fn mutate(&self, t0: i64, edit: impl FnOnce(&mut Vec<String>)) -> String {
        let mut parts: Vec<String> = self.control(t0).split('.').map(str::to_owned).collect();
        edit(&mut parts);
        parts.join(".")
    }

    /// A validly signed token of exactly `len` bytes, grown by an unknown claim.
    fn sized(&self, t0: i64, len: usize, jti: &str) -> String {
        let header = self.header().to_string();
        let mut claims = self.claims(t0);
        claims["jti"] = json!(jti);
        claims["pad"] = json!("");
        let base = claims.to_string().len();
        // Base64 cannot reach every length: a space inside the header shifts it.
        for spaces in 0..3 {
            let header = format!("{{{}{}", " ".repeat(spaces), &header[1..]);
            let fixed = b64(&header).len() + 2 + 86;
            for pad in 0..len {
                if fixed + (4 * (base + pad)).div_ceil(3) == len {
                    claims["pad"] = json!("x".repeat(pad));
                    let token = self.signed_text(&header, &claims.to_string());
                    assert_eq!(token.len(), len);
                    return token;
                }
            }
        }
        panic!("no token of {len} bytes");
    }

    fn hs256(&self, t0: i64, secret: &[u8]) -> String {
        let header = json!({"alg": "HS256", "typ": "at+jwt", "kid": self.kid});
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
        compact(&header.to_string(), &self.claims(t0).to_string(), |input| {
            ring::hmac::sign(&key, input).as_ref().to_vec()
        })
    }
}

/// What both verifiers must do with a case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    /// A positive control: accepted (and consumed) by both.
    Accepted,
    /// Refused: the SDK's exact error, and introspection's `reason` metric label.
    Refused(VerifyError, &'static str),
}

use Want::{Accepted, Refused};

type Build = Box<dyn Fn(&Kit, i64) -> String>;

struct Case {
    name: &'static str,
    attacks: &'static str,
    build: Build,
    want: Want,
}

fn case(
    name: &'static str,
    attacks: &'static str,
    want: Want,
    build: impl Fn(&Kit, i64) -> String + 'static,
) -> Case {
    Case {
        name,
        attacks,
        build: Box::new(build),
        want,
    }
}

/// `n` distinct JSON members, `"m0":0,"m1":1,…`.
fn many_members(n: usize) -> String {
    (0..n)
        .map(|i| format!(r#""m{i}":{i}"#))
        .collect::<Vec<_>>()
        .join(",")
}

fn malformed(why: &'static str) -> VerifyError {
    VerifyError::Malformed(why)
}

/// The corpus. Tokens are built at `t0`, the moment they are presented (the SDK
/// verifies at exactly `t0`; the issuer's clock reads `t0` or a second later, and the
/// time cases keep that much margin on the side that is not exactly at the edge).
#[allow(clippy::too_many_lines)]
fn corpus() -> Vec<Case> {
    use VerifyError as E;
    let m = malformed;
    vec![
        // Positive controls.
        case(
            "valid_token",
            "nothing: a token as the issuer mints it",
            Accepted,
            |k, t| k.fresh(t, |_| {}),
        ),
        case(
            "typ_uppercase",
            "media types compare case-insensitively (RFC 7515 §4.1.9): AT+JWT is at+jwt",
            Accepted,
            |k, t| {
                let mut h = k.header();
                h["typ"] = json!("AT+JWT");
                let mut c = k.claims(t);
                c["jti"] = json!(random_id());
                k.signed(&h, &c)
            },
        ),
        case(
            "typ_full_media_type_mixed_case",
            "Application/At+Jwt is application/at+jwt (RFC 9068 §2.1)",
            Accepted,
            |k, t| {
                let mut h = k.header();
                h["typ"] = json!("Application/At+Jwt");
                let mut c = k.claims(t);
                c["jti"] = json!(random_id());
                k.signed(&h, &c)
            },
        ),
        case(
            "exp_passed_inside_leeway",
            "exp 3 s ago (iat 4 s ago), inside the 5 s leeway",
            Accepted,
            |k, t| {
                k.fresh(t, |c| {
                    c["iat"] = json!(t - 4);
                    c["nbf"] = json!(t - 4);
                    c["exp"] = json!(t - 3);
                })
            },
        ),
        case(
            "nbf_future_at_leeway_edge",
            "nbf exactly 5 s ahead: still inside the leeway",
            Accepted,
            |k, t| k.fresh(t, |c| c["nbf"] = json!(t + LEEWAY)),
        ),
        case(
            "iat_future_at_leeway_edge",
            "iat exactly 5 s ahead: still inside the leeway",
            Accepted,
            |k, t| {
                k.fresh(t, |c| {
                    c["iat"] = json!(t + LEEWAY);
                    c["exp"] = json!(t + LEEWAY + 60);
                })
            },
        ),
        case(
            "lifetime_exactly_300s",
            "exp - iat = 300 s, the maximum",
            Accepted,
            |k, t| k.fresh(t, |c| c["exp"] = json!(t + 300)),
        ),
        case(
            "size_exactly_8192_bytes",
            "a validly signed token of exactly 8 KiB",
            Accepted,
            |k, t| k.sized(t, MAX_TOKEN_BYTES, &random_id()),
        ),
        case(
            "unknown_claim_once",
            "one unknown claim is ignored (RFC 7519 §4)",
            Accepted,
            |k, t| k.fresh(t, |c| c["role"] = json!("admin")),
        ),
        // Shape and encoding.
        case(
            "empty_token",
            "the empty string",
            Refused(m(SEGMENTS), "malformed"),
            |_, _| String::new(),
        ),
        case(
            "one_segment",
            "no dots at all",
            Refused(m(SEGMENTS), "malformed"),
            |k, t| k.control(t).replace('.', ""),
        ),
        case(
            "dots_only_two",
            "`..`: three empty segments",
            Refused(m(HEADER_NOT_OBJECT), "malformed"),
            |_, _| "..".to_owned(),
        ),
        case(
            "dots_only_three",
            "`...`: four empty segments",
            Refused(m(SEGMENTS), "malformed"),
            |_, _| "...".to_owned(),
        ),
        case(
            "empty_middle_a_dot_dot_c",
            "`a..c`: one-character segments around an empty one",
            Refused(m(SIG_B64), "malformed"),
            |_, _| "a..c".to_owned(),
        ),
        case(
            "empty_claims_validly_signed",
            "an empty claims segment under a valid signature",
            Refused(m(CLAIMS), "malformed"),
            |k, _| k.signed_text(&k.header().to_string(), ""),
        ),
        case(
            "two_segments",
            "the control token without its signature segment",
            Refused(m(SEGMENTS), "malformed"),
            |k, t| {
                k.mutate(t, |p| {
                    p.pop();
                })
            },
        ),
        case(
            "four_segments",
            "the control token with a fourth segment",
            Refused(m(SEGMENTS), "malformed"),
            |k, t| k.mutate(t, |p| p.push(p[2].clone())),
        ),
        case(
            "claims_std_alphabet_validly_signed",
            "claims in base64 with + and / (not base64url), signed as sent",
            Refused(m(CLAIMS_B64), "malformed"),
            |k, t| {
                let mut claims = k.claims(t);
                for n in 0.. {
                    claims["note"] = json!("?".repeat(n) + "~~~>>>");
                    let text = claims.to_string();
                    let std = STANDARD_NO_PAD.encode(&text);
                    if std.contains(['+', '/']) {
                        let input = format!("{}.{std}", b64(k.header().to_string()));
                        return format!("{input}.{}", b64(k.sign(input.as_bytes())));
                    }
                }
                unreachable!()
            },
        ),
        case(
            "header_padded_validly_signed",
            "a header segment with = padding, signed as sent",
            Refused(m(HEADER_B64), "malformed"),
            |k, t| {
                let mut header = k.header().to_string();
                while header.len() % 3 == 0 {
                    header.insert(1, ' ');
                }
                let input = format!(
                    "{}.{}",
                    URL_SAFE.encode(&header),
                    b64(k.claims(t).to_string())
                );
                format!("{input}.{}", b64(k.sign(input.as_bytes())))
            },
        ),
        case(
            "signature_std_alphabet",
            "the real signature in base64 with + or /",
            Refused(m(SIG_B64), "malformed"),
            |k, t| {
                loop {
                    let token = k.control(t);
                    let (input, sig) = token.rsplit_once('.').unwrap();
                    let std = STANDARD_NO_PAD.encode(URL_SAFE_NO_PAD.decode(sig).unwrap());
                    if std.contains(['+', '/']) {
                        return format!("{input}.{std}");
                    }
                }
            },
        ),
        case(
            "signature_padded",
            "the real signature with == padding",
            Refused(m(SIG_B64), "malformed"),
            |k, t| k.control(t) + "==",
        ),
        case(
            "signature_noncanonical_bits",
            "the real signature with non-zero trailing bits (a second encoding)",
            Refused(m(SIG_B64), "malformed"),
            |k, t| {
                k.mutate(t, |p| {
                    const ALPHABET: &str =
                        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
                    let last = p[2].pop().unwrap();
                    let value = ALPHABET.find(last).unwrap();
                    p[2].push(ALPHABET.as_bytes()[value | 1] as char);
                })
            },
        ),
        case(
            "space_in_claims_segment",
            "a space inside the claims segment",
            Refused(m(CLAIMS_B64), "bad_signature"),
            |k, t| {
                k.mutate(t, |p| {
                    let middle = p[1].len() / 2;
                    p[1].insert(middle, ' ');
                })
            },
        ),
        case(
            "header_not_json_validly_signed",
            "a header that is not JSON",
            Refused(m(HEADER_NOT_OBJECT), "malformed"),
            |k, t| k.signed_text("not json", &k.claims(t).to_string()),
        ),
        case(
            "header_json_array_validly_signed",
            "a header that is a JSON array of the right values",
            Refused(m(HEADER_NOT_OBJECT), "malformed"),
            |k, t| {
                k.signed_text(
                    &json!(["ES256", "at+jwt", k.kid]).to_string(),
                    &k.claims(t).to_string(),
                )
            },
        ),
        case(
            "claims_not_json_validly_signed",
            "claims that are not JSON",
            Refused(m(CLAIMS), "malformed"),
            |k, _| k.signed_text(&k.header().to_string(), "{\"iss\":"),
        ),
        case(
            "claims_json_array_validly_signed",
            "claims as a JSON array in field order (serde would fill a struct from it)",
            Refused(m(CLAIMS), "malformed"),
            |k, t| {
                let c = k.claims(t);
                let arr = json!([
                    c["iss"],
                    c["sub"],
                    c["client_id"],
                    c["aud"],
                    c["iat"],
                    c["nbf"],
                    c["exp"],
                    c["jti"],
                    c["sid"]
                ]);
                k.signed_text(&k.header().to_string(), &arr.to_string())
            },
        ),
        // Algorithms.
        case(
            "alg_none_trailing_dot",
            "alg none, `h.p.`",
            Refused(E::UnsupportedAlgorithm, "unsupported_algorithm"),
            |k, t| {
                let h = json!({"alg": "none", "typ": "at+jwt", "kid": k.kid});
                format!("{}.{}.", b64(h.to_string()), b64(k.claims(t).to_string()))
            },
        ),
        case(
            "alg_none_no_trailing_dot",
            "alg none, `h.p`",
            Refused(m(SEGMENTS), "malformed"),
            |k, t| {
                let h = json!({"alg": "none", "typ": "at+jwt", "kid": k.kid});
                format!("{}.{}", b64(h.to_string()), b64(k.claims(t).to_string()))
            },
        ),
        case(
            "alg_none_uppercase",
            "alg NONE",
            Refused(E::UnsupportedAlgorithm, "unsupported_algorithm"),
            |k, t| {
                let h = json!({"alg": "NONE", "typ": "at+jwt", "kid": k.kid});
                format!("{}.{}.", b64(h.to_string()), b64(k.claims(t).to_string()))
            },
        ),
        case(
            "alg_missing_validly_signed",
            "a header without alg",
            Refused(m(HEADER_NO_ALG), "malformed"),
            |k, t| {
                k.with_header(t, |h| {
                    h.as_object_mut().unwrap().remove("alg");
                })
            },
        ),
        case(
            "alg_lowercase_es256_validly_signed",
            "alg es256: names are case-sensitive (RFC 7518 §3.1)",
            Refused(E::UnsupportedAlgorithm, "unsupported_algorithm"),
            |k, t| k.with_header(t, |h| h["alg"] = json!("es256")),
        ),
        case(
            "hs256_secret_spki_pem",
            "HS256 keyed with the issuer's public key as PEM text",
            Refused(E::UnsupportedAlgorithm, "unsupported_algorithm"),
            |k, t| k.hs256(t, pem("PUBLIC KEY", &k.spki_der).as_bytes()),
        ),
        case(
            "hs256_secret_certificate_pem",
            "HS256 keyed with the signing certificate (x5c) as PEM text",
            Refused(E::UnsupportedAlgorithm, "unsupported_algorithm"),
            |k, t| k.hs256(t, pem("CERTIFICATE", &k.cert_der).as_bytes()),
        ),
        case(
            "hs256_secret_sec1_point",
            "HS256 keyed with the raw public point 04‖x‖y",
            Refused(E::UnsupportedAlgorithm, "unsupported_algorithm"),
            |k, t| k.hs256(t, &k.sec1_point),
        ),
        case(
            "hs256_secret_spki_der",
            "HS256 keyed with the DER SubjectPublicKeyInfo",
            Refused(E::UnsupportedAlgorithm, "unsupported_algorithm"),
            |k, t| k.hs256(t, &k.spki_der),
        ),
        case(
            "rs256_real_rsa_signature",
            "RS256 signed by an RSA key of the attacker's",
            Refused(E::UnsupportedAlgorithm, "unsupported_algorithm"),
            |k, t| {
                let h = json!({"alg": "RS256", "typ": "at+jwt", "kid": k.kid});
                compact(&h.to_string(), &k.claims(t).to_string(), |input| {
                    let mut sig = vec![0; k.rsa.public().modulus_len()];
                    k.rsa
                        .sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), input, &mut sig)
                        .unwrap();
                    sig
                })
            },
        ),
        case(
            "eddsa_header_on_es256_kid",
            "EdDSA signature under the kid of the ES256 key",
            Refused(E::AlgorithmMismatch, "algorithm_mismatch"),
            |k, t| {
                k.by(
                    &k.attacker_ed,
                    json!({"alg": "EdDSA", "typ": "at+jwt", "kid": k.kid}),
                    t,
                )
            },
        ),
        // Signatures.
        case(
            "signature_empty",
            "`h.p.` with alg ES256",
            Refused(E::BadSignature, "bad_signature"),
            |k, t| k.mutate(t, |p| p[2].clear()),
        ),
        case(
            "signature_asn1_der",
            "the issuer's real signature, DER-encoded (wrong length for JWS)",
            Refused(E::BadSignature, "bad_signature"),
            |k, t| {
                compact(&k.header().to_string(), &k.claims(t).to_string(), |input| {
                    k.issuer_key_der
                        .sign(&SystemRandom::new(), input)
                        .unwrap()
                        .as_ref()
                        .to_vec()
                })
            },
        ),
        case(
            "signature_truncated_32_bytes",
            "r without s",
            Refused(E::BadSignature, "bad_signature"),
            |k, t| {
                k.mutate(t, |p| {
                    p[2] = b64(&URL_SAFE_NO_PAD.decode(&p[2]).unwrap()[..32])
                })
            },
        ),
        case(
            "signature_65_bytes",
            "the real signature and one byte more",
            Refused(E::BadSignature, "bad_signature"),
            |k, t| {
                k.mutate(t, |p| {
                    let mut sig = URL_SAFE_NO_PAD.decode(&p[2]).unwrap();
                    sig.push(0);
                    p[2] = b64(sig);
                })
            },
        ),
        case(
            "signature_all_zero",
            "r = s = 0",
            Refused(E::BadSignature, "bad_signature"),
            |k, t| k.mutate(t, |p| p[2] = b64([0u8; 64])),
        ),
        case(
            "signature_bit_flipped",
            "one bit of the real signature flipped",
            Refused(E::BadSignature, "bad_signature"),
            |k, t| {
                k.mutate(t, |p| {
                    let mut sig = URL_SAFE_NO_PAD.decode(&p[2]).unwrap();
                    sig[10] ^= 1;
                    p[2] = b64(sig);
                })
            },
        ),
        case(
            "signature_of_another_token",
            "a real signature of another token",
            Refused(E::BadSignature, "bad_signature"),
            |k, t| {
                let other = k.fresh(t, |_| {});
                k.mutate(t, |p| p[2] = other.rsplit('.').next().unwrap().to_owned())
            },
        ),
        case(
            "claims_swapped_under_real_signature",
            "the control's header and signature over other claims",
            Refused(E::BadSignature, "bad_signature"),
            |k, t| {
                k.mutate(t, |p| {
                    let mut c = k.claims(t);
                    c["scope"] = json!("payments:refund");
                    p[1] = b64(c.to_string());
                })
            },
        ),
        case(
            "foreign_es256_key_under_real_kid",
            "a valid ES256 signature by a key not in the JWKS, under a real kid",
            Refused(E::BadSignature, "bad_signature"),
            |k, t| k.by(&k.attacker, k.header(), t),
        ),
        case(
            "workload_key_under_real_kid",
            "a real workload's key (its certificate chains to the bundle) under a real kid",
            Refused(E::BadSignature, "bad_signature"),
            |k, t| {
                compact(&k.header().to_string(), &k.claims(t).to_string(), |input| {
                    k.workload_key
                        .sign(&SystemRandom::new(), input)
                        .unwrap()
                        .as_ref()
                        .to_vec()
                })
            },
        ),
        // Key ids.
        case(
            "kid_unknown",
            "a kid no key has",
            Refused(E::UnknownKey, "unknown_key"),
            |k, t| k.with_header(t, |h| h["kid"] = json!(random_id())),
        ),
        case(
            "kid_path_traversal",
            "kid ../../etc/passwd",
            Refused(E::UnknownKey, "unknown_key"),
            |k, t| k.with_header(t, |h| h["kid"] = json!("../../etc/passwd")),
        ),
        case(
            "kid_sealed_key_file_path",
            "kid naming the issuer's own sealed key file",
            Refused(E::UnknownKey, "unknown_key"),
            |k, t| {
                let path = format!("../keyring/{}.key.sealed", k.kid);
                k.with_header(t, |h| h["kid"] = json!(path))
            },
        ),
        case(
            "kid_dev_zero",
            "kid /dev/zero",
            Refused(E::UnknownKey, "unknown_key"),
            |k, t| k.with_header(t, |h| h["kid"] = json!("/dev/zero")),
        ),
        case(
            "kid_real_then_nul",
            "the real kid followed by NUL (C-string truncation)",
            Refused(E::UnknownKey, "unknown_key"),
            |k, t| {
                let kid = format!("{}\u{0}", k.kid);
                k.with_header(t, |h| h["kid"] = json!(kid))
            },
        ),
        case(
            "kid_nul_only",
            "kid of one NUL",
            Refused(E::UnknownKey, "unknown_key"),
            |k, t| k.with_header(t, |h| h["kid"] = json!("\u{0}")),
        ),
        case(
            "kid_very_long",
            "a 4000-byte kid (the token stays under 8 KiB)",
            Refused(E::UnknownKey, "unknown_key"),
            |k, t| k.with_header(t, |h| h["kid"] = json!("k".repeat(4000))),
        ),
        case(
            "kid_real_case_changed",
            "the real kid in another case",
            Refused(E::UnknownKey, "unknown_key"),
            |k, t| {
                let kid: String = k
                    .kid
                    .chars()
                    .map(|c| {
                        if c.is_ascii_lowercase() {
                            c.to_ascii_uppercase()
                        } else {
                            c.to_ascii_lowercase()
                        }
                    })
                    .collect();
                k.with_header(t, |h| h["kid"] = json!(kid))
            },
        ),
        case(
            "kid_missing",
            "no kid",
            Refused(E::MissingKeyId, "missing_kid"),
            |k, t| {
                k.with_header(t, |h| {
                    h.as_object_mut().unwrap().remove("kid");
                })
            },
        ),
        case(
            "kid_null",
            "kid null",
            Refused(E::MissingKeyId, "missing_kid"),
            |k, t| k.with_header(t, |h| h["kid"] = Value::Null),
        ),
        case(
            "kid_empty",
            "kid \"\"",
            Refused(E::MissingKeyId, "unknown_key"),
            |k, t| k.with_header(t, |h| h["kid"] = json!("")),
        ),
        case(
            "kid_number",
            "kid 1",
            Refused(m(HEADER_SHAPE), "malformed"),
            |k, t| k.with_header(t, |h| h["kid"] = json!(1)),
        ),
        // Keys embedded in the header, each signed by the attacker's own key.
        case(
            "embedded_jwk_real_kid",
            "header jwk with the attacker's key, under a real kid",
            Refused(E::BadSignature, "bad_signature"),
            |k, t| {
                let mut h = k.header();
                h["jwk"] = k.attacker.jwk();
                k.by(&k.attacker, h, t)
            },
        ),
        case(
            "embedded_jwk_own_kid",
            "header jwk with the attacker's key and its own kid",
            Refused(E::UnknownKey, "unknown_key"),
            |k, t| {
                let h = json!({"alg": "ES256", "typ": "at+jwt", "kid": k.attacker.kid, "jwk": k.attacker.jwk()});
                k.by(&k.attacker, h, t)
            },
        ),
        case(
            "embedded_jwk_no_kid",
            "header jwk with the attacker's key and no kid",
            Refused(E::MissingKeyId, "missing_kid"),
            |k, t| {
                let h = json!({"alg": "ES256", "typ": "at+jwt", "jwk": k.attacker.jwk()});
                k.by(&k.attacker, h, t)
            },
        ),
        case(
            "embedded_x5c_attacker_signer_real_kid",
            "x5c: a token-signer certificate (reserved ID) from another CA",
            Refused(E::BadSignature, "bad_signature"),
            |k, t| {
                let mut h = k.header();
                h["x5c"] = json!(
                    k.attacker
                        .chain
                        .iter()
                        .map(|d| STANDARD.encode(d))
                        .collect::<Vec<_>>()
                );
                k.by(&k.attacker, h, t)
            },
        ),
        case(
            "embedded_x5c_real_workload_real_kid",
            "x5c: a real workload SVID that chains to the bundle, signed by its key",
            Refused(E::BadSignature, "bad_signature"),
            |k, t| {
                let mut h = k.header();
                h["x5c"] = json!(k.workload_x5c);
                compact(&h.to_string(), &k.claims(t).to_string(), |input| {
                    k.workload_key
                        .sign(&SystemRandom::new(), input)
                        .unwrap()
                        .as_ref()
                        .to_vec()
                })
            },
        ),
        case(
            "embedded_x5c_real_workload_no_kid",
            "x5c: a real workload SVID, no kid",
            Refused(E::MissingKeyId, "missing_kid"),
            |k, t| {
                let h = json!({"alg": "ES256", "typ": "at+jwt", "x5c": k.workload_x5c});
                compact(&h.to_string(), &k.claims(t).to_string(), |input| {
                    k.workload_key
                        .sign(&SystemRandom::new(), input)
                        .unwrap()
                        .as_ref()
                        .to_vec()
                })
            },
        ),
        case(
            "embedded_jku_real_kid",
            "jku pointing at a loopback trap, under a real kid",
            Refused(E::BadSignature, "bad_signature"),
            |k, t| {
                let mut h = k.header();
                h["jku"] = json!(k.trap_url);
                k.by(&k.attacker, h, t)
            },
        ),
        case(
            "embedded_jku_own_kid",
            "jku pointing at a loopback trap, the attacker's kid",
            Refused(E::UnknownKey, "unknown_key"),
            |k, t| {
                let h = json!({"alg": "ES256", "typ": "at+jwt", "kid": k.attacker.kid, "jku": k.trap_url});
                k.by(&k.attacker, h, t)
            },
        ),
        case(
            "embedded_x5u_real_kid",
            "x5u pointing at a loopback trap, under a real kid",
            Refused(E::BadSignature, "bad_signature"),
            |k, t| {
                let mut h = k.header();
                h["x5u"] = json!(k.trap_url);
                k.by(&k.attacker, h, t)
            },
        ),
        // Critical header extensions, signed by the issuer's key.
        case(
            "crit_exp",
            "crit [\"exp\"]",
            Refused(m(CRIT), "malformed"),
            |k, t| k.with_header(t, |h| h["crit"] = json!(["exp"])),
        ),
        case(
            "crit_unknown_extension",
            "crit naming an extension Baton does not know",
            Refused(m(CRIT), "malformed"),
            |k, t| {
                k.with_header(t, |h| {
                    h["crit"] = json!(["urn:example:must-understand"]);
                    h["urn:example:must-understand"] = json!(true);
                })
            },
        ),
        case(
            "crit_b64_false",
            "RFC 7797 unencoded payload (crit [\"b64\"], b64 false)",
            Refused(m(CRIT), "malformed"),
            |k, t| {
                k.with_header(t, |h| {
                    h["crit"] = json!(["b64"]);
                    h["b64"] = json!(false);
                })
            },
        ),
        case(
            "crit_empty_array",
            "crit [] (RFC 7515 §4.1.11 forbids an empty list)",
            Refused(m(CRIT), "malformed"),
            |k, t| k.with_header(t, |h| h["crit"] = json!([])),
        ),
        // Audience.
        case(
            "aud_array_with_only_this_audience",
            "aud [\"<this callee>\"]",
            Refused(m(AUD_ARRAY), "malformed"),
            |k, t| k.with_claims(t, |c| c["aud"] = json!([PAYMENTS])),
        ),
        case(
            "aud_array_with_this_and_another",
            "aud [\"<this callee>\", \"<another>\"]",
            Refused(m(AUD_ARRAY), "malformed"),
            |k, t| k.with_claims(t, |c| c["aud"] = json!([PAYMENTS, LEDGER])),
        ),
        case(
            "aud_another_callee",
            "aud names another service",
            Refused(E::WrongAudience, "wrong_audience"),
            |k, t| k.with_claims(t, |c| c["aud"] = json!(LEDGER)),
        ),
        // Duplicate members, signed by the issuer's key; the valid value comes last.
        case(
            "dup_header_alg",
            "two alg: none, then ES256",
            Refused(m(HEADER_DUP), "malformed"),
            |k, t| k.dup_header(t, r#""alg":"none""#),
        ),
        case(
            "dup_header_alg_escaped_name",
            "alg twice, once spelled a\\u006cg",
            Refused(m(HEADER_DUP), "malformed"),
            |k, t| k.dup_header(t, r#""a\u006cg":"HS256""#),
        ),
        case(
            "dup_header_kid",
            "two kid",
            Refused(m(HEADER_DUP), "malformed"),
            |k, t| k.dup_header(t, r#""kid":"../../etc/passwd""#),
        ),
        case(
            "dup_header_typ",
            "two typ: JWT, then at+jwt",
            Refused(m(HEADER_DUP), "malformed"),
            |k, t| k.dup_header(t, r#""typ":"JWT""#),
        ),
        case(
            "dup_header_unknown_member",
            "two jku (a member both verifiers ignore)",
            Refused(m(HEADER_DUP), "malformed"),
            |k, t| {
                k.dup_header(
                    t,
                    r#""jku":"https://127.0.0.1:1/a","jku":"https://127.0.0.1:1/b""#,
                )
            },
        ),
        // Too many members: remembering a thousand names to find a duplicate would
        // cost more than the signature check; past 64 the object is refused unread.
        case(
            "header_too_many_members",
            "200 distinct header members (each hostile token costs a verifier memory and time)",
            Refused(m(HEADER_SHAPE), "malformed"),
            |k, t| k.dup_header(t, &many_members(200)),
        ),
        case(
            "claims_too_many_members",
            "200 distinct claims, signed by the issuer's key",
            Refused(m(CLAIMS), "malformed"),
            |k, t| k.dup_claims(t, &many_members(200)),
        ),
        // RFC 8259 §8.1: JSON is UTF-8, also in the members a verifier skips.
        case(
            "header_invalid_utf8_in_unknown_member",
            "a byte 0xFF inside a header member both verifiers ignore",
            Refused(m(HEADER_SHAPE), "malformed"),
            |k, t| {
                let header = k.header().to_string();
                let header = [b"{\"x\":\"\xff\",", &header.as_bytes()[1..]].concat();
                k.signed_bytes(&header, k.claims(t).to_string().as_bytes())
            },
        ),
        case(
            "claims_invalid_utf8_in_unknown_member",
            "a lone surrogate's UTF-8 bytes inside an unknown claim, signed by the issuer's key",
            Refused(m(CLAIMS), "malformed"),
            |k, t| {
                let claims = k.claims(t).to_string();
                let claims = [b"{\"x\":\"\xed\xa0\x80\",", &claims.as_bytes()[1..]].concat();
                k.signed_bytes(k.header().to_string().as_bytes(), &claims)
            },
        ),
        case(
            "dup_claim_aud_other_first",
            "two aud: another callee, then this one",
            Refused(m(CLAIMS_DUP), "malformed"),
            |k, t| k.dup_claims(t, &format!(r#""aud":"{LEDGER}""#)),
        ),
        case(
            "dup_claim_aud_this_first",
            "two aud: this callee, then another",
            Refused(m(CLAIMS_DUP), "malformed"),
            |k, t| {
                let claims = k.claims(t).to_string();
                let claims = format!("{},\"aud\":\"{LEDGER}\"}}", &claims[..claims.len() - 1]);
                k.signed_text(&k.header().to_string(), &claims)
            },
        ),
        case(
            "dup_claim_aud_escaped_name",
            "aud twice, once spelled \\u0061ud",
            Refused(m(CLAIMS_DUP), "malformed"),
            |k, t| k.dup_claims(t, &format!(r#""\u0061ud":"{LEDGER}""#)),
        ),
        case(
            "dup_claim_sub",
            "two sub",
            Refused(m(CLAIMS_DUP), "malformed"),
            |k, t| k.dup_claims(t, &format!(r#""sub":"{LEDGER}""#)),
        ),
        case(
            "dup_claim_exp",
            "two exp: expired, then valid",
            Refused(m(CLAIMS_DUP), "malformed"),
            |k, t| k.dup_claims(t, &format!(r#""exp":{}"#, t - 3600)),
        ),
        case(
            "dup_claim_jti",
            "two jti",
            Refused(m(CLAIMS_DUP), "malformed"),
            |k, t| k.dup_claims(t, r#""jti":"another-jti""#),
        ),
        case(
            "dup_claim_unknown",
            "two role claims (a claim both verifiers ignore)",
            Refused(m(CLAIMS_DUP), "malformed"),
            |k, t| k.dup_claims(t, r#""role":"admin","role":"user""#),
        ),
        // Type.
        case(
            "typ_jwt",
            "typ JWT: a JWT, not an access token (RFC 8725 §3.11)",
            Refused(E::WrongType, "wrong_typ"),
            |k, t| k.with_header(t, |h| h["typ"] = json!("JWT")),
        ),
        case(
            "typ_missing",
            "no typ",
            Refused(E::WrongType, "wrong_typ"),
            |k, t| {
                k.with_header(t, |h| {
                    h.as_object_mut().unwrap().remove("typ");
                })
            },
        ),
        case(
            "typ_application_jwt",
            "typ application/jwt",
            Refused(E::WrongType, "wrong_typ"),
            |k, t| k.with_header(t, |h| h["typ"] = json!("application/jwt")),
        ),
        case(
            "typ_client_assertion",
            "typ client-authentication+jwt (an assertion passed off as a token)",
            Refused(E::WrongType, "wrong_typ"),
            |k, t| k.with_header(t, |h| h["typ"] = json!("client-authentication+jwt")),
        ),
        // Time.
        case(
            "exp_at_leeway_edge",
            "exp exactly 5 s ago: the leeway is spent",
            Refused(E::Expired, "expired"),
            |k, t| {
                k.with_claims(t, |c| {
                    c["iat"] = json!(t - 60);
                    c["nbf"] = json!(t - 60);
                    c["exp"] = json!(t - LEEWAY);
                })
            },
        ),
        case(
            "exp_long_past",
            "expired an hour ago",
            Refused(E::Expired, "expired"),
            |k, t| {
                k.with_claims(t, |c| {
                    c["iat"] = json!(t - 3660);
                    c["nbf"] = json!(t - 3660);
                    c["exp"] = json!(t - 3600);
                })
            },
        ),
        case(
            "nbf_beyond_leeway",
            "nbf 8 s ahead",
            Refused(E::NotYetValid, "not_yet_valid"),
            |k, t| k.with_claims(t, |c| c["nbf"] = json!(t + LEEWAY + 3)),
        ),
        case(
            "iat_beyond_leeway",
            "iat 8 s ahead",
            Refused(E::IssuedInFuture, "not_yet_valid"),
            |k, t| {
                k.with_claims(t, |c| {
                    c["iat"] = json!(t + LEEWAY + 3);
                    c["exp"] = json!(t + LEEWAY + 63);
                })
            },
        ),
        case(
            "lifetime_301s",
            "exp - iat = 301 s",
            Refused(E::LifetimeTooLong, "lifetime_too_long"),
            |k, t| k.with_claims(t, |c| c["exp"] = json!(t + 301)),
        ),
        case(
            "lifetime_overflow_iat_i64_min",
            "iat = i64::MIN, so exp - iat overflows",
            Refused(E::LifetimeTooLong, "lifetime_too_long"),
            |k, t| k.with_claims(t, |c| c["iat"] = json!(i64::MIN)),
        ),
        case(
            "exp_before_iat",
            "exp one second before iat",
            Refused(m(EXP_IAT), "malformed"),
            |k, t| k.with_claims(t, |c| c["exp"] = json!(t - 1)),
        ),
        case(
            "exp_as_string",
            "exp as a string",
            Refused(m(CLAIMS), "malformed"),
            |k, t| k.with_claims(t, |c| c["exp"] = json!((t + 60).to_string())),
        ),
        case(
            "exp_as_float",
            "exp with a fraction",
            Refused(m(CLAIMS), "malformed"),
            |k, t| k.with_claims(t, |c| c["exp"] = json!(t as f64 + 60.5)),
        ),
        // Size.
        case(
            "size_8193_bytes",
            "a validly signed token one byte over 8 KiB",
            Refused(E::TooLarge, "too_large"),
            |k, t| k.sized(t, MAX_TOKEN_BYTES + 1, &k.control_jti),
        ),
        // Other claims.
        case(
            "iss_other",
            "iss of another issuer",
            Refused(E::WrongIssuer, "wrong_issuer"),
            |k, t| k.with_claims(t, |c| c["iss"] = json!("https://evil.example")),
        ),
        case(
            "jti_missing",
            "no jti",
            Refused(E::MissingJti, "missing_jti"),
            |k, t| {
                k.with_claims(t, |c| {
                    c.as_object_mut().unwrap().remove("jti");
                })
            },
        ),
        case(
            "jti_empty",
            "jti \"\"",
            Refused(E::MissingJti, "missing_jti"),
            |k, t| k.with_claims(t, |c| c["jti"] = json!("")),
        ),
        case(
            "sub_and_client_id_differ",
            "client_id names another workload than sub",
            Refused(m(SUB_CLIENT), "malformed"),
            |k, t| k.with_claims(t, |c| c["client_id"] = json!(LEDGER)),
        ),
        case(
            "sub_of_another_trust_domain",
            "sub and client_id name a caller of another trust domain",
            Refused(m(SUB_FOREIGN), "malformed"),
            |k, t| {
                k.with_claims(t, |c| {
                    c["sub"] = json!("spiffe://other.org/fn/orders");
                    c["client_id"] = json!("spiffe://other.org/fn/orders");
                })
            },
        ),
    ]
}

/// A real issuer, the SDK verifier of its audience, and the audience's mTLS client.
struct World {
    _sb: Sandbox,
    /// Just before the issuer started: its replay ledger's epoch is no earlier.
    started: i64,
    server: Server,
    kit: Kit,
    verifier: Verifier,
    audience: reqwest::Client,
    plain: reqwest::Client,
    trap: TcpListener,
}

impl World {
    async fn start() -> World {
        let sb = Sandbox::with_workloads(
            &[
                (ORDERS, "orders", "ec-p256"),
                (PAYMENTS, "payments", "ec-p256"),
            ],
            POLICY,
        );
        let started = now();
        let server = Server::start(
            &sb,
            &["--policy", "policy.toml", "--issuer-url", ISSUER_URL],
        );
        let bundle = sb.bundle();
        let plain = https_client(&bundle, None);
        let audience = https_client(
            &bundle,
            Some((&sb.read("payments/svid.pem"), &sb.read("payments/svid.key"))),
        );

        // The issuer's active key, unsealed with the data directory's (dev) KEK.
        let kid = kids_in_state(&sb.keys_json(&["list"]), "active").remove(0);
        let data = sb.data_dir();
        let kek = Kek::load(&data.join("kek")).unwrap();
        let pkcs8 = kek
            .open_file(
                &data.join("keyring").join(format!("{kid}.key.sealed")),
                &format!("signing-key:{kid}"),
            )
            .unwrap();
        let rng = SystemRandom::new();
        let issuer_key =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8, &rng).unwrap();
        let issuer_key_der =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &pkcs8, &rng).unwrap();

        let jwks = plain
            .get(server.url("/.well-known/jwks.json"))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let doc: Value = serde_json::from_slice(&jwks).unwrap();
        let jwk = doc["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["kid"] == kid.as_str())
            .unwrap();
        let cert_der = STANDARD.decode(jwk["x5c"][0].as_str().unwrap()).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&cert_der).unwrap();
        let spki_der = cert.public_key().raw.to_vec();
        let sec1_point = cert.public_key().subject_public_key.data.to_vec();
        assert_eq!(
            sec1_point,
            ring::signature::KeyPair::public_key(&issuer_key).as_ref(),
            "the unsealed key is the published one"
        );

        let me: SpiffeId = PAYMENTS.parse().unwrap();
        let verifier = Verifier::builder(ISSUER_URL, me, bundle.as_bytes())
            .unwrap()
            .jwks(&jwks)
            .unwrap()
            .build()
            .unwrap();

        let attacker_ca = Ca::new("example.org");
        let rsa_pem = sb.openssl(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ]);
        let rsa = RsaKeyPair::from_pkcs8(&pem_blocks(rsa_pem.ok()).remove(0)).unwrap();
        let workload_x5c = pem_blocks(&sb.read("orders/svid.pem"))
            .iter()
            .map(|d| STANDARD.encode(d))
            .collect();
        let workload_key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &pem_blocks(&sb.read("orders/svid.key")).remove(0),
            &rng,
        )
        .unwrap();
        let trap = TcpListener::bind("127.0.0.1:0").unwrap();
        trap.set_nonblocking(true).unwrap();
        let kit = Kit {
            kid,
            issuer_key,
            issuer_key_der,
            cert_der,
            spki_der,
            sec1_point,
            attacker: attacker_ca.signer(Alg::Es256),
            attacker_ed: attacker_ca.signer(Alg::EdDsa),
            workload_key,
            workload_x5c,
            rsa,
            trap_url: format!("https://{}/jwks.json", trap.local_addr().unwrap()),
            control_jti: random_id(),
        };
        World {
            _sb: sb,
            started,
            server,
            kit,
            verifier,
            audience,
            plain,
            trap,
        }
    }

    /// `POST /v1/introspect` as the token's audience: status, Cache-Control, body.
    async fn introspect(&self, token: &str) -> (u16, String, String) {
        let resp = self
            .audience
            .post(self.server.url("/v1/introspect"))
            .form(&[("token", token)])
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let cache = resp
            .headers()
            .get("cache-control")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        (status, cache, resp.text().await.unwrap())
    }

    /// Every series of `baton_introspections_total` and `baton_tokens_consumed_total`,
    /// by its full label set.
    async fn metrics(&self) -> BTreeMap<String, f64> {
        let text = self
            .plain
            .get(self.server.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .filter(|l| {
                l.starts_with("baton_introspections_total")
                    || l.starts_with("baton_tokens_consumed_total")
            })
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                Some((series.to_owned(), value.parse().ok()?))
            })
            .collect()
    }
}

/// The series that changed between two scrapes, with their change.
fn delta(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    after
        .iter()
        .filter_map(|(k, v)| {
            let d = v - before.get(k).copied().unwrap_or(0.0);
            (d != 0.0).then(|| (k.clone(), d))
        })
        .collect()
}

/// Whether exactly one introspection series moved, by one, with these labels.
fn counted_once(changed: &BTreeMap<String, f64>, result: &str, reason: &str) -> bool {
    let introspections: Vec<(&String, &f64)> = changed
        .iter()
        .filter(|(series, _)| series.starts_with("baton_introspections_total{"))
        .collect();
    match introspections.as_slice() {
        [(series, by)] => {
            **by == 1.0
                && series.contains(&format!("result=\"{result}\""))
                && series.contains(&format!("reason=\"{reason}\""))
        }
        _ => false,
    }
}

#[tokio::test]
async fn every_hostile_token_is_refused_by_sdk_and_introspection_with_its_reason() {
    let w = World::start().await;
    let corpus = corpus();
    let k = &w.kit;
    let mut failures = Vec::new();

    // The SDK, at exactly the moment each token is made.
    for case in &corpus {
        let t0 = now();
        let token = (case.build)(k, t0);
        let got = w.verifier.verify_at(&token, t0);
        let ok = match (case.want, &got) {
            (Accepted, Ok(caller)) => caller.id.as_str() == ORDERS,
            (Refused(want, _), Err(err)) => *err == want,
            _ => false,
        };
        if !ok {
            failures.push(format!(
                "SDK {}: want {:?}, got {got:?}",
                case.name, case.want
            ));
        }
    }

    // Introspection by the token's audience, over mTLS, on the issuer's clock. The
    // issuer refuses tokens issued at or before its ledger's epoch (its start, SPEC
    // §7), and `exp_passed_inside_leeway` is issued 4 s before it is presented: wait
    // (at most 6 s) until that is after the start.
    while now() <= w.started + LEEWAY {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let first = w.metrics().await;
    let mut before = first.clone();
    let mut accepted = 0.0;
    let mut presented = Vec::new();
    for case in &corpus {
        let token = (case.build)(k, now());
        presented.push(token.clone());
        let (status, cache, body) = w.introspect(&token).await;
        let after = w.metrics().await;
        let changed = delta(&before, &after);
        before = after;
        if status != 200 || cache != "no-store" {
            failures.push(format!(
                "introspection {}: HTTP {status}, Cache-Control {cache:?}: {body}",
                case.name
            ));
            continue;
        }
        match case.want {
            Accepted => {
                let answer: Value = serde_json::from_str(&body).unwrap();
                accepted += 1.0;
                if answer["active"] != true || answer["sub"] != ORDERS {
                    failures.push(format!(
                        "introspection {}: want active, got {body}",
                        case.name
                    ));
                }
                if !counted_once(&changed, "active", "ok")
                    || changed.get("baton_tokens_consumed_total") != Some(&1.0)
                {
                    failures.push(format!(
                        "introspection {}: metrics moved by {changed:?}",
                        case.name
                    ));
                }
            }
            Refused(_, reason) => {
                // RFC 7662 §2.2, byte for byte: nothing else, not the token, not why.
                if body != r#"{"active":false}"# {
                    failures.push(format!(
                        "introspection {}: want {{\"active\":false}}, got {body}",
                        case.name
                    ));
                }
                if changed.len() != 1 || !counted_once(&changed, "inactive", reason) {
                    failures.push(format!(
                        "introspection {}: want one inactive introspection counted as {reason}, got {changed:?}",
                        case.name
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} checks failed:\n{}",
        failures.len(),
        2 * corpus.len(),
        failures.join("\n")
    );

    // Refusals consumed nothing: only the positive controls were used up.
    let total = delta(&first, &w.metrics().await);
    assert_eq!(
        total.get("baton_tokens_consumed_total"),
        Some(&accepted),
        "{total:?}"
    );

    // The control jti, carried by every hostile token that reached its claims, is
    // still unused: once in the SDK, once at the issuer, then replayed at both.
    let token = k.control(now());
    let caller = w.verifier.verify(&token).unwrap();
    assert_eq!(caller.jti, k.control_jti);
    assert_eq!(w.verifier.verify(&token), Err(VerifyError::Replayed));
    let (_, _, body) = w.introspect(&token).await;
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (&answer["active"], &answer["jti"]),
        (&json!(true), &json!(k.control_jti))
    );
    let (_, _, body) = w.introspect(&token).await;
    assert_eq!(body, r#"{"active":false}"#);

    // No verifier followed a jku or x5u.
    assert_eq!(
        w.trap.accept().map(|_| ()).map_err(|e| e.kind()),
        Err(std::io::ErrorKind::WouldBlock),
        "something fetched the attacker's URL"
    );
    // The audit log names tokens by jti at most: no segment of any reached it.
    let log = w.server.log().join("\n");
    for (case, token) in corpus.iter().zip(&presented) {
        for segment in token.split('.').filter(|s| s.len() >= 16) {
            assert!(
                !log.contains(segment),
                "{}: a token segment reached the log",
                case.name
            );
        }
    }
}

#[test]
fn corpus_has_unique_names_and_matches_the_doc() {
    let corpus = corpus();
    let mut names: Vec<&str> = corpus.iter().map(|c| c.name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), corpus.len(), "case names are unique");
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/hostile-tokens.md"
    ))
    .unwrap();
    let want = doc_table(&corpus);
    assert!(
        doc.contains(&want),
        "docs/hostile-tokens.md is out of date; its table must read:\n{want}"
    );
}

/// The table of docs/hostile-tokens.md, generated from the corpus.
fn doc_table(corpus: &[Case]) -> String {
    let test = "every_hostile_token_is_refused_by_sdk_and_introspection_with_its_reason";
    let mut out = String::from(
        "| case | what it attacks | SDK reason | introspection answer | test |\n|---|---|---|---|---|\n",
    );
    let mut controls = 0;
    for c in corpus {
        let (sdk, intro) = match c.want {
            Accepted => {
                controls += 1;
                (
                    "accepted (positive control)".to_owned(),
                    "`active:true`, consumed".to_owned(),
                )
            }
            Refused(VerifyError::Malformed(why), reason) => (
                format!("`malformed`: {why}"),
                format!("`{{\"active\":false}}` (`{reason}`)"),
            ),
            Refused(err, reason) => (
                format!("`{}`", err.reason()),
                format!("`{{\"active\":false}}` (`{reason}`)"),
            ),
        };
        out.push_str(&format!(
            "| `{}` | {} | {sdk} | {intro} | `{test}` |\n",
            c.name,
            c.attacks.replace('|', "\\|")
        ));
    }
    out.push_str(&format!(
        "\n{} cases, all refused; {controls} positive controls accepted.\n",
        corpus.len() - controls
    ));
    out
}
