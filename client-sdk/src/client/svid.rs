//! Certificates from `POST /v1/svid` (SPEC §5): what a client built from a join token
//! asks for, and the checks it makes before it uses what comes back.
//!
//! The answer is believed only as far as the configured trust bundle vouches for it:
//! the chain must verify against that bundle now (rustls-webpki path validation, for
//! client authentication), the leaf must certify the key the client just generated and
//! carry exactly one URI SAN, a SPIFFE ID, and — on renewal, or when the caller pinned
//! it — the ID expected. The answer's `bundle` is not trusted to replace the configured
//! one (an issuer, or whoever answers in its name, must not widen the client's trust),
//! and its `expires_at` is not read: the certificate's own `notAfter` is.

use std::time::Duration;

use baton_proto::SpiffeId;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, TrustAnchor, UnixTime};
use webpki::{ALL_VERIFICATION_ALGS, EndEntityCert, KeyUsage};
use zeroize::Zeroizing;

use super::error::SvidError;
use super::identity::{WorkloadIdentity, parse_chain};
use super::key::WorkloadKey;

/// Checks the PEM chain `svid_pem` (leaf first) the issuer sent for `key` (whose
/// PKCS#8 DER is `key_der`) at `now` (Unix seconds), and returns the identity to use.
pub(crate) fn check(
    svid_pem: &str,
    key: WorkloadKey,
    key_der: Zeroizing<PrivateKeyDer<'static>>,
    anchors: &[TrustAnchor<'_>],
    expected_id: Option<&SpiffeId>,
    now: i64,
) -> Result<WorkloadIdentity, SvidError> {
    let chain = parse_chain(svid_pem.as_bytes())?;
    verify_path(&chain, anchors, now)?;
    let identity = WorkloadIdentity::new(chain, key, key_der)?;
    match expected_id {
        Some(expected) if *expected != identity.id => Err(SvidError::WrongId {
            expected: expected.clone(),
            found: identity.id,
        }),
        _ => Ok(identity),
    }
}

/// RFC 5280 path validation of `chain` (leaf, then intermediates) to one of
/// `anchors`, at `now`, for client authentication: the use the certificate is for.
fn verify_path(
    chain: &[CertificateDer<'static>],
    anchors: &[TrustAnchor<'_>],
    now: i64,
) -> Result<(), SvidError> {
    let (leaf, intermediates) = chain
        .split_first()
        .ok_or(SvidError::Certificate("no CERTIFICATE block in the PEM"))?;
    let end_entity = EndEntityCert::try_from(leaf)
        .map_err(|_| SvidError::Certificate("the leaf is not valid DER X.509"))?;
    let time =
        UnixTime::since_unix_epoch(Duration::from_secs(u64::try_from(now).unwrap_or_default()));
    end_entity
        .verify_for_usage(
            ALL_VERIFICATION_ALGS,
            anchors,
            intermediates,
            time,
            KeyUsage::client_auth(),
            None,
            None,
        )
        .map(|_| ())
        .map_err(|error| {
            SvidError::Untrusted(match error {
                webpki::Error::CertExpired { .. } => "it has expired",
                webpki::Error::CertNotValidYet { .. } => "it is not valid yet",
                webpki::Error::CaUsedAsEndEntity => "the leaf is a CA certificate",
                webpki::Error::RequiredEkuNotFoundContext(_) => {
                    "the leaf is not for client authentication"
                }
                _ => "it does not chain to the trust bundle",
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::key::{KeyType, generate};
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa,
        KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PKCS_ED25519, SanType,
    };
    use ring::rand::SystemRandom;
    use rustls_pki_types::PrivatePkcs8KeyDer;

    const ORDERS: &str = "spiffe://example.org/fn/orders";
    const NOW: i64 = 1_800_000_000;

    struct Ca {
        issuer: CertifiedIssuer<'static, KeyPair>,
    }

    impl Ca {
        fn new() -> Ca {
            let mut params = CertificateParams::default();
            params.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            params.not_before = at(NOW - 3600);
            params.not_after = at(NOW + 3600 * 24);
            let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
            Ca {
                issuer: CertifiedIssuer::self_signed(params, key).unwrap(),
            }
        }

        fn anchors(&self) -> Vec<TrustAnchor<'static>> {
            vec![
                webpki::anchor_from_trusted_cert(self.issuer.der())
                    .unwrap()
                    .to_owned(),
            ]
        }

        /// A workload certificate as the issuer makes it, for `public` with `sans`,
        /// valid `not_before..not_after`; `tweak` edits the parameters first.
        fn leaf(
            &self,
            public: &KeyPair,
            sans: &[&str],
            validity: (i64, i64),
            tweak: impl FnOnce(&mut CertificateParams),
        ) -> String {
            let mut params = CertificateParams::default();
            params.subject_alt_names = sans
                .iter()
                .map(|s| SanType::URI((*s).try_into().unwrap()))
                .collect();
            params.is_ca = IsCa::ExplicitNoCa;
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ClientAuth,
                ExtendedKeyUsagePurpose::ServerAuth,
            ];
            params.not_before = at(validity.0);
            params.not_after = at(validity.1);
            tweak(&mut params);
            params.signed_by(public, &self.issuer).unwrap().pem()
        }
    }

    fn at(unix: i64) -> time::OffsetDateTime {
        time::OffsetDateTime::from_unix_timestamp(unix).unwrap()
    }

    /// A freshly generated key, as the client makes it, and the same key for rcgen.
    fn generated(key_type: KeyType) -> (WorkloadKey, Zeroizing<PrivateKeyDer<'static>>, KeyPair) {
        let (key, der) = generate(key_type, &SystemRandom::new()).unwrap();
        let PrivateKeyDer::Pkcs8(pkcs8) = &*der else {
            panic!("not PKCS#8")
        };
        let alg = match key_type {
            KeyType::EcP256 => &PKCS_ECDSA_P256_SHA256,
            KeyType::Ed25519 => &PKCS_ED25519,
        };
        let pair = KeyPair::from_pkcs8_der_and_sign_algo(
            &PrivatePkcs8KeyDer::from(pkcs8.secret_pkcs8_der().to_vec()),
            alg,
        )
        .unwrap();
        (key, der, pair)
    }

    const VALID: (i64, i64) = (NOW - 60, NOW + 3600);

    #[test]
    fn a_certificate_for_the_generated_key_chaining_to_the_bundle_is_accepted() {
        let ca = Ca::new();
        let expected: SpiffeId = ORDERS.parse().unwrap();
        for key_type in [KeyType::EcP256, KeyType::Ed25519] {
            for pin in [None, Some(&expected)] {
                let (key, der, pair) = generated(key_type);
                let public = key.public_key().to_vec();
                let pem = ca.leaf(&pair, &[ORDERS], VALID, |_| {});
                let identity = check(&pem, key, der, &ca.anchors(), pin, NOW).unwrap();
                assert_eq!(identity.id, expected);
                assert_eq!(identity.key.public_key(), public);
                assert_eq!(identity.not_after, NOW + 3600);
                assert_eq!(identity.chain.len(), 1);
            }
        }
    }

    #[test]
    fn a_certificate_for_another_key_is_refused() {
        let ca = Ca::new();
        let (key, der, _) = generated(KeyType::EcP256);
        let (_, _, other) = generated(KeyType::EcP256);
        let pem = ca.leaf(&other, &[ORDERS], VALID, |_| {});
        let err = check(&pem, key, der, &ca.anchors(), None, NOW).unwrap_err();
        assert!(matches!(err, SvidError::KeyMismatch), "{err}");
    }

    #[test]
    fn a_certificate_for_another_id_is_refused() {
        let ca = Ca::new();
        let (key, der, pair) = generated(KeyType::EcP256);
        let pem = ca.leaf(&pair, &["spiffe://example.org/fn/payments"], VALID, |_| {});
        let expected: SpiffeId = ORDERS.parse().unwrap();
        let err = check(&pem, key, der, &ca.anchors(), Some(&expected), NOW).unwrap_err();
        let SvidError::WrongId { expected: e, found } = &err else {
            panic!("{err}")
        };
        assert_eq!(e.as_str(), ORDERS);
        assert_eq!(found.as_str(), "spiffe://example.org/fn/payments");
        assert!(!err.to_string().contains("BEGIN"));
    }

    #[test]
    fn a_certificate_chaining_to_another_ca_is_refused() {
        let ca = Ca::new();
        let rogue = Ca::new();
        let (key, der, pair) = generated(KeyType::EcP256);
        // The rogue CA's certificate comes along as an "intermediate": still no path.
        let mut pem = rogue.leaf(&pair, &[ORDERS], VALID, |_| {});
        pem.push_str(&rogue.issuer.pem());
        let err = check(&pem, key, der, &ca.anchors(), None, NOW).unwrap_err();
        assert!(
            matches!(err, SvidError::Untrusted(m) if m.contains("chain")),
            "{err}"
        );
    }

    #[test]
    fn an_intermediate_sent_along_is_used_to_build_the_path() {
        let ca = Ca::new();
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        params.not_before = at(NOW - 3600);
        params.not_after = at(NOW + 3600 * 24);
        let intermediate_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let intermediate = Ca {
            issuer: CertifiedIssuer::signed_by(params, intermediate_key, &ca.issuer).unwrap(),
        };
        let (key, der, pair) = generated(KeyType::Ed25519);
        let mut pem = intermediate.leaf(&pair, &[ORDERS], VALID, |_| {});
        pem.push_str(&intermediate.issuer.pem());
        let identity = check(&pem, key, der, &ca.anchors(), None, NOW).unwrap();
        assert_eq!(identity.chain.len(), 2);
    }

    #[test]
    fn expired_not_yet_valid_ca_and_server_only_certificates_are_refused() {
        let ca = Ca::new();
        type Tweak = fn(&mut CertificateParams);
        let cases: [(&str, (i64, i64), Tweak); 4] = [
            ("expired", (NOW - 7200, NOW - 1), |_| {}),
            ("not valid yet", (NOW + 10, NOW + 3600), |_| {}),
            ("CA certificate", VALID, |p| {
                p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
                p.key_usages = vec![KeyUsagePurpose::KeyCertSign];
            }),
            ("client authentication", VALID, |p| {
                p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            }),
        ];
        for (reason, validity, tweak) in cases {
            let (key, der, pair) = generated(KeyType::EcP256);
            let pem = ca.leaf(&pair, &[ORDERS], validity, tweak);
            let err = check(&pem, key, der, &ca.anchors(), None, NOW).unwrap_err();
            assert!(
                matches!(&err, SvidError::Untrusted(m) if m.contains(reason)),
                "{reason}: {err}"
            );
        }
    }

    #[test]
    fn certificates_without_exactly_one_spiffe_id_are_refused() {
        let ca = Ca::new();
        for (sans, spiffe) in [
            (&[][..], false),
            (&[ORDERS, "spiffe://example.org/fn/other"][..], false),
            (&["https://example.org/fn/orders"][..], true),
        ] {
            let (key, der, pair) = generated(KeyType::EcP256);
            let pem = ca.leaf(&pair, sans, VALID, |_| {});
            let err = check(&pem, key, der, &ca.anchors(), None, NOW).unwrap_err();
            if spiffe {
                assert!(matches!(err, SvidError::SpiffeId(_)), "{sans:?}: {err}");
            } else {
                assert!(matches!(err, SvidError::SanCount), "{sans:?}: {err}");
            }
        }
    }

    #[test]
    fn unparsable_answers_are_refused() {
        let ca = Ca::new();
        for junk in [
            "",
            "junk",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        ] {
            let (key, der, _) = generated(KeyType::EcP256);
            let err = check(junk, key, der, &ca.anchors(), None, NOW).unwrap_err();
            assert!(matches!(err, SvidError::Certificate(_)), "{junk:?}: {err}");
        }
        let (key, der, pair) = generated(KeyType::EcP256);
        let five = ca.leaf(&pair, &[ORDERS], VALID, |_| {}).repeat(5);
        assert!(matches!(
            check(&five, key, der, &ca.anchors(), None, NOW),
            Err(SvidError::Certificate(_))
        ));
    }
}
