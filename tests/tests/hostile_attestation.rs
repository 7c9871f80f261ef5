//! Hostile attestation corpus (SPEC §2, §3, §5) against the real `baton serve` on
//! loopback TLS: hostile certificates presented over mTLS and as a client assertion's
//! `x5c`, and hostile client assertions, each a named entry that must be refused with
//! the RFC 6749 error of SPEC §5 and the issuer's typed reason.
//!
//! For every refusal the test checks the status and `error`, that `error_description`
//! names the reason and echoes neither the assertion nor the certificate, and the
//! `reason` of the `token.denied` audit line the request produced (one line per
//! request, read from the issuer's log). Over the whole run the
//! `baton_attestation_failures_total{method, reason}` deltas must equal the corpus'
//! expectations exactly and `baton_tokens_issued_total` must grow by the controls alone.
//! Controls (valid credentials built by the same code as the hostile ones, minus the
//! one defect) get tokens, so each refusal is the defect's doing.
//!
//! Certificates come from three independent makers: `baton` itself (`init`, `enroll`),
//! rcgen, and the `openssl` command. The issuer trusts every CA of its bundle file
//! (SPEC §2: "the CA certificate(s)"); the test appends a second root it holds the key
//! of (as during a CA rollover) so that it can sign defective certificates that do
//! chain to the bundle. The baton CA's own key stays sealed; the openssl impostor
//! copies that CA's name and key identifier exactly and signs with another key.
//!
//! The table in docs/hostile-attestation.md lists the same corpus; the last test
//! checks that it does.

// Helpers outside #[test] fns are test code too: a failed step should fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use baton_tests::{Sandbox, Server, https_client, pem_blocks};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use serde_json::{Value, json};
use time::OffsetDateTime;

const ORDERS: &str = "spiffe://example.org/fn/orders";
const INVOICES: &str = "spiffe://example.org/fn/invoices";
const DENIED: &str = "spiffe://example.org/fn/denied";
const PAYMENTS: &str = "spiffe://example.org/fn/payments";
const TOKEN_SIGNER: &str = "spiffe://example.org/baton/token-signer";
const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Any workload of the trust domain may call payments: a hostile credential that got
/// through attestation would get a token, not a policy refusal.
const POLICY: &str = r#"
[[allow]]
caller = "spiffe://example.org/*"
audience = "spiffe://example.org/fn/payments"
"#;

const CERT_TEST: &str = "hostile_certificates_are_refused_on_both_paths";
const ASSERTION_TEST: &str = "hostile_assertions_are_refused_and_burn_no_jti";

// ---------------------------------------------------------------------------------
// The corpus
// ---------------------------------------------------------------------------------

/// How the caller attests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    /// RFC 8705 `tls_client_auth`: the certificate is the TLS client certificate.
    Mtls,
    /// RFC 7523 `private_key_jwt`: the certificate is the assertion's `x5c`.
    Assertion,
}

impl Via {
    fn label(self) -> &'static str {
        match self {
            Self::Mtls => "mTLS",
            Self::Assertion => "assertion",
        }
    }
}

const BOTH: &[Via] = &[Via::Mtls, Via::Assertion];

/// What a case must get.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// 200 with a token: a control.
    Token,
    /// An RFC 6749 §5.2 error: HTTP status, `error`, the issuer's typed `reason` (audit
    /// log and metric label), and words `error_description` must contain.
    Refused {
        status: u16,
        error: &'static str,
        reason: &'static str,
        says: &'static str,
    },
}

impl Expect {
    fn describe(self) -> String {
        match self {
            Self::Token => "200, token issued (control)".to_owned(),
            Self::Refused {
                status,
                error,
                reason,
                ..
            } => format!("{status} `{error}`, reason `{reason}`"),
        }
    }
}

const fn invalid_client(reason: &'static str, says: &'static str) -> Expect {
    Expect::Refused {
        status: 401,
        error: "invalid_client",
        reason,
        says,
    }
}

const fn invalid_request(says: &'static str) -> Expect {
    Expect::Refused {
        status: 400,
        error: "invalid_request",
        reason: "invalid_request",
        says,
    }
}

/// A certificate (chain) presented over every path in `via`.
struct CertCase {
    name: &'static str,
    via: &'static [Via],
    expect: Expect,
    make: fn(&World) -> Creds,
}

/// One request built around a client assertion.
struct AssertionCase {
    name: &'static str,
    /// How the request attests, for the docs table.
    via: &'static str,
    expect: Expect,
    make: fn(&World) -> Attempt,
}

fn cert_corpus() -> Vec<CertCase> {
    fn case(name: &'static str, expect: Expect, make: fn(&World) -> Creds) -> CertCase {
        CertCase {
            name,
            via: BOTH,
            expect,
            make,
        }
    }
    fn bad_id(name: &'static str, says: &'static str, make: fn(&World) -> Creds) -> CertCase {
        case(name, invalid_client("bad_spiffe_id", says), make)
    }
    let untrusted = invalid_client(
        "untrusted_chain",
        "does not lead to this trust domain's bundle",
    );
    vec![
        // Controls: the same makers as the hostile cases, without the defect.
        case(
            "control: workload enrolled by `baton enroll` (P-256)",
            Expect::Token,
            |w| w.enrolled("orders", ORDERS, "ES256"),
        ),
        case(
            "control: workload enrolled by `baton enroll` (Ed25519)",
            Expect::Token,
            |w| w.enrolled("invoices", INVOICES, "EdDSA"),
        ),
        case(
            "control: rcgen leaf from a bundle root",
            Expect::Token,
            |w| w.forge.leaf("spiffe://example.org/fn/rcgen", |_, _| {}),
        ),
        case(
            "control: openssl leaf from a bundle root",
            Expect::Token,
            |w| {
                let uri = "spiffe://example.org/fn/openssl";
                w.forge
                    .openssl_leaf("ossl-control", &svid_ext(&format!("URI:{uri}")), uri)
            },
        ),
        case(
            "control: rcgen leaf under an intermediate",
            Expect::Token,
            |w| {
                let inter = w.forge.intermediate(|_, _| {});
                w.forge
                    .leaf_under(&inter, "spiffe://example.org/fn/regional", true)
            },
        ),
        case(
            "control: leaf, then an unrelated well-formed certificate",
            Expect::Token,
            |w| {
                let mut creds = w.forge.leaf("spiffe://example.org/fn/extra", |_, _| {});
                creds.chain.push(w.forge.stranger.der().to_vec());
                creds
            },
        ),
        // Validity periods.
        case(
            "expired leaf",
            invalid_client("certificate_expired", "has expired"),
            |w| {
                w.forge.leaf(ORDERS, |p, now| {
                    p.not_before = now - time::Duration::days(2);
                    p.not_after = now - time::Duration::days(1);
                })
            },
        ),
        case(
            "not-yet-valid leaf",
            invalid_client("certificate_not_yet_valid", "not valid yet"),
            |w| {
                w.forge.leaf(ORDERS, |p, now| {
                    p.not_before = now + time::Duration::days(1);
                    p.not_after = now + time::Duration::days(2);
                })
            },
        ),
        case(
            "expired intermediate (leaf valid)",
            invalid_client("certificate_expired", "has expired"),
            |w| {
                let inter = w.forge.intermediate(|p, now| {
                    p.not_before = now - time::Duration::days(30);
                    p.not_after = now - time::Duration::hours(1);
                });
                w.forge.leaf_under(&inter, ORDERS, true)
            },
        ),
        case(
            "not-yet-valid intermediate (leaf valid)",
            invalid_client("certificate_not_yet_valid", "not valid yet"),
            |w| {
                let inter = w.forge.intermediate(|p, now| {
                    p.not_before = now + time::Duration::hours(1);
                    p.not_after = now + time::Duration::days(30);
                });
                w.forge.leaf_under(&inter, ORDERS, true)
            },
        ),
        // End-entity shape.
        case(
            "leaf with CA:true (basicConstraints)",
            invalid_client("not_end_entity", "is a CA certificate"),
            |w| {
                w.forge.leaf(ORDERS, |p, _| {
                    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
                })
            },
        ),
        case(
            "leaf without digitalSignature (keyEncipherment only)",
            invalid_client("key_usage", "key usage"),
            |w| {
                w.forge.leaf(ORDERS, |p, _| {
                    p.key_usages = vec![KeyUsagePurpose::KeyEncipherment];
                })
            },
        ),
        case(
            "leaf without a keyUsage extension",
            invalid_client("key_usage", "key usage"),
            |w| w.forge.leaf(ORDERS, |p, _| p.key_usages.clear()),
        ),
        case(
            "leaf with keyCertSign beside digitalSignature",
            invalid_client("key_usage", "key usage"),
            |w| {
                w.forge.leaf(ORDERS, |p, _| {
                    p.key_usages.push(KeyUsagePurpose::KeyCertSign);
                })
            },
        ),
        case(
            "leaf whose extendedKeyUsage is serverAuth only",
            invalid_client("key_usage", "key usage"),
            |w| {
                w.forge.leaf(ORDERS, |p, _| {
                    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
                })
            },
        ),
        // Subject alternative names.
        case(
            "two URI SANs (openssl)",
            invalid_client("san_count", "exactly one URI SAN"),
            |w| {
                let san = format!("URI:{ORDERS},URI:spiffe://example.org/fn/admin");
                w.forge.openssl_leaf("two-sans", &svid_ext(&san), ORDERS)
            },
        ),
        case(
            "no URI SAN, a DNS SAN only",
            invalid_client("san_count", "exactly one URI SAN"),
            |w| {
                w.forge.leaf(ORDERS, |p, _| {
                    p.subject_alt_names =
                        vec![SanType::DnsName("orders.example.org".try_into().unwrap())];
                })
            },
        ),
        case(
            "no SAN at all, the SPIFFE ID in the subject CN (openssl)",
            invalid_client("san_count", "exactly one URI SAN"),
            |w| {
                let ext = svid_ext("").replace("subjectAltName=\n", "");
                w.forge.openssl_leaf_with_subject(
                    "cn-only",
                    // `/` separates RDNs in -subj; escaped, it is part of the CN.
                    &format!("/CN={}", ORDERS.replace('/', "\\/")),
                    &ext,
                    ORDERS,
                )
            },
        ),
        bad_id("URI SAN with a query", "must not have a query", |w| {
            w.forge
                .leaf("spiffe://example.org/fn/orders?admin=1", |_, _| {})
        }),
        bad_id("URI SAN with a fragment", "must not have a fragment", |w| {
            w.forge
                .leaf("spiffe://example.org/fn/orders#admin", |_, _| {})
        }),
        bad_id(
            "URI SAN with an upper-case scheme (openssl)",
            "must start with \"spiffe://\"",
            |w| {
                w.forge.openssl_leaf(
                    "upper-scheme",
                    &svid_ext("URI:SPIFFE://example.org/fn/orders"),
                    ORDERS,
                )
            },
        ),
        bad_id(
            "URI SAN with an upper-case trust domain",
            "lower case",
            |w| w.forge.leaf("spiffe://Example.org/fn/orders", |_, _| {}),
        ),
        bad_id("URI SAN with a `..` path segment", "\"..\" segment", |w| {
            w.forge.leaf("spiffe://example.org/fn/../orders", |_, _| {})
        }),
        bad_id("URI SAN with a `.` path segment", "\"..\" segment", |w| {
            w.forge.leaf("spiffe://example.org/fn/./orders", |_, _| {})
        }),
        bad_id("URI SAN with an empty path segment", "empty segment", |w| {
            w.forge.leaf("spiffe://example.org/fn//orders", |_, _| {})
        }),
        bad_id("URI SAN with a trailing slash", "empty segment", |w| {
            w.forge.leaf("spiffe://example.org/fn/orders/", |_, _| {})
        }),
        bad_id("URI SAN with a port", "port", |w| {
            w.forge
                .leaf("spiffe://example.org:443/fn/orders", |_, _| {})
        }),
        bad_id("URI SAN with user info (openssl)", "user info", |w| {
            w.forge.openssl_leaf(
                "userinfo",
                &svid_ext("URI:spiffe://orders@example.org/fn/orders"),
                ORDERS,
            )
        }),
        bad_id(
            "URI SAN with a percent-encoded path",
            "character outside",
            |w| w.forge.leaf("spiffe://example.org/fn/%6frders", |_, _| {}),
        ),
        bad_id(
            "URI SAN with an https scheme",
            "must start with \"spiffe://\"",
            |w| w.forge.leaf("https://example.org/fn/orders", |_, _| {}),
        ),
        bad_id(
            "URI SAN naming the trust domain only (no path)",
            "has no path",
            |w| w.forge.leaf("spiffe://example.org", |_, _| {}),
        ),
        // Trust: trust domain, chain, signature.
        case(
            "another trust domain's ID, signed by a bundle root",
            invalid_client(
                "foreign_trust_domain",
                "is not in this issuer's trust domain",
            ),
            |w| w.forge.leaf("spiffe://other.org/fn/orders", |_, _| {}),
        ),
        case(
            "another trust domain's CA (`baton init --trust-domain other.org`)",
            untrusted,
            |w| w.forge.foreign("other.org", "foreign-td"),
        ),
        case(
            "a stranger's CA for our trust domain name (`baton init`)",
            untrusted,
            |w| w.forge.foreign("example.org", "foreign-ca"),
        ),
        case(
            "chain through an unknown intermediate (not signed by the bundle)",
            untrusted,
            |w| {
                let inter = w.forge.stranger_intermediate();
                w.forge.leaf_under(&inter, ORDERS, true)
            },
        ),
        case(
            "leaf under an intermediate, intermediate left out",
            untrusted,
            |w| {
                let inter = w.forge.intermediate(|_, _| {});
                w.forge.leaf_under(&inter, ORDERS, false)
            },
        ),
        case(
            "leaf signed by a CA:false certificate of the bundle root",
            untrusted,
            |w| {
                let signer = w.forge.intermediate(|p, _| {
                    p.is_ca = IsCa::ExplicitNoCa;
                    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
                });
                w.forge.leaf_under(&signer, ORDERS, true)
            },
        ),
        case(
            "our CA's name and key id, signed by another key (openssl)",
            untrusted,
            |w| w.forge.impostor_of_baton_ca(),
        ),
        case(
            "self-signed leaf carrying a valid SPIFFE ID (openssl)",
            untrusted,
            |w| w.forge.openssl_self_signed(ORDERS),
        ),
        case(
            "leaf, then garbage DER in the chain",
            invalid_client("bad_chain_certificate", "certificate 2 of the chain"),
            |w| {
                let mut creds = w.forge.leaf(ORDERS, |_, _| {});
                creds
                    .chain
                    .push(b"this is not a certificate at all".to_vec());
                creds
            },
        ),
        case(
            "chain of 5 certificates (bound is 4)",
            invalid_client("chain_too_long", "more than 4 certificates"),
            |w| {
                let mut creds = w.forge.leaf(ORDERS, |_, _| {});
                for _ in 0..4 {
                    creds.chain.push(w.forge.root.der().to_vec());
                }
                creds
            },
        ),
        // Identities.
        case(
            "reserved ID /baton/token-signer as a workload",
            invalid_client("reserved_id", "is reserved for Baton itself"),
            |w| w.forge.leaf(TOKEN_SIGNER, |_, _| {}),
        ),
        case(
            "reserved ID /baton as a workload",
            invalid_client("reserved_id", "is reserved for Baton itself"),
            |w| w.forge.leaf("spiffe://example.org/baton", |_, _| {}),
        ),
        case(
            "deny-listed identity (`baton identities revoke`)",
            invalid_client("denied", "is on the identity deny list"),
            |w| w.enrolled("denied", DENIED, "ES256"),
        ),
    ]
}

fn assertion_corpus() -> Vec<AssertionCase> {
    fn case(name: &'static str, expect: Expect, make: fn(&World) -> Attempt) -> AssertionCase {
        AssertionCase {
            name,
            via: "assertion",
            expect,
            make,
        }
    }
    let mismatch = invalid_client(
        "issuer_subject_mismatch",
        "iss and sub must both equal the certificate's SPIFFE ID",
    );
    let wrong_aud = invalid_client("wrong_audience", "aud must be this issuer's identifier");
    let bad_sig = invalid_client("bad_signature", "signature does not verify");
    let no_alg = invalid_client("unsupported_algorithm", "alg must be ES256 or EdDSA");
    vec![
        case(
            "control: ES256, aud = issuer identifier",
            Expect::Token,
            |w| w.orders_assertion(|_| {}),
        ),
        case(
            "control: aud = token endpoint URL (RFC 7523)",
            Expect::Token,
            |w| {
                let endpoint = format!("{}/v1/token", w.issuer);
                w.orders_assertion(|c| c["aud"] = json!(endpoint))
            },
        ),
        case("control: EdDSA", Expect::Token, |w| {
            let creds = w.enrolled("invoices", INVOICES, "EdDSA");
            Attempt::assertion(w.assertion_for(&creds, |_| {}).0)
        }),
        // iss / sub
        case(
            "iss = certificate ID, sub = another workload",
            mismatch,
            |w| w.orders_assertion(|c| c["sub"] = json!(PAYMENTS)),
        ),
        case(
            "iss = another workload, sub = certificate ID",
            mismatch,
            |w| w.orders_assertion(|c| c["iss"] = json!(PAYMENTS)),
        ),
        case(
            "iss = sub = another workload than the certificate's",
            mismatch,
            |w| {
                w.orders_assertion(|c| {
                    c["iss"] = json!(PAYMENTS);
                    c["sub"] = json!(PAYMENTS);
                })
            },
        ),
        case(
            "iss and sub not SPIFFE IDs",
            invalid_client("malformed_assertion", "iss and sub (SPIFFE IDs)"),
            |w| {
                w.orders_assertion(|c| {
                    c["iss"] = json!("orders");
                    c["sub"] = json!("orders");
                })
            },
        ),
        // Times
        case(
            "lifetime 301 s (exp - iat > 300)",
            invalid_client("assertion_too_long", "exceeds 300 seconds"),
            |w| {
                w.orders_assertion(|c| {
                    c["exp"] = json!(c["iat"].as_i64().unwrap() + 301);
                })
            },
        ),
        case(
            "lifetime one hour",
            invalid_client("assertion_too_long", "exceeds 300 seconds"),
            |w| {
                w.orders_assertion(|c| {
                    c["exp"] = json!(c["iat"].as_i64().unwrap() + 3600);
                })
            },
        ),
        case(
            "expired assertion",
            invalid_client("assertion_expired", "client assertion has expired"),
            |w| {
                w.orders_assertion(|c| {
                    c["iat"] = json!(now() - 120);
                    c["exp"] = json!(now() - 60);
                })
            },
        ),
        case(
            "iat in the future",
            invalid_client("assertion_not_yet_valid", "in the future"),
            |w| {
                w.orders_assertion(|c| {
                    c["iat"] = json!(now() + 60);
                    c["exp"] = json!(now() + 120);
                })
            },
        ),
        case(
            "nbf in the future",
            invalid_client("assertion_not_yet_valid", "in the future"),
            |w| w.orders_assertion(|c| c["nbf"] = json!(now() + 60)),
        ),
        case(
            "exp before iat",
            invalid_client("malformed_assertion", "exp must be later than iat"),
            |w| {
                w.orders_assertion(|c| {
                    c["iat"] = json!(now());
                    c["exp"] = json!(now() - 1);
                })
            },
        ),
        case(
            "iat before the issuer's replay-ledger epoch (signed before a restart)",
            invalid_client("before_ledger_epoch", "before the replay ledger's epoch"),
            |w| {
                let iat = w.ledger_started_at - 1;
                let exp = now() + 30;
                assert!(exp - iat <= 300, "the machine is too slow for this case");
                w.orders_assertion(|c| {
                    c["iat"] = json!(iat);
                    c["exp"] = json!(exp);
                })
            },
        ),
        // Audience
        case("aud = another issuer's identifier", wrong_aud, |w| {
            w.orders_assertion(|c| c["aud"] = json!("https://other-issuer.example"))
        }),
        case("aud = another issuer's token endpoint", wrong_aud, |w| {
            w.orders_assertion(|c| c["aud"] = json!("https://localhost:1/v1/token"))
        }),
        case(
            "aud = our issuer identifier with a trailing slash",
            wrong_aud,
            |w| {
                let aud = format!("{}/", w.issuer);
                w.orders_assertion(|c| c["aud"] = json!(aud))
            },
        ),
        case(
            "aud = our listener by IP instead of the issuer identifier",
            wrong_aud,
            |w| {
                let aud = format!("https://{}", w.server.addr);
                w.orders_assertion(|c| c["aud"] = json!(aud))
            },
        ),
        case(
            "aud = array holding only our issuer identifier",
            invalid_client(
                "malformed_assertion",
                "aud must be one string, not an array",
            ),
            |w| {
                let aud = json!([w.issuer]);
                w.orders_assertion(|c| c["aud"] = aud)
            },
        ),
        case(
            "aud = array holding ours and another server's",
            invalid_client(
                "malformed_assertion",
                "aud must be one string, not an array",
            ),
            |w| {
                let aud = json!([w.issuer, "https://other-issuer.example"]);
                w.orders_assertion(|c| c["aud"] = aud)
            },
        ),
        // Signature and algorithm
        case(
            "signed by a key other than the certificate's",
            bad_sig,
            |w| {
                let orders = w.enrolled("orders", ORDERS, "ES256");
                let attacker = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
                let (header, claims, jti) = w.parts(&orders, |_| {});
                let jws = encode_jws(&header, &claims, |m| es256(&attacker.serialize_pem(), m));
                Attempt::assertion(jws).unburned(jti)
            },
        ),
        case(
            "attacker key embedded as a `jwk` header, signed by it",
            bad_sig,
            |w| {
                let orders = w.enrolled("orders", ORDERS, "ES256");
                let attacker = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
                let (mut header, claims, jti) = w.parts(&orders, |_| {});
                let point = &attacker.public_key_raw()[1..];
                header["jwk"] = json!({
                    "kty": "EC", "crv": "P-256",
                    "x": URL_SAFE_NO_PAD.encode(&point[..32]),
                    "y": URL_SAFE_NO_PAD.encode(&point[32..]),
                });
                let jws = encode_jws(&header, &claims, |m| es256(&attacker.serialize_pem(), m));
                Attempt::assertion(jws).unburned(jti)
            },
        ),
        case("claims swapped after signing", bad_sig, |w| {
            let orders = w.enrolled("orders", ORDERS, "ES256");
            let (signed, jti) = w.assertion_for(&orders, |_| {});
            let (header, claims, _) = w.parts(&orders, |c| c["jti"] = json!(jti));
            let mut claims = claims;
            claims["exp"] = json!(now() + 290);
            let forged = encode_jws(&header, &claims, |_| Vec::new());
            let (input, _) = forged.rsplit_once('.').unwrap();
            let (_, sig) = signed.rsplit_once('.').unwrap();
            Attempt::assertion(format!("{input}.{sig}")).unburned(jti)
        }),
        case("alg `none`, empty signature", no_alg, |w| {
            let orders = w.enrolled("orders", ORDERS, "ES256");
            let (mut header, claims, jti) = w.parts(&orders, |_| {});
            header["alg"] = json!("none");
            Attempt::assertion(encode_jws(&header, &claims, |_| Vec::new())).unburned(jti)
        }),
        case(
            "HS256 keyed with the certificate's public key (key confusion)",
            no_alg,
            |w| {
                let orders = w.enrolled("orders", ORDERS, "ES256");
                let (mut header, claims, jti) = w.parts(&orders, |_| {});
                header["alg"] = json!("HS256");
                let (_, leaf) = x509_parser::parse_x509_certificate(&orders.chain[0]).unwrap();
                let spki = leaf.public_key().raw.to_vec();
                let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &spki);
                let jws = encode_jws(&header, &claims, |m| {
                    ring::hmac::sign(&key, m).as_ref().to_vec()
                });
                Attempt::assertion(jws).unburned(jti)
            },
        ),
        case(
            "alg EdDSA over a P-256 certificate, signed by an Ed25519 key",
            invalid_client("algorithm_mismatch", "does not match the certificate's key"),
            |w| {
                let orders = w.enrolled("orders", ORDERS, "ES256");
                let invoices = w.enrolled("invoices", INVOICES, "EdDSA");
                let (mut header, claims, jti) = w.parts(&orders, |_| {});
                header["alg"] = json!("EdDSA");
                let jws = encode_jws(&header, &claims, |m| eddsa(&invoices.key_pem, m));
                Attempt::assertion(jws).unburned(jti)
            },
        ),
        // Header: typ, crit, x5c
        case(
            "typ at+jwt (an access token's type)",
            invalid_client("malformed_assertion", "typ must be JWT"),
            |w| w.orders_header_edit(|h| h["typ"] = json!("at+jwt")),
        ),
        case(
            "a `crit` header member",
            invalid_client("malformed_assertion", "no crit"),
            |w| w.orders_header_edit(|h| h["crit"] = json!(["exp"])),
        ),
        case(
            "x5c missing",
            invalid_client(
                "malformed_assertion",
                "must carry the certificate chain in x5c",
            ),
            |w| {
                w.orders_header_edit(|h| {
                    h.as_object_mut().unwrap().remove("x5c");
                })
            },
        ),
        case(
            "x5c empty",
            invalid_client("malformed_assertion", "x5c is empty"),
            |w| w.orders_header_edit(|h| h["x5c"] = json!([])),
        ),
        case(
            "x5c entry that is not base64",
            invalid_client("malformed_assertion", "not standard base64"),
            |w| w.orders_header_edit(|h| h["x5c"] = json!(["!!not base64!!"])),
        ),
        case(
            "x5c entry that is base64url, not base64 (RFC 7515 §4.1.6)",
            invalid_client("malformed_assertion", "not standard base64"),
            |w| {
                let orders = w.enrolled("orders", ORDERS, "ES256");
                let url = URL_SAFE_NO_PAD.encode(&orders.chain[0]);
                w.orders_header_edit(|h| h["x5c"] = json!([url]))
            },
        ),
        case(
            "x5c entry that is base64 of garbage, not DER",
            invalid_client("bad_certificate", "not valid DER X.509"),
            |w| {
                let junk = STANDARD.encode(b"this is not a certificate at all");
                w.orders_header_edit(|h| h["x5c"] = json!([junk]))
            },
        ),
        case(
            "x5c with 100 entries",
            invalid_client("chain_too_long", "more than 4 certificates"),
            |w| w.orders_header_edit(|h| h["x5c"] = json!(vec!["MA=="; 100])),
        ),
        case(
            "x5c = the token-signer certificate from the JWKS",
            invalid_client("reserved_id", "is reserved for Baton itself"),
            |w| w.orders_header_edit(|h| h["x5c"] = json!(w.signer_x5c)),
        ),
        // jti and size
        case(
            "empty jti",
            invalid_client("malformed_assertion", "jti must be 1 to 256 bytes"),
            |w| w.orders_assertion(|c| c["jti"] = json!("")),
        ),
        case(
            "jti of 257 bytes",
            invalid_client("malformed_assertion", "jti must be 1 to 256 bytes"),
            |w| w.orders_assertion(|c| c["jti"] = json!("j".repeat(257))),
        ),
        case(
            "assertion over 16 KiB",
            invalid_client("assertion_too_large", "longer than 16384 bytes"),
            |w| w.orders_assertion(|c| c["pad"] = json!("p".repeat(16 * 1024))),
        ),
        case(
            "not a JWS at all",
            invalid_client("malformed_assertion", "exactly three base64url segments"),
            |_| Attempt::assertion("not-a-jws".to_owned()),
        ),
        case(
            "an access token of this issuer presented as the assertion",
            invalid_client("malformed_assertion", "typ must be JWT"),
            |w| Attempt::assertion(w.control_token.clone()),
        ),
        // One-time use
        case(
            "replayed assertion (accepted once, then presented again)",
            invalid_client("replayed", "jti was already used"),
            |w| {
                let orders = w.enrolled("orders", ORDERS, "ES256");
                let jws = w.assertion_for(&orders, |_| {}).0;
                Attempt::assertion(jws.clone()).primed_by(Attempt::assertion(jws))
            },
        ),
        case(
            "fresh assertion reusing a consumed jti",
            invalid_client("replayed", "jti was already used"),
            |w| {
                let orders = w.enrolled("orders", ORDERS, "ES256");
                let (first, jti) = w.assertion_for(&orders, |_| {});
                let (again, _) = w.assertion_for(&orders, |c| {
                    c["jti"] = json!(jti);
                    c["exp"] = json!(now() + 90);
                });
                Attempt::assertion(again).primed_by(Attempt::assertion(first))
            },
        ),
        // Form (RFC 6749 §2.3, RFC 7521 §4.2)
        AssertionCase {
            name: "client certificate and client assertion at once",
            via: "mTLS and assertion in one request",
            expect: invalid_request("use one client authentication method"),
            make: |w| {
                let mut attempt = w.orders_assertion(|_| {});
                attempt.tls = Some(w.enrolled("orders", ORDERS, "ES256"));
                attempt
            },
        },
        case(
            "client_assertion_type of another profile (SAML bearer)",
            invalid_request("unsupported client_assertion_type"),
            |w| {
                let mut attempt = w.orders_assertion(|_| {});
                attempt.client_assertion_type =
                    Some("urn:ietf:params:oauth:client-assertion-type:saml2-bearer");
                attempt
            },
        ),
        case(
            "client_assertion without client_assertion_type",
            invalid_request("without client_assertion_type"),
            |w| {
                let mut attempt = w.orders_assertion(|_| {});
                attempt.client_assertion_type = None;
                attempt
            },
        ),
    ]
}

// ---------------------------------------------------------------------------------
// Credentials and requests
// ---------------------------------------------------------------------------------

/// A certificate chain (DER, leaf first) and the leaf's PKCS#8 key.
#[derive(Clone)]
struct Creds {
    chain: Vec<Vec<u8>>,
    key_pem: String,
    /// `ES256` (P-256 key) or `EdDSA` (Ed25519 key).
    alg: &'static str,
    /// The SPIFFE ID an assertion made with these credentials claims as `iss` and `sub`.
    claims_id: String,
}

impl Creds {
    fn from_files(chain: &Path, key: &Path, alg: &'static str, claims_id: &str) -> Self {
        let chain = pem_blocks(&fs::read_to_string(chain).unwrap());
        Self {
            chain,
            key_pem: fs::read_to_string(key).unwrap(),
            alg,
            claims_id: claims_id.to_owned(),
        }
    }

    fn chain_pem(&self) -> String {
        self.chain
            .iter()
            .map(|der| {
                let b64 = STANDARD.encode(der);
                let lines: Vec<&str> = b64
                    .as_bytes()
                    .chunks(64)
                    .map(|c| std::str::from_utf8(c).unwrap())
                    .collect();
                format!(
                    "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
                    lines.join("\n")
                )
            })
            .collect()
    }

    fn x5c(&self) -> Vec<String> {
        self.chain.iter().map(|der| STANDARD.encode(der)).collect()
    }
}

/// One token request.
#[derive(Clone, Default)]
struct Attempt {
    /// Client certificate presented in the TLS handshake.
    tls: Option<Creds>,
    client_assertion: Option<String>,
    client_assertion_type: Option<&'static str>,
    /// Sent first, and must succeed (replay cases).
    prime: Option<Box<Attempt>>,
    /// A `jti` of the orders workload this attempt carried, which a refusal must leave
    /// unused: a valid assertion reusing it later must be accepted.
    unburned: Option<String>,
}

impl Attempt {
    fn mtls(creds: Creds) -> Self {
        Self {
            tls: Some(creds),
            ..Self::default()
        }
    }

    fn assertion(jws: String) -> Self {
        Self {
            client_assertion: Some(jws),
            client_assertion_type: Some(ASSERTION_TYPE),
            ..Self::default()
        }
    }

    fn unburned(mut self, jti: String) -> Self {
        self.unburned = Some(jti);
        self
    }

    fn primed_by(mut self, first: Attempt) -> Self {
        self.prime = Some(Box::new(first));
        self
    }

    /// The `method` label of the attestation metric, when exactly one method was used.
    fn method(&self) -> Option<&'static str> {
        match (&self.tls, &self.client_assertion) {
            (Some(_), None) => Some("tls_client_auth"),
            (None, Some(_)) => Some("private_key_jwt"),
            _ => None,
        }
    }

    /// Strings no error description may echo: the assertion's segments and the
    /// certificates' base64.
    fn secrets(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(jws) = &self.client_assertion {
            out.extend(jws.split('.').filter(|s| s.len() >= 16).map(str::to_owned));
        }
        if let Some(creds) = &self.tls {
            out.extend(creds.x5c().iter().map(|b| b[..40.min(b.len())].to_owned()));
        }
        out
    }
}

/// What came back.
enum Outcome {
    /// An HTTP answer.
    Http { status: u16, body: Value },
    /// No HTTP answer: the connection (TLS handshake) failed.
    Transport(String),
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn fresh_jti() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!("hostile-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A compact JWS over `header` and `claims`, with the signature `sign` makes over the
/// signing input (RFC 7515 §5.1).
fn encode_jws(header: &Value, claims: &Value, sign: impl FnOnce(&[u8]) -> Vec<u8>) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = sign(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

fn es256(key_pem: &str, message: &[u8]) -> Vec<u8> {
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
    let der = pem_blocks(key_pem).pop().unwrap();
    let rng = ring::rand::SystemRandom::new();
    EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der, &rng)
        .unwrap()
        .sign(&rng, message)
        .unwrap()
        .as_ref()
        .to_vec()
}

fn eddsa(key_pem: &str, message: &[u8]) -> Vec<u8> {
    let der = pem_blocks(key_pem).pop().unwrap();
    ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der)
        .unwrap()
        .sign(message)
        .as_ref()
        .to_vec()
}

fn sign_as(creds: &Creds, header: &Value, claims: &Value) -> String {
    match creds.alg {
        "EdDSA" => encode_jws(header, claims, |m| eddsa(&creds.key_pem, m)),
        _ => encode_jws(header, claims, |m| es256(&creds.key_pem, m)),
    }
}

/// The extension file of an X.509-SVID for `openssl x509 -req`, with `san` as its
/// subjectAltName value.
fn svid_ext(san: &str) -> String {
    format!(
        "basicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature\n\
         extendedKeyUsage=clientAuth\n\
         authorityKeyIdentifier=keyid:always\n\
         subjectAltName={san}\n"
    )
}

// ---------------------------------------------------------------------------------
// Certificate makers
// ---------------------------------------------------------------------------------

fn p256() -> KeyPair {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap()
}

fn uri_san(uri: &str) -> SanType {
    SanType::URI(uri.try_into().unwrap())
}

/// Makes certificates with rcgen, `openssl` and `baton`, in `<sandbox>/forge`.
struct Forge {
    dir: PathBuf,
    sandbox: PathBuf,
    now: OffsetDateTime,
    /// The second root of the issuer's bundle, whose key the test holds.
    root: CertifiedIssuer<'static, KeyPair>,
    /// A root nobody trusts.
    stranger: CertifiedIssuer<'static, KeyPair>,
    /// The CA `baton init` made (the bundle's first certificate), PEM.
    baton_ca_pem: String,
    serial: AtomicU64,
}

impl Forge {
    /// Creates the roots and appends the trusted one to the sandbox's bundle; call it
    /// before the issuer starts.
    fn new(sb: &Sandbox) -> Self {
        let dir = sb.path().join("forge");
        fs::create_dir_all(&dir).unwrap();
        let now = OffsetDateTime::now_utc();
        let serial = AtomicU64::new(1000);
        let root_params = Self::ca_params("Baton tests rollover root", now, &serial, 1);
        let root = CertifiedIssuer::self_signed(root_params, p256()).unwrap();
        let stranger_params = Self::ca_params("Baton tests stranger root", now, &serial, 1);
        let stranger = CertifiedIssuer::self_signed(stranger_params, p256()).unwrap();
        fs::write(dir.join("root.pem"), root.pem()).unwrap();
        fs::write(dir.join("root.key"), root.key().serialize_pem()).unwrap();

        let bundle_path = sb.data_dir().join("bundle.pem");
        let baton_ca_pem = fs::read_to_string(&bundle_path).unwrap();
        assert_eq!(
            pem_blocks(&baton_ca_pem).len(),
            1,
            "one CA after `baton init`"
        );
        fs::write(&bundle_path, format!("{baton_ca_pem}{}", root.pem())).unwrap();
        Self {
            dir,
            sandbox: sb.path().to_owned(),
            now,
            root,
            stranger,
            baton_ca_pem,
            serial,
        }
    }

    fn next_serial(serial: &AtomicU64) -> SerialNumber {
        SerialNumber::from(serial.fetch_add(1, Ordering::Relaxed))
    }

    /// CA parameters like `baton init`'s: the trust domain's ID as URI SAN, path length
    /// `path_len`, valid from an hour ago for 30 days.
    fn ca_params(
        cn: &str,
        now: OffsetDateTime,
        serial: &AtomicU64,
        path_len: u8,
    ) -> CertificateParams {
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Baton tests");
        dn.push(DnType::CommonName, cn);
        p.distinguished_name = dn;
        p.subject_alt_names = vec![uri_san("spiffe://example.org")];
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p.use_authority_key_identifier_extension = true;
        p.not_before = now - time::Duration::hours(1);
        p.not_after = now + time::Duration::days(30);
        p.serial_number = Some(Self::next_serial(serial));
        p
    }

    /// X.509-SVID parameters (SPEC §2) for `uri`, valid for the next hour.
    fn svid_params(&self, uri: &str) -> CertificateParams {
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Baton tests workload");
        p.distinguished_name = dn;
        p.subject_alt_names = vec![uri_san(uri)];
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.use_authority_key_identifier_extension = true;
        p.not_before = self.now - time::Duration::minutes(10);
        p.not_after = self.now + time::Duration::hours(1);
        p.serial_number = Some(Self::next_serial(&self.serial));
        p
    }

    /// The ID an assertion with a leaf for `uri` claims: `uri` itself when it is a valid
    /// SPIFFE ID, else the orders ID the attacker is after.
    fn claims_id(uri: &str) -> String {
        match uri.parse::<baton_proto::SpiffeId>() {
            Ok(_) => uri.to_owned(),
            Err(_) => ORDERS.to_owned(),
        }
    }

    /// An rcgen SVID for `uri` signed by the trusted root, after `edit`.
    fn leaf(&self, uri: &str, edit: impl FnOnce(&mut CertificateParams, OffsetDateTime)) -> Creds {
        let mut params = self.svid_params(uri);
        edit(&mut params, self.now);
        let key = p256();
        let cert = params.signed_by(&key, &*self.root).unwrap();
        Creds {
            chain: vec![cert.der().to_vec()],
            key_pem: key.serialize_pem(),
            alg: "ES256",
            claims_id: Self::claims_id(uri),
        }
    }

    /// An rcgen SVID for `uri` signed by `issuer`; the chain carries `issuer`'s
    /// certificate when `with_issuer`.
    fn leaf_under(
        &self,
        issuer: &CertifiedIssuer<'static, KeyPair>,
        uri: &str,
        with_issuer: bool,
    ) -> Creds {
        let key = p256();
        let cert = self.svid_params(uri).signed_by(&key, &**issuer).unwrap();
        let mut chain = vec![cert.der().to_vec()];
        if with_issuer {
            chain.push(issuer.der().to_vec());
        }
        Creds {
            chain,
            key_pem: key.serialize_pem(),
            alg: "ES256",
            claims_id: Self::claims_id(uri),
        }
    }

    /// An intermediate CA (path length 0) under the trusted root, after `edit`.
    fn intermediate(
        &self,
        edit: impl FnOnce(&mut CertificateParams, OffsetDateTime),
    ) -> CertifiedIssuer<'static, KeyPair> {
        let mut params = Self::ca_params("Baton tests intermediate", self.now, &self.serial, 0);
        edit(&mut params, self.now);
        CertifiedIssuer::signed_by(params, p256(), &*self.root).unwrap()
    }

    /// A well-formed intermediate for example.org, under a root nobody trusts.
    fn stranger_intermediate(&self) -> CertifiedIssuer<'static, KeyPair> {
        let params = Self::ca_params("Baton tests intermediate", self.now, &self.serial, 0);
        CertifiedIssuer::signed_by(params, p256(), &*self.stranger).unwrap()
    }

    /// A workload certificate made by `baton enroll` from a CA of another `baton init`.
    fn foreign(&self, trust_domain: &str, name: &str) -> Creds {
        let other = Sandbox::new();
        other.baton(&["init", "--trust-domain", trust_domain]).ok();
        let id = format!("spiffe://{trust_domain}/fn/orders");
        let out = self.dir.join(name);
        other
            .baton(&["enroll", "--id", &id, "--out", out.to_str().unwrap()])
            .ok();
        Creds::from_files(&out.join("svid.pem"), &out.join("svid.key"), "ES256", &id)
    }

    fn openssl(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new("openssl")
            .args(args)
            .current_dir(&self.dir)
            .output()
            .unwrap_or_else(|e| panic!("cannot run openssl (is it installed?): {e}"))
    }

    fn openssl_ok(&self, args: &[&str]) {
        let out = self.openssl(args);
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `openssl genpkey` P-256 key into `<name>.key` and a CSR for it into `<name>.csr`.
    fn openssl_key_and_csr(&self, name: &str, subject: &str) -> (String, String) {
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        self.openssl_ok(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            &key,
        ]);
        self.openssl_ok(&["req", "-new", "-key", &key, "-subj", subject, "-out", &csr]);
        (key, csr)
    }

    /// `openssl x509 -req`: a certificate for a fresh key, signed by `ca` (cert, key
    /// file names in the forge) or self-signed, with the extensions of `ext`.
    fn openssl_sign(
        &self,
        name: &str,
        subject: &str,
        ext: &str,
        ca: Option<(&str, &str)>,
        claims_id: &str,
    ) -> Creds {
        let (key, csr) = self.openssl_key_and_csr(name, subject);
        let ext_file = format!("{name}.ext");
        let pem = format!("{name}.pem");
        fs::write(self.dir.join(&ext_file), ext).unwrap();
        let serial = self.serial.fetch_add(1, Ordering::Relaxed).to_string();
        let mut args = vec![
            "x509",
            "-req",
            "-in",
            &csr,
            "-days",
            "1",
            "-set_serial",
            &serial,
            "-extfile",
            &ext_file,
            "-out",
            &pem,
        ];
        match ca {
            Some((cert, ca_key)) => args.extend(["-CA", cert, "-CAkey", ca_key]),
            None => args.extend(["-signkey", &key]),
        }
        self.openssl_ok(&args);
        Creds::from_files(
            &self.dir.join(&pem),
            &self.dir.join(&key),
            "ES256",
            claims_id,
        )
    }

    /// An openssl SVID signed by the trusted root.
    fn openssl_leaf(&self, name: &str, ext: &str, claims_id: &str) -> Creds {
        self.openssl_leaf_with_subject(name, "/O=Baton tests workload", ext, claims_id)
    }

    fn openssl_leaf_with_subject(
        &self,
        name: &str,
        subject: &str,
        ext: &str,
        claims_id: &str,
    ) -> Creds {
        self.openssl_sign(
            name,
            subject,
            ext,
            Some(("root.pem", "root.key")),
            claims_id,
        )
    }

    /// A self-signed openssl certificate that is otherwise a valid SVID for `id`.
    fn openssl_self_signed(&self, id: &str) -> Creds {
        let ext =
            svid_ext(&format!("URI:{id}")).replace("authorityKeyIdentifier=keyid:always\n", "");
        self.openssl_sign("self-signed", "/O=Baton tests workload", &ext, None, id)
    }

    /// A leaf whose issuer name and authority key id are those of the CA `baton init`
    /// made, signed by another key: openssl re-signs a copy of that CA certificate
    /// with a rogue key (keeping its subject and subject key id) and issues from it.
    fn impostor_of_baton_ca(&self) -> Creds {
        fs::write(self.dir.join("baton-ca.pem"), &self.baton_ca_pem).unwrap();
        self.openssl_ok(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            "rogue.key",
        ]);
        self.openssl_ok(&[
            "x509",
            "-in",
            "baton-ca.pem",
            "-signkey",
            "rogue.key",
            "-out",
            "rogue-ca.pem",
        ]);
        let creds = self.openssl_sign(
            "impostor",
            "/O=Baton tests workload",
            &svid_ext(&format!("URI:{ORDERS}")),
            Some(("rogue-ca.pem", "rogue.key")),
            ORDERS,
        );

        // The impostor names the real CA exactly, byte for byte, and by key id ...
        let ca_der = pem_blocks(&self.baton_ca_pem).remove(0);
        let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
        let (_, leaf) = x509_parser::parse_x509_certificate(&creds.chain[0]).unwrap();
        assert_eq!(leaf.issuer().as_raw(), ca.subject().as_raw());
        let ski = ca
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0),
                _ => None,
            })
            .expect("the baton CA has a subject key id");
        let aki = leaf
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(a) => {
                    a.key_identifier.as_ref().map(|k| k.0)
                }
                _ => None,
            })
            .expect("the impostor has an authority key id");
        assert_eq!(aki, ski);
        // ... and openssl, a second opinion, finds only the signature wrong.
        let verify = self.openssl(&["verify", "-CAfile", "baton-ca.pem", "impostor.pem"]);
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&verify.stdout),
            String::from_utf8_lossy(&verify.stderr)
        );
        assert!(
            !verify.status.success() && said.contains("certificate signature failure"),
            "openssl verify: {said}"
        );
        creds
    }
}

// ---------------------------------------------------------------------------------
// The world: sandbox, issuer, forge
// ---------------------------------------------------------------------------------

struct World {
    sb: Sandbox,
    server: Server,
    forge: Forge,
    bundle: String,
    issuer: String,
    client: reqwest::Client,
    ledger_started_at: i64,
    /// `x5c` of the active token-signing key, from the JWKS.
    signer_x5c: Vec<String>,
    /// An access token minted for the orders workload during set-up.
    control_token: String,
    /// `token.denied` audit lines consumed so far.
    denials_seen: usize,
}

/// What the corpus expects to have happened, to compare with `/metrics`.
#[derive(Default)]
struct Tally {
    /// `(method, reason)` → attestation failures.
    failures: BTreeMap<(String, String), f64>,
    tokens: f64,
    /// `(case, jti)` that must still be unused.
    unburned: Vec<(String, String)>,
    refusals: usize,
}

impl World {
    async fn start() -> World {
        let sb = Sandbox::with_workloads(
            &[
                (ORDERS, "orders", "ec-p256"),
                (INVOICES, "invoices", "ed25519"),
                (DENIED, "denied", "ec-p256"),
            ],
            POLICY,
        );
        let forge = Forge::new(&sb);
        let server = Server::start(&sb, &["--policy", "policy.toml"]);
        let bundle = sb.bundle();
        let client = https_client(&bundle, None);
        let issuer = server.issuer.clone();
        let ledger_started_at = server
            .log()
            .iter()
            .find_map(|l| {
                serde_json::from_str::<Value>(l)
                    .ok()?
                    .get("ledger_started_at")?
                    .as_i64()
            })
            .expect("the listening line names the ledger epoch");
        let jwks: Value = client
            .get(server.url("/.well-known/jwks.json"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let signer_x5c = jwks["keys"][0]["x5c"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().to_owned())
            .collect();
        let mut world = World {
            sb,
            server,
            forge,
            bundle,
            issuer,
            client,
            ledger_started_at,
            signer_x5c,
            control_token: String::new(),
            denials_seen: 0,
        };
        let attempt = world.orders_assertion(|_| {});
        let Outcome::Http { status: 200, body } = world.send(&attempt).await else {
            panic!("set-up: the orders workload gets no token");
        };
        world.control_token = body["access_token"].as_str().unwrap().to_owned();
        world
    }

    /// Credentials `baton enroll` wrote into `dir` of the sandbox.
    fn enrolled(&self, dir: &str, id: &str, alg: &'static str) -> Creds {
        let dir = self.forge.sandbox.join(dir);
        Creds::from_files(&dir.join("svid.pem"), &dir.join("svid.key"), alg, id)
    }

    /// Header, claims (after `edit`) and `jti` of an assertion made with `creds`.
    fn parts(&self, creds: &Creds, edit: impl FnOnce(&mut Value)) -> (Value, Value, String) {
        let header = json!({"alg": creds.alg, "typ": "JWT", "x5c": creds.x5c()});
        let t = now();
        let mut claims = json!({
            "iss": creds.claims_id, "sub": creds.claims_id, "aud": self.issuer,
            "jti": fresh_jti(), "iat": t, "exp": t + 60,
        });
        edit(&mut claims);
        let jti = claims["jti"].as_str().unwrap_or_default().to_owned();
        (header, claims, jti)
    }

    /// An assertion signed with `creds`' key, claims edited by `edit`, and its `jti`.
    fn assertion_for(&self, creds: &Creds, edit: impl FnOnce(&mut Value)) -> (String, String) {
        let (header, claims, jti) = self.parts(creds, edit);
        (sign_as(creds, &header, &claims), jti)
    }

    /// An assertion by the orders workload; its `jti` must survive a refusal.
    fn orders_assertion(&self, edit: impl FnOnce(&mut Value)) -> Attempt {
        let orders = self.enrolled("orders", ORDERS, "ES256");
        let (jws, jti) = self.assertion_for(&orders, edit);
        let attempt = Attempt::assertion(jws);
        match jti.len() {
            1..=256 => attempt.unburned(jti),
            _ => attempt,
        }
    }

    /// An assertion by the orders workload, signed with its key, header edited.
    fn orders_header_edit(&self, edit: impl FnOnce(&mut Value)) -> Attempt {
        let orders = self.enrolled("orders", ORDERS, "ES256");
        let (mut header, claims, jti) = self.parts(&orders, |_| {});
        edit(&mut header);
        Attempt::assertion(sign_as(&orders, &header, &claims)).unburned(jti)
    }

    /// The request for `creds` over `via`: the TLS client certificate, or a fresh
    /// assertion with `creds` as `x5c`, signed with their key.
    fn attempt_with(&self, creds: Creds, via: Via) -> Attempt {
        match via {
            Via::Mtls => Attempt::mtls(creds),
            Via::Assertion => Attempt::assertion(self.assertion_for(&creds, |_| {}).0),
        }
    }

    async fn send(&self, attempt: &Attempt) -> Outcome {
        let client = match &attempt.tls {
            Some(creds) => https_client(&self.bundle, Some((&creds.chain_pem(), &creds.key_pem))),
            None => self.client.clone(),
        };
        let mut form = vec![("grant_type", "client_credentials"), ("audience", PAYMENTS)];
        if let Some(t) = attempt.client_assertion_type {
            form.push(("client_assertion_type", t));
        }
        if let Some(jws) = &attempt.client_assertion {
            form.push(("client_assertion", jws));
        }
        match client
            .post(self.server.url("/v1/token"))
            .form(&form)
            .send()
            .await
        {
            Ok(resp) => Outcome::Http {
                status: resp.status().as_u16(),
                body: resp.json().await.unwrap_or(Value::Null),
            },
            Err(e) => Outcome::Transport(format!("{e:?}")),
        }
    }

    fn audit_lines(&self, event: &str) -> Vec<Value> {
        let needle = format!("\"event\":\"{event}\"");
        self.server
            .log()
            .iter()
            .filter(|l| l.contains(&needle))
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The one `token.denied` audit line logged since the last call.
    async fn next_denial(&mut self, who: &str) -> Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let lines = self.audit_lines("token.denied");
            if lines.len() > self.denials_seen {
                assert_eq!(
                    lines.len(),
                    self.denials_seen + 1,
                    "{who}: one request, one audit line"
                );
                self.denials_seen = lines.len();
                return lines[lines.len() - 1].clone();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{who}: no token.denied audit line"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn metrics(&self) -> String {
        self.client
            .get(self.server.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Sends `attempt` (after its priming request) and checks the answer against
    /// `expect`, recording what `/metrics` should show in `tally`.
    async fn check(&mut self, who: &str, attempt: &Attempt, expect: Expect, tally: &mut Tally) {
        if let Some(first) = &attempt.prime {
            match self.send(first).await {
                Outcome::Http { status: 200, .. } => tally.tokens += 1.0,
                Outcome::Http { status, body } => {
                    panic!("{who}: the priming request got {status} {body}")
                }
                Outcome::Transport(e) => panic!("{who}: the priming request failed: {e}"),
            }
        }
        let (status, body) = match self.send(attempt).await {
            Outcome::Http { status, body } => (status, body),
            // The listener proves possession only and defers every certificate check
            // to attestation (server/tls.rs), so each refusal must be an HTTP answer.
            Outcome::Transport(e) => panic!("{who}: no HTTP answer (TLS handshake refused?): {e}"),
        };
        match expect {
            Expect::Token => {
                assert_eq!(status, 200, "{who}: a control must get a token: {body}");
                assert!(body["access_token"].is_string(), "{who}: {body}");
                tally.tokens += 1.0;
            }
            Expect::Refused {
                status: want_status,
                error,
                reason,
                says,
            } => {
                assert_eq!(
                    (status, body["error"].as_str()),
                    (want_status, Some(error)),
                    "{who}: expected {want_status} {error} ({reason}), got {body}"
                );
                assert!(body.get("access_token").is_none(), "{who}: {body}");
                let description = body["error_description"].as_str().unwrap_or_default();
                assert!(
                    description.contains(says),
                    "{who}: error_description {description:?} should say {says:?}"
                );
                for secret in attempt.secrets() {
                    assert!(
                        !description.contains(&secret),
                        "{who}: error_description echoes the request: {description:?}"
                    );
                }
                let audit = self.next_denial(who).await;
                assert_eq!(audit["reason"], reason, "{who}: audit line {audit}");
                assert_eq!(audit["error"], error, "{who}: audit line {audit}");
                assert_eq!(
                    audit["caller"], "",
                    "{who}: a refused attestation attributes no caller: {audit}"
                );
                if let (Some(method), "invalid_client") = (attempt.method(), error) {
                    *tally
                        .failures
                        .entry((method.to_owned(), reason.to_owned()))
                        .or_default() += 1.0;
                }
                tally.refusals += 1;
                if let Some(jti) = &attempt.unburned {
                    tally.unburned.push((who.to_owned(), jti.clone()));
                }
            }
        }
    }

    /// Starts a checked run: snapshots `/metrics` and the audit log.
    async fn begin(&mut self) -> Window {
        self.denials_seen = self.audit_lines("token.denied").len();
        Window {
            metrics: self.metrics().await,
            issued_lines: self.audit_lines("token.issued").len(),
        }
    }

    /// Ends a checked run: attestation failures moved exactly as tallied, and tokens
    /// were issued for the controls and primes alone.
    async fn finish(&self, before: Window, tally: &Tally) {
        let after = self.metrics().await;
        let failures = |m: &str| labelled(m, "baton_attestation_failures_total");
        let mut delta = failures(&after);
        for (key, v) in failures(&before.metrics) {
            *delta.entry(key).or_default() -= v;
        }
        delta.retain(|_, v| *v != 0.0);
        assert_eq!(
            delta, tally.failures,
            "baton_attestation_failures_total moved other than the corpus expects"
        );
        let issued = |m: &str| {
            labelled(m, "baton_tokens_issued_total")
                .values()
                .sum::<f64>()
        };
        assert_eq!(
            issued(&after) - issued(&before.metrics),
            tally.tokens,
            "tokens issued beyond the controls"
        );
        let issued_lines = self.audit_lines("token.issued").len() - before.issued_lines;
        assert_eq!(
            issued_lines as f64, tally.tokens,
            "token.issued audit lines"
        );
    }
}

/// Snapshots taken when a checked run begins.
struct Window {
    metrics: String,
    issued_lines: usize,
}

/// `(method, reason)` → value of every series of counter `name` in Prometheus text
/// (an absent label reads as empty).
fn labelled(metrics: &str, name: &str) -> BTreeMap<(String, String), f64> {
    let label = |line: &str, key: &str| -> String {
        let needle = format!("{key}=\"");
        line.find(&needle)
            .map(|i| {
                let rest = &line[i + needle.len()..];
                rest[..rest.find('"').unwrap_or(rest.len())].to_owned()
            })
            .unwrap_or_default()
    };
    let mut out = BTreeMap::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            continue;
        }
        let value: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        *out.entry((label(line, "method"), label(line, "reason")))
            .or_default() += value;
    }
    out
}

// ---------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn hostile_certificates_are_refused_on_both_paths() {
    let mut w = World::start().await;

    // The identity to deny gets tokens until `baton identities revoke`.
    let denied = w.enrolled("denied", DENIED, "ES256");
    for via in BOTH {
        let attempt = w.attempt_with(denied.clone(), *via);
        let Outcome::Http { status, body } = w.send(&attempt).await else {
            panic!("denied identity before revocation: no answer");
        };
        assert_eq!(
            status,
            200,
            "before revocation, over {}: {body}",
            via.label()
        );
    }
    w.sb.baton(&["identities", "revoke", DENIED]).ok();

    let window = w.begin().await;
    let mut tally = Tally::default();
    for case in cert_corpus() {
        // Made right before use: an assertion lives 60 s.
        let creds = (case.make)(&w);
        for via in case.via {
            let who = format!("case `{}` over {}", case.name, via.label());
            let attempt = w.attempt_with(creds.clone(), *via);
            w.check(&who, &attempt, case.expect, &mut tally).await;
        }
    }
    w.finish(window, &tally).await;
    let hostile: usize = cert_corpus()
        .iter()
        .filter(|c| matches!(c.expect, Expect::Refused { .. }))
        .map(|c| c.via.len())
        .sum();
    assert_eq!(tally.refusals, hostile);

    // Nothing the corpus did changed what valid callers get.
    let orders = w.enrolled("orders", ORDERS, "ES256");
    for via in BOTH {
        let attempt = w.attempt_with(orders.clone(), *via);
        let Outcome::Http { status, body } = w.send(&attempt).await else {
            panic!("control after the corpus: no answer");
        };
        assert_eq!(
            status,
            200,
            "control after the corpus, over {}: {body}",
            via.label()
        );
    }
}

#[tokio::test]
async fn hostile_assertions_are_refused_and_burn_no_jti() {
    let mut w = World::start().await;
    let window = w.begin().await;
    let mut tally = Tally::default();
    for case in assertion_corpus() {
        let who = format!("case `{}` (assertion)", case.name);
        let attempt = (case.make)(&w);
        w.check(&who, &attempt, case.expect, &mut tally).await;
    }
    w.finish(window, &tally).await;
    let hostile = assertion_corpus()
        .iter()
        .filter(|c| matches!(c.expect, Expect::Refused { .. }))
        .count();
    assert_eq!(tally.refusals, hostile);

    // A jti is recorded only once its assertion passed every check: each refused
    // assertion's jti is still free for a valid assertion of the same workload.
    assert!(tally.unburned.len() >= 30, "{}", tally.unburned.len());
    for (who, jti) in &tally.unburned {
        let attempt = w.orders_assertion(|c| c["jti"] = json!(jti));
        let Outcome::Http { status, body } = w.send(&attempt).await else {
            panic!("{who}: no answer");
        };
        assert_eq!(
            status, 200,
            "{who}: its refused assertion burned jti {jti}: {body}"
        );
    }
}

/// The rows of docs/hostile-attestation.md, in corpus order.
fn documented_rows() -> (Vec<String>, String) {
    let mut rows = Vec::new();
    let (mut hostile, mut requests, mut controls) = (0, 0, 0);
    let mut row = |name: &str, via: &str, expect: Expect, test: &str, n: usize| {
        rows.push(format!(
            "| {name} | {via} | {} | `{test}` |",
            expect.describe()
        ));
        match expect {
            Expect::Token => controls += 1,
            Expect::Refused { .. } => {
                hostile += 1;
                requests += n;
            }
        }
    };
    for case in cert_corpus() {
        let via: Vec<&str> = case.via.iter().map(|v| v.label()).collect();
        row(
            case.name,
            &via.join(", "),
            case.expect,
            CERT_TEST,
            case.via.len(),
        );
    }
    for case in assertion_corpus() {
        row(case.name, case.via, case.expect, ASSERTION_TEST, 1);
    }
    let count = format!(
        "Count: {hostile} hostile cases ({requests} refused requests) and {controls} controls."
    );
    (rows, count)
}

#[test]
fn the_documented_table_matches_the_corpus() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/hostile-attestation.md");
    let doc = fs::read_to_string(&path).unwrap();
    let documented: Vec<&str> = doc
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| case |"))
        .collect();
    let (rows, count) = documented_rows();
    assert_eq!(
        documented,
        rows,
        "docs/hostile-attestation.md is out of date; its table should read:\n{}\n\n{count}",
        rows.join("\n")
    );
    assert!(doc.contains(&count), "the count line should read: {count}");
    let mut names: Vec<&str> = cert_corpus().iter().map(|c| c.name).collect();
    names.extend(assertion_corpus().iter().map(|c| c.name));
    let unique: std::collections::HashSet<&&str> = names.iter().collect();
    assert_eq!(unique.len(), names.len(), "case names are unique");
}
