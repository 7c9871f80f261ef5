//! Workload certificates over the API end to end against the real `baton serve`
//! (SPEC §5 `POST /v1/svid`, §9 `enroll --join-token`): a join token yields one first
//! certificate for its bound ID whatever the CSR asks; a current certificate renews
//! itself for a new key; expired, revoked, reused and denied proofs are refused; and
//! `baton join-tokens` lists and revokes outstanding tokens. CSRs come from openssl,
//! and openssl checks the issued certificates.

// Helpers outside #[test] fns are test code too: a failed step should fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use base64::Engine as _;
use baton_tests::{Sandbox, Server, https_client, pem_blocks, sign_jws};
use serde_json::{Value, json};
use x509_parser::prelude::{FromDer as _, GeneralName, X509Certificate};

const ORDERS: &str = "spiffe://example.org/fn/orders";
const PAYMENTS: &str = "spiffe://example.org/fn/payments";
const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

struct World {
    sb: Sandbox,
    server: Server,
    bundle: String,
    plain: reqwest::Client,
}

impl World {
    /// Trust domain example.org with orders enrolled in `orders/`, the issuer running
    /// with `env` (e.g. `BATON_SVID_TTL`).
    fn start(env: &[(&str, &str)]) -> World {
        let sb = Sandbox::with_workloads(&[(ORDERS, "orders", "ec-p256")], "");
        let server = Server::start_with_env(&sb, &[], env);
        let bundle = sb.bundle();
        let plain = https_client(&bundle, None);
        World {
            sb,
            server,
            bundle,
            plain,
        }
    }

    /// `baton enroll --id <id> --join-token --json <extra>`: (token, handle).
    fn join_token(&self, id: &str, extra: &[&str]) -> (String, String) {
        let mut args = vec!["enroll", "--id", id, "--join-token", "--json"];
        args.extend_from_slice(extra);
        let out: Value = serde_json::from_str(self.sb.baton(&args).ok()).unwrap();
        (
            out["join_token"].as_str().unwrap().to_owned(),
            out["handle"].as_str().unwrap().to_owned(),
        )
    }

    /// A fresh openssl key in `<name>.key` and a CSR for it in `<name>.csr` that asks
    /// for `asked` as its URI SAN (and its last segment as its CN). Returns the PEM.
    fn csr(&self, name: &str, algorithm: &str, asked: &str) -> String {
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        let mut genkey = vec!["genpkey", "-algorithm", algorithm, "-out", &key];
        if algorithm == "EC" {
            genkey.extend(["-pkeyopt", "ec_paramgen_curve:P-256"]);
        }
        self.sb.openssl(&genkey).ok();
        let san = format!("subjectAltName=URI:{asked}");
        let subject = format!("/CN={}", asked.rsplit('/').next().unwrap_or("x"));
        self.sb
            .openssl(&[
                "req", "-new", "-key", &key, "-subj", &subject, "-addext", &san, "-out", &csr,
            ])
            .ok();
        self.sb.read(&csr)
    }

    /// A client presenting `<dir>/svid.pem` and `<dir>/svid.key` over mTLS.
    fn mtls(&self, cert: &str, key: &str) -> reqwest::Client {
        https_client(
            &self.bundle,
            Some((&self.sb.read(cert), &self.sb.read(key))),
        )
    }

    /// A fresh RFC 7523 client assertion for `id`, by the certificate and key files.
    fn assertion(&self, id: &str, cert: &str, key: &str) -> String {
        let x5c: Vec<String> = pem_blocks(&self.sb.read(cert))
            .iter()
            .map(|der| base64::engine::general_purpose::STANDARD.encode(der))
            .collect();
        let now = unix_now();
        let claims = json!({
            "iss": id, "sub": id, "aud": self.server.issuer, "jti": unique(),
            "iat": now, "exp": now + 60,
        });
        sign_jws(
            &json!({"alg": "ES256", "typ": "JWT", "x5c": x5c}),
            &claims,
            &self.sb.read(key),
        )
    }

    async fn post_svid(&self, client: &reqwest::Client, form: &[(&str, &str)]) -> Answer {
        let resp = client
            .post(self.server.url("/v1/svid"))
            .form(form)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        Answer {
            status,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
            text,
            headers,
        }
    }

    /// Writes the certificate of a 200 answer to `file` and returns it parsed.
    fn save(&self, answer: &Answer, file: &str) -> Issued {
        assert_eq!(answer.status, 200, "{}", answer.text);
        let pem = answer.body["svid"].as_str().unwrap();
        std::fs::write(self.sb.path().join(file), pem).unwrap();
        Issued::parse(pem)
    }

    async fn metrics(&self) -> String {
        self.plain
            .get(self.server.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

struct Answer {
    status: u16,
    body: Value,
    text: String,
    headers: reqwest::header::HeaderMap,
}

impl Answer {
    fn error(&self) -> &str {
        self.body["error"].as_str().unwrap_or("")
    }
}

/// What the tests check of an issued certificate.
#[derive(Debug)]
struct Issued {
    uris: Vec<String>,
    serial: String,
    public_key: Vec<u8>,
    not_after: i64,
}

impl Issued {
    fn parse(pem: &str) -> Issued {
        let blocks = pem_blocks(pem);
        assert_eq!(blocks.len(), 1, "Baton's CA signs leaves directly");
        let (_, cert) = X509Certificate::from_der(&blocks[0]).unwrap();
        let uris = cert
            .subject_alternative_name()
            .unwrap()
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        GeneralName::URI(u) => Some((*u).to_owned()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        assert!(
            cert.subject().iter_attributes().next().is_none(),
            "the CSR's subject is not copied"
        );
        Issued {
            uris,
            serial: cert.raw_serial_as_string(),
            public_key: cert.public_key().raw.to_vec(),
            not_after: cert.validity().not_after.timestamp(),
        }
    }
}

/// The SubjectPublicKeyInfo DER of an openssl key file.
fn openssl_public_key(w: &World, key: &str) -> Vec<u8> {
    let der = format!("{key}.pub.der");
    w.sb.openssl(&[
        "pkey", "-in", key, "-pubout", "-outform", "DER", "-out", &der,
    ])
    .ok();
    std::fs::read(w.sb.path().join(der)).unwrap()
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn unique() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

#[tokio::test]
async fn a_join_token_yields_one_certificate_for_its_bound_id_whatever_the_csr_asks() {
    let w = World::start(&[("BATON_SVID_TTL", "2h")]);
    let (token, _) = w.join_token(ORDERS, &[]);
    // The CSR asks for another identity, in its subject and its SAN.
    let csr = w.csr("boot", "EC", PAYMENTS);
    let first = w
        .post_svid(&w.plain, &[("csr", &csr), ("join_token", &token)])
        .await;
    let issued = w.save(&first, "boot.pem");
    assert_eq!(issued.uris, vec![ORDERS.to_owned()]);
    assert_eq!(issued.public_key, openssl_public_key(&w, "boot.key"));
    let expires_at = first.body["expires_at"].as_i64().unwrap();
    assert_eq!(expires_at, issued.not_after);
    assert!(
        (expires_at - unix_now() - 7200).abs() <= 5,
        "svid_ttl is 2h"
    );
    assert_eq!(first.body["bundle"].as_str().unwrap(), w.bundle);
    assert_eq!(first.headers["cache-control"], "no-store");
    // openssl agrees: it chains to the bundle, for TLS clients.
    w.sb.openssl(&[
        "verify",
        "-CAfile",
        "baton-data/bundle.pem",
        "-purpose",
        "sslclient",
        "boot.pem",
    ])
    .ok();
    // The new certificate works at once: it attests over mTLS (and renews itself).
    let next = w.csr("next", "EC", ORDERS);
    let renewed = w
        .post_svid(&w.mtls("boot.pem", "boot.key"), &[("csr", &next)])
        .await;
    assert_eq!(w.save(&renewed, "next.pem").uris, vec![ORDERS.to_owned()]);

    // Once only, whatever the CSR.
    let again = w
        .post_svid(
            &w.plain,
            &[
                ("csr", &w.csr("again", "EC", ORDERS)),
                ("join_token", &token),
            ],
        )
        .await;
    assert_eq!(
        (again.status, again.error()),
        (401, "invalid_client"),
        "{}",
        again.text
    );
    assert!(!again.text.contains(&token));

    let metrics = w.metrics().await;
    assert!(
        metrics.contains(r#"baton_svids_issued_total{method="join_token"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"baton_svid_denials_total{reason="invalid_join_token"} 1"#));
    assert!(w.server.wait_for_log(r#""event":"svid.issued""#));
    let log = w.server.log().join("\n");
    assert!(log.contains(r#""method":"join_token""#), "{log}");
    assert!(!log.contains(&token), "a join token never reaches the log");
}

#[tokio::test]
async fn requests_refused_for_their_input_spend_no_join_token() {
    let w = World::start(&[]);
    let (token, _) = w.join_token(ORDERS, &[]);
    let good = w.csr("good", "ED25519", ORDERS);
    let rsa = w.csr("rsa", "RSA", ORDERS);
    let tampered = good.replacen("MI", "MJ", 1);
    let assertion = w.assertion(ORDERS, "orders/svid.pem", "orders/svid.key");
    for (form, needle) in [
        (vec![("csr", "not a csr"), ("join_token", &token)], "csr"),
        (
            vec![("csr", rsa.as_str()), ("join_token", &token)],
            "key type",
        ),
        (
            vec![("csr", tampered.as_str()), ("join_token", &token)],
            "csr",
        ),
        (vec![("join_token", token.as_str())], "csr"),
        (
            vec![
                ("csr", good.as_str()),
                ("join_token", &token),
                ("client_assertion_type", ASSERTION_TYPE),
                ("client_assertion", &assertion),
            ],
            "join token",
        ),
    ] {
        let answer = w.post_svid(&w.plain, &form).await;
        assert_eq!(
            (answer.status, answer.error()),
            (400, "invalid_request"),
            "{}",
            answer.text
        );
        assert!(answer.text.contains(needle), "{needle}: {}", answer.text);
    }
    // A join token with a client certificate is refused too, and spends nothing.
    let with_cert = w
        .post_svid(
            &w.mtls("orders/svid.pem", "orders/svid.key"),
            &[("csr", &good), ("join_token", &token)],
        )
        .await;
    assert_eq!(with_cert.status, 400, "{}", with_cert.text);

    let answer = w
        .post_svid(&w.plain, &[("csr", &good), ("join_token", &token)])
        .await;
    let issued = w.save(&answer, "good.pem");
    assert_eq!(issued.public_key, openssl_public_key(&w, "good.key"));
}

#[tokio::test]
async fn expired_and_revoked_join_tokens_are_refused_and_listed_by_handle_only() {
    let w = World::start(&[]);
    let (short, _) = w.join_token(ORDERS, &["--ttl", "1s"]);
    let (one, one_handle) = w.join_token(ORDERS, &[]);
    let (two, _) = w.join_token(PAYMENTS, &[]);
    let (three, _) = w.join_token(PAYMENTS, &[]);

    let listed = w.sb.baton(&["join-tokens", "list", "--json"]);
    let list: Value = serde_json::from_str(listed.ok()).unwrap();
    let handles: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["handle"].as_str().unwrap())
        .collect();
    assert!(handles.contains(&one_handle.as_str()), "{list}");
    for token in [&short, &one, &two, &three] {
        assert!(!listed.stdout.contains(token.as_str()));
    }
    let human = w.sb.baton(&["join-tokens", "list"]);
    assert!(human.ok().contains(&one_handle) && human.stdout.contains(PAYMENTS));

    std::thread::sleep(Duration::from_millis(2100));
    let csr = w.csr("k", "EC", ORDERS);
    let expired = w
        .post_svid(&w.plain, &[("csr", &csr), ("join_token", &short)])
        .await;
    assert_eq!(
        (expired.status, expired.error()),
        (401, "invalid_client"),
        "{}",
        expired.text
    );

    let revoked = w.sb.baton(&["join-tokens", "revoke", &one_handle[..8]]);
    assert!(revoked.ok().contains(ORDERS), "{}", revoked.stdout);
    let by_id: Value = serde_json::from_str(
        w.sb.baton(&["join-tokens", "revoke", "--id", PAYMENTS, "--json"])
            .ok(),
    )
    .unwrap();
    assert_eq!(by_id["revoked"].as_array().unwrap().len(), 2, "{by_id}");
    for token in [&one, &two, &three] {
        let answer = w
            .post_svid(&w.plain, &[("csr", &csr), ("join_token", token)])
            .await;
        assert_eq!(answer.status, 401, "{}", answer.text);
    }
    let empty = w.sb.baton(&["join-tokens", "list"]);
    assert!(empty.ok().contains("no outstanding join tokens"));
    let bad = w.sb.baton(&["join-tokens", "revoke", "xyz"]);
    assert_ne!(bad.code, Some(0));
    assert!(bad.stderr.contains("hex digits"), "{}", bad.stderr);
}

#[tokio::test]
async fn renewal_yields_a_new_key_and_serial_for_the_same_id_over_mtls_and_assertion() {
    let w = World::start(&[]);
    let current = Issued::parse(&w.sb.read("orders/svid.pem"));

    // mTLS with the current certificate; the CSR asks for another ID in vain.
    let csr = w.csr("r1", "EC", PAYMENTS);
    let mtls = w.mtls("orders/svid.pem", "orders/svid.key");
    let first = w.save(&w.post_svid(&mtls, &[("csr", &csr)]).await, "r1.pem");
    assert_eq!(first.uris, vec![ORDERS.to_owned()]);
    assert_ne!(first.serial, current.serial);
    assert_eq!(first.public_key, openssl_public_key(&w, "r1.key"));
    assert_ne!(first.public_key, current.public_key);

    // A client assertion signed with the renewed certificate's key.
    let csr = w.csr("r2", "EC", ORDERS);
    let assertion = w.assertion(ORDERS, "r1.pem", "r1.key");
    let form = [
        ("csr", csr.as_str()),
        ("client_assertion_type", ASSERTION_TYPE),
        ("client_assertion", &assertion),
    ];
    let second = w.save(&w.post_svid(&w.plain, &form).await, "r2.pem");
    assert_eq!(second.uris, vec![ORDERS.to_owned()]);
    assert!(second.serial != first.serial && second.public_key != first.public_key);
    // The assertion was one-time.
    let replay = w.post_svid(&w.plain, &form).await;
    assert_eq!(replay.status, 401, "{}", replay.text);

    // Renewing for the same key is refused: renewal rotates the key.
    let same_key =
        w.sb.openssl(&["req", "-new", "-key", "r2.key", "-subj", "/CN=x"]);
    let same = w
        .post_svid(&w.mtls("r2.pem", "r2.key"), &[("csr", same_key.ok())])
        .await;
    assert_eq!(
        (same.status, same.error()),
        (400, "invalid_request"),
        "{}",
        same.text
    );
    assert!(same.text.contains("new key"), "{}", same.text);

    // No proof at all.
    let anonymous = w.post_svid(&w.plain, &[("csr", &csr)]).await;
    assert_eq!(
        (anonymous.status, anonymous.error()),
        (401, "invalid_client")
    );

    let metrics = w.metrics().await;
    assert!(metrics.contains(r#"baton_svids_issued_total{method="tls_client_auth"} 1"#));
    assert!(metrics.contains(r#"baton_svids_issued_total{method="private_key_jwt"} 1"#));
}

#[tokio::test]
async fn a_denied_identity_cannot_renew_nor_redeem_a_join_token() {
    let w = World::start(&[]);
    let (token, _) = w.join_token(ORDERS, &[]);
    w.sb.baton(&["identities", "revoke", ORDERS]).ok();
    let csr = w.csr("d", "EC", ORDERS);
    let renew = w
        .post_svid(
            &w.mtls("orders/svid.pem", "orders/svid.key"),
            &[("csr", &csr)],
        )
        .await;
    assert_eq!(
        (renew.status, renew.error()),
        (401, "invalid_client"),
        "{}",
        renew.text
    );
    assert!(renew.text.contains("deny list"), "{}", renew.text);
    let join = w
        .post_svid(&w.plain, &[("csr", &csr), ("join_token", &token)])
        .await;
    assert_eq!(
        (join.status, join.error()),
        (401, "invalid_client"),
        "{}",
        join.text
    );
    assert!(
        w.metrics()
            .await
            .contains(r#"baton_svid_denials_total{reason="denied"} 2"#)
    );
}

#[tokio::test]
async fn an_expired_certificate_cannot_renew() {
    let w = World::start(&[]);
    w.sb.baton(&["enroll", "--id", ORDERS, "--out", "brief", "--ttl", "5s"])
        .ok();
    let issued = Issued::parse(&w.sb.read("brief/svid.pem"));
    let wait = issued.not_after + 2 - unix_now();
    std::thread::sleep(Duration::from_secs(u64::try_from(wait.max(0)).unwrap()));
    let csr = w.csr("late", "EC", ORDERS);
    let mtls = w
        .post_svid(
            &w.mtls("brief/svid.pem", "brief/svid.key"),
            &[("csr", &csr)],
        )
        .await;
    assert_eq!(
        (mtls.status, mtls.error()),
        (401, "invalid_client"),
        "{}",
        mtls.text
    );
    assert!(mtls.text.contains("expired"), "{}", mtls.text);
    let assertion = w.assertion(ORDERS, "brief/svid.pem", "brief/svid.key");
    let jwt = w
        .post_svid(
            &w.plain,
            &[
                ("csr", &csr),
                ("client_assertion_type", ASSERTION_TYPE),
                ("client_assertion", &assertion),
            ],
        )
        .await;
    assert_eq!(
        (jwt.status, jwt.error()),
        (401, "invalid_client"),
        "{}",
        jwt.text
    );
}

#[tokio::test]
async fn certificate_requests_are_rate_limited_per_identity() {
    let w = World::start(&[("BATON_SVID_RATE_LIMIT", "2")]);
    w.sb.baton(&["enroll", "--id", PAYMENTS, "--out", "payments"])
        .ok();
    let orders = w.mtls("orders/svid.pem", "orders/svid.key");
    for i in 0..2 {
        let csr = w.csr(&format!("o{i}"), "EC", ORDERS);
        assert_eq!(w.post_svid(&orders, &[("csr", &csr)]).await.status, 200);
    }
    let csr = w.csr("o2", "EC", ORDERS);
    let limited = w.post_svid(&orders, &[("csr", &csr)]).await;
    assert_eq!(limited.status, 429, "{}", limited.text);
    let retry: u64 = limited.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=30).contains(&retry), "{retry}");
    // A join token for the limited identity waits too, and is not spent.
    let (token, _) = w.join_token(ORDERS, &[]);
    let join = w
        .post_svid(&w.plain, &[("csr", &csr), ("join_token", &token)])
        .await;
    assert_eq!(join.status, 429, "{}", join.text);
    assert_eq!(
        w.sb.baton(&["join-tokens", "list", "--json"])
            .ok()
            .matches("handle")
            .count(),
        1
    );
    // Another identity has its own bucket.
    let payments = w.mtls("payments/svid.pem", "payments/svid.key");
    let csr = w.csr("p", "EC", PAYMENTS);
    assert_eq!(w.post_svid(&payments, &[("csr", &csr)]).await.status, 200);
}
