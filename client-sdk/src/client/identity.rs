//! The workload's identity as its certificate states it: the chain (leaf first), the
//! SPIFFE ID from the leaf's single URI SAN (SPEC §2), and the private key, checked to
//! be the leaf's. For a certificate read from files the issuer judges the chain and
//! this module only refuses material that could never attest, so the mistake shows at
//! start-up rather than on the first call; a certificate the issuer just sent is also
//! path-validated, in `svid`.

use baton_proto::{SpiffeId, SpiffeIdError};
use ring::rand::SystemRandom;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::extensions::GeneralName;
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_SIG_ED25519, Oid};
use x509_parser::prelude::{FromDer, X509Certificate};
use zeroize::Zeroizing;

use super::error::{ConfigError, SvidError};
use super::key::{WorkloadKey, pkcs8_from_pem};

/// Most certificates a chain may hold; the issuer refuses longer ones.
pub(crate) const MAX_CHAIN_CERTS: usize = 4;

/// A workload certificate chain and its key, parsed and checked once.
#[derive(Debug)]
pub(crate) struct WorkloadIdentity {
    pub(crate) id: SpiffeId,
    /// DER, leaf first, as presented over mTLS or in an assertion's `x5c`.
    pub(crate) chain: Vec<CertificateDer<'static>>,
    pub(crate) key: WorkloadKey,
    /// The PKCS#8 DER, kept only for rustls (mTLS); wiped on drop (rustls's and
    /// ring's own copies are not).
    pub(crate) key_der: Zeroizing<PrivateKeyDer<'static>>,
    /// The leaf's serial number, lowercase hex without leading zero bytes.
    pub(crate) serial: String,
    /// The leaf's `notAfter`, Unix seconds.
    pub(crate) not_after: i64,
}

/// What is wrong with a leaf certificate or its key; the caller says whose it is
/// (the operator's files: [`ConfigError`]; the issuer's answer: [`SvidError`]).
#[derive(Debug)]
pub(crate) enum LeafError {
    Certificate(&'static str),
    SanCount,
    SpiffeId(SpiffeIdError),
    KeyMismatch,
}

impl From<LeafError> for ConfigError {
    fn from(error: LeafError) -> Self {
        match error {
            LeafError::Certificate(reason) => Self::Certificate(reason),
            LeafError::SanCount => Self::SanCount,
            LeafError::SpiffeId(e) => Self::SpiffeId(e),
            LeafError::KeyMismatch => Self::KeyMismatch,
        }
    }
}

impl From<LeafError> for SvidError {
    fn from(error: LeafError) -> Self {
        match error {
            LeafError::Certificate(reason) => Self::Certificate(reason),
            LeafError::SanCount => Self::SanCount,
            LeafError::SpiffeId(e) => Self::SpiffeId(e),
            LeafError::KeyMismatch => Self::KeyMismatch,
        }
    }
}

impl WorkloadIdentity {
    /// Parses the chain and key PEM and checks that they belong together.
    pub(crate) fn from_pem(
        chain_pem: &[u8],
        key_pem: &[u8],
        rng: &SystemRandom,
    ) -> Result<Self, ConfigError> {
        let chain = parse_chain(chain_pem)?;
        let key_der = pkcs8_from_pem(key_pem)?;
        let key = WorkloadKey::from_pkcs8(key_der.secret_der(), rng)?;
        Ok(Self::new(chain, key, key_der)?)
    }

    /// Checks that `chain`'s leaf names one SPIFFE ID and certifies `key`, whose
    /// PKCS#8 DER is `key_der`.
    pub(crate) fn new(
        chain: Vec<CertificateDer<'static>>,
        key: WorkloadKey,
        key_der: Zeroizing<PrivateKeyDer<'static>>,
    ) -> Result<Self, LeafError> {
        let leaf_der = chain
            .first()
            .ok_or(LeafError::Certificate("no CERTIFICATE block in the PEM"))?;
        let (rest, leaf) = X509Certificate::from_der(leaf_der.as_ref())
            .map_err(|_| LeafError::Certificate("the leaf is not valid DER X.509"))?;
        if !rest.is_empty() {
            return Err(LeafError::Certificate(
                "trailing bytes after the leaf certificate",
            ));
        }
        let id = spiffe_id(&leaf)?;
        if !leaf_key_matches(&leaf, &key) {
            return Err(LeafError::KeyMismatch);
        }
        let serial = serial_hex(leaf.raw_serial());
        let not_after = leaf.validity().not_after.timestamp();
        Ok(Self {
            id,
            chain,
            key,
            key_der,
            serial,
            not_after,
        })
    }
}

/// The DER certificates of a PEM chain, leaf first: at least one, at most
/// [`MAX_CHAIN_CERTS`].
pub(crate) fn parse_chain(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, LeafError> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| LeafError::Certificate("the PEM does not parse"))?;
    if chain.is_empty() {
        return Err(LeafError::Certificate("no CERTIFICATE block in the PEM"));
    }
    if chain.len() > MAX_CHAIN_CERTS {
        return Err(LeafError::Certificate(
            "more than 4 certificates; give the leaf and its intermediates only",
        ));
    }
    Ok(chain)
}

/// A DER INTEGER's content as hex, without the zero bytes that keep it positive.
fn serial_hex(raw: &[u8]) -> String {
    use std::fmt::Write as _;
    let start = raw
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(raw.len().saturating_sub(1));
    raw.iter()
        .skip(start)
        .fold(String::with_capacity(raw.len() * 2), |mut hex, b| {
            let _ = write!(hex, "{b:02x}");
            hex
        })
}

/// SPIFFE X.509-SVID §2: exactly one URI SAN, the SPIFFE ID; other names may appear.
fn spiffe_id(leaf: &X509Certificate<'_>) -> Result<SpiffeId, LeafError> {
    let san = leaf
        .subject_alternative_name()
        .map_err(|_| LeafError::Certificate("the subjectAltName extension does not parse"))?
        .ok_or(LeafError::SanCount)?;
    let mut uris = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        });
    let (Some(uri), None) = (uris.next(), uris.next()) else {
        return Err(LeafError::SanCount);
    };
    SpiffeId::new(uri).map_err(LeafError::SpiffeId)
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
            let (_, parsed) = X509Certificate::from_der(&id.chain[0]).unwrap();
            assert_eq!(id.not_after, parsed.validity().not_after.timestamp());
            assert!(!id.serial.is_empty());
            assert!(matches!(
                WorkloadIdentity::from_pem(cert.as_bytes(), other.serialize_pem().as_bytes(), &rng),
                Err(ConfigError::KeyMismatch)
            ));
        }
    }

    #[test]
    fn serials_print_as_hex_without_sign_padding() {
        assert_eq!(serial_hex(&[0x00, 0x9a, 0x01]), "9a01");
        assert_eq!(serial_hex(&[0x7f, 0x00]), "7f00");
        assert_eq!(serial_hex(&[0x00]), "00");
        assert_eq!(serial_hex(&[]), "");
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
