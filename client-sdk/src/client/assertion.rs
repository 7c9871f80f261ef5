//! RFC 7523 client assertions (`private_key_jwt`, SPEC §3), signed by hand with the
//! workload's parsed ring key: header `alg` from the key, `typ` `JWT`, `x5c` the chain
//! (standard base64 DER, leaf first, RFC 7515 §4.1.6); claims `iss` = `sub` = the
//! SPIFFE ID, `aud` = the issuer identifier, a 128-bit random `jti`, `iat`, `exp`.
//!
//! The header never changes, so it is encoded once; each assertion costs one claims
//! serialization and one signature.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use baton_proto::SpiffeId;
use baton_proto::claims::{AssertionClaims, JoseHeader};
use ring::rand::{SecureRandom, SystemRandom};

use rustls_pki_types::CertificateDer;

use super::error::TokenError;
use super::key::WorkloadKey;

/// Lifetime of each assertion. Short: it is used once, right away; the issuer allows
/// up to 300 s and 5 s of clock skew.
pub(crate) const ASSERTION_LIFETIME_SECS: i64 = 60;

/// Signs fresh client assertions for one workload and one issuer.
#[derive(Debug)]
pub(crate) struct AssertionSigner {
    /// `BASE64URL(header) || '.'`, the fixed prefix of every signing input.
    header_prefix: String,
    id: SpiffeId,
    audience: String,
    key: WorkloadKey,
    rng: SystemRandom,
}

impl AssertionSigner {
    /// A signer with `key` for the workload `id` certified by `chain` (leaf first),
    /// addressing its assertions to `audience` (the issuer identifier).
    pub(crate) fn new(
        id: SpiffeId,
        key: WorkloadKey,
        chain: &[CertificateDer<'_>],
        audience: String,
    ) -> Result<Self, TokenError> {
        let header = JoseHeader {
            alg: key.alg(),
            typ: Some("JWT".to_owned()),
            kid: None,
            x5c: Some(chain.iter().map(|der| STANDARD.encode(der)).collect()),
        };
        let json = serde_json::to_vec(&header)
            .map_err(|_| TokenError::Malformed("cannot encode the assertion header"))?;
        let mut header_prefix = URL_SAFE_NO_PAD.encode(json);
        header_prefix.push('.');
        Ok(Self {
            header_prefix,
            id,
            audience,
            key,
            rng: SystemRandom::new(),
        })
    }

    /// A new compact JWS valid from `now` (Unix seconds) for [`ASSERTION_LIFETIME_SECS`].
    pub(crate) fn sign(&self, now: i64) -> Result<String, TokenError> {
        let mut jti = [0u8; 16];
        self.rng.fill(&mut jti).map_err(|_| TokenError::Signing)?;
        let claims = AssertionClaims {
            iss: self.id.clone(),
            sub: self.id.clone(),
            aud: self.audience.clone(),
            jti: URL_SAFE_NO_PAD.encode(jti),
            iat: now,
            exp: now.saturating_add(ASSERTION_LIFETIME_SECS),
            nbf: None,
        };
        let json = serde_json::to_vec(&claims)
            .map_err(|_| TokenError::Malformed("cannot encode the assertion claims"))?;
        let mut jws = self.header_prefix.clone();
        URL_SAFE_NO_PAD.encode_string(json, &mut jws);
        let signature = self.key.sign(jws.as_bytes(), &self.rng)?;
        jws.push('.');
        URL_SAFE_NO_PAD.encode_string(signature, &mut jws);
        Ok(jws)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::identity::WorkloadIdentity;
    use baton_proto::claims::{JwsAlgorithm, MAX_ASSERTION_LIFETIME_SECS};
    use rcgen::{CertificateParams, KeyPair, SanType};
    use ring::signature::{ECDSA_P256_SHA256_FIXED, ED25519, UnparsedPublicKey};

    const ISSUER: &str = "https://baton.example.org";
    const NOW: i64 = 1_800_000_000;

    /// A signer for a fresh self-signed workload, and that workload's leaf DER.
    fn signer(alg: &'static rcgen::SignatureAlgorithm) -> (AssertionSigner, Vec<u8>) {
        let key = KeyPair::generate_for(alg).unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(
            "spiffe://example.org/fn/orders".try_into().unwrap(),
        )];
        let cert = params.self_signed(&key).unwrap();
        let id = WorkloadIdentity::from_pem(
            cert.pem().as_bytes(),
            key.serialize_pem().as_bytes(),
            &SystemRandom::new(),
        )
        .unwrap();
        let leaf = id.chain[0].to_vec();
        let signer = AssertionSigner::new(id.id, id.key, &id.chain, ISSUER.to_owned()).unwrap();
        (signer, leaf)
    }

    fn decode(segment: &str) -> serde_json::Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(segment).unwrap()).unwrap()
    }

    #[test]
    fn assertion_has_the_header_and_claims_the_issuer_accepts() {
        for (alg, name) in [
            (&rcgen::PKCS_ECDSA_P256_SHA256, "ES256"),
            (&rcgen::PKCS_ED25519, "EdDSA"),
        ] {
            let (signer, leaf) = signer(alg);
            let jws = signer.sign(NOW).unwrap();
            let parts: Vec<&str> = jws.split('.').collect();
            assert_eq!(parts.len(), 3);

            let header = decode(parts[0]);
            assert_eq!(header["alg"], name);
            assert_eq!(header["typ"], "JWT");
            assert!(header.get("kid").is_none());
            let x5c = header["x5c"].as_array().unwrap();
            assert_eq!(x5c.len(), 1);
            // RFC 7515 §4.1.6: standard base64, the leaf's DER.
            assert_eq!(STANDARD.decode(x5c[0].as_str().unwrap()).unwrap(), leaf);

            let claims = decode(parts[1]);
            assert_eq!(claims["iss"], "spiffe://example.org/fn/orders");
            assert_eq!(claims["sub"], claims["iss"]);
            assert_eq!(claims["aud"], ISSUER, "one string, not an array");
            assert_eq!(claims["iat"], NOW);
            assert_eq!(claims["exp"], NOW + ASSERTION_LIFETIME_SECS);
            assert!(ASSERTION_LIFETIME_SECS as u64 <= MAX_ASSERTION_LIFETIME_SECS);
            let jti = claims["jti"].as_str().unwrap();
            assert_eq!(URL_SAFE_NO_PAD.decode(jti).unwrap().len(), 16, "128 bits");
            assert_eq!(claims.as_object().unwrap().len(), 6, "{claims}");

            let parsed: AssertionClaims = serde_json::from_value(claims).unwrap();
            assert_eq!(parsed.iss, signer.id);
        }
    }

    #[test]
    fn assertion_signature_verifies_with_the_certificate_key() {
        for alg in [&rcgen::PKCS_ECDSA_P256_SHA256, &rcgen::PKCS_ED25519] {
            let (signer, leaf) = signer(alg);
            let jws = signer.sign(NOW).unwrap();
            let (input, sig) = jws.rsplit_once('.').unwrap();
            let sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
            let (_, cert) = x509_parser::parse_x509_certificate(&leaf).unwrap();
            let spki = cert.public_key().subject_public_key.data.to_vec();
            let verify_alg: &dyn ring::signature::VerificationAlgorithm = match signer.key.alg() {
                JwsAlgorithm::Es256 => &ECDSA_P256_SHA256_FIXED,
                JwsAlgorithm::EdDsa => &ED25519,
            };
            let key = UnparsedPublicKey::new(verify_alg, &spki);
            key.verify(input.as_bytes(), &sig).unwrap();
            let mut tampered = input.to_owned();
            tampered.push('x');
            assert!(key.verify(tampered.as_bytes(), &sig).is_err());
        }
    }

    #[test]
    fn every_assertion_has_its_own_jti() {
        let (signer, _) = signer(&rcgen::PKCS_ECDSA_P256_SHA256);
        let jtis: std::collections::HashSet<String> = (0..100)
            .map(|_| {
                let jws = signer.sign(NOW).unwrap();
                decode(jws.split('.').nth(1).unwrap())["jti"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(jtis.len(), 100);
    }
}
