//! The PKCS#10 certificate signing request (RFC 2986) for a generated key, as
//! `POST /v1/svid` takes it (SPEC §5). The issuer uses only the request's public key,
//! once its signature proves the requester holds the private half; everything else in
//! the certificate (the one SPIFFE ID, usages, validity) is the issuer's choice, so the
//! request asks for nothing: no subject, no extensions.

use rcgen::{CertificateParams, DistinguishedName, PKCS_ECDSA_P256_SHA256, PKCS_ED25519};
use rustls_pki_types::PrivateKeyDer;
use zeroize::Zeroizing;

use super::error::TokenError;
use super::key::KeyType;

/// A PEM `CERTIFICATE REQUEST` signed with `key` (PKCS#8 DER of type `key_type`).
pub(crate) fn request_pem(
    key: &PrivateKeyDer<'_>,
    key_type: KeyType,
) -> Result<String, TokenError> {
    let PrivateKeyDer::Pkcs8(pkcs8) = key else {
        return Err(TokenError::KeyGeneration);
    };
    let alg = match key_type {
        KeyType::EcP256 => &PKCS_ECDSA_P256_SHA256,
        KeyType::Ed25519 => &PKCS_ED25519,
    };
    // rcgen keeps its own copy of the DER: wipe it when the request is written.
    let pair = Zeroizing::new(
        rcgen::KeyPair::from_pkcs8_der_and_sign_algo(pkcs8, alg)
            .map_err(|_| TokenError::KeyGeneration)?,
    );
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .serialize_request(&*pair)
        .and_then(|csr| csr.pem())
        .map_err(|_| TokenError::KeyGeneration)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::key::generate;
    use ring::rand::SystemRandom;
    use x509_parser::certification_request::X509CertificationRequest;
    use x509_parser::oid_registry::{OID_KEY_TYPE_EC_PUBLIC_KEY, OID_SIG_ED25519};
    use x509_parser::prelude::FromDer;

    #[test]
    fn request_carries_the_generated_key_and_verifies_with_it() {
        let rng = SystemRandom::new();
        for key_type in [KeyType::EcP256, KeyType::Ed25519] {
            let (key, der) = generate(key_type, &rng).unwrap();
            let pem = request_pem(&der, key_type).unwrap();
            assert!(pem.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));

            let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
            let (rest, csr) = X509CertificationRequest::from_der(&block.contents).unwrap();
            assert!(rest.is_empty());
            // Proof of possession: the request's signature verifies with its own key…
            csr.verify_signature().unwrap();
            // …which is the generated key, of the asked type.
            let spki = &csr.certification_request_info.subject_pki;
            assert_eq!(spki.subject_public_key.data.as_ref(), key.public_key());
            let expected = match key_type {
                KeyType::EcP256 => OID_KEY_TYPE_EC_PUBLIC_KEY,
                KeyType::Ed25519 => OID_SIG_ED25519,
            };
            assert_eq!(spki.algorithm.algorithm, expected);
            // It asks for nothing else: no subject, no extensions.
            assert_eq!(csr.certification_request_info.subject.iter().count(), 0);
            assert!(csr.requested_extensions().is_none());
        }
    }

    #[test]
    fn a_tampered_request_does_not_verify() {
        let rng = SystemRandom::new();
        let (_, der) = generate(KeyType::EcP256, &rng).unwrap();
        let pem = request_pem(&der, KeyType::EcP256).unwrap();
        let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        let mut bytes = block.contents.clone();
        // The last bytes are the signature's: flip one.
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        let (_, csr) = X509CertificationRequest::from_der(&bytes).unwrap();
        assert!(csr.verify_signature().is_err());
    }

    #[test]
    fn a_key_of_another_type_than_announced_is_refused() {
        let rng = SystemRandom::new();
        let (_, der) = generate(KeyType::Ed25519, &rng).unwrap();
        assert!(matches!(
            request_pem(&der, KeyType::EcP256),
            Err(TokenError::KeyGeneration)
        ));
    }
}
