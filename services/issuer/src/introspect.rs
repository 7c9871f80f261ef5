//! Introspection and revocation of the issuer's own tokens (SPEC §4 "one-time", §5
//! introspect and revoke rows, §7; RFC 7662, RFC 7009).
//!
//! A token is checked in the order a reader expects: size → shape → header (`alg`,
//! `typ`, `kid`) → key by `kid` → algorithm bound to that key → signature → claims
//! (`iss`, times, lifetime, `jti`). That much makes it an authentic, current Baton
//! token ([`Introspector::authenticate`], all revocation needs). Introspection then
//! asks what only the issuer knows: is the introspecting caller its audience, is its
//! subject denied, is its session revoked — and last, consumes its `jti`, which the
//! ledger refuses if the token was minted at or before its epoch; so a check that
//! fails never burns the token and the audience's introspection is the token's one use.
//!
//! Every failure is one [`InactiveReason`]; the HTTP layer answers all of them with the
//! same `{"active":false}` and keeps the reason for metrics and the audit log.

use std::sync::Arc;

use baton_proto::SpiffeId;
use baton_proto::claims::{
    AccessTokenClaims, Confirmation, MAX_CLOCK_LEEWAY_SECS, MAX_TOKEN_BYTES, MAX_TOKEN_TTL_SECS,
    TOKEN_TYP,
};
use baton_proto::json::{UniqueJsonError, from_slice_unique};
use serde::Deserialize;

use crate::attest::MAX_JTI_BYTES;
use crate::deny::DenyList;
use crate::jws::{self, CompactJws, JwsError};
use crate::keyring::{KeyState, Keyring};
use crate::ledger::{Consumed, LedgerError, ReplayLedger};

/// Ledger key prefix of a consumed access token: `access-token <jti>`.
const ACCESS_TOKEN_KEY: &str = "access-token ";
/// Ledger key prefix of a revoked session: `revoked-session <sid>`.
const REVOKED_SESSION_KEY: &str = "revoked-session ";

/// Why a token is not active. The HTTP answer is the same `{"active":false}` for
/// every variant (RFC 7662 §2.2); the variant goes to metrics and the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InactiveReason {
    /// Longer than [`MAX_TOKEN_BYTES`].
    #[error("token is longer than {MAX_TOKEN_BYTES} bytes")]
    TooLarge,
    /// Not a compact JWS with the members a Baton token has.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// `alg` is not ES256 or EdDSA (`none`, HMAC, RSA, …).
    #[error("token alg must be ES256 or EdDSA")]
    UnsupportedAlgorithm,
    /// `typ` is not `at+jwt` (RFC 9068 §2.1), e.g. a client assertion.
    #[error("token typ must be at+jwt")]
    WrongType,
    /// The header names no `kid`.
    #[error("token header has no kid")]
    MissingKid,
    /// No key of the keyring has this `kid`.
    #[error("token kid names no key of this issuer")]
    UnknownKey,
    /// The key named by `kid` was revoked (`baton keys revoke`).
    #[error("token was signed by a revoked key")]
    RevokedKey,
    /// `alg` is not the algorithm of the key named by `kid`.
    #[error("token alg does not match its key's algorithm")]
    AlgorithmMismatch,
    /// The signature does not verify with the key named by `kid`.
    #[error("token signature does not verify")]
    BadSignature,
    /// `iss` is not this issuer.
    #[error("token was issued by another issuer")]
    WrongIssuer,
    /// `exp` passed more than the leeway ago.
    #[error("token has expired")]
    Expired,
    /// `iat` or `nbf` is more than the leeway in the future.
    #[error("token iat or nbf is in the future")]
    NotYetValid,
    /// `exp - iat` is above [`MAX_TOKEN_TTL_SECS`].
    #[error("token lifetime exceeds {MAX_TOKEN_TTL_SECS} seconds")]
    LifetimeTooLong,
    /// No `jti` (or an empty one).
    #[error("token has no jti")]
    MissingJti,
    /// Issued at or before the replay ledger's epoch (an issuer restart, or a shared
    /// store that lost its data): it may have been used while no ledger was watching
    /// (SPEC §7).
    #[error("token was issued before the replay ledger's epoch")]
    IssuedBeforeStart,
    /// The introspecting caller is not the token's audience.
    #[error("token is not addressed to the introspecting caller")]
    WrongAudience,
    /// The token's subject (caller) is on the identity deny list.
    #[error("token's subject is on the identity deny list")]
    DeniedSubject,
    /// The token's session was revoked (RFC 7009).
    #[error("token's session was revoked")]
    RevokedSession,
    /// The token was used before.
    #[error("token was already used")]
    Replayed,
    /// The ledger cannot answer or record; nothing was consumed. Not the token's fault:
    /// the HTTP layer answers 503 so the caller retries.
    #[error("replay ledger unavailable; retry shortly")]
    LedgerUnavailable,
}

impl InactiveReason {
    /// A stable, low-cardinality label for metrics and the audit log.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TooLarge => "too_large",
            Self::Malformed(_) => "malformed",
            Self::UnsupportedAlgorithm => "unsupported_algorithm",
            Self::WrongType => "wrong_typ",
            Self::MissingKid => "missing_kid",
            Self::UnknownKey => "unknown_key",
            Self::RevokedKey => "revoked_key",
            Self::AlgorithmMismatch => "algorithm_mismatch",
            Self::BadSignature => "bad_signature",
            Self::WrongIssuer => "wrong_issuer",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::LifetimeTooLong => "lifetime_too_long",
            Self::MissingJti => "missing_jti",
            Self::IssuedBeforeStart => "issued_before_start",
            Self::WrongAudience => "wrong_audience",
            Self::DeniedSubject => "denied_subject",
            Self::RevokedSession => "revoked_session",
            Self::Replayed => "replayed",
            Self::LedgerUnavailable => "ledger_unavailable",
        }
    }

    /// Whether the failure is Baton's, not the token's (answer 503, not inactive).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::LedgerUnavailable)
    }
}

impl From<LedgerError> for InactiveReason {
    fn from(e: LedgerError) -> Self {
        match e {
            LedgerError::Replayed => Self::Replayed,
            LedgerError::Stale => Self::IssuedBeforeStart,
            LedgerError::Full | LedgerError::Unavailable => Self::LedgerUnavailable,
        }
    }
}

/// A token that is not active, with its claims when they were authentic (signature
/// verified), so the audit log can name its `jti` and `sid`. Claims of a token whose
/// signature did not verify are attacker-chosen and never kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Why.
    pub reason: InactiveReason,
    /// The verified claims, when the token got that far.
    pub claims: Option<Box<AccessTokenClaims>>,
}

impl Rejection {
    fn unverified(reason: InactiveReason) -> Self {
        Self {
            reason,
            claims: None,
        }
    }

    fn of(reason: InactiveReason, claims: AccessTokenClaims) -> Self {
        Self {
            reason,
            claims: Some(Box::new(claims)),
        }
    }
}

/// Why a revocation request changed nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RevokeError {
    /// Not an authentic, current Baton token: there is nothing to revoke, and RFC 7009
    /// §2.2 answers 200 all the same.
    #[error("not a valid token of this issuer ({0}); nothing to revoke")]
    NotAToken(InactiveReason),
    /// The authenticated caller is neither the token's subject nor its audience
    /// (RFC 7009 §2.1: the request is refused).
    #[error("only the token's caller (sub) or audience (aud) may revoke it")]
    NotYours(Box<AccessTokenClaims>),
    /// The ledger cannot record the revocation; retry.
    #[error("replay ledger unavailable; retry shortly")]
    Unavailable(Box<AccessTokenClaims>),
}

/// Checks, introspects and revokes the issuer's own access tokens.
///
/// Share one per issuer; its ledger and deny list are the ones the
/// [`Attestor`](crate::attest::Attestor) uses, so assertions, tokens and revoked
/// sessions live in one store.
#[derive(Debug)]
pub struct Introspector {
    issuer: String,
    deny: Arc<DenyList>,
    ledger: Arc<dyn ReplayLedger>,
}

/// The claims as a token carries them, before the checks that need them whole.
#[derive(Deserialize)]
struct RawClaims {
    iss: String,
    sub: SpiffeId,
    client_id: SpiffeId,
    aud: SpiffeId,
    iat: i64,
    nbf: i64,
    exp: i64,
    #[serde(default)]
    jti: Option<String>,
    sid: String,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    cnf: Option<Confirmation>,
}

impl Introspector {
    /// An introspector for tokens whose `iss` is `issuer`.
    pub fn new(issuer: String, deny: Arc<DenyList>, ledger: Arc<dyn ReplayLedger>) -> Self {
        Self {
            issuer,
            deny,
            ledger,
        }
    }

    /// Whether the ledger can record new entries (readiness): `Ok`, or why not.
    pub async fn ready(&self, now: i64) -> Result<(), LedgerError> {
        self.ledger.ready(now).await
    }

    /// Checks that `token` is an authentic Baton access token signed by a key of
    /// `keys` and valid at `now`: everything a verifier holding only the JWKS could
    /// check, but nothing about audience, deny list, revocation or one-time use.
    pub fn authenticate(
        &self,
        keys: &Keyring,
        token: &str,
        now: i64,
    ) -> Result<AccessTokenClaims, InactiveReason> {
        let jws = CompactJws::parse(token, MAX_TOKEN_BYTES)?;
        let header = &jws.header;
        if !header
            .typ
            .as_deref()
            .is_some_and(|t| jws::typ_is(t, &[TOKEN_TYP]))
        {
            return Err(InactiveReason::WrongType);
        }
        // kid is attacker-controlled: it only selects among the keyring's own keys,
        // and the key, not the header, decides the algorithm.
        let kid = header.kid.as_deref().ok_or(InactiveReason::MissingKid)?;
        let key = keys.get(kid).ok_or(InactiveReason::UnknownKey)?;
        // SPEC §9: a revoked key's tokens are inactive at once, valid signature or not.
        if key.state() == KeyState::Revoked {
            return Err(InactiveReason::RevokedKey);
        }
        if header.alg != key.alg() {
            return Err(InactiveReason::AlgorithmMismatch);
        }
        if !key.verify(jws.signing_input.as_bytes(), &jws.signature()?) {
            return Err(InactiveReason::BadSignature);
        }

        // RFC 7519 §4: claim names are unique, known or not.
        let raw: RawClaims = from_slice_unique(&jws.payload()?).map_err(|e| match e {
            UniqueJsonError::DuplicateMember => {
                InactiveReason::Malformed("the claims have a duplicate member (RFC 7519 §4)")
            }
            UniqueJsonError::Invalid(_) => InactiveReason::Malformed(
                "the claims are not those of a Baton access token (RFC 9068)",
            ),
        })?;
        if raw.iss != self.issuer {
            return Err(InactiveReason::WrongIssuer);
        }
        // RFC 9068 §2.2: for client credentials both name the client, as every Baton
        // token has them; the SDK refuses a token where they differ, and so does this.
        if raw.sub != raw.client_id {
            return Err(InactiveReason::Malformed("sub and client_id differ"));
        }
        // This issuer mints for its own trust domain's callers only (as the SDK checks).
        if raw.sub.trust_domain_name() != raw.aud.trust_domain_name() {
            return Err(InactiveReason::Malformed("sub is of another trust domain"));
        }
        check_times(raw.iat, raw.nbf, raw.exp, now)?;
        let jti = match raw.jti {
            Some(jti) if !jti.is_empty() => jti,
            _ => return Err(InactiveReason::MissingJti),
        };
        if jti.len() > MAX_JTI_BYTES {
            return Err(InactiveReason::Malformed("jti is longer than 256 bytes"));
        }
        if raw.sid.is_empty() || raw.sid.len() > MAX_JTI_BYTES {
            return Err(InactiveReason::Malformed("sid must be 1 to 256 bytes long"));
        }
        Ok(AccessTokenClaims {
            iss: raw.iss,
            sub: raw.sub,
            client_id: raw.client_id,
            aud: raw.aud,
            iat: raw.iat,
            nbf: raw.nbf,
            exp: raw.exp,
            jti,
            sid: raw.sid,
            scope: raw.scope,
            cnf: raw.cnf,
        })
    }

    /// RFC 7662 introspection of `token` by the authenticated `caller` at `now`.
    ///
    /// Active only when the token is authentic and current, is addressed to `caller`,
    /// its subject is not denied, its session not revoked, and it was minted after the
    /// ledger's epoch — and then this call consumes it: a second introspection, or one
    /// racing this one, finds it [`Replayed`](InactiveReason::Replayed).
    pub async fn introspect(
        &self,
        keys: &Keyring,
        token: &str,
        caller: &SpiffeId,
        now: i64,
    ) -> Result<AccessTokenClaims, Rejection> {
        let claims = self
            .authenticate(keys, token, now)
            .map_err(Rejection::unverified)?;
        // Before anything with an effect: a token shown to the wrong service must stay
        // usable by its real audience.
        if &claims.aud != caller {
            return Err(Rejection::of(InactiveReason::WrongAudience, claims));
        }
        if self.deny.contains(&claims.sub) {
            return Err(Rejection::of(InactiveReason::DeniedSubject, claims));
        }
        // Last: only a token that passed every check, and whose session is not revoked,
        // is consumed (one step: one round trip to a shared store). Kept until it can no
        // longer be accepted, exp + leeway. The ledger refuses one minted at or before
        // its epoch (SPEC §7), which covers a restart and a shared store's data loss.
        let consumed = self
            .ledger
            .consume_unless(
                &token_key(&claims.jti),
                &session_key(&claims.sid),
                Some(claims.iat),
                claims.exp.saturating_add(leeway()),
                now,
            )
            .await;
        match consumed {
            Ok(Consumed::Yes) => Ok(claims),
            Ok(Consumed::Blocked) => Err(Rejection::of(InactiveReason::RevokedSession, claims)),
            Err(e) => Err(Rejection::of(e.into(), claims)),
        }
    }

    /// RFC 7009 revocation of `token` by the authenticated `caller` at `now`: its whole
    /// session (`sid`) introspects inactive until the token would have expired. Only the
    /// token's subject or audience may revoke it.
    pub async fn revoke(
        &self,
        keys: &Keyring,
        token: &str,
        caller: &SpiffeId,
        now: i64,
    ) -> Result<AccessTokenClaims, RevokeError> {
        let claims = self
            .authenticate(keys, token, now)
            .map_err(RevokeError::NotAToken)?;
        if &claims.sub != caller && &claims.aud != caller {
            return Err(RevokeError::NotYours(Box::new(claims)));
        }
        // Every token of a session is minted at once with one lifetime, so the session
        // needs remembering only as long as this token.
        match self
            .ledger
            .mark(
                &session_key(&claims.sid),
                claims.exp.saturating_add(leeway()),
                now,
            )
            .await
        {
            Ok(()) => Ok(claims),
            Err(_) => Err(RevokeError::Unavailable(Box::new(claims))),
        }
    }
}

fn token_key(jti: &str) -> String {
    format!("{ACCESS_TOKEN_KEY}{jti}")
}

fn session_key(sid: &str) -> String {
    format!("{REVOKED_SESSION_KEY}{sid}")
}

/// The JWS leeway of SPEC §4, as a signed number of seconds.
fn leeway() -> i64 {
    MAX_CLOCK_LEEWAY_SECS as i64
}

/// RFC 7519 §4.1.4–6 with the SPEC §4 leeway, and the SPEC §4 lifetime bound.
fn check_times(iat: i64, nbf: i64, exp: i64, now: i64) -> Result<(), InactiveReason> {
    if exp <= now.saturating_sub(leeway()) {
        return Err(InactiveReason::Expired);
    }
    let horizon = now.saturating_add(leeway());
    if iat > horizon || nbf > horizon {
        return Err(InactiveReason::NotYetValid);
    }
    match exp.checked_sub(iat) {
        Some(lifetime) if lifetime <= 0 => {
            Err(InactiveReason::Malformed("exp must be later than iat"))
        }
        Some(lifetime) if lifetime <= MAX_TOKEN_TTL_SECS as i64 => Ok(()),
        _ => Err(InactiveReason::LifetimeTooLong),
    }
}

/// RFC 9068 §2.1 and RFC 8725 §3.11: `at+jwt`, optionally with the `application/`
/// prefix, compared case-insensitively (RFC 7515 §4.1.9). A missing `typ` is refused,
/// so no other kind of JWT signed by a Baton key passes as an access token.
impl From<JwsError> for InactiveReason {
    fn from(e: JwsError) -> Self {
        match e {
            JwsError::TooLarge => Self::TooLarge,
            JwsError::UnsupportedAlgorithm => Self::UnsupportedAlgorithm,
            JwsError::Segments => {
                Self::Malformed("a compact JWS has exactly three base64url segments")
            }
            JwsError::Encoding(what) => Self::Malformed(what),
            JwsError::Header => Self::Malformed("the header is not a JOSE header Baton accepts"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keyring::KeyState;
    use crate::keyring::tests::keyring;
    use crate::ledger::MemoryLedger;
    use crate::mint::{self, TokenSpec};
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use baton_proto::claims::JwsAlgorithm;
    use serde_json::{Value, json};
    use std::time::Duration;

    const ISSUER: &str = "https://baton.example.org";
    const ORDERS: &str = "spiffe://example.org/fn/orders";
    const PAYMENTS: &str = "spiffe://example.org/fn/payments";
    const LEDGER_ID: &str = "spiffe://example.org/fn/ledger";

    fn id(s: &str) -> SpiffeId {
        s.parse().unwrap()
    }

    fn unix_now() -> i64 {
        time::OffsetDateTime::now_utc().unix_timestamp()
    }

    struct Fixture {
        _tmp: tempfile::TempDir,
        _store: crate::datadir::OpenDataDir,
        keys: Keyring,
        deny: Arc<DenyList>,
        ledger: Arc<MemoryLedger>,
        introspector: Introspector,
        now: i64,
    }

    fn fixture_with(alg: JwsAlgorithm, capacity: usize) -> Fixture {
        let (tmp, store, keys) = keyring(alg);
        let now = unix_now();
        let deny = Arc::new(DenyList::new());
        let ledger = Arc::new(MemoryLedger::new(capacity, now - 100));
        let introspector = Introspector::new(ISSUER.to_owned(), deny.clone(), ledger.clone());
        Fixture {
            _tmp: tmp,
            _store: store,
            keys,
            deny,
            ledger,
            introspector,
            now,
        }
    }

    fn fixture() -> Fixture {
        fixture_with(JwsAlgorithm::Es256, 1000)
    }

    impl Fixture {
        /// A real token from `mint`, session `sid`, minted at `at`.
        fn mint_at(&self, sid: &str, at: i64) -> String {
            let (caller, audience) = (id(ORDERS), id(PAYMENTS));
            let spec = TokenSpec {
                issuer: ISSUER,
                caller: &caller,
                audience: &audience,
                scope: Some("payments:charge"),
                ttl: Duration::from_secs(60),
                sid,
                cnf_x5t_s256: None,
            };
            mint::mint(self.keys.active(), &spec, at).unwrap().token
        }

        fn mint(&self) -> String {
            self.mint_at("s1", self.now)
        }

        fn header(&self) -> Value {
            let key = self.keys.active();
            json!({"alg": key.alg().as_str(), "typ": "at+jwt", "kid": key.kid()})
        }

        fn claims(&self) -> Value {
            json!({
                "iss": ISSUER, "sub": ORDERS, "client_id": ORDERS, "aud": PAYMENTS,
                "iat": self.now, "nbf": self.now, "exp": self.now + 60,
                "jti": format!("jti-{}", rand_suffix()), "sid": "s1",
            })
        }

        /// A token signed by the active key over whatever header and claims.
        fn sign(&self, header: &Value, claims: &Value) -> String {
            let input = format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode(header.to_string()),
                URL_SAFE_NO_PAD.encode(claims.to_string())
            );
            let sig = self.keys.active().sign(input.as_bytes()).unwrap();
            format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
        }

        /// A token signed by the active key over header and claims JSON as written.
        fn sign_text(&self, header: &str, claims: &str) -> String {
            let input = format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode(header),
                URL_SAFE_NO_PAD.encode(claims)
            );
            let sig = self.keys.active().sign(input.as_bytes()).unwrap();
            format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
        }

        fn with_header(&self, edit: impl FnOnce(&mut Value)) -> String {
            let mut header = self.header();
            edit(&mut header);
            self.sign(&header, &self.claims())
        }

        fn with_claims(&self, edit: impl FnOnce(&mut Value)) -> String {
            let mut claims = self.claims();
            edit(&mut claims);
            self.sign(&self.header(), &claims)
        }

        async fn introspect_as(
            &self,
            token: &str,
            caller: &str,
        ) -> Result<AccessTokenClaims, Rejection> {
            self.introspector
                .introspect(&self.keys, token, &id(caller), self.now)
                .await
        }

        async fn reason(&self, token: &str) -> InactiveReason {
            self.introspect_as(token, PAYMENTS)
                .await
                .unwrap_err()
                .reason
        }
    }

    fn rand_suffix() -> u64 {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(1);
        NEXT.fetch_add(1, Ordering::Relaxed)
    }

    #[tokio::test]
    async fn minted_token_is_active_once_for_its_audience_with_both_algorithms() {
        for alg in [JwsAlgorithm::Es256, JwsAlgorithm::EdDsa] {
            let f = fixture_with(alg, 1000);
            let token = f.mint();
            let claims = f.introspect_as(&token, PAYMENTS).await.unwrap();
            assert_eq!(claims.sub.as_str(), ORDERS);
            assert_eq!(claims.aud.as_str(), PAYMENTS);
            assert_eq!(claims.scope.as_deref(), Some("payments:charge"));
            let again = f.introspect_as(&token, PAYMENTS).await.unwrap_err();
            assert_eq!(again.reason, InactiveReason::Replayed, "{alg}");
            assert_eq!(again.claims.unwrap().jti, claims.jti);
        }
    }

    #[tokio::test]
    async fn introspection_by_non_audience_is_inactive_and_does_not_consume() {
        let f = fixture();
        let token = f.mint();
        let r = f.introspect_as(&token, LEDGER_ID).await.unwrap_err();
        assert_eq!(r.reason, InactiveReason::WrongAudience);
        // The caller is not the audience even though it is the token's subject.
        assert_eq!(
            f.introspect_as(&token, ORDERS).await.unwrap_err().reason,
            InactiveReason::WrongAudience
        );
        assert!(f.ledger.is_empty());
        assert!(f.introspect_as(&token, PAYMENTS).await.is_ok());
    }

    #[tokio::test]
    async fn oversized_token_is_inactive() {
        let f = fixture();
        let token = f.with_claims(|c| c["pad"] = json!("x".repeat(MAX_TOKEN_BYTES)));
        assert_eq!(f.reason(&token).await, InactiveReason::TooLarge);
    }

    #[tokio::test]
    async fn token_that_is_not_a_compact_jws_is_inactive() {
        let f = fixture();
        let token = f.mint();
        let mut parts = token.split('.');
        let (h, c, s) = (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
        );
        for bad in [
            String::new(),
            "garbage".to_owned(),
            format!("{h}.{c}"),
            format!("{h}.{c}.{s}.x"),
            format!("{h}.{c}.{s}="),
            format!("*{h}.{c}.{s}"),
            format!("{}.{c}.{s}", URL_SAFE_NO_PAD.encode("not json")),
        ] {
            assert!(
                matches!(f.reason(&bad).await, InactiveReason::Malformed(_)),
                "{bad:?}"
            );
        }
        assert!(f.ledger.is_empty());
    }

    #[tokio::test]
    async fn alg_none_hmac_and_rsa_are_inactive() {
        let f = fixture();
        for alg in ["none", "HS256", "RS256", "es256"] {
            let token = f.with_header(|h| h["alg"] = json!(alg));
            assert_eq!(
                f.reason(&token).await,
                InactiveReason::UnsupportedAlgorithm,
                "{alg}"
            );
        }
        let unsigned = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(json!({"alg": "none", "typ": "at+jwt"}).to_string()),
            URL_SAFE_NO_PAD.encode(f.claims().to_string())
        );
        assert_eq!(
            f.reason(&unsigned).await,
            InactiveReason::UnsupportedAlgorithm
        );
    }

    #[tokio::test]
    async fn wrong_or_missing_typ_is_inactive() {
        let f = fixture();
        for typ in [
            json!("JWT"),
            json!("client-authentication+jwt"),
            Value::Null,
        ] {
            let token = f.with_header(|h| {
                if typ.is_null() {
                    h.as_object_mut().unwrap().remove("typ");
                } else {
                    h["typ"] = typ.clone();
                }
            });
            assert_eq!(f.reason(&token).await, InactiveReason::WrongType, "{typ}");
        }
        for typ in ["application/at+jwt", "AT+JWT"] {
            let token = f.with_header(|h| h["typ"] = json!(typ));
            assert!(f.introspect_as(&token, PAYMENTS).await.is_ok(), "{typ}");
        }
    }

    #[tokio::test]
    async fn missing_kid_is_inactive() {
        let f = fixture();
        let token = f.with_header(|h| {
            h.as_object_mut().unwrap().remove("kid");
        });
        assert_eq!(f.reason(&token).await, InactiveReason::MissingKid);
    }

    #[tokio::test]
    async fn unknown_kid_is_inactive() {
        let f = fixture();
        let other = fixture();
        let token = f.with_header(|h| h["kid"] = json!(other.keys.active().kid()));
        assert_eq!(f.reason(&token).await, InactiveReason::UnknownKey);
        // A token of another issuer's keyring is unknown here too.
        assert_eq!(f.reason(&other.mint()).await, InactiveReason::UnknownKey);
    }

    #[tokio::test]
    async fn alg_that_is_not_the_keys_is_inactive() {
        let f = fixture_with(JwsAlgorithm::Es256, 10);
        let token = f.with_header(|h| h["alg"] = json!("EdDSA"));
        assert_eq!(f.reason(&token).await, InactiveReason::AlgorithmMismatch);
    }

    #[tokio::test]
    async fn bad_signature_is_inactive() {
        let f = fixture();
        let token = f.mint();
        // Another valid signature of the same key, over other claims.
        let other = f.mint_at("s2", f.now);
        let spliced = format!(
            "{}.{}",
            token.rsplit_once('.').unwrap().0,
            other.rsplit_once('.').unwrap().1
        );
        assert_eq!(f.reason(&spliced).await, InactiveReason::BadSignature);
        // Signed by the pre-published next key but naming the active kid.
        let next = f
            .keys
            .keys()
            .iter()
            .find(|k| k.state() == KeyState::Next)
            .unwrap();
        let input = token.rsplit_once('.').unwrap().0;
        let sig = next.sign(input.as_bytes()).unwrap();
        let forged = format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()));
        assert_eq!(f.reason(&forged).await, InactiveReason::BadSignature);
        assert!(f.ledger.is_empty());
    }

    #[tokio::test]
    async fn token_of_another_issuer_is_inactive() {
        let f = fixture();
        let token = f.with_claims(|c| c["iss"] = json!("https://evil.example"));
        assert_eq!(f.reason(&token).await, InactiveReason::WrongIssuer);
    }

    #[tokio::test]
    async fn expired_token_is_inactive_after_five_seconds_of_leeway() {
        let f = fixture();
        let token = f.with_claims(|c| {
            c["iat"] = json!(f.now - 65);
            c["nbf"] = json!(f.now - 65);
            c["exp"] = json!(f.now - 5);
        });
        assert_eq!(f.reason(&token).await, InactiveReason::Expired);
        let token = f.with_claims(|c| {
            c["iat"] = json!(f.now - 64);
            c["nbf"] = json!(f.now - 64);
            c["exp"] = json!(f.now - 4);
        });
        assert!(
            f.introspect_as(&token, PAYMENTS).await.is_ok(),
            "within leeway"
        );
    }

    #[tokio::test]
    async fn token_from_the_future_is_inactive_beyond_the_leeway() {
        let f = fixture();
        for field in ["iat", "nbf"] {
            let token = f.with_claims(|c| {
                c[field] = json!(f.now + 6);
                c["exp"] = json!(f.now + 66);
            });
            assert_eq!(
                f.reason(&token).await,
                InactiveReason::NotYetValid,
                "{field}"
            );
        }
        let token = f.with_claims(|c| {
            c["iat"] = json!(f.now + 5);
            c["nbf"] = json!(f.now + 5);
            c["exp"] = json!(f.now + 65);
        });
        assert!(
            f.introspect_as(&token, PAYMENTS).await.is_ok(),
            "within leeway"
        );
    }

    #[tokio::test]
    async fn lifetime_above_300_seconds_is_inactive() {
        let f = fixture();
        let token = f.with_claims(|c| c["exp"] = json!(f.now + 301));
        assert_eq!(f.reason(&token).await, InactiveReason::LifetimeTooLong);
        let token = f.with_claims(|c| c["exp"] = json!(f.now));
        assert!(matches!(
            f.reason(&token).await,
            InactiveReason::Malformed(_)
        ));
        let token = f.with_claims(|c| c["exp"] = json!(f.now + 300));
        assert!(f.introspect_as(&token, PAYMENTS).await.is_ok());
    }

    #[tokio::test]
    async fn token_without_jti_is_inactive() {
        let f = fixture();
        let token = f.with_claims(|c| {
            c.as_object_mut().unwrap().remove("jti");
        });
        assert_eq!(f.reason(&token).await, InactiveReason::MissingJti);
        let token = f.with_claims(|c| c["jti"] = json!(""));
        assert_eq!(f.reason(&token).await, InactiveReason::MissingJti);
    }

    #[tokio::test]
    async fn claims_of_the_wrong_shape_are_inactive() {
        let f = fixture();
        for edit in [
            (|c: &mut Value| c["aud"] = json!([PAYMENTS])) as fn(&mut Value),
            |c| c["sub"] = json!("not a spiffe id"),
            |c| {
                c["sub"] = json!("spiffe://other.org/fn/orders");
                c["client_id"] = json!("spiffe://other.org/fn/orders");
            },
            |c| {
                c.as_object_mut().unwrap().remove("sid");
            },
            |c| c["sid"] = json!(""),
            |c| c["exp"] = json!("soon"),
            |c| c["jti"] = json!("j".repeat(257)),
        ] {
            let token = f.with_claims(edit);
            assert!(matches!(
                f.reason(&token).await,
                InactiveReason::Malformed(_)
            ));
        }
    }

    #[tokio::test]
    async fn duplicate_members_are_inactive_known_or_not_and_consume_nothing() {
        let f = fixture();
        let header = f.header().to_string();
        let claims = f.claims().to_string();
        // `{"a":1,…}` → `{"a":1,<extra>,…}`: the repeated member comes first, so a
        // "last one wins" reader would see the valid value.
        let prepend = |json: &str, extra: &str| format!("{{{extra},{}", &json[1..]);
        for dup in [
            format!(r#""aud":"{LEDGER_ID}""#),
            format!(r#""sub":"{LEDGER_ID}""#),
            r#""exp":1"#.to_owned(),
            r#""jti":"other""#.to_owned(),
            r#""role":"admin","role":"user""#.to_owned(),
        ] {
            let token = f.sign_text(&header, &prepend(&claims, &dup));
            assert_eq!(
                f.reason(&token).await,
                InactiveReason::Malformed("the claims have a duplicate member (RFC 7519 §4)"),
                "{dup}"
            );
        }
        for dup in [
            r#""alg":"none""#,
            r#""kid":"other""#,
            r#""typ":"JWT""#,
            r#""x5u":"https://a.example","x5u":"https://b.example""#,
        ] {
            let token = f.sign_text(&prepend(&header, dup), &claims);
            assert_eq!(
                f.reason(&token).await,
                InactiveReason::Malformed("the header is not a JOSE header Baton accepts"),
                "{dup}"
            );
        }
        // Nothing above used the jti up.
        let token = f.sign_text(&header, &claims);
        assert!(f.introspect_as(&token, PAYMENTS).await.is_ok());
    }

    #[tokio::test]
    async fn sub_and_client_id_must_agree() {
        let f = fixture();
        let token = f.with_claims(|c| c["client_id"] = json!(LEDGER_ID));
        assert_eq!(
            f.reason(&token).await,
            InactiveReason::Malformed("sub and client_id differ")
        );
    }

    #[tokio::test]
    async fn token_minted_at_or_before_the_ledger_start_is_inactive() {
        let f = fixture();
        let started = f.ledger.started_at();
        let token = f.with_claims(|c| {
            c["iat"] = json!(started);
            c["nbf"] = json!(started);
            c["exp"] = json!(started + 200);
        });
        let r = f
            .introspector
            .introspect(&f.keys, &token, &id(PAYMENTS), started + 1)
            .await;
        assert_eq!(r.unwrap_err().reason, InactiveReason::IssuedBeforeStart);
        let token = f.with_claims(|c| {
            c["iat"] = json!(started + 1);
            c["nbf"] = json!(started + 1);
            c["exp"] = json!(started + 200);
        });
        let r = f
            .introspector
            .introspect(&f.keys, &token, &id(PAYMENTS), started + 1)
            .await;
        assert!(r.is_ok(), "one second after the start is after it");
    }

    #[tokio::test]
    async fn token_of_a_denied_subject_is_inactive() {
        let f = fixture();
        let token = f.mint();
        f.deny.insert(&id(ORDERS));
        assert_eq!(f.reason(&token).await, InactiveReason::DeniedSubject);
        assert!(f.ledger.is_empty(), "not consumed");
        f.deny.remove(&id(ORDERS));
        assert!(f.introspect_as(&token, PAYMENTS).await.is_ok());
    }

    #[tokio::test]
    async fn revoked_session_makes_every_token_of_it_inactive() {
        let f = fixture();
        let batch: Vec<String> = (0..3).map(|_| f.mint_at("batch", f.now)).collect();
        let other = f.mint_at("other", f.now);
        let revoked = f
            .introspector
            .revoke(&f.keys, &batch[1], &id(ORDERS), f.now)
            .await
            .unwrap();
        assert_eq!(revoked.sid, "batch");
        for token in &batch {
            let r = f.introspect_as(token, PAYMENTS).await.unwrap_err();
            assert_eq!(r.reason, InactiveReason::RevokedSession);
            assert_eq!(r.claims.unwrap().sid, "batch");
        }
        assert!(f.introspect_as(&other, PAYMENTS).await.is_ok());
    }

    #[tokio::test]
    async fn revoked_session_is_remembered_until_its_tokens_expire() {
        let f = fixture();
        let token = f.mint();
        f.introspector
            .revoke(&f.keys, &token, &id(PAYMENTS), f.now)
            .await
            .unwrap();
        assert_eq!(
            f.ledger.contains("revoked-session s1", f.now + 64).await,
            Ok(true)
        );
        assert_eq!(
            f.ledger.contains("revoked-session s1", f.now + 65).await,
            Ok(false)
        );
    }

    #[tokio::test]
    async fn revocation_is_refused_to_callers_that_are_neither_sub_nor_aud() {
        let f = fixture();
        let token = f.mint();
        let err = f
            .introspector
            .revoke(&f.keys, &token, &id(LEDGER_ID), f.now)
            .await
            .unwrap_err();
        assert!(matches!(err, RevokeError::NotYours(_)), "{err}");
        assert!(f.ledger.is_empty());
        assert!(f.introspect_as(&token, PAYMENTS).await.is_ok());
    }

    #[tokio::test]
    async fn revocation_of_a_token_that_is_not_valid_changes_nothing() {
        let f = fixture();
        let expired = f.with_claims(|c| {
            c["iat"] = json!(f.now - 100);
            c["nbf"] = json!(f.now - 100);
            c["exp"] = json!(f.now - 40);
        });
        for (token, reason) in [
            ("garbage".to_owned(), "malformed"),
            (expired, "expired"),
            (f.with_claims(|c| c["iss"] = json!("x")), "wrong_issuer"),
        ] {
            match f
                .introspector
                .revoke(&f.keys, &token, &id(ORDERS), f.now)
                .await
            {
                Err(RevokeError::NotAToken(r)) => assert_eq!(r.reason(), reason),
                other => panic!("{other:?}"),
            }
        }
        assert!(f.ledger.is_empty());
    }

    #[tokio::test]
    async fn full_ledger_is_unavailable_not_inactive_and_consumes_nothing() {
        let f = fixture_with(JwsAlgorithm::Es256, 0);
        let token = f.mint();
        let r = f.introspect_as(&token, PAYMENTS).await.unwrap_err();
        assert_eq!(r.reason, InactiveReason::LedgerUnavailable);
        assert!(r.reason.is_unavailable());
        let err = f
            .introspector
            .revoke(&f.keys, &token, &id(ORDERS), f.now)
            .await
            .unwrap_err();
        assert!(matches!(err, RevokeError::Unavailable(_)), "{err}");
        assert_eq!(f.introspector.ready(f.now).await, Err(LedgerError::Full));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_introspections_of_one_token_yield_exactly_one_active() {
        let f = Arc::new(fixture());
        let token = Arc::new(f.mint());
        let handles: Vec<_> = (0..16)
            .map(|_| {
                let (f, token) = (Arc::clone(&f), Arc::clone(&token));
                tokio::spawn(async move { f.introspect_as(&token, PAYMENTS).await.is_ok() })
            })
            .collect();
        let mut active = 0;
        for h in handles {
            if h.await.unwrap() {
                active += 1;
            }
        }
        assert_eq!(active, 1);
    }

    #[test]
    fn ledger_errors_map_to_inactive_or_unavailable() {
        assert_eq!(
            InactiveReason::from(LedgerError::Stale),
            InactiveReason::IssuedBeforeStart
        );
        assert_eq!(
            InactiveReason::from(LedgerError::Replayed),
            InactiveReason::Replayed
        );
        for e in [LedgerError::Full, LedgerError::Unavailable] {
            assert!(InactiveReason::from(e).is_unavailable(), "{e}");
        }
    }

    #[tokio::test]
    async fn every_reason_has_a_distinct_label() {
        let all = [
            InactiveReason::TooLarge,
            InactiveReason::Malformed("x"),
            InactiveReason::UnsupportedAlgorithm,
            InactiveReason::WrongType,
            InactiveReason::MissingKid,
            InactiveReason::UnknownKey,
            InactiveReason::RevokedKey,
            InactiveReason::AlgorithmMismatch,
            InactiveReason::BadSignature,
            InactiveReason::WrongIssuer,
            InactiveReason::Expired,
            InactiveReason::NotYetValid,
            InactiveReason::LifetimeTooLong,
            InactiveReason::MissingJti,
            InactiveReason::IssuedBeforeStart,
            InactiveReason::WrongAudience,
            InactiveReason::DeniedSubject,
            InactiveReason::RevokedSession,
            InactiveReason::Replayed,
            InactiveReason::LedgerUnavailable,
        ];
        let labels: std::collections::HashSet<_> = all.iter().map(|r| r.reason()).collect();
        assert_eq!(labels.len(), all.len());
    }
}
