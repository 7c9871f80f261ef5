//! Fixtures shared by the fuzz targets: a fixed trust domain PKI (made once by
//! `examples/gen_fixtures.rs` with the issuer's own `pki` module and compiled in), a
//! verifier and an attestor built from it once per process, and the input framing the
//! structured targets use.
//!
//! Everything is deterministic across runs: the certificates are files, and the clock
//! is [`FUZZ_NOW`], so a crash reproduces from its input alone.
#![forbid(unsafe_code)]

use std::sync::{Arc, Mutex, OnceLock};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use baton_issuer::attest::Attestor;
use baton_issuer::deny::DenyList;
use baton_issuer::ledger::{LedgerError, LedgerFuture, MemoryLedger, ReplayLedger};
use baton_proto::{SpiffeId, TrustDomain};
use baton_sdk::{LocalReplayGuard, ReplayError, ReplayGuard, Verifier};
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _,
};
use serde_json::{Value, json};

/// The clock of every target: inside the validity of every fixture certificate
/// (CA and token signers from 2026-11-01, workload SVIDs for 7 days around this).
pub const FUZZ_NOW: i64 = 1_796_000_000;
/// When the fixture CA and token signers start (2026-11-01T00:00:00Z).
pub const FIXTURE_START: i64 = 1_793_491_200;
pub const TD: &str = "example.org";
pub const ISSUER: &str = "https://baton.example.org";
pub const TOKEN_ENDPOINT: &str = "https://baton.example.org/v1/token";
pub const AUDIENCE: &str = "spiffe://example.org/fn/payments";
/// The workload of the ES256 fixture SVID.
pub const CALLER: &str = "spiffe://example.org/fn/orders";
/// The workload of the Ed25519 fixture SVID.
pub const CALLER_ED: &str = "spiffe://example.org/fn/billing";
pub const KID_ES256: &str = "fuzz-es256";
pub const KID_EDDSA: &str = "fuzz-eddsa";

pub const CA_DER: &[u8] = include_bytes!("../fixtures/ca.der");
pub const SIGNER_ES256_DER: &[u8] = include_bytes!("../fixtures/signer-es256.der");
pub const SIGNER_ES256_PK8: &[u8] = include_bytes!("../fixtures/signer-es256.pk8");
pub const SIGNER_EDDSA_DER: &[u8] = include_bytes!("../fixtures/signer-eddsa.der");
pub const SIGNER_EDDSA_PK8: &[u8] = include_bytes!("../fixtures/signer-eddsa.pk8");
pub const WORKLOAD_ES256_DER: &[u8] = include_bytes!("../fixtures/workload-es256.der");
pub const WORKLOAD_ES256_PK8: &[u8] = include_bytes!("../fixtures/workload-es256.pk8");
pub const WORKLOAD_EDDSA_DER: &[u8] = include_bytes!("../fixtures/workload-eddsa.der");
pub const WORKLOAD_EDDSA_PK8: &[u8] = include_bytes!("../fixtures/workload-eddsa.pk8");

/// A private key that signs compact JWS, with the JOSE name of its algorithm.
pub enum Key {
    Es256(EcdsaKeyPair),
    EdDsa(Ed25519KeyPair),
}

impl Key {
    pub fn es256(pkcs8: &[u8]) -> Key {
        Key::Es256(
            EcdsaKeyPair::from_pkcs8(
                &ECDSA_P256_SHA256_FIXED_SIGNING,
                pkcs8,
                &SystemRandom::new(),
            )
            .expect("fixture ES256 key"),
        )
    }

    pub fn eddsa(pkcs8: &[u8]) -> Key {
        Key::EdDsa(Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8).expect("fixture Ed25519 key"))
    }

    pub fn alg(&self) -> &'static str {
        match self {
            Key::Es256(_) => "ES256",
            Key::EdDsa(_) => "EdDSA",
        }
    }

    pub fn public_key(&self) -> &[u8] {
        match self {
            Key::Es256(k) => k.public_key().as_ref(),
            Key::EdDsa(k) => k.public_key().as_ref(),
        }
    }

    /// `b64url(header).b64url(claims).b64url(signature)`: the bytes need not be JSON,
    /// nor UTF-8, so the parsers behind the signature see exactly what the fuzzer made.
    pub fn sign(&self, header: &[u8], claims: &[u8]) -> String {
        let mut jws = URL_SAFE_NO_PAD.encode(header);
        jws.push('.');
        jws.push_str(&URL_SAFE_NO_PAD.encode(claims));
        let signature = match self {
            Key::Es256(k) => k
                .sign(&SystemRandom::new(), jws.as_bytes())
                .expect("ECDSA signing")
                .as_ref()
                .to_vec(),
            Key::EdDsa(k) => k.sign(jws.as_bytes()).as_ref().to_vec(),
        };
        jws.push('.');
        jws.push_str(&URL_SAFE_NO_PAD.encode(signature));
        jws
    }
}

/// Splits fuzzer bytes as `selector ‖ len (u16 BE) ‖ first[len] ‖ second`; a short
/// input gives empty pieces rather than nothing, so every input is used.
pub fn pieces(data: &[u8]) -> (u8, &[u8], &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return (0, &[], &[]);
    };
    if rest.len() < 2 {
        return (selector, rest, &[]);
    }
    let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
    let rest = &rest[2..];
    let (first, second) = rest.split_at(len.min(rest.len()));
    (selector, first, second)
}

/// The inverse of [`pieces`], for seeds and regression inputs.
pub fn frame(selector: u8, first: &[u8], second: &[u8]) -> Vec<u8> {
    let len = u16::try_from(first.len()).expect("first piece under 64 KiB");
    let mut out = vec![selector];
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(first);
    out.extend_from_slice(second);
    out
}

/// Splits bytes into certificates framed as `len (u16 BE) ‖ der[len]`, repeated.
pub fn der_chain(mut data: &[u8]) -> Vec<&[u8]> {
    let mut chain = Vec::new();
    while data.len() >= 2 && chain.len() < 8 {
        let len = usize::from(u16::from_be_bytes([data[0], data[1]]));
        let rest = &data[2..];
        let (der, next) = rest.split_at(len.min(rest.len()));
        chain.push(der);
        data = next;
    }
    chain
}

/// The inverse of [`der_chain`].
pub fn frame_chain<C: AsRef<[u8]>>(chain: &[C]) -> Vec<u8> {
    let mut out = Vec::new();
    for der in chain {
        let der = der.as_ref();
        let len = u16::try_from(der.len()).expect("certificate under 64 KiB");
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(der);
    }
    out
}

/// A JWK as the issuer publishes it: key, kid, use, alg and an x5c chain.
pub fn jwk(alg: &str, public_key: &[u8], kid: &str, x5c: &[&[u8]]) -> Value {
    let x5c: Vec<String> = x5c.iter().map(|der| STANDARD.encode(der)).collect();
    if alg == "ES256" && public_key.len() == 65 {
        json!({
            "kty": "EC", "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode(&public_key[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&public_key[33..65]),
            "kid": kid, "use": "sig", "alg": "ES256", "x5c": x5c,
        })
    } else {
        json!({
            "kty": "OKP", "crv": "Ed25519",
            "x": URL_SAFE_NO_PAD.encode(public_key),
            "kid": kid, "use": "sig", "alg": "EdDSA", "x5c": x5c,
        })
    }
}

/// The header the issuer writes for `kid`.
pub fn token_header(alg: &str, kid: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"alg": alg, "typ": "at+jwt", "kid": kid})).expect("JSON")
}

/// The header a workload writes on a client assertion: its chain in `x5c`.
pub fn assertion_header(alg: &str, chain: &[&[u8]]) -> Vec<u8> {
    let x5c: Vec<String> = chain.iter().map(|der| STANDARD.encode(der)).collect();
    serde_json::to_vec(&json!({"alg": alg, "typ": "JWT", "x5c": x5c})).expect("JSON")
}

/// A local replay guard that the targets empty before each input
/// ([`Sdk::reset_replay_guard`]): each input is then judged alone (a crash reproduces
/// from its bytes, not from the run's history, and a seed's `jti` burnt by one input
/// does not hide the success path from its mutations), while "the second presentation
/// is refused" still holds within every input.
#[derive(Debug)]
pub struct ResettableGuard(Mutex<LocalReplayGuard>);

impl ReplayGuard for ResettableGuard {
    fn consume(&self, jti: &str, exp: i64, now: i64) -> Result<(), ReplayError> {
        let guard = self.0.lock().map_err(|_| ReplayError::Unavailable)?;
        guard.consume(jti, exp, now)
    }
}

/// Room for the few tokens one input presents.
const GUARD_CAPACITY: usize = 16;

/// The SDK side: a verifier for tokens to [`AUDIENCE`] and the two token signers.
pub struct Sdk {
    pub verifier: Verifier,
    guard: Arc<ResettableGuard>,
    pub es256: Key,
    pub eddsa: Key,
}

impl Sdk {
    /// Call before each input: a fresh, empty replay guard.
    pub fn reset_replay_guard(&self) {
        *self.guard.0.lock().expect("guard lock") = LocalReplayGuard::with_capacity(GUARD_CAPACITY);
    }

    pub fn key(&self, selector: u8) -> (&Key, &'static str) {
        if selector & 0x80 == 0 {
            (&self.es256, KID_ES256)
        } else {
            (&self.eddsa, KID_EDDSA)
        }
    }
}

/// The bundle PEM of the fixture trust domain.
pub fn bundle_pem() -> String {
    baton_issuer::pki::pem_encode("CERTIFICATE", CA_DER)
}

/// The JWKS the fixture issuer publishes: both signers with their x5c.
pub fn fixture_jwks(es256: &Key, eddsa: &Key) -> Vec<u8> {
    serde_json::to_vec(&json!({"keys": [
        jwk("ES256", es256.public_key(), KID_ES256, &[SIGNER_ES256_DER]),
        jwk("EdDSA", eddsa.public_key(), KID_EDDSA, &[SIGNER_EDDSA_DER]),
    ]}))
    .expect("JSON")
}

pub fn sdk() -> &'static Sdk {
    static SDK: OnceLock<Sdk> = OnceLock::new();
    SDK.get_or_init(|| {
        let es256 = Key::es256(SIGNER_ES256_PK8);
        let eddsa = Key::eddsa(SIGNER_EDDSA_PK8);
        let audience: SpiffeId = AUDIENCE.parse().expect("audience");
        let guard = Arc::new(ResettableGuard(Mutex::new(
            LocalReplayGuard::with_capacity(GUARD_CAPACITY),
        )));
        let verifier = Verifier::builder(ISSUER, audience, bundle_pem().as_bytes())
            .expect("bundle")
            .jwks(&fixture_jwks(&es256, &eddsa))
            .expect("both fixture keys are trusted (are the fixtures expired?)")
            .replay_guard(Arc::clone(&guard) as Arc<dyn ReplayGuard>)
            .build()
            .expect("verifier");
        Sdk {
            verifier,
            guard,
            es256,
            eddsa,
        }
    })
}

/// A memory ledger that the targets empty before each input
/// ([`Issuer::reset_ledger`]), for the reasons of [`ResettableGuard`]; with a fixed clock
/// nothing would ever expire from a shared one either.
#[derive(Debug)]
pub struct ResettableLedger(Mutex<Arc<MemoryLedger>>);

/// Room for the few assertions one input presents.
const LEDGER_CAPACITY: usize = 16;
/// The fixture ledger's start: before every `iat` the seeds use.
pub const LEDGER_START: i64 = FUZZ_NOW - 3600;

impl ResettableLedger {
    fn current(&self) -> Arc<MemoryLedger> {
        Arc::clone(&self.0.lock().expect("ledger lock"))
    }
}

impl ReplayLedger for ResettableLedger {
    fn consume<'a>(
        &'a self,
        key: &'a str,
        issued_at: Option<i64>,
        exp: i64,
        now: i64,
    ) -> LedgerFuture<'a, Result<(), LedgerError>> {
        let ledger = self.current();
        Box::pin(async move { ledger.consume(key, issued_at, exp, now).await })
    }

    fn mark<'a>(
        &'a self,
        key: &'a str,
        exp: i64,
        now: i64,
    ) -> LedgerFuture<'a, Result<(), LedgerError>> {
        let ledger = self.current();
        Box::pin(async move { ledger.mark(key, exp, now).await })
    }

    fn contains<'a>(
        &'a self,
        key: &'a str,
        now: i64,
    ) -> LedgerFuture<'a, Result<bool, LedgerError>> {
        let ledger = self.current();
        Box::pin(async move { ledger.contains(key, now).await })
    }

    fn epoch(&self, now: i64) -> LedgerFuture<'_, Result<i64, LedgerError>> {
        let ledger = self.current();
        Box::pin(async move { ledger.epoch(now).await })
    }

    fn ready(&self, now: i64) -> LedgerFuture<'_, Result<(), LedgerError>> {
        let ledger = self.current();
        Box::pin(async move { ledger.ready(now).await })
    }
}

/// The issuer side: an attestor for [`TD`] and the two workloads' keys and chains.
pub struct Issuer {
    pub attestor: Attestor,
    /// One current-thread runtime for the whole run: `attest_assertion` is async only
    /// for the ledger, which here answers at once.
    pub runtime: tokio::runtime::Runtime,
    pub es256: Key,
    pub eddsa: Key,
    pub deny: Arc<DenyList>,
    ledger: Arc<ResettableLedger>,
}

impl Issuer {
    /// Call before each input: a fresh, empty replay ledger.
    pub fn reset_ledger(&self) {
        *self.ledger.0.lock().expect("ledger lock") =
            Arc::new(MemoryLedger::new(LEDGER_CAPACITY, LEDGER_START));
    }

    /// The key, chain and SPIFFE ID of one of the two fixture workloads.
    pub fn workload(&self, selector: u8) -> (&Key, &'static [u8], &'static str) {
        if selector & 0x80 == 0 {
            (&self.es256, WORKLOAD_ES256_DER, CALLER)
        } else {
            (&self.eddsa, WORKLOAD_EDDSA_DER, CALLER_ED)
        }
    }
}

pub fn issuer() -> &'static Issuer {
    static ISSUER_FIXTURE: OnceLock<Issuer> = OnceLock::new();
    ISSUER_FIXTURE.get_or_init(|| {
        let deny = Arc::new(DenyList::new());
        // One denied identity, so the deny-list branch is reachable from the seeds.
        deny.insert(&"spiffe://example.org/fn/denied".parse().expect("ID"));
        let ledger = Arc::new(ResettableLedger(Mutex::new(Arc::new(MemoryLedger::new(
            LEDGER_CAPACITY,
            LEDGER_START,
        )))));
        let attestor = Attestor::new(
            vec![CA_DER.to_vec()],
            TrustDomain::new(TD).expect("TD"),
            vec![ISSUER.to_owned(), TOKEN_ENDPOINT.to_owned()],
            Arc::clone(&deny),
            Arc::clone(&ledger) as Arc<dyn ReplayLedger>,
        )
        .expect("attestor");
        Issuer {
            attestor,
            runtime: tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("runtime"),
            es256: Key::es256(WORKLOAD_ES256_PK8),
            eddsa: Key::eddsa(WORKLOAD_EDDSA_PK8),
            deny,
            ledger,
        }
    })
}

/// Verifies `token` at [`FUZZ_NOW`] and checks what must hold of every accepted token:
/// the SPEC §4 lifetime bound, a bounded `jti`, scopes without duplicates, and one-time
/// use (the same token, presented again at once, is refused as replayed).
pub fn verify_token(token: &str) {
    let sdk = sdk();
    sdk.reset_replay_guard();
    let Ok(caller) = sdk.verifier.verify_at(token, FUZZ_NOW) else {
        return;
    };
    let lifetime = caller.expires_at - caller.issued_at;
    assert!(
        lifetime > 0 && lifetime <= 300,
        "accepted lifetime {lifetime}"
    );
    assert!(!caller.jti.is_empty() && caller.jti.len() <= 256);
    let mut scopes = caller.scopes.clone();
    scopes.sort();
    scopes.dedup();
    assert_eq!(scopes.len(), caller.scopes.len(), "duplicate scopes");
    assert!(
        caller
            .scopes
            .iter()
            .all(|s| !s.is_empty() && !s.contains(' '))
    );
    assert_eq!(
        sdk.verifier.verify_at(token, FUZZ_NOW),
        Err(baton_sdk::VerifyError::Replayed),
        "an accepted token was accepted twice"
    );
}

/// Attests `jws` at [`FUZZ_NOW`] and checks what must hold of every accepted
/// assertion: it names one of the fixture workloads (only they hold certified keys),
/// and it is refused the second time.
pub fn attest_assertion(jws: &str) {
    let issuer = issuer();
    issuer.reset_ledger();
    let result = issuer
        .runtime
        .block_on(issuer.attestor.attest_assertion(jws, FUZZ_NOW));
    let Ok(attested) = result else {
        return;
    };
    assert!(
        [CALLER, CALLER_ED].contains(&attested.id.as_str()),
        "assertion attested as {}",
        attested.id
    );
    let again = issuer
        .runtime
        .block_on(issuer.attestor.attest_assertion(jws, FUZZ_NOW));
    assert!(
        matches!(again, Err(baton_issuer::attest::AttestError::Replayed)),
        "an accepted assertion was accepted twice: {again:?}"
    );
}
