//! Minting access tokens (SPEC §4): compact JWS (RFC 7515 §7.1) carrying the RFC 9068
//! JWT access-token profile, signed with the keyring's active key.
//!
//! This is the issuer's hot path, so it is built by hand: the protected header is
//! encoded once per key, the claims are serialized from borrowed fields, and the
//! signature comes from the ring key pair the keyring parsed at load time (a JOSE
//! library's `encode` would re-parse the PKCS#8 key on every call).

use std::cell::RefCell;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use baton_proto::SpiffeId;
use baton_proto::claims::{JwsAlgorithm, MAX_TOKEN_TTL_SECS, TOKEN_TYP};
use ring::rand::{SecureRandom, SystemRandom};
use serde::Serialize;

use crate::keyring::{KeyState, SigningKey};

/// Random bytes in a `jti` or `sid`: SPEC §4 asks for at least 128 bits.
const ID_BYTES: usize = 16;

/// What to put in one access token. The caller has already attested the caller and
/// applied policy; minting checks only what would make the token itself invalid.
#[derive(Debug, Clone, Copy)]
pub struct TokenSpec<'a> {
    /// `iss`: the issuer identifier (its URL).
    pub issuer: &'a str,
    /// `sub` and `client_id`: the attested caller.
    pub caller: &'a SpiffeId,
    /// `aud`: the one callee the token is for.
    pub audience: &'a SpiffeId,
    /// `scope`: granted scopes, space-separated, when any were granted.
    pub scope: Option<&'a str>,
    /// Lifetime: `exp - iat`; at least one second and at most [`MAX_TOKEN_TTL_SECS`].
    pub ttl: Duration,
    /// `sid`: the session of the attestation this token was minted under.
    pub sid: &'a str,
    /// `cnf.x5t#S256` (RFC 8705 §3.1) when the caller attested over mTLS.
    pub cnf_x5t_s256: Option<&'a str>,
}

/// A minted token and the claims the issuer needs to record about it.
#[derive(Clone, PartialEq, Eq)]
pub struct Minted {
    /// The compact JWS.
    pub token: String,
    /// Its `jti`, the replay-ledger key.
    pub jti: String,
    /// Its `iat` (and `nbf`), Unix seconds.
    pub iat: i64,
    /// Its `exp`, Unix seconds.
    pub exp: i64,
}

impl std::fmt::Debug for Minted {
    // A token is a bearer credential until it is used: keep it out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Minted")
            .field("jti", &self.jti)
            .field("iat", &self.iat)
            .field("exp", &self.exp)
            .finish_non_exhaustive()
    }
}

/// Why a token could not be minted. No variant carries a token or key material.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    /// The lifetime asked for is zero or above the SPEC §4 maximum.
    #[error(
        "token lifetime {asked:?} is outside 1 s..={MAX_TOKEN_TTL_SECS} s; fix the configured or policy TTL"
    )]
    Ttl {
        /// The lifetime asked for.
        asked: Duration,
    },
    /// The key is not the active one: `next` keys are not yet trusted by every
    /// verifier's cache and `retired` keys are on their way out.
    #[error("signing key {kid} is {state}, not active; mint with the keyring's active key")]
    KeyNotActive {
        /// The key.
        kid: String,
        /// Its state.
        state: KeyState,
    },
    /// The token would outlive its signing key's certificate, so verifiers would refuse
    /// it before it expires.
    #[error("signing key {kid}'s certificate expires before the token would; rotate the keyring")]
    KeyExpiring {
        /// The key.
        kid: String,
    },
    /// `now + ttl` does not fit in the claims.
    #[error("the clock reads {now}, which is out of range; check the system clock")]
    Clock {
        /// The clock value given.
        now: i64,
    },
    /// The system random number generator failed (for `jti`, `sid` or an ECDSA nonce).
    #[error(
        "the system random number generator failed; retry, and check the host's entropy source"
    )]
    Random,
    /// The claims could not be serialized.
    #[error("the token claims could not be encoded")]
    Encode,
}

/// RFC 9068 §2.1 protected header. Field order is the wire order.
#[derive(Serialize)]
struct Header<'a> {
    alg: JwsAlgorithm,
    typ: &'static str,
    kid: &'a str,
}

/// The base64url JOSE header of every token signed by the key `kid`; the keyring
/// computes it once per key.
pub(crate) fn token_header_b64(alg: JwsAlgorithm, kid: &str) -> String {
    let header = Header {
        alg,
        typ: TOKEN_TYP,
        kid,
    };
    // Serializing a struct of strings cannot fail; an empty header would fail every
    // verification rather than pass one.
    let json = serde_json::to_vec(&header).unwrap_or_default();
    URL_SAFE_NO_PAD.encode(json)
}

/// Mirrors [`baton_proto::claims::AccessTokenClaims`] with borrowed fields, so minting
/// copies no ID; a test proves the two agree on the wire.
#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a SpiffeId,
    client_id: &'a SpiffeId,
    aud: &'a SpiffeId,
    iat: i64,
    nbf: i64,
    exp: i64,
    jti: &'a str,
    sid: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cnf: Option<Cnf<'a>>,
}

#[derive(Serialize)]
struct Cnf<'a> {
    #[serde(rename = "x5t#S256")]
    x5t_s256: &'a str,
}

/// Mints one access token signed by `key` at Unix time `now`.
///
/// `key` must be the active key, and the lifetime must lie within 1 s..=300 s: a
/// longer one is an error, not silently shortened, because the caller derived it from
/// policy and should learn that the policy is wrong.
pub fn mint(key: &SigningKey, spec: &TokenSpec<'_>, now: i64) -> Result<Minted, MintError> {
    if key.state() != KeyState::Active {
        return Err(MintError::KeyNotActive {
            kid: key.kid().to_owned(),
            state: key.state(),
        });
    }
    if spec.ttl > Duration::from_secs(MAX_TOKEN_TTL_SECS) || spec.ttl < Duration::from_secs(1) {
        return Err(MintError::Ttl { asked: spec.ttl });
    }
    // The bound above keeps the cast exact.
    let ttl = spec.ttl.as_secs() as i64;
    let exp = now.checked_add(ttl).ok_or(MintError::Clock { now })?;
    if exp > key.not_after().unix_timestamp() {
        return Err(MintError::KeyExpiring {
            kid: key.kid().to_owned(),
        });
    }
    let jti = random_id()?;
    let claims = Claims {
        iss: spec.issuer,
        sub: spec.caller,
        client_id: spec.caller,
        aud: spec.audience,
        iat: now,
        // RFC 9068 does not require nbf; SPEC §4 does, and a token is valid from issue.
        nbf: now,
        exp,
        jti: &jti,
        sid: spec.sid,
        scope: spec.scope,
        cnf: spec.cnf_x5t_s256.map(|x5t_s256| Cnf { x5t_s256 }),
    };
    let payload = serde_json::to_vec(&claims).map_err(|_| MintError::Encode)?;

    let header = key.token_header_b64();
    // header.payload.signature, each base64url: 4/3 the bytes plus two dots.
    let mut token = String::with_capacity(header.len() + (payload.len() + 64) * 4 / 3 + 8);
    token.push_str(header);
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(&payload, &mut token);
    // RFC 7515 §5.1: the signing input is the ASCII of `header.payload`.
    let signature = key.sign(token.as_bytes()).map_err(|_| MintError::Random)?;
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(signature.as_ref(), &mut token);
    Ok(Minted {
        token,
        jti,
        iat: now,
        exp,
    })
}

/// A fresh session id (`sid`): 128 random bits, base64url.
pub fn new_session_id() -> Result<String, MintError> {
    random_id()
}

/// 128 random bits, base64url, from this thread's [`IdPool`].
fn random_id() -> Result<String, MintError> {
    thread_local! {
        static POOL: RefCell<IdPool> = const { RefCell::new(IdPool::EMPTY) };
    }
    POOL.with_borrow_mut(IdPool::take)
        .map(|bytes| URL_SAFE_NO_PAD.encode(bytes))
}

/// Random ids drawn from the operating system's generator a pool at a time: every
/// token needs a `jti` and every request a `sid`, and one `getrandom` call per id was
/// a system call per id on the mint path. The bytes are the kernel's CSPRNG output
/// unchanged; an id's bytes are wiped from the pool as it is handed out, so the pool
/// only ever holds ids not yet issued.
struct IdPool {
    bytes: [u8; ID_BYTES * IdPool::IDS],
    /// Bytes already handed out (and wiped), from the start.
    taken: usize,
}

impl IdPool {
    /// Ids per `getrandom` call.
    const IDS: usize = 32;
    const EMPTY: Self = Self {
        bytes: [0; ID_BYTES * Self::IDS],
        taken: ID_BYTES * Self::IDS,
    };

    fn take(&mut self) -> Result<[u8; ID_BYTES], MintError> {
        if self.taken == self.bytes.len() {
            SystemRandom::new()
                .fill(&mut self.bytes)
                .map_err(|_| MintError::Random)?;
            self.taken = 0;
        }
        let slot = &mut self.bytes[self.taken..self.taken + ID_BYTES];
        let mut id = [0u8; ID_BYTES];
        id.copy_from_slice(slot);
        slot.fill(0);
        self.taken += ID_BYTES;
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keyring::tests::keyring;
    use baton_proto::claims::{AccessTokenClaims, Confirmation, JoseHeader};
    use baton_proto::jwks::JwkKey;
    use jsonwebtoken::{Algorithm, DecodingKey, Validation};
    use std::collections::HashSet;

    const ISSUER: &str = "https://baton.example.org";

    fn id(s: &str) -> SpiffeId {
        s.parse().unwrap()
    }

    fn unix_now() -> i64 {
        time::OffsetDateTime::now_utc().unix_timestamp()
    }

    fn b64url(s: &str) -> bool {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    }

    /// Verifies `token` as a third party would: key from the JWK, algorithm from the key.
    fn verify(key: &SigningKey, token: &str, audience: &str) -> AccessTokenClaims {
        let (decoding, alg) = match &key.jwk().key {
            JwkKey::P256 { x, y } => (
                DecodingKey::from_ec_components(x, y).unwrap(),
                Algorithm::ES256,
            ),
            JwkKey::Ed25519 { x } => (
                DecodingKey::from_ed_components(x).unwrap(),
                Algorithm::EdDSA,
            ),
        };
        let mut validation = Validation::new(alg);
        validation.leeway = 0;
        validation.validate_nbf = true;
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        jsonwebtoken::decode::<AccessTokenClaims>(token, &decoding, &validation)
            .unwrap()
            .claims
    }

    fn header(token: &str) -> JoseHeader {
        let part = token.split('.').next().unwrap();
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    }

    #[test]
    fn tokens_of_both_algorithms_verify_with_a_third_party_library() {
        for alg in [JwsAlgorithm::Es256, JwsAlgorithm::EdDsa] {
            let (_tmp, _store, ring) = keyring(alg);
            let key = ring.active();
            let caller = id("spiffe://example.org/fn/orders");
            let audience = id("spiffe://example.org/fn/payments");
            let sid = new_session_id().unwrap();
            let now = unix_now();
            let spec = TokenSpec {
                issuer: ISSUER,
                caller: &caller,
                audience: &audience,
                scope: Some("payments:charge orders:read"),
                ttl: Duration::from_secs(60),
                sid: &sid,
                cnf_x5t_s256: None,
            };
            let minted = mint(key, &spec, now).unwrap();
            assert_eq!((minted.iat, minted.exp), (now, now + 60));

            let header = header(&minted.token);
            assert_eq!(header.alg, alg);
            assert_eq!(header.typ.as_deref(), Some(TOKEN_TYP));
            assert_eq!(header.kid.as_deref(), Some(key.kid()));
            assert_eq!(header.x5c, None);
            let decoded = jsonwebtoken::decode_header(&minted.token).unwrap();
            assert_eq!(decoded.typ.as_deref(), Some("at+jwt"));

            // RFC 7518 §3.4 / RFC 8037 §3.1: both signatures are 64 raw bytes.
            let sig = minted.token.rsplit('.').next().unwrap();
            assert_eq!(URL_SAFE_NO_PAD.decode(sig).unwrap().len(), 64);

            let claims = verify(key, &minted.token, audience.as_str());
            let want = AccessTokenClaims {
                iss: ISSUER.to_owned(),
                sub: caller.clone(),
                client_id: caller.clone(),
                aud: audience.clone(),
                iat: now,
                nbf: now,
                exp: now + 60,
                jti: minted.jti.clone(),
                sid: sid.clone(),
                scope: Some("payments:charge orders:read".to_owned()),
                cnf: None,
            };
            assert_eq!(claims, want);
        }
    }

    #[test]
    fn claims_are_exactly_the_spec_members_with_aud_as_one_string() {
        let (_tmp, _store, ring) = keyring(JwsAlgorithm::Es256);
        let (caller, audience) = (id("spiffe://example.org/a"), id("spiffe://example.org/b"));
        let spec = TokenSpec {
            issuer: ISSUER,
            caller: &caller,
            audience: &audience,
            scope: None,
            ttl: Duration::from_secs(60),
            sid: "s",
            cnf_x5t_s256: None,
        };
        let token = mint(ring.active(), &spec, unix_now()).unwrap().token;
        let payload = token.split('.').nth(1).unwrap();
        let json: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        let mut members: Vec<_> = json.as_object().unwrap().keys().cloned().collect();
        members.sort();
        assert_eq!(
            members,
            [
                "aud",
                "client_id",
                "exp",
                "iat",
                "iss",
                "jti",
                "nbf",
                "sid",
                "sub"
            ]
        );
        assert_eq!(json["aud"], "spiffe://example.org/b");
    }

    #[test]
    fn cnf_is_present_only_when_mtls_bound() {
        let (_tmp, _store, ring) = keyring(JwsAlgorithm::EdDsa);
        let key = ring.active();
        let (caller, audience) = (id("spiffe://example.org/a"), id("spiffe://example.org/b"));
        let thumb = URL_SAFE_NO_PAD.encode([7u8; 32]);
        let mut spec = TokenSpec {
            issuer: ISSUER,
            caller: &caller,
            audience: &audience,
            scope: None,
            ttl: Duration::from_secs(30),
            sid: "s",
            cnf_x5t_s256: Some(&thumb),
        };
        let bound = mint(key, &spec, unix_now()).unwrap();
        let claims = verify(key, &bound.token, audience.as_str());
        assert_eq!(
            claims.cnf,
            Some(Confirmation {
                x5t_s256: thumb.clone()
            })
        );
        assert_eq!(claims.scope, None);
        let payload = bound.token.split('.').nth(1).unwrap();
        let raw = String::from_utf8(URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        assert!(raw.contains(r#""cnf":{"x5t#S256":"#), "{raw}");

        spec.cnf_x5t_s256 = None;
        let unbound = mint(key, &spec, unix_now()).unwrap();
        assert_eq!(verify(key, &unbound.token, audience.as_str()).cnf, None);
    }

    #[test]
    fn jti_is_unique_and_at_least_128_bits_of_base64url() {
        let (_tmp, _store, ring) = keyring(JwsAlgorithm::Es256);
        let (caller, audience) = (id("spiffe://example.org/a"), id("spiffe://example.org/b"));
        let spec = TokenSpec {
            issuer: ISSUER,
            caller: &caller,
            audience: &audience,
            scope: None,
            ttl: Duration::from_secs(60),
            sid: "s",
            cnf_x5t_s256: None,
        };
        let now = unix_now();
        let mut seen = HashSet::new();
        for _ in 0..5_000 {
            let minted = mint(ring.active(), &spec, now).unwrap();
            assert!(
                minted.jti.len() >= 22 && b64url(&minted.jti),
                "{}",
                minted.jti
            );
            assert_eq!(URL_SAFE_NO_PAD.decode(&minted.jti).unwrap().len(), 16);
            assert!(seen.insert(minted.jti), "duplicate jti");
        }
        let mut sids = HashSet::new();
        for _ in 0..1_000 {
            let sid = new_session_id().unwrap();
            assert!(sid.len() >= 22 && b64url(&sid));
            assert!(sids.insert(sid));
        }
    }

    #[test]
    fn the_id_pool_hands_out_each_id_once_and_keeps_none_it_handed_out() {
        let mut pool = IdPool::EMPTY;
        let mut seen = HashSet::new();
        // Across several refills of the pool.
        for n in 0..IdPool::IDS * 3 + 5 {
            let id = pool.take().unwrap();
            assert_ne!(
                id, [0u8; ID_BYTES],
                "id {n} is all zeros: the pool was not filled"
            );
            assert!(seen.insert(id), "id {n} handed out twice");
            assert!(
                pool.bytes[..pool.taken].iter().all(|b| *b == 0),
                "a handed-out id stayed in the pool"
            );
        }
    }

    #[test]
    fn ttl_above_300_s_or_zero_is_refused_not_capped() {
        let (_tmp, _store, ring) = keyring(JwsAlgorithm::Es256);
        let (caller, audience) = (id("spiffe://example.org/a"), id("spiffe://example.org/b"));
        let spec = |ttl| TokenSpec {
            issuer: ISSUER,
            caller: &caller,
            audience: &audience,
            scope: None,
            ttl,
            sid: "s",
            cnf_x5t_s256: None,
        };
        let now = unix_now();
        let max = mint(ring.active(), &spec(Duration::from_secs(300)), now).unwrap();
        assert_eq!(max.exp - max.iat, 300);
        for bad in [
            Duration::from_secs(301),
            Duration::from_millis(300_001),
            Duration::from_secs(3600),
            Duration::ZERO,
            Duration::from_millis(999),
        ] {
            let err = mint(ring.active(), &spec(bad), now).unwrap_err();
            assert!(matches!(err, MintError::Ttl { .. }), "{bad:?}: {err}");
        }
        let err = mint(ring.active(), &spec(Duration::from_secs(60)), i64::MAX).unwrap_err();
        assert!(matches!(err, MintError::Clock { .. }), "{err}");
    }

    #[test]
    fn only_the_active_key_mints_and_never_past_its_certificate() {
        let (_tmp, _store, ring) = keyring(JwsAlgorithm::Es256);
        let (caller, audience) = (id("spiffe://example.org/a"), id("spiffe://example.org/b"));
        let spec = TokenSpec {
            issuer: ISSUER,
            caller: &caller,
            audience: &audience,
            scope: None,
            ttl: Duration::from_secs(60),
            sid: "s",
            cnf_x5t_s256: None,
        };
        let next = ring
            .keys()
            .iter()
            .find(|k| k.state() == KeyState::Next)
            .unwrap();
        let err = mint(next, &spec, unix_now()).unwrap_err();
        assert!(
            matches!(
                err,
                MintError::KeyNotActive {
                    state: KeyState::Next,
                    ..
                }
            ),
            "{err}"
        );
        let late = ring.active().not_after().unix_timestamp() - 30;
        let err = mint(ring.active(), &spec, late).unwrap_err();
        assert!(matches!(err, MintError::KeyExpiring { .. }), "{err}");
    }

    #[test]
    fn debug_of_a_minted_token_hides_the_token() {
        let (_tmp, _store, ring) = keyring(JwsAlgorithm::EdDsa);
        let (caller, audience) = (id("spiffe://example.org/a"), id("spiffe://example.org/b"));
        let spec = TokenSpec {
            issuer: ISSUER,
            caller: &caller,
            audience: &audience,
            scope: None,
            ttl: Duration::from_secs(60),
            sid: "s",
            cnf_x5t_s256: None,
        };
        let minted = mint(ring.active(), &spec, unix_now()).unwrap();
        let debug = format!("{minted:?}");
        assert!(debug.contains(&minted.jti));
        for part in minted.token.split('.') {
            assert!(!debug.contains(part));
        }
    }
}
