//! Verifying Baton tokens from other languages (docs/other-languages.md): the page's
//! Python (PyJWT + cryptography, Debian's `/usr/bin/python3`) and Node.js (`node:crypto`
//! only, `/usr/bin/node`) verifiers, `docs/examples/verify_baton.{py,mjs}`, run against
//! a real `baton serve` on loopback with ES256 and with EdDSA keys.
//!
//! Both must accept the issuer's real tokens and print the caller, and refuse, each for
//! the reason the page names (SPEC §2, §4): a wrong audience, a tampered signature or
//! claim set, `alg` `none`, an HS256 token keyed with the signing key's public key, a
//! header `alg` that is not the key's, hostile claim sets behind the issuer's real
//! signature (expired, lifetime, `iss`, `typ`, future `nbf`/`iat`, `aud` array, no
//! `jti`, foreign `sub`), and JWKS documents that slip in a key the bundle does not
//! certify as the token signer: a plain workload certificate, a signer of another CA,
//! a JWK whose key is not its certificate's, an expired signer certificate. One-time
//! use: the local replay cache refuses a second presentation, and introspection as
//! the audience consumes a token across processes and languages.
//!
//! Nothing is skipped: a missing interpreter or library fails the test and names the
//! Debian packages to install.

// Test code: a failed step should fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[allow(dead_code, unreachable_pub, clippy::all)]
#[path = "../../client-sdk/tests/verify_support/mod.rs"]
mod verify_support;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use baton_issuer::datadir::{DataDir, KekSource};
use baton_issuer::seal::Kek;
use baton_tests::{Sandbox, Server, https_client, kids_in_state, pem_blocks};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
use serde_json::{Value, json};
use verify_support::{Alg, Ca, random_id};

const PYTHON: &str = "/usr/bin/python3";
const NODE: &str = "/usr/bin/node";
const DEBIAN_PACKAGES: &str = "python3-jwt python3-cryptography nodejs";

const ORDERS: &str = "spiffe://example.org/fn/orders";
const PAYMENTS: &str = "spiffe://example.org/fn/payments";
const LEDGER: &str = "spiffe://example.org/fn/ledger";
/// How both examples name a key whose certificate is not the token signer.
const NOT_THE_SIGNER: &str = "its certificate is not spiffe://example.org/baton/token-signer";
const POLICY: &str = r#"
[[allow]]
caller = "spiffe://example.org/fn/orders"
audience = "spiffe://example.org/fn/payments"
scopes = ["payments:charge"]

[[allow]]
caller = "spiffe://example.org/fn/orders"
audience = "spiffe://example.org/fn/ledger"
"#;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap()
}

fn now() -> i64 {
    verify_support::unix_now()
}

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

#[derive(Clone, Copy, Debug)]
enum Lang {
    Python,
    Node,
}

const LANGS: [Lang; 2] = [Lang::Python, Lang::Node];

impl Lang {
    fn command(self) -> Command {
        let (interpreter, script) = match self {
            Lang::Python => (PYTHON, "verify_baton.py"),
            Lang::Node => (NODE, "verify_baton.mjs"),
        };
        let mut cmd = Command::new(interpreter);
        cmd.arg(repo_root().join("docs/examples").join(script));
        // Only what the page tells its readers to have: no user site-packages, no
        // NODE_OPTIONS, no pyenv shims.
        cmd.env_clear().env("PATH", "/usr/bin:/bin");
        cmd
    }
}

/// Fails (never skips) when the interpreters or the Python libraries are missing.
fn require_runtimes() {
    let python = Command::new(PYTHON)
        .args([
            "-c",
            "import jwt, cryptography; print(jwt.__version__, cryptography.__version__)",
        ])
        .env_clear()
        .output();
    match python {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "{PYTHON} lacks PyJWT or cryptography ({}): install the Debian packages {DEBIAN_PACKAGES}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => {
            panic!("cannot run {PYTHON} ({e}): install the Debian packages {DEBIAN_PACKAGES}")
        }
    }
    let node = Command::new(NODE).arg("--version").output();
    let version = match node {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        _ => panic!("cannot run {NODE}: install Node.js 18 or later (Debian: nodejs)"),
    };
    let major: u32 = version
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    assert!(
        major >= 18,
        "{NODE} is {version}; the example needs Node.js 18 or later"
    );
}

/// What one run of an example printed.
struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn run(lang: Lang, args: &[&str], stdin: Option<&str>) -> Outcome {
    let mut child = lang
        .command()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run the {lang:?} example: {e}"));
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    let out = child.wait_with_output().unwrap();
    Outcome {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A private key of either algorithm, from PKCS#8.
enum Key {
    Es256(EcdsaKeyPair),
    EdDsa(Ed25519KeyPair),
}

impl Key {
    fn from_pkcs8(alg: Alg, pkcs8: &[u8]) -> Key {
        match alg {
            Alg::Es256 => Key::Es256(
                EcdsaKeyPair::from_pkcs8(
                    &ECDSA_P256_SHA256_FIXED_SIGNING,
                    pkcs8,
                    &SystemRandom::new(),
                )
                .unwrap(),
            ),
            Alg::EdDsa => Key::EdDsa(Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8).unwrap()),
        }
    }

    fn alg(&self) -> &'static str {
        match self {
            Key::Es256(_) => "ES256",
            Key::EdDsa(_) => "EdDSA",
        }
    }

    /// `0x04‖x‖y` for P-256, the 32 bytes for Ed25519.
    fn public(&self) -> Vec<u8> {
        match self {
            Key::Es256(k) => k.public_key().as_ref().to_vec(),
            Key::EdDsa(k) => k.public_key().as_ref().to_vec(),
        }
    }

    fn sign(&self, input: &[u8]) -> Vec<u8> {
        match self {
            Key::Es256(k) => k
                .sign(&SystemRandom::new(), input)
                .unwrap()
                .as_ref()
                .to_vec(),
            Key::EdDsa(k) => k.sign(input).as_ref().to_vec(),
        }
    }

    /// The JWK of this key under `kid`, with `x5c` (standard base64 DER).
    fn jwk(&self, kid: &str, x5c: &[Vec<u8>]) -> Value {
        let public = self.public();
        let x5c: Vec<String> = x5c.iter().map(|der| STANDARD.encode(der)).collect();
        match self {
            Key::Es256(_) => json!({
                "kty": "EC", "crv": "P-256", "x": b64(&public[1..33]), "y": b64(&public[33..65]),
                "kid": kid, "use": "sig", "alg": "ES256", "x5c": x5c,
            }),
            Key::EdDsa(_) => json!({
                "kty": "OKP", "crv": "Ed25519", "x": b64(&public),
                "kid": kid, "use": "sig", "alg": "EdDSA", "x5c": x5c,
            }),
        }
    }

    /// A compact JWS of `header` and `claims` signed by this key.
    fn token(&self, header: &Value, claims: &Value) -> String {
        let input = format!("{}.{}", b64(header.to_string()), b64(claims.to_string()));
        let signature = self.sign(input.as_bytes());
        format!("{input}.{}", b64(signature))
    }
}

/// A real issuer with its keys, and everything the forgeries are made from.
struct World {
    sb: Sandbox,
    _server: Server,
    alg: Alg,
    issuer: String,
    /// The issuer's JWKS as served, and its active key, unsealed from the data
    /// directory (as its operator could) to sign hostile claim sets.
    jwks: Value,
    kid: String,
    issuer_key: Key,
    /// x5c[0] of the active key.
    signer_cert: Vec<u8>,
    /// The `orders` workload's real key and X.509-SVID chain (they chain to the bundle).
    workload_key: Key,
    workload_chain: Vec<Vec<u8>>,
    /// A token-signer certificate made by the real CA with the reserved ID, expired.
    expired_signer: (Key, Vec<u8>),
    orders: reqwest::Client,
}

impl World {
    async fn start(alg: Alg) -> World {
        let key_type = match alg {
            Alg::Es256 => "ec-p256",
            Alg::EdDsa => "ed25519",
        };
        let sb = Sandbox::with_workloads(
            &[
                (ORDERS, "orders", key_type),
                (PAYMENTS, "payments", "ec-p256"),
                (LEDGER, "ledger", "ec-p256"),
            ],
            POLICY,
        );

        // Before the issuer starts: a signer certificate from the real CA, with the
        // reserved name, valid for a day two days ago.
        let expired_signer = {
            let open = DataDir::new(sb.data_dir()).open(&KekSource::Dev).unwrap();
            let rcgen_alg = match alg {
                Alg::Es256 => &rcgen::PKCS_ECDSA_P256_SHA256,
                Alg::EdDsa => &rcgen::PKCS_ED25519,
            };
            let pair = rcgen::KeyPair::generate_for(rcgen_alg).unwrap();
            let issued = open
                .ca()
                .issue_token_signer(
                    &pair,
                    Duration::from_secs(86_400),
                    time::OffsetDateTime::now_utc() - time::Duration::days(2),
                )
                .unwrap();
            (Key::from_pkcs8(alg, &pair.serialize_der()), issued.der)
        };

        let server = Server::start_with_env(
            &sb,
            &["--policy", "policy.toml"],
            &[("BATON_TOKEN_ALG", alg.name())],
        );
        let issuer = server.issuer.clone();
        let bundle = sb.bundle();
        let jwks: Value = https_client(&bundle, None)
            .get(server.url("/.well-known/jwks.json"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();

        let kid = kids_in_state(&sb.keys_json(&["list"]), "active").remove(0);
        let data = sb.data_dir();
        let pkcs8 = Kek::load(&data.join("kek"))
            .unwrap()
            .open_file(
                &data.join("keyring").join(format!("{kid}.key.sealed")),
                &format!("signing-key:{kid}"),
            )
            .unwrap();
        let issuer_key = Key::from_pkcs8(alg, &pkcs8);
        let jwk = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["kid"] == kid.as_str())
            .unwrap();
        assert_eq!(
            jwk["alg"],
            alg.name(),
            "the issuer signs with {}",
            alg.name()
        );
        let signer_cert = STANDARD.decode(jwk["x5c"][0].as_str().unwrap()).unwrap();
        assert_eq!(
            issuer_key.jwk(&kid, &[]).get("x"),
            jwk.get("x"),
            "the unsealed key is the published one"
        );

        let workload_chain = pem_blocks(&sb.read("orders/svid.pem"));
        let workload_key = Key::from_pkcs8(alg, &pem_blocks(&sb.read("orders/svid.key"))[0]);
        let orders = https_client(
            &bundle,
            Some((&sb.read("orders/svid.pem"), &sb.read("orders/svid.key"))),
        );
        World {
            sb,
            _server: server,
            alg,
            issuer,
            jwks,
            kid,
            issuer_key,
            signer_cert,
            workload_key,
            workload_chain,
            expired_signer,
            orders,
        }
    }

    fn path(&self, rel: &str) -> String {
        self.sb.path().join(rel).display().to_string()
    }

    /// `count` real tokens from `POST /v1/token` for `audience`, over mTLS as orders.
    async fn mint(&self, audience: &str, count: usize) -> Vec<String> {
        let count = count.to_string();
        let mut form = vec![
            ("grant_type", "client_credentials"),
            ("audience", audience),
            ("count", count.as_str()),
        ];
        if audience == PAYMENTS {
            form.push(("scope", "payments:charge"));
        }
        let resp = self
            .orders
            .post(format!("{}/v1/token", self.issuer))
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "the issuer minted no token");
        let body: Value = resp.json().await.unwrap();
        let tokens: Vec<String> = match body["access_tokens"].as_array() {
            Some(all) => all.iter().map(|t| t.as_str().unwrap().to_owned()).collect(),
            None => vec![body["access_token"].as_str().unwrap().to_owned()],
        };
        assert_eq!(tokens.len(), count.parse::<usize>().unwrap());
        tokens
    }

    fn header(&self) -> Value {
        json!({"alg": self.alg.name(), "typ": "at+jwt", "kid": self.kid})
    }

    /// Valid claims at `t0`, as the issuer writes them.
    fn claims(&self, t0: i64) -> Value {
        json!({
            "iss": self.issuer, "sub": ORDERS, "client_id": ORDERS, "aud": PAYMENTS,
            "iat": t0, "nbf": t0, "exp": t0 + 60, "jti": random_id(),
            "sid": "other-languages", "scope": "payments:charge",
        })
    }

    /// Valid claims edited by `edit`, under the issuer's header, signed by its real key.
    fn signed(&self, edit: impl FnOnce(&mut Value)) -> String {
        let mut claims = self.claims(now());
        edit(&mut claims);
        self.issuer_key.token(&self.header(), &claims)
    }

    /// A JWKS file: the issuer's real keys (unless `replace_kid` names one to drop)
    /// plus `extra`.
    fn jwks_file(&self, name: &str, replace_kid: Option<&str>, extra: Value) -> String {
        let mut keys: Vec<Value> = self.jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|k| replace_kid.is_none_or(|kid| k["kid"] != kid))
            .cloned()
            .collect();
        keys.push(extra);
        let path = self.path(name);
        std::fs::write(&path, json!({ "keys": keys }).to_string()).unwrap();
        path
    }
}

/// What a verifier must answer.
enum Expect {
    /// Exit 0, the caller's SPIFFE ID (and its scopes) printed.
    Caller(&'static [&'static str]),
    /// Exit 1, `refused: <reason>:` printed, and `detail` somewhere on stderr.
    Refused(&'static str, &'static str),
}

struct Case {
    name: &'static str,
    token: String,
    audience: &'static str,
    jwks_file: Option<String>,
    expect: Expect,
}

fn case(name: &'static str, token: String, expect: Expect) -> Case {
    Case {
        name,
        token,
        audience: PAYMENTS,
        jwks_file: None,
        expect,
    }
}

/// Runs every case through both examples; returns the failures, one line each.
fn check(w: &World, cases: &[Case]) -> Vec<String> {
    let bundle = w.path("baton-data/bundle.pem");
    let mut failures = Vec::new();
    for c in cases {
        for lang in LANGS {
            let mut args = vec![
                "--issuer",
                w.issuer.as_str(),
                "--bundle",
                bundle.as_str(),
                "--audience",
                c.audience,
            ];
            if let Some(file) = &c.jwks_file {
                args.extend(["--jwks", file.as_str()]);
            }
            args.push(&c.token);
            let out = run(lang, &args, None);
            let verdict = match c.expect {
                Expect::Caller(scopes) => {
                    let printed: Option<Value> = serde_json::from_str(out.stdout.trim()).ok();
                    let ok = out.code == Some(0)
                        && printed
                            .as_ref()
                            .is_some_and(|p| p["id"] == ORDERS && p["scopes"] == json!(scopes));
                    ok.then_some(()).ok_or("the caller, exit 0")
                }
                Expect::Refused(reason, detail) => {
                    let ok = out.code == Some(1)
                        && out.stdout.is_empty()
                        && out.stderr.contains(&format!("refused: {reason}:"))
                        && out.stderr.contains(detail);
                    ok.then_some(()).ok_or("a refusal")
                }
            };
            if let Err(wanted) = verdict {
                failures.push(format!(
                    "{:?} {} [{lang:?}]: wanted {wanted}{}; got exit {:?}, stdout {:?}, stderr {:?}",
                    w.alg,
                    c.name,
                    match c.expect {
                        Expect::Refused(reason, detail) => format!(" ({reason}, {detail:?})"),
                        Expect::Caller(_) => String::new(),
                    },
                    out.code,
                    out.stdout.trim(),
                    out.stderr.trim(),
                ));
            }
        }
    }
    failures
}

/// The whole table for one signing algorithm.
async fn real_tokens_verify_and_forgeries_are_refused(alg: Alg) {
    require_runtimes();
    let w = World::start(alg).await;
    let real = w.mint(PAYMENTS, 3).await;
    let for_ledger = w.mint(LEDGER, 1).await.remove(0);
    let t0 = now();
    let other_alg = match alg {
        Alg::Es256 => "EdDSA",
        Alg::EdDsa => "ES256",
    };

    // Flips one byte of the signature (decoded, so no encoding slack can hide it).
    let tampered_signature = {
        let (input, sig) = real[1].rsplit_once('.').unwrap();
        let mut sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
        sig[10] ^= 0x01;
        format!("{input}.{}", b64(sig))
    };
    // Another claim set under the real token's header and signature.
    let tampered_claims = {
        let parts: Vec<&str> = real[2].split('.').collect();
        let mut claims: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        claims["scope"] = json!("payments:charge payments:refund");
        format!("{}.{}.{}", parts[0], b64(claims.to_string()), parts[2])
    };
    let alg_none = {
        let header = json!({"alg": "none", "typ": "at+jwt", "kid": w.kid});
        format!(
            "{}.{}.",
            b64(header.to_string()),
            b64(w.claims(t0).to_string())
        )
    };
    // The classic key confusion: HMAC keyed with the public key a verifier holds
    // (its PEM, and the JWK's raw key bytes).
    let hs256 = |secret: &[u8]| {
        let header = json!({"alg": "HS256", "typ": "at+jwt", "kid": w.kid});
        let input = format!(
            "{}.{}",
            b64(header.to_string()),
            b64(w.claims(t0).to_string())
        );
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
        let tag = ring::hmac::sign(&key, input.as_bytes());
        format!("{input}.{}", b64(tag.as_ref()))
    };
    let spki_pem = {
        let (_, cert) = x509_parser::parse_x509_certificate(&w.signer_cert).unwrap();
        let body = STANDARD.encode(cert.public_key().raw);
        let lines: Vec<&str> = body
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            lines.join("\n")
        )
    };
    let mismatched_alg = {
        let mut header = w.header();
        header["alg"] = json!(other_alg);
        w.issuer_key.token(&header, &w.claims(t0))
    };

    let mut cases = vec![
        case(
            "a token minted by the issuer",
            real[0].clone(),
            Expect::Caller(&["payments:charge"]),
        ),
        case(
            "control: claims signed with the issuer's key by the test",
            w.signed(|_| {}),
            Expect::Caller(&["payments:charge"]),
        ),
        case(
            "a real token for another audience",
            for_ledger,
            Expect::Refused("wrong_audience", ""),
        ),
        Case {
            audience: LEDGER,
            ..case(
                "a real token presented to a callee it does not name",
                real[0].clone(),
                Expect::Refused("wrong_audience", ""),
            )
        },
        case(
            "a flipped signature byte",
            tampered_signature,
            Expect::Refused("bad_signature", ""),
        ),
        case(
            "claims changed under the issuer's signature",
            tampered_claims,
            Expect::Refused("bad_signature", ""),
        ),
        case(
            "alg none, no signature",
            alg_none,
            Expect::Refused("unsupported_algorithm", ""),
        ),
        case(
            "HS256 keyed with the signing key's public key PEM",
            hs256(spki_pem.as_bytes()),
            Expect::Refused("unsupported_algorithm", ""),
        ),
        case(
            "HS256 keyed with the JWK's raw public key",
            hs256(&w.issuer_key.public()),
            Expect::Refused("unsupported_algorithm", ""),
        ),
        case(
            "the other allowed alg under this key's kid",
            mismatched_alg,
            Expect::Refused("algorithm_mismatch", ""),
        ),
        case(
            "expired a minute ago, by the issuer's key",
            w.signed(|c| {
                c["iat"] = json!(t0 - 120);
                c["nbf"] = json!(t0 - 120);
                c["exp"] = json!(t0 - 60);
            }),
            Expect::Refused("expired", ""),
        ),
        case(
            "valid for an hour",
            w.signed(|c| c["exp"] = json!(t0 + 3600)),
            Expect::Refused("lifetime_too_long", ""),
        ),
        case(
            "nbf a minute ahead",
            w.signed(|c| c["nbf"] = json!(t0 + 60)),
            Expect::Refused("not_yet_valid", ""),
        ),
        case(
            "iat a minute ahead",
            w.signed(|c| {
                c["iat"] = json!(t0 + 60);
                c["exp"] = json!(t0 + 120);
            }),
            Expect::Refused("issued_in_future", ""),
        ),
        case(
            "another issuer",
            w.signed(|c| c["iss"] = json!("https://baton.evil.example")),
            Expect::Refused("wrong_issuer", ""),
        ),
        case(
            "aud as an array naming this callee",
            w.signed(|c| c["aud"] = json!([PAYMENTS])),
            Expect::Refused("wrong_audience", ""),
        ),
        case(
            "no jti",
            w.signed(|c| {
                c.as_object_mut().unwrap().remove("jti");
            }),
            Expect::Refused("missing_jti", ""),
        ),
        case(
            "sub of another trust domain",
            w.signed(|c| {
                c["sub"] = json!("spiffe://evil.example/fn/orders");
                c["client_id"] = c["sub"].clone();
            }),
            Expect::Refused("malformed", ""),
        ),
        case(
            "typ JWT",
            {
                let mut header = w.header();
                header["typ"] = json!("JWT");
                w.issuer_key.token(&header, &w.claims(t0))
            },
            Expect::Refused("wrong_type", ""),
        ),
        case(
            "a kid the JWKS does not hold",
            {
                let mut header = w.header();
                header["kid"] = json!("no-such-key");
                w.issuer_key.token(&header, &w.claims(t0))
            },
            Expect::Refused("unknown_key", ""),
        ),
    ];

    // JWKS documents with one extra key that must not be trusted, each signing a
    // token under its own kid. The real keys stay in the set, so the file loads and
    // the refusal is the forged key's alone.
    let forged = |kid: &str, key: &Key| {
        let header = json!({"alg": key.alg(), "typ": "at+jwt", "kid": kid});
        key.token(&header, &w.claims(t0))
    };
    let workload_jwks = w.jwks_file(
        "workload.jwks.json",
        None,
        w.workload_key.jwk("forged-workload", &w.workload_chain),
    );
    cases.push(Case {
        jwks_file: Some(workload_jwks.clone()),
        ..case(
            "control: a real token with keys from a forged JWKS file",
            real[2].clone(),
            Expect::Caller(&["payments:charge"]),
        )
    });
    cases.push(Case {
        jwks_file: Some(workload_jwks),
        ..case(
            "a workload's own certificate and key as a JWKS key",
            forged("forged-workload", &w.workload_key),
            Expect::Refused("unknown_key", NOT_THE_SIGNER),
        )
    });
    cases.push(Case {
        jwks_file: Some(w.jwks_file(
            "workload-real-kid.jwks.json",
            Some(&w.kid),
            w.workload_key.jwk(&w.kid, &w.workload_chain),
        )),
        ..case(
            "a workload's certificate under the active key's kid",
            forged(&w.kid, &w.workload_key),
            Expect::Refused("unknown_key", NOT_THE_SIGNER),
        )
    });
    cases.push(Case {
        jwks_file: Some(
            w.jwks_file(
                "mismatch.jwks.json",
                None,
                w.workload_key
                    .jwk("forged-mismatch", std::slice::from_ref(&w.signer_cert)),
            ),
        ),
        ..case(
            "the real signer certificate with another key in the JWK",
            forged("forged-mismatch", &w.workload_key),
            Expect::Refused("unknown_key", "its key is not the key of its certificate"),
        )
    });
    let stranger = Ca::new("example.org").signer(alg);
    cases.push(Case {
        jwks_file: Some(w.jwks_file("foreign-ca.jwks.json", None, stranger.jwk())),
        ..case(
            "a token signer of another CA for the same trust domain",
            stranger.token(&w.claims(t0)),
            Expect::Refused("unknown_key", "does not chain to the trust bundle"),
        )
    });
    let (expired_key, expired_cert) = &w.expired_signer;
    cases.push(Case {
        jwks_file: Some(w.jwks_file(
            "expired-signer.jwks.json",
            None,
            expired_key.jwk("expired-signer", std::slice::from_ref(expired_cert)),
        )),
        ..case(
            "the real CA's token-signer certificate, expired",
            forged("expired-signer", expired_key),
            Expect::Refused("unknown_key", "expired or not yet valid"),
        )
    });

    let failures = check(&w, &cases);
    assert!(
        failures.is_empty(),
        "{} of {} runs went wrong:\n{}",
        failures.len(),
        cases.len() * LANGS.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn python_and_node_accept_es256_tokens_and_refuse_every_forgery() {
    real_tokens_verify_and_forgeries_are_refused(Alg::Es256).await;
}

#[tokio::test]
async fn python_and_node_accept_eddsa_tokens_and_refuse_every_forgery() {
    real_tokens_verify_and_forgeries_are_refused(Alg::EdDsa).await;
}

#[tokio::test]
async fn a_token_is_used_once_by_the_replay_cache_and_across_languages_by_introspection() {
    require_runtimes();
    let w = World::start(Alg::Es256).await;
    let bundle = w.path("baton-data/bundle.pem");
    let cert = w.path("payments/svid.pem");
    let key = w.path("payments/svid.key");
    let base = [
        "--issuer",
        w.issuer.as_str(),
        "--bundle",
        bundle.as_str(),
        "--audience",
        PAYMENTS,
    ];
    let tokens = w.mint(PAYMENTS, 3).await;

    // Local replay cache: the same token twice on stdin, one verifier.
    for lang in LANGS {
        let mut args = base.to_vec();
        args.push("-");
        let twice = format!("{}\n{}\n", tokens[0], tokens[0]);
        let out = run(lang, &args, Some(&twice));
        assert_eq!(
            (out.code, out.stdout.lines().count()),
            (Some(1), 1),
            "{lang:?}: first accepted, second refused; stderr {:?}",
            out.stderr
        );
        assert!(out.stdout.contains(ORDERS), "{lang:?}: {}", out.stdout);
        assert!(
            out.stderr.contains("refused: replayed:"),
            "{lang:?}: {}",
            out.stderr
        );
    }

    // Introspection as the audience consumes the token at the issuer: whichever
    // language presents it first wins, the other is told it is inactive.
    let mut introspecting = base.to_vec();
    introspecting.extend([
        "--introspect-cert",
        cert.as_str(),
        "--introspect-key",
        key.as_str(),
    ]);
    for (token, first, second) in [
        (&tokens[1], Lang::Python, Lang::Node),
        (&tokens[2], Lang::Node, Lang::Python),
    ] {
        let mut args = introspecting.clone();
        args.push(token);
        let won = run(first, &args, None);
        assert_eq!(won.code, Some(0), "{first:?}: {}", won.stderr);
        assert!(won.stdout.contains(ORDERS), "{first:?}: {}", won.stdout);
        let lost = run(second, &args, None);
        assert_eq!(lost.code, Some(1), "{second:?}: {}", lost.stderr);
        assert!(
            lost.stderr.contains("refused: inactive:"),
            "{second:?}: {}",
            lost.stderr
        );
    }

    // Introspection by a callee that is not the audience: inactive, and it does not
    // consume the token, which the audience still verifies once.
    let fresh = w.mint(PAYMENTS, 1).await.remove(0);
    for lang in LANGS {
        let mut args = vec![
            "--issuer",
            w.issuer.as_str(),
            "--bundle",
            bundle.as_str(),
            "--audience",
            PAYMENTS,
        ];
        let ledger_cert = w.path("ledger/svid.pem");
        let ledger_key = w.path("ledger/svid.key");
        args.extend([
            "--introspect-cert",
            ledger_cert.as_str(),
            "--introspect-key",
            ledger_key.as_str(),
            fresh.as_str(),
        ]);
        let out = run(lang, &args, None);
        assert_eq!(out.code, Some(1), "{lang:?}: {}", out.stderr);
        assert!(
            out.stderr.contains("refused: inactive:"),
            "{lang:?}: {}",
            out.stderr
        );
    }
    let mut args = introspecting.clone();
    args.push(&fresh);
    let out = run(Lang::Python, &args, None);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
}

/// The page quotes its examples: every ```python and ```js block must be a verbatim
/// excerpt of the file the tests above run, so the page never shows untested code.
#[test]
fn page_code_blocks_are_verbatim_excerpts_of_the_tested_examples() {
    let root = repo_root();
    let page = std::fs::read_to_string(root.join("docs/other-languages.md")).unwrap();
    let python = std::fs::read_to_string(root.join("docs/examples/verify_baton.py")).unwrap();
    let node = std::fs::read_to_string(root.join("docs/examples/verify_baton.mjs")).unwrap();
    let mut quoted = (0, 0);
    let mut rest = page.as_str();
    while let Some(start) = rest.find("```") {
        let after = &rest[start + 3..];
        let lang_end = after.find('\n').unwrap();
        let lang = after[..lang_end].trim();
        let body_and_rest = &after[lang_end + 1..];
        let end = body_and_rest
            .find("```")
            .unwrap_or_else(|| panic!("unclosed ``` block"));
        let body = &body_and_rest[..end];
        rest = &body_and_rest[end + 3..];
        let (source, count) = match lang {
            "python" => (&python, &mut quoted.0),
            "js" | "javascript" => (&node, &mut quoted.1),
            _ => continue,
        };
        assert!(
            source.contains(body),
            "this ```{lang} block of docs/other-languages.md is not in its example file:\n{body}"
        );
        *count += 1;
    }
    assert!(
        quoted.0 >= 2 && quoted.1 >= 2,
        "the page quotes too little code (python {}, js {})",
        quoted.0,
        quoted.1
    );
}
