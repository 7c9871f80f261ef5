//! The workload's private key: parsed once from PKCS#8 into a ring key pair whose
//! algorithm is fixed by the key itself (P-256 signs ES256, Ed25519 signs EdDSA), then
//! used for every assertion; or generated in memory for a client built from a join
//! token, never written anywhere.

use std::fmt;

use baton_proto::claims::JwsAlgorithm;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use zeroize::Zeroizing;

use super::error::{ConfigError, TokenError};

/// The type of key a [`TokenClient`](crate::TokenClient) built from a join token
/// generates for itself, at start and at every renewal.
///
/// ```
/// use baton_sdk::KeyType;
/// assert_eq!(KeyType::default(), KeyType::EcP256);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum KeyType {
    /// ECDSA on P-256: assertions signed ES256, which every JOSE library verifies.
    #[default]
    EcP256,
    /// Ed25519: assertions signed EdDSA.
    Ed25519,
}

/// A freshly generated key: parsed for signing, and its PKCS#8 DER for rustls (mTLS)
/// and for the certificate signing request. The DER is wiped when dropped.
pub(crate) type Generated = (WorkloadKey, Zeroizing<PrivateKeyDer<'static>>);

/// Generates a new private key of `key_type` in memory.
pub(crate) fn generate(key_type: KeyType, rng: &SystemRandom) -> Result<Generated, TokenError> {
    // ring's PKCS#8 document is not wiped on drop: copy it out and drop it at once.
    let der = match key_type {
        KeyType::EcP256 => EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, rng)
            .map(|doc| doc.as_ref().to_vec()),
        KeyType::Ed25519 => Ed25519KeyPair::generate_pkcs8(rng).map(|doc| doc.as_ref().to_vec()),
    }
    .map_err(|_| TokenError::KeyGeneration)?;
    let der = Zeroizing::new(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der)));
    let key =
        WorkloadKey::from_pkcs8(der.secret_der(), rng).map_err(|_| TokenError::KeyGeneration)?;
    Ok((key, der))
}

/// A parsed workload signing key.
pub(crate) enum WorkloadKey {
    /// ECDSA P-256; signs ES256 (fixed-width `r‖s`, RFC 7518 §3.4).
    Es256(EcdsaKeyPair),
    /// Ed25519; signs EdDSA (RFC 8037 §3.1).
    EdDsa(Ed25519KeyPair),
}

impl fmt::Debug for WorkloadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WorkloadKey({})", self.alg())
    }
}

impl WorkloadKey {
    /// Parses a PKCS#8 private key from its DER.
    pub(crate) fn from_pkcs8(der: &[u8], rng: &SystemRandom) -> Result<Self, ConfigError> {
        if let Ok(key) = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, rng) {
            return Ok(Self::Es256(key));
        }
        // Unchecked: rcgen and older OpenSSL write PKCS#8 v1, without the public key;
        // ring still checks a v2 document's public key against the private one.
        Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .map(Self::EdDsa)
            .map_err(|_| ConfigError::Key("not an EC P-256 or Ed25519 PKCS#8 private key"))
    }

    /// The JWS algorithm this key signs.
    pub(crate) fn alg(&self) -> JwsAlgorithm {
        match self {
            Self::Es256(_) => JwsAlgorithm::Es256,
            Self::EdDsa(_) => JwsAlgorithm::EdDsa,
        }
    }

    /// The raw public key as a certificate's SPKI carries it: `0x04‖x‖y` for P-256,
    /// the 32 key bytes for Ed25519.
    pub(crate) fn public_key(&self) -> &[u8] {
        match self {
            Self::Es256(key) => key.public_key().as_ref(),
            Self::EdDsa(key) => key.public_key().as_ref(),
        }
    }

    /// Signs `message`; only ECDSA can fail, when the system RNG does.
    pub(crate) fn sign(&self, message: &[u8], rng: &SystemRandom) -> Result<Vec<u8>, TokenError> {
        match self {
            Self::Es256(key) => key
                .sign(rng, message)
                .map(|sig| sig.as_ref().to_vec())
                .map_err(|_| TokenError::Signing),
            Self::EdDsa(key) => Ok(key.sign(message).as_ref().to_vec()),
        }
    }
}

/// The PKCS#8 DER of the first private key in `pem`, wiped when dropped.
pub(crate) fn pkcs8_from_pem(pem: &[u8]) -> Result<Zeroizing<PrivateKeyDer<'static>>, ConfigError> {
    let key = Zeroizing::new(
        PrivateKeyDer::from_pem_slice(pem)
            .map_err(|_| ConfigError::Key("no PEM private key found"))?,
    );
    match *key {
        PrivateKeyDer::Pkcs8(_) => Ok(key),
        _ => Err(ConfigError::Key(
            "the key must be PKCS#8 (BEGIN PRIVATE KEY); convert it with `openssl pkcs8 -topk8 -nocrypt`",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p256_and_ed25519_keys_are_recognised_and_sign() {
        let rng = SystemRandom::new();
        for (alg, expected) in [
            (&rcgen::PKCS_ECDSA_P256_SHA256, JwsAlgorithm::Es256),
            (&rcgen::PKCS_ED25519, JwsAlgorithm::EdDsa),
        ] {
            let pair = rcgen::KeyPair::generate_for(alg).unwrap();
            let der = pkcs8_from_pem(pair.serialize_pem().as_bytes()).unwrap();
            let key = WorkloadKey::from_pkcs8(der.secret_der(), &rng).unwrap();
            assert_eq!(key.alg(), expected);
            assert_eq!(key.public_key(), pair.public_key_raw());
            assert!(key.sign(b"message", &rng).is_ok());
            assert!(!format!("{key:?}").contains(&format!("{:?}", der.secret_der())));
        }
    }

    #[test]
    fn generated_keys_have_the_asked_type_and_differ_each_time() {
        let rng = SystemRandom::new();
        for (key_type, alg) in [
            (KeyType::EcP256, JwsAlgorithm::Es256),
            (KeyType::Ed25519, JwsAlgorithm::EdDsa),
        ] {
            let (key, der) = generate(key_type, &rng).unwrap();
            assert_eq!(key.alg(), alg);
            assert!(matches!(*der, PrivateKeyDer::Pkcs8(_)));
            // The DER parses back to the same key.
            let again = WorkloadKey::from_pkcs8(der.secret_der(), &rng).unwrap();
            assert_eq!(again.public_key(), key.public_key());
            let (other, _) = generate(key_type, &rng).unwrap();
            assert_ne!(other.public_key(), key.public_key());
        }
    }

    #[test]
    fn other_keys_are_config_errors() {
        let rng = SystemRandom::new();
        let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let der = pkcs8_from_pem(p384.serialize_pem().as_bytes()).unwrap();
        assert!(matches!(
            WorkloadKey::from_pkcs8(der.secret_der(), &rng),
            Err(ConfigError::Key(_))
        ));
        assert!(matches!(
            pkcs8_from_pem(b"not pem"),
            Err(ConfigError::Key(_))
        ));
        let sec1 = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIA==\n-----END EC PRIVATE KEY-----\n";
        assert!(matches!(
            pkcs8_from_pem(sec1.as_bytes()),
            Err(ConfigError::Key(m)) if m.contains("PKCS#8")
        ));
    }
}
