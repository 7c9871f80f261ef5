//! The floor's cryptography: verifying the one caller's assertions, minting tokens as
//! the issuer mints them (services/issuer/src/mint.rs), and verifying its own tokens.
//! Keys are parsed once; nothing here reads a JSON document.

use anyhow::{Context as _, bail};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::digest::{SHA256, digest};
use ring::rand::{SecureRandom as _, SystemRandom};
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, ED25519, EcdsaKeyPair, KeyPair as _,
    UnparsedPublicKey, VerificationAlgorithm,
};
use serde::Serialize;
use x509_parser::extensions::GeneralName;
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_SIG_ED25519, Oid};

/// Random bytes in a `jti` or `sid`, as the issuer (SPEC §4: at least 128 bits).
const ID_BYTES: usize = 16;

/// Token lifetime: the most SPEC §4 allows, so tokens minted before a run outlive it.
pub(crate) const TTL_SECS: u64 = 300;

/// A compact JWS split at its last dot: the signing input and the decoded signature.
fn split(jws: &[u8]) -> Option<(&[u8], Vec<u8>)> {
    let dot = jws.iter().rposition(|b| *b == b'.')?;
    let signature = URL_SAFE_NO_PAD.decode(&jws[dot + 1..]).ok()?;
    Some((&jws[..dot], signature))
}

/// The one caller: its SPIFFE ID and the public key of its leaf certificate, with the
/// algorithm that key dictates (never the one an assertion's header names).
pub(crate) struct Caller {
    id: String,
    key: UnparsedPublicKey<Vec<u8>>,
}

impl Caller {
    /// From a PEM chain, leaf first.
    pub(crate) fn from_chain_pem(pem: &str) -> anyhow::Result<Self> {
        let der = baton_tests::try_pem_blocks(pem)
            .context("bad base64 in PEM")?
            .into_iter()
            .next()
            .context("the caller certificate file holds no certificate")?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| anyhow::anyhow!("cannot parse the caller certificate: {e}"))?;
        let spki = cert.public_key();
        let algorithm = &spki.algorithm;
        let raw = &spki.subject_public_key.data;
        let verify: &'static dyn VerificationAlgorithm =
            if algorithm.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
                let curve = algorithm
                    .parameters
                    .as_ref()
                    .and_then(|p| Oid::try_from(p.clone()).ok());
                if curve != Some(OID_EC_P256) {
                    bail!("the caller's EC key is not on P-256");
                }
                &ECDSA_P256_SHA256_FIXED
            } else if algorithm.algorithm == OID_SIG_ED25519 {
                &ED25519
            } else {
                bail!("the caller's key is neither P-256 nor Ed25519");
            };
        let id = cert
            .subject_alternative_name()
            .map_err(|e| anyhow::anyhow!("bad subjectAltName: {e}"))?
            .and_then(|san| {
                san.value.general_names.iter().find_map(|name| match name {
                    GeneralName::URI(uri) if uri.starts_with("spiffe://") => {
                        Some((*uri).to_owned())
                    }
                    _ => None,
                })
            })
            .context("the caller certificate carries no SPIFFE ID")?;
        Ok(Self {
            id,
            key: UnparsedPublicKey::new(verify, raw.to_vec()),
        })
    }

    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    /// Whether `assertion` (a compact JWS) carries a valid signature by the caller.
    pub(crate) fn verifies(&self, assertion: &[u8]) -> bool {
        split(assertion).is_some_and(|(input, sig)| self.key.verify(input, &sig).is_ok())
    }
}

/// The issuer's claims, in its wire order (services/issuer/src/mint.rs `Claims`).
#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    client_id: &'a str,
    aud: &'a str,
    iat: i64,
    nbf: i64,
    exp: i64,
    jti: &'a str,
    sid: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    cnf: Option<Cnf<'a>>,
}

#[derive(Serialize)]
struct Cnf<'a> {
    #[serde(rename = "x5t#S256")]
    x5t_s256: &'a str,
}

/// What one token request asks the minter for.
pub(crate) struct Request<'a> {
    pub(crate) audience: &'a str,
    /// The mTLS client's leaf certificate (DER), for `cnf.x5t#S256`.
    pub(crate) leaf: Option<&'a [u8]>,
    pub(crate) count: u8,
    pub(crate) now: i64,
}

/// Signs tokens with a P-256 key made at start, as the issuer's active ES256 key.
pub(crate) struct Minter {
    key: EcdsaKeyPair,
    public_key: UnparsedPublicKey<Vec<u8>>,
    header_b64: String,
    issuer: String,
    subject: String,
    rng: SystemRandom,
}

impl Minter {
    /// A fresh signing key; tokens say `iss` = `issuer`, `sub` = `client_id` = `subject`.
    pub(crate) fn generate(issuer: &str, subject: &str) -> anyhow::Result<Self> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| anyhow::anyhow!("cannot generate the signing key"))?;
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .map_err(|_| anyhow::anyhow!("cannot parse the signing key"))?;
        let public = key.public_key().as_ref().to_vec();
        // The issuer's kid is the RFC 7638 thumbprint: 43 base64url characters, as here.
        let kid = URL_SAFE_NO_PAD.encode(digest(&SHA256, &public));
        // The issuer's header, in its wire order (RFC 9068 §2.1).
        let header = format!(r#"{{"alg":"ES256","typ":"at+jwt","kid":"{kid}"}}"#);
        Ok(Self {
            key,
            public_key: UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, public),
            header_b64: URL_SAFE_NO_PAD.encode(header),
            issuer: issuer.to_owned(),
            subject: subject.to_owned(),
            rng,
        })
    }

    fn random_id(&self) -> Option<String> {
        let mut bytes = [0u8; ID_BYTES];
        self.rng.fill(&mut bytes).ok()?;
        Some(URL_SAFE_NO_PAD.encode(bytes))
    }

    /// `req.count` tokens under one fresh `sid`, or `None` if the RNG or signing failed.
    pub(crate) fn mint(&self, req: &Request<'_>) -> Option<Vec<String>> {
        let sid = self.random_id()?;
        let x5t = req
            .leaf
            .map(|der| URL_SAFE_NO_PAD.encode(digest(&SHA256, der)));
        let exp = req.now + TTL_SECS as i64;
        let mut tokens = Vec::with_capacity(usize::from(req.count));
        for _ in 0..req.count {
            let jti = self.random_id()?;
            let claims = Claims {
                iss: &self.issuer,
                sub: &self.subject,
                client_id: &self.subject,
                aud: req.audience,
                iat: req.now,
                nbf: req.now,
                exp,
                jti: &jti,
                sid: &sid,
                cnf: x5t.as_deref().map(|x5t_s256| Cnf { x5t_s256 }),
            };
            let payload = serde_json::to_vec(&claims).ok()?;
            let mut token =
                String::with_capacity(self.header_b64.len() + (payload.len() + 64) * 4 / 3 + 8);
            token.push_str(&self.header_b64);
            token.push('.');
            URL_SAFE_NO_PAD.encode_string(&payload, &mut token);
            let signature = self.key.sign(&self.rng, token.as_bytes()).ok()?;
            token.push('.');
            URL_SAFE_NO_PAD.encode_string(signature.as_ref(), &mut token);
            tokens.push(token);
        }
        Some(tokens)
    }

    /// The claims (JSON bytes) of `token` if the floor signed it, else `None`.
    pub(crate) fn claims_of(&self, token: &[u8]) -> Option<Vec<u8>> {
        let (input, sig) = split(token)?;
        self.public_key.verify(input, &sig).ok()?;
        let dot = input.iter().position(|b| *b == b'.')?;
        URL_SAFE_NO_PAD.decode(&input[dot + 1..]).ok()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn minted_tokens_verify_and_a_flipped_byte_does_not() {
        let minter = Minter::generate("https://floor.test", "spiffe://example.org/a").unwrap();
        let tokens = minter
            .mint(&Request {
                audience: "spiffe://example.org/b",
                leaf: Some(b"leaf"),
                count: 2,
                now: 1_800_000_000,
            })
            .unwrap();
        assert_eq!(tokens.len(), 2);
        let claims: serde_json::Value =
            serde_json::from_slice(&minter.claims_of(tokens[0].as_bytes()).unwrap()).unwrap();
        assert_eq!(claims["aud"], "spiffe://example.org/b");
        assert_eq!(claims["exp"], 1_800_000_300_i64);
        assert!(claims["cnf"]["x5t#S256"].is_string());
        let mut bad = tokens[1].clone().into_bytes();
        let i = bad.len() - 20;
        bad[i] = if bad[i] == b'A' { b'B' } else { b'A' };
        assert!(minter.claims_of(&bad).is_none());
    }
}
