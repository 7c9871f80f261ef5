//! Wire format of SPEC §3–§5: every type survives serialize → deserialize, and
//! hostile documents (private JWKs, `alg: none`, array audiences, …) are refused.
// Helpers outside #[test] functions are not covered by clippy.toml's allow-unwrap-in-tests.
#![allow(clippy::unwrap_used)]

use baton_proto::SpiffeId;
use baton_proto::claims::{
    AccessTokenClaims, AssertionClaims, Confirmation, JoseHeader, JwsAlgorithm, MAX_SCOPE_TOKENS,
    Scope, ScopeError,
};
use baton_proto::error::{ErrorBody, ErrorCode};
use baton_proto::jwks::{Jwk, JwkKey, Jwks, MAX_JWKS_KEYS};
use baton_proto::metadata::{AuthorizationServerMetadata, ClientAuthMethod};
use baton_proto::requests::{ClientAssertionError, IntrospectRequest, TokenRequest};
use baton_proto::responses::{IntrospectionResponse, SvidResponse, TokenResponse};
use proptest::prelude::*;
use serde_json::{Value, json};

// ---------------------------------------------------------------- strategies

fn spiffe_id() -> impl Strategy<Value = SpiffeId> {
    let td = "[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\\.[a-z0-9]{1,10}){0,2}";
    let seg =
        "[A-Za-z0-9._-]{1,12}".prop_filter("dot segments are invalid", |s| s != "." && s != "..");
    (td, prop::collection::vec(seg, 1..5))
        .prop_map(|(td, segs)| format!("spiffe://{td}/{}", segs.join("/")).parse().unwrap())
}

fn scope_token() -> impl Strategy<Value = String> {
    "[\\x21\\x23-\\x5B\\x5D-\\x7E]{1,24}"
}

fn scope_string() -> impl Strategy<Value = String> {
    prop::collection::vec(scope_token(), 1..=MAX_SCOPE_TOKENS).prop_map(|t| t.join(" "))
}

fn b64url_32() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_-]{43}"
}

fn claims() -> impl Strategy<Value = AccessTokenClaims> {
    (
        (
            "https://[a-z]{1,12}\\.example(:[0-9]{2,5})?",
            spiffe_id(),
            spiffe_id(),
        ),
        (any::<i64>(), any::<i64>(), any::<i64>()),
        ("[A-Za-z0-9_-]{22,43}", "[A-Za-z0-9_-]{1,32}"),
        (
            prop::option::of(scope_string()),
            prop::option::of(b64url_32()),
        ),
    )
        .prop_map(
            |((iss, sub, aud), (iat, nbf, exp), (jti, sid), (scope, x5t))| AccessTokenClaims {
                iss,
                client_id: sub.clone(),
                sub,
                aud,
                iat,
                nbf,
                exp,
                jti,
                sid,
                scope,
                cnf: x5t.map(|x5t_s256| Confirmation { x5t_s256 }),
            },
        )
}

fn algorithm() -> impl Strategy<Value = JwsAlgorithm> {
    prop_oneof![Just(JwsAlgorithm::Es256), Just(JwsAlgorithm::EdDsa)]
}

fn jwk(kid: String) -> impl Strategy<Value = Jwk> {
    let key = prop_oneof![
        (b64url_32(), b64url_32()).prop_map(|(x, y)| JwkKey::P256 { x, y }),
        b64url_32().prop_map(|x| JwkKey::Ed25519 { x }),
    ];
    let x5c = prop::collection::vec("[A-Za-z0-9+/]{4,64}={0,2}", 1..4);
    (key, x5c).prop_map(move |(key, x5c)| Jwk {
        kid: kid.clone(),
        key,
        x5c,
    })
}

fn jwks() -> impl Strategy<Value = Jwks> {
    (0..=MAX_JWKS_KEYS)
        .prop_flat_map(|n| (0..n).map(|i| jwk(format!("key-{i}"))).collect::<Vec<_>>())
        .prop_map(|keys| Jwks { keys })
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    prop::sample::select(ALL_ERROR_CODES.iter().map(|(c, _)| *c).collect::<Vec<_>>())
}

const ALL_ERROR_CODES: [(ErrorCode, &str); 12] = [
    (ErrorCode::InvalidRequest, "invalid_request"),
    (ErrorCode::InvalidClient, "invalid_client"),
    (ErrorCode::InvalidGrant, "invalid_grant"),
    (ErrorCode::UnauthorizedClient, "unauthorized_client"),
    (ErrorCode::UnsupportedGrantType, "unsupported_grant_type"),
    (ErrorCode::InvalidScope, "invalid_scope"),
    (ErrorCode::InvalidTarget, "invalid_target"),
    (ErrorCode::UnsupportedTokenType, "unsupported_token_type"),
    (ErrorCode::AccessDenied, "access_denied"),
    (ErrorCode::SlowDown, "slow_down"),
    (ErrorCode::TemporarilyUnavailable, "temporarily_unavailable"),
    (ErrorCode::ServerError, "server_error"),
];

fn roundtrip<T>(v: &T) -> T
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    serde_json::from_str(&serde_json::to_string(v).unwrap()).unwrap()
}

// ---------------------------------------------------------------- round trips

proptest! {
    #[test]
    fn access_token_claims_round_trip(c in claims()) {
        prop_assert_eq!(roundtrip(&c), c);
    }

    #[test]
    fn jose_header_round_trip(
        alg in algorithm(),
        kid in prop::option::of("[A-Za-z0-9_-]{1,32}"),
        x5c in prop::option::of(prop::collection::vec("[A-Za-z0-9+/]{4,64}", 1..4)),
    ) {
        let h = JoseHeader { alg, typ: Some("at+jwt".into()), kid, x5c };
        prop_assert_eq!(roundtrip(&h), h);
    }

    #[test]
    fn assertion_claims_round_trip(
        id in spiffe_id(),
        aud in "https://[a-z]{1,12}\\.example",
        jti in "[A-Za-z0-9_-]{22}",
        iat in any::<i64>(),
        exp in any::<i64>(),
        nbf in prop::option::of(any::<i64>()),
    ) {
        let a = AssertionClaims { iss: id.clone(), sub: id, aud, jti, iat, exp, nbf };
        prop_assert_eq!(roundtrip(&a), a);
    }

    #[test]
    fn token_response_round_trip(
        tokens in prop::collection::vec("[A-Za-z0-9._-]{10,40}", 1..=64),
        expires_in in 1..=300u64,
        scope in prop::option::of(scope_string()),
    ) {
        let r = TokenResponse::new(tokens.clone(), expires_in, scope).unwrap();
        prop_assert_eq!(r.tokens(), &tokens[..]);
        prop_assert_eq!(roundtrip(&r), r);
    }

    #[test]
    fn active_introspection_round_trip(c in claims()) {
        let r = IntrospectionResponse::from(c);
        prop_assert_eq!(roundtrip(&r), r);
    }

    #[test]
    fn jwks_round_trip(j in jwks()) {
        prop_assert_eq!(roundtrip(&j), j);
    }

    #[test]
    fn metadata_round_trip(
        host in "[a-z]{1,12}\\.example",
        algs in prop::collection::vec(algorithm(), 1..3),
        scopes in prop::option::of(prop::collection::vec(scope_token(), 0..5)),
    ) {
        let mut m = AuthorizationServerMetadata::for_issuer(&format!("https://{host}"), &algs);
        m.scopes_supported = scopes;
        prop_assert_eq!(roundtrip(&m), m);
    }

    #[test]
    fn error_body_round_trip(code in error_code(), description in prop::option::of("[ -!#-\\[\\]-~]{0,80}")) {
        let e = ErrorBody { error: code, error_description: description };
        prop_assert_eq!(roundtrip(&e), e);
    }

    #[test]
    fn svid_response_round_trip(svid in ".{0,200}", bundle in ".{0,200}", expires_at in any::<u64>()) {
        let r = SvidResponse { svid, bundle, expires_at };
        prop_assert_eq!(roundtrip(&r), r);
    }

    #[test]
    fn scope_parse_display_parse_round_trip(s in scope_string()) {
        let scope: Scope = s.parse().unwrap();
        let shown = scope.to_string();
        prop_assert_eq!(shown.parse::<Scope>().unwrap(), scope.clone());
        // Display dedups in first-seen order.
        let mut expected: Vec<&str> = Vec::new();
        for t in s.split(' ') {
            if !expected.contains(&t) {
                expected.push(t);
            }
        }
        prop_assert_eq!(scope.iter().collect::<Vec<_>>(), expected);
        prop_assert_eq!(roundtrip(&scope), scope);
    }

    #[test]
    fn scope_parser_never_panics(s in any::<String>()) {
        let _ = s.parse::<Scope>();
    }

    #[test]
    fn jwks_parser_never_panics(s in any::<String>()) {
        let _ = serde_json::from_str::<Jwks>(&s);
    }
}

// ---------------------------------------------------------------- SPEC §4: header

fn header_json(alg: &str) -> String {
    format!(r#"{{"alg":"{alg}","typ":"at+jwt","kid":"k1"}}"#)
}

#[test]
fn header_alg_none_is_rejected() {
    assert!(serde_json::from_str::<JoseHeader>(&header_json("none")).is_err());
}

#[test]
fn header_alg_outside_allowlist_is_rejected() {
    for alg in [
        "HS256", "HS512", "RS256", "PS256", "ES384", "ES512", "es256", "eddsa", "Ed25519",
        "ES256 ", "",
    ] {
        assert!(
            serde_json::from_str::<JoseHeader>(&header_json(alg)).is_err(),
            "alg {alg:?} accepted"
        );
    }
}

#[test]
fn header_allowlisted_algs_are_accepted() {
    for (alg, want) in [
        ("ES256", JwsAlgorithm::Es256),
        ("EdDSA", JwsAlgorithm::EdDsa),
    ] {
        assert_eq!(
            serde_json::from_str::<JoseHeader>(&header_json(alg))
                .unwrap()
                .alg,
            want
        );
    }
}

#[test]
fn header_with_crit_is_rejected() {
    let h = r#"{"alg":"ES256","typ":"at+jwt","kid":"k1","crit":["b64"],"b64":false}"#;
    assert!(serde_json::from_str::<JoseHeader>(h).is_err());
}

#[test]
fn header_unknown_members_are_ignored() {
    let h = r#"{"alg":"ES256","typ":"at+jwt","kid":"k1","jku":"https://evil.example/jwks"}"#;
    assert_eq!(
        serde_json::from_str::<JoseHeader>(h)
            .unwrap()
            .kid
            .as_deref(),
        Some("k1")
    );
}

#[test]
fn header_omits_absent_members() {
    let h = JoseHeader {
        alg: JwsAlgorithm::EdDsa,
        typ: Some("at+jwt".into()),
        kid: None,
        x5c: None,
    };
    assert_eq!(
        serde_json::to_value(&h).unwrap(),
        json!({"alg": "EdDSA", "typ": "at+jwt"})
    );
}

// ---------------------------------------------------------------- SPEC §4: claims

fn claims_json() -> Value {
    json!({
        "iss": "https://baton.example.org",
        "sub": "spiffe://example.org/fn/orders",
        "client_id": "spiffe://example.org/fn/orders",
        "aud": "spiffe://example.org/fn/payments",
        "iat": 1_700_000_000, "nbf": 1_700_000_000, "exp": 1_700_000_060,
        "jti": "q83vEjRWeJASNFZ4kBI0Vg", "sid": "s-1",
    })
}

fn claims_with(member: &str, value: Value) -> Value {
    let mut c = claims_json();
    c[member] = value;
    c
}

fn claims_without(member: &str) -> Value {
    let mut c = claims_json();
    c.as_object_mut().unwrap().remove(member);
    c
}

#[test]
fn claims_with_array_aud_are_rejected() {
    for aud in [
        json!(["spiffe://example.org/fn/payments"]),
        json!(["spiffe://example.org/a", "spiffe://example.org/b"]),
        json!([]),
    ] {
        assert!(
            serde_json::from_value::<AccessTokenClaims>(claims_with("aud", aud.clone())).is_err(),
            "{aud}"
        );
    }
}

#[test]
fn claims_with_invalid_spiffe_ids_are_rejected() {
    for member in ["sub", "client_id", "aud"] {
        for bad in [
            "spiffe://Example.org/fn",
            "spiffe://example.org",
            "https://example.org/fn",
            "spiffe://example.org/fn/../x",
            "",
        ] {
            assert!(
                serde_json::from_value::<AccessTokenClaims>(claims_with(member, json!(bad)))
                    .is_err(),
                "{member} = {bad:?} accepted"
            );
        }
    }
}

#[test]
fn claims_missing_a_required_member_are_rejected() {
    for member in [
        "iss",
        "sub",
        "client_id",
        "aud",
        "iat",
        "nbf",
        "exp",
        "jti",
        "sid",
    ] {
        assert!(
            serde_json::from_value::<AccessTokenClaims>(claims_without(member)).is_err(),
            "{member}"
        );
    }
}

#[test]
fn claims_with_non_integer_times_are_rejected() {
    for v in [json!(1.5), json!("1700000060"), json!(null), json!(1e300)] {
        assert!(
            serde_json::from_value::<AccessTokenClaims>(claims_with("exp", v.clone())).is_err(),
            "{v}"
        );
    }
}

#[test]
fn claims_with_duplicate_members_are_rejected() {
    let c = r#"{"iss":"https://baton.example.org","sub":"spiffe://example.org/a","client_id":"spiffe://example.org/a",
        "aud":"spiffe://example.org/b","aud":"spiffe://example.org/evil",
        "iat":1,"nbf":1,"exp":2,"jti":"j","sid":"s"}"#;
    assert!(serde_json::from_str::<AccessTokenClaims>(c).is_err());
}

#[test]
fn claims_omit_absent_scope_and_cnf_and_ignore_unknown() {
    let c: AccessTokenClaims = serde_json::from_value(claims_with("extra", json!(1))).unwrap();
    assert_eq!(serde_json::to_value(&c).unwrap(), claims_json());
}

#[test]
fn cnf_serializes_as_x5t_s256() {
    let cnf = Confirmation {
        x5t_s256: "bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg2".into(),
    };
    assert_eq!(
        serde_json::to_value(&cnf).unwrap(),
        json!({"x5t#S256": "bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg2"})
    );
}

#[test]
fn claims_scope_parses_into_scope() {
    let c: AccessTokenClaims =
        serde_json::from_value(claims_with("scope", json!("a b a"))).unwrap();
    assert_eq!(c.scopes().unwrap().unwrap().to_string(), "a b");
}

#[test]
fn assertion_with_array_aud_is_rejected() {
    let a = json!({
        "iss": "spiffe://example.org/fn/orders", "sub": "spiffe://example.org/fn/orders",
        "aud": ["https://baton.example.org"], "jti": "j", "iat": 1, "exp": 2,
    });
    assert!(serde_json::from_value::<AssertionClaims>(a).is_err());
}

// ---------------------------------------------------------------- RFC 6749 §3.3: scope

#[test]
fn malformed_scopes_are_rejected_with_the_reason() {
    let long = "a".repeat(129);
    let many = vec!["s"; MAX_SCOPE_TOKENS + 1].join(" ");
    let cases: [(&str, ScopeError); 9] = [
        ("", ScopeError::Empty),
        (" a", ScopeError::EmptyToken { index: 0 }),
        ("a ", ScopeError::EmptyToken { index: 1 }),
        ("a  b", ScopeError::EmptyToken { index: 1 }),
        (
            "a\"b",
            ScopeError::InvalidCharacter {
                index: 0,
                byte: b'"',
            },
        ),
        (
            "a b\\c",
            ScopeError::InvalidCharacter {
                index: 1,
                byte: b'\\',
            },
        ),
        (
            "a\tb",
            ScopeError::InvalidCharacter {
                index: 0,
                byte: b'\t',
            },
        ),
        (
            "caf\u{e9}",
            ScopeError::InvalidCharacter {
                index: 0,
                byte: 0xc3,
            },
        ),
        (&long, ScopeError::TokenTooLong { index: 0 }),
    ];
    for (input, want) in cases {
        assert_eq!(input.parse::<Scope>(), Err(want), "{input:?}");
    }
    assert_eq!(many.parse::<Scope>(), Err(ScopeError::TooManyTokens));
}

#[test]
fn scope_dedups_preserving_order() {
    let s: Scope = "b a b c a".parse().unwrap();
    assert_eq!(s.to_string(), "b a c");
    assert!(s.contains("c") && !s.contains("d"));
}

// ---------------------------------------------------------------- SPEC §5: responses

fn sample_claims() -> AccessTokenClaims {
    serde_json::from_value(claims_json()).unwrap()
}

#[test]
fn inactive_introspection_serializes_to_active_false_only() {
    assert_eq!(
        serde_json::to_string(&IntrospectionResponse::Inactive).unwrap(),
        r#"{"active":false}"#
    );
}

#[test]
fn active_introspection_carries_claims_and_bearer_type() {
    let mut want = claims_json();
    want["active"] = json!(true);
    want["token_type"] = json!("Bearer");
    let got = serde_json::to_value(IntrospectionResponse::from(sample_claims())).unwrap();
    assert_eq!(got, want);
}

#[test]
fn inactive_introspection_with_extra_members_deserializes_as_inactive() {
    let mut body = claims_json();
    body["active"] = json!(false);
    assert_eq!(
        serde_json::from_value::<IntrospectionResponse>(body).unwrap(),
        IntrospectionResponse::Inactive
    );
    assert_eq!(
        serde_json::from_str::<IntrospectionResponse>(r#"{"active":false}"#).unwrap(),
        IntrospectionResponse::Inactive
    );
}

#[test]
fn active_introspection_missing_a_claim_is_rejected() {
    for member in [
        "iss",
        "sub",
        "client_id",
        "aud",
        "iat",
        "nbf",
        "exp",
        "jti",
        "sid",
    ] {
        let mut body = claims_without(member);
        body["active"] = json!(true);
        assert!(
            serde_json::from_value::<IntrospectionResponse>(body).is_err(),
            "{member}"
        );
    }
}

#[test]
fn introspection_without_active_or_with_non_bool_active_is_rejected() {
    for body in [
        json!({}),
        json!({"active": "false"}),
        json!({"active": 0}),
        json!({"active": null}),
    ] {
        assert!(
            serde_json::from_value::<IntrospectionResponse>(body.clone()).is_err(),
            "{body}"
        );
    }
}

#[test]
fn introspection_with_duplicate_active_is_rejected() {
    assert!(
        serde_json::from_str::<IntrospectionResponse>(r#"{"active":false,"active":true}"#).is_err()
    );
}

#[test]
fn single_token_response_has_no_access_tokens() {
    let r = TokenResponse::new(vec!["t".into()], 60, Some("a".into())).unwrap();
    assert_eq!(
        serde_json::to_value(&r).unwrap(),
        json!({"access_token": "t", "token_type": "Bearer", "expires_in": 60, "scope": "a"})
    );
}

#[test]
fn token_response_batches_outside_bounds_are_not_built() {
    assert!(TokenResponse::new(Vec::new(), 60, None).is_none());
    assert!(TokenResponse::new(vec!["t".into(); 65], 60, None).is_none());
}

#[test]
fn malformed_token_responses_are_rejected() {
    let cases = [
        json!({"access_token": "a", "token_type": "bearer", "expires_in": 60}),
        json!({"access_token": "a", "token_type": "DPoP", "expires_in": 60}),
        json!({"access_token": "a", "token_type": "Bearer", "expires_in": -1}),
        json!({"access_token": "a", "token_type": "Bearer", "expires_in": 60, "access_tokens": []}),
        json!({"access_token": "a", "token_type": "Bearer", "expires_in": 60, "access_tokens": ["b", "a"]}),
        json!({"access_token": "a", "token_type": "Bearer", "expires_in": 60, "access_tokens": vec!["a"; 65]}),
    ];
    for body in cases {
        assert!(
            serde_json::from_value::<TokenResponse>(body.clone()).is_err(),
            "{body}"
        );
    }
}

#[test]
fn token_response_debug_does_not_print_tokens() {
    let r = TokenResponse::new(
        vec!["secret-token-1".into(), "secret-token-2".into()],
        60,
        None,
    )
    .unwrap();
    let shown = format!("{r:?}");
    assert!(!shown.contains("secret-token"), "{shown}");
}

// ---------------------------------------------------------------- RFC 6749 §5.2: errors

#[test]
fn error_codes_use_rfc_names() {
    for (code, name) in ALL_ERROR_CODES {
        assert_eq!(code.as_str(), name);
        assert_eq!(serde_json::to_value(code).unwrap(), json!(name));
        assert_eq!(
            serde_json::from_value::<ErrorCode>(json!(name)).unwrap(),
            code
        );
    }
}

#[test]
fn unknown_error_code_is_rejected() {
    for name in ["invalid_token", "InvalidRequest", "INVALID_REQUEST", ""] {
        assert!(
            serde_json::from_value::<ErrorCode>(json!(name)).is_err(),
            "{name}"
        );
    }
}

#[test]
fn error_body_without_description_is_just_the_code() {
    let e = ErrorBody::from(ErrorCode::SlowDown);
    assert_eq!(
        serde_json::to_string(&e).unwrap(),
        r#"{"error":"slow_down"}"#
    );
}

// ---------------------------------------------------------------- RFC 7517: JWKS

const X: &str = "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU";
const Y: &str = "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0";

fn ec_jwk() -> Value {
    json!({"kty": "EC", "crv": "P-256", "x": X, "y": Y, "kid": "k1", "use": "sig", "alg": "ES256", "x5c": ["MIIBxjCCAWyg"]})
}

fn okp_jwk() -> Value {
    json!({"kty": "OKP", "crv": "Ed25519", "x": X, "kid": "k2", "use": "sig", "alg": "EdDSA", "x5c": ["MIIBxjCCAWyg"]})
}

fn jwk_with(base: Value, member: &str, value: Value) -> Value {
    let mut k = base;
    k[member] = value;
    k
}

fn parses(jwk: &Value) -> bool {
    serde_json::from_value::<Jwks>(json!({ "keys": [jwk] })).is_ok()
}

#[test]
fn well_formed_jwks_parse_with_alg_bound_to_key() {
    let jwks: Jwks = serde_json::from_value(json!({"keys": [ec_jwk(), okp_jwk()]})).unwrap();
    assert_eq!(jwks.get("k1").unwrap().alg(), JwsAlgorithm::Es256);
    assert_eq!(jwks.get("k2").unwrap().alg(), JwsAlgorithm::EdDsa);
    assert!(jwks.get("k3").is_none());
}

#[test]
fn jwk_with_private_member_d_is_rejected() {
    assert!(!parses(&jwk_with(
        ec_jwk(),
        "d",
        json!("jpsQnnGQmL-YBIffH1136cspYG6-0iY7X1fCE9-E9LI")
    )));
    assert!(!parses(&jwk_with(
        okp_jwk(),
        "d",
        json!("nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A")
    )));
    // Presence alone is fatal: a null `d` is still a key set that meant to carry one.
    assert!(!parses(&jwk_with(ec_jwk(), "d", Value::Null)));
}

#[test]
fn jwk_with_any_private_or_symmetric_member_is_rejected() {
    for member in ["d", "p", "q", "dp", "dq", "qi", "oth", "k"] {
        for base in [ec_jwk(), okp_jwk()] {
            assert!(!parses(&jwk_with(base, member, json!("AAAA"))), "{member}");
        }
    }
}

#[test]
fn jwk_with_unsupported_kty_or_crv_is_rejected() {
    let cases = [
        json!({"kty": "oct", "k": "c2VjcmV0", "kid": "k", "use": "sig", "alg": "ES256", "x5c": ["MIIB"]}),
        json!({"kty": "oct", "kid": "k", "use": "sig", "alg": "ES256", "x5c": ["MIIB"]}),
        json!({"kty": "RSA", "n": "AQAB", "e": "AQAB", "kid": "k", "use": "sig", "alg": "ES256", "x5c": ["MIIB"]}),
        jwk_with(ec_jwk(), "crv", json!("P-384")),
        jwk_with(ec_jwk(), "crv", json!("secp256k1")),
        jwk_with(ec_jwk(), "kty", json!("ec")),
        jwk_with(okp_jwk(), "crv", json!("X25519")),
        jwk_with(okp_jwk(), "crv", json!("Ed448")),
        jwk_with(okp_jwk(), "crv", Value::Null),
    ];
    for jwk in cases {
        assert!(!parses(&jwk), "{jwk}");
    }
}

#[test]
fn jwk_whose_alg_does_not_match_its_key_is_rejected() {
    assert!(!parses(&jwk_with(ec_jwk(), "alg", json!("EdDSA"))));
    assert!(!parses(&jwk_with(okp_jwk(), "alg", json!("ES256"))));
    assert!(!parses(&jwk_with(ec_jwk(), "alg", json!("none"))));
    assert!(!parses(&jwk_with(ec_jwk(), "alg", json!("HS256"))));
}

#[test]
fn jwk_without_sig_use_alg_kid_or_certificate_is_rejected() {
    for member in ["use", "alg", "kid", "x5c", "x"] {
        let mut k = ec_jwk();
        k.as_object_mut().unwrap().remove(member);
        assert!(!parses(&k), "missing {member}");
    }
    let mut no_y = ec_jwk();
    no_y.as_object_mut().unwrap().remove("y");
    assert!(!parses(&no_y));
    assert!(!parses(&jwk_with(ec_jwk(), "use", json!("enc"))));
    assert!(!parses(&jwk_with(ec_jwk(), "x5c", json!([]))));
    assert!(!parses(&jwk_with(ec_jwk(), "x5c", json!("MIIB"))));
}

#[test]
fn jwk_with_malformed_coordinates_is_rejected() {
    let short = &X[..42];
    let padded = format!("{}=", &X[..42]);
    let std_alphabet = X.replace('f', "+");
    for bad in [short, padded.as_str(), std_alphabet.as_str(), ""] {
        assert!(!parses(&jwk_with(ec_jwk(), "x", json!(bad))), "x = {bad:?}");
        assert!(!parses(&jwk_with(ec_jwk(), "y", json!(bad))), "y = {bad:?}");
        assert!(
            !parses(&jwk_with(okp_jwk(), "x", json!(bad))),
            "okp x = {bad:?}"
        );
    }
    assert!(!parses(&jwk_with(okp_jwk(), "y", json!(Y))));
}

#[test]
fn jwk_unknown_members_are_ignored() {
    let k = jwk_with(
        jwk_with(ec_jwk(), "x5t#S256", json!("abc")),
        "key_ops",
        json!(["verify"]),
    );
    assert!(parses(&k));
}

#[test]
fn jwks_with_duplicate_kid_is_rejected() {
    let other = jwk_with(okp_jwk(), "kid", json!("k1"));
    assert!(serde_json::from_value::<Jwks>(json!({"keys": [ec_jwk(), other]})).is_err());
}

#[test]
fn jwks_over_max_keys_is_rejected() {
    let keys: Vec<Value> = (0..=MAX_JWKS_KEYS)
        .map(|i| jwk_with(ec_jwk(), "kid", json!(format!("k{i}"))))
        .collect();
    assert!(serde_json::from_value::<Jwks>(json!({ "keys": keys })).is_err());
}

#[test]
fn jwk_serializes_with_kty_crv_use_and_alg() {
    let jwks: Jwks = serde_json::from_value(json!({"keys": [ec_jwk(), okp_jwk()]})).unwrap();
    assert_eq!(
        serde_json::to_value(&jwks).unwrap(),
        json!({"keys": [ec_jwk(), okp_jwk()]})
    );
}

// ---------------------------------------------------------------- RFC 8414: metadata

#[test]
fn metadata_for_issuer_derives_spec_paths() {
    let m = AuthorizationServerMetadata::for_issuer(
        "https://baton.example.org",
        &[JwsAlgorithm::Es256, JwsAlgorithm::EdDsa],
    );
    let v = serde_json::to_value(&m).unwrap();
    assert_eq!(v["token_endpoint"], "https://baton.example.org/v1/token");
    assert_eq!(
        v["introspection_endpoint"],
        "https://baton.example.org/v1/introspect"
    );
    assert_eq!(
        v["revocation_endpoint"],
        "https://baton.example.org/v1/revoke"
    );
    assert_eq!(v["svid_endpoint"], "https://baton.example.org/v1/svid");
    assert_eq!(
        v["jwks_uri"],
        "https://baton.example.org/.well-known/jwks.json"
    );
    assert_eq!(v["grant_types_supported"], json!(["client_credentials"]));
    assert_eq!(v["response_types_supported"], json!([]));
    assert_eq!(
        v["token_endpoint_auth_methods_supported"],
        json!(["tls_client_auth", "private_key_jwt"])
    );
    assert_eq!(
        v["token_endpoint_auth_signing_alg_values_supported"],
        json!(["ES256", "EdDSA"])
    );
    assert_eq!(v["tls_client_certificate_bound_access_tokens"], json!(true));
    assert!(v.get("scopes_supported").is_none());
    assert_eq!(
        m.introspection_endpoint_auth_methods_supported,
        vec![
            ClientAuthMethod::TlsClientAuth,
            ClientAuthMethod::PrivateKeyJwt
        ]
    );
}

// ---------------------------------------------------------------- RFC 6749 §3.1 / RFC 7521 §4.2: requests

#[test]
fn empty_optional_parameters_count_as_omitted() {
    let r: TokenRequest = serde_json::from_value(json!({
        "grant_type": "client_credentials", "audience": "spiffe://example.org/b",
        "scope": "", "count": "", "client_assertion_type": "", "client_assertion": "",
    }))
    .unwrap();
    assert_eq!(
        (
            r.scope,
            r.count,
            r.client_assertion_type,
            r.client_assertion
        ),
        (None, None, None, None)
    );
}

#[test]
fn count_accepts_decimal_digits_only() {
    let parse = |count: Value| {
        serde_json::from_value::<TokenRequest>(json!({
            "grant_type": "client_credentials", "audience": "spiffe://example.org/b", "count": count,
        }))
        .map(|r| r.count)
    };
    assert_eq!(parse(json!("7")).unwrap(), Some(7));
    assert_eq!(parse(json!(7)).unwrap(), Some(7));
    for bad in [
        json!("+7"),
        json!("-1"),
        json!("256"),
        json!(" 7"),
        json!("0x10"),
        json!(256),
        json!(-1),
        json!(1.5),
    ] {
        assert!(parse(bad.clone()).is_err(), "{bad}");
    }
}

#[test]
fn repeated_parameter_is_rejected() {
    let body = r#"{"token":"a","token":"b"}"#;
    assert!(serde_json::from_str::<IntrospectRequest>(body).is_err());
}

#[test]
fn unknown_parameters_are_ignored() {
    let r: IntrospectRequest =
        serde_json::from_value(json!({"token": "t", "resource": "x"})).unwrap();
    assert_eq!(r.client_assertion(), Ok(None));
}

#[test]
fn client_assertion_needs_both_parameters_and_the_jwt_bearer_type() {
    let req = |ty: Option<&str>, jws: Option<&str>| IntrospectRequest {
        token: "t".into(),
        token_type_hint: None,
        client_assertion_type: ty.map(Into::into),
        client_assertion: jws.map(Into::into),
    };
    let jwt_bearer = Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer");
    assert_eq!(
        req(jwt_bearer, Some("a.b.c"))
            .client_assertion()
            .unwrap()
            .unwrap()
            .jws(),
        "a.b.c"
    );
    assert_eq!(
        req(jwt_bearer, None).client_assertion(),
        Err(ClientAssertionError::MissingAssertion)
    );
    assert_eq!(
        req(None, Some("a.b.c")).client_assertion(),
        Err(ClientAssertionError::MissingType)
    );
    assert_eq!(
        req(
            Some("urn:ietf:params:oauth:client-assertion-type:saml2-bearer"),
            Some("a.b.c")
        )
        .client_assertion(),
        Err(ClientAssertionError::UnsupportedType)
    );
}

#[test]
fn request_debug_does_not_print_credentials() {
    let r = IntrospectRequest {
        token: "secret-token".into(),
        token_type_hint: None,
        client_assertion_type: Some(
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into(),
        ),
        client_assertion: Some("secret-assertion".into()),
    };
    let shown = format!("{r:?} {:?}", r.client_assertion());
    assert!(!shown.contains("secret"), "{shown}");
}
