//! The workload's identity as its certificate states it: the chain (leaf first), the
//! SPIFFE ID from the leaf's single URI SAN (SPEC §2), and the private key, checked to
//! be the leaf's. The issuer judges the chain; this module only refuses material that
//! could never attest, so the mistake shows at start-up rather than on the first call.

use baton_proto::SpiffeId;
use ring::rand::SystemRandom;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::extensions::GeneralName;
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_SIG_ED25519, Oid};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::error::ConfigError;
use super::key::{WorkloadKey, pkcs8_from_pem};

/// Most certificates a chain may hold; the issuer refuses longer ones.
const MAX_CHAIN_CERTS: usize = 4;

/// A workload certificate chain and its key, parsed and checked once.
#[derive(Debug)]
pub(crate) struct WorkloadIdentity {
    pub(crate) id: SpiffeId,
    /// DER, leaf first, as presented over mTLS or in an assertion's `x5c`.
    pub(crate) chain: Vec<CertificateDer<'static>>,
    pub(crate) key: WorkloadKey,
    /// The PKCS#8 DER, kept only for rustls (mTLS); zeroized on drop.
    pub(crate) key_der: PrivateKeyDer<'static>,
}

impl WorkloadIdentity {
    /// Parses the chain and key PEM and checks that they belong together.
    pub(crate) fn from_pem(
        chain_pem: &[u8],
        key_pem: &[u8],
        rng: &SystemRandom,
    ) -> Result<Self, ConfigError> {
        let chain = CertificateDer::pem_slice_iter(chain_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| ConfigError::Certificate("the PEM does not parse"))?;
        if chain.is_empty() {
            return Err(ConfigError::Certificate("no CERTIFICATE block in the PEM"));
        }
        if chain.len() > MAX_CHAIN_CERTS {
            return Err(ConfigError::Certificate(
                "more than 4 certificates; give the leaf and its intermediates only",
            ));
        }
        let (rest, leaf) = X509Certificate::from_der(chain[0].as_ref())
            .map_err(|_| ConfigError::Certificate("the leaf is not valid DER X.509"))?;
        if !rest.is_empty() {
            return Err(ConfigError::Certificate(
                "trailing bytes after the leaf certificate",
            ));
        }
        let id = spiffe_id(&leaf)?;

        let key_der = pkcs8_from_pem(key_pem)?;
        let key = WorkloadKey::from_pkcs8(key_der.secret_der(), rng)?;
        if !leaf_key_matches(&leaf, &key) {
            return Err(ConfigError::KeyMismatch);
        }
        Ok(Self {
            id,
            chain,
            key,
            key_der,
        })
    }
}

/// SPIFFE X.509-SVID §2: exactly one URI SAN, the SPIFFE ID; other names may appear.
fn spiffe_id(leaf: &X509Certificate<'_>) -> Result<SpiffeId, ConfigError> {
    let san = leaf
        .subject_alternative_name()
        .map_err(|_| ConfigError::Certificate("the subjectAltName extension does not parse"))?
        .ok_or(ConfigError::SanCount)?;
    let mut uris = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        });
    let (Some(uri), None) = (uris.next(), uris.next()) else {
        return Err(ConfigError::SanCount);
    };
    SpiffeId::new(uri).map_err(ConfigError::SpiffeId)
}

/// Whether the leaf's subject public key is `key`'s, of the same key type.
fn leaf_key_matches(leaf: &X509Certificate<'_>, key: &WorkloadKey) -> bool {
    let spki = leaf.public_key();
    let algorithm = &spki.algorithm;
    let same_type = match key {
        WorkloadKey::Es256(_) => {
            algorithm.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY
                && algorithm
                    .parameters
                    .as_ref()
                    .and_then(|p| Oid::try_from(p.clone()).ok())
                    .is_some_and(|curve| curve == OID_EC_P256)
        }
        WorkloadKey::EdDsa(_) => algorithm.algorithm == OID_SIG_ED25519,
    };
    same_type && spki.subject_public_key.data.as_ref() == key.public_key()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair, SanType};

    fn leaf(sans: Vec<SanType>, key: &KeyPair) -> String {
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans;
        params.self_signed(key).unwrap().pem()
    }

    fn uri(s: &str) -> SanType {
        SanType::URI(s.try_into().unwrap())
    }

    #[test]
    fn identity_is_the_single_uri_san_and_the_key_must_match() {
        let rng = SystemRandom::new();
        for alg in [&rcgen::PKCS_ECDSA_P256_SHA256, &rcgen::PKCS_ED25519] {
            let key = KeyPair::generate_for(alg).unwrap();
            let other = KeyPair::generate_for(alg).unwrap();
            let cert = leaf(
                vec![
                    SanType::DnsName("orders.example.org".try_into().unwrap()),
                    uri("spiffe://example.org/fn/orders"),
                ],
                &key,
            );
            let id =
                WorkloadIdentity::from_pem(cert.as_bytes(), key.serialize_pem().as_bytes(), &rng)
                    .unwrap();
            assert_eq!(id.id.as_str(), "spiffe://example.org/fn/orders");
            assert_eq!(id.chain.len(), 1);
            assert!(matches!(
                WorkloadIdentity::from_pem(cert.as_bytes(), other.serialize_pem().as_bytes(), &rng),
                Err(ConfigError::KeyMismatch)
            ));
        }
    }

    #[test]
    fn a_key_of_another_type_does_not_match() {
        let rng = SystemRandom::new();
        let p256 = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let ed = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let cert = leaf(vec![uri("spiffe://example.org/fn/orders")], &p256);
        assert!(matches!(
            WorkloadIdentity::from_pem(cert.as_bytes(), ed.serialize_pem().as_bytes(), &rng),
            Err(ConfigError::KeyMismatch)
        ));
    }

    #[test]
    fn certificates_without_exactly_one_spiffe_uri_are_refused() {
        let rng = SystemRandom::new();
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let key_pem = key.serialize_pem();
        let cases = [
            (vec![], "san count"),
            (
                vec![SanType::DnsName("orders".try_into().unwrap())],
                "san count",
            ),
            (
                vec![
                    uri("spiffe://example.org/fn/a"),
                    uri("spiffe://example.org/fn/b"),
                ],
                "san count",
            ),
            (vec![uri("https://example.org/fn/a")], "spiffe id"),
        ];
        for (sans, expected) in cases {
            let cert = leaf(sans, &key);
            let err =
                WorkloadIdentity::from_pem(cert.as_bytes(), key_pem.as_bytes(), &rng).unwrap_err();
            let kind = match err {
                ConfigError::SanCount => "san count",
                ConfigError::SpiffeId(_) => "spiffe id",
                _ => "other",
            };
            assert_eq!(kind, expected, "{err}");
        }
        for junk in [
            &b""[..],
            b"junk",
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        ] {
            assert!(matches!(
                WorkloadIdentity::from_pem(junk, key_pem.as_bytes(), &rng),
                Err(ConfigError::Certificate(_))
            ));
        }
    }
}
