//! The trust domain's certificate authority (SPEC §2): the root CA, X.509-SVIDs for
//! workloads, and the trust bundle.
//!
//! Certificates are made with rcgen and read with x509-parser. rcgen copies whatever a
//! CSR asks for, so a CSR is used for one thing only: its public key, after its
//! signature proves the requester holds the private half. Everything else in an SVID
//! (the one URI SAN, `CA:false`, `digitalSignature`, validity, serial) is set here.

use std::time::Duration;

use baton_proto::{SpiffeId, TrustDomain};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PKCS_ED25519, PublicKeyData, SanType,
    SerialNumber, SignatureAlgorithm, SubjectPublicKeyInfo,
};
use ring::rand::{SecureRandom, SystemRandom};
use time::OffsetDateTime;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Largest CSR accepted, PEM or DER: an honest one is well under 2 KiB.
pub const MAX_CSR_BYTES: usize = 16 * 1024;
/// Longest X.509-SVID lifetime Baton issues: SVIDs are meant to be short lived.
pub const MAX_SVID_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Shortest X.509-SVID lifetime Baton issues: a few seconds, so tests can watch
/// clients renew; production lifetimes are hours.
pub const MIN_SVID_TTL: Duration = Duration::from_secs(5);
/// Default root CA lifetime: ten years.
pub const DEFAULT_CA_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Backdating of `notBefore`, so a verifier whose clock is a little behind accepts a
/// certificate minted this second.
const CLOCK_SKEW: time::Duration = time::Duration::seconds(60);

/// What went wrong while making or reading certificates.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// The SPIFFE ID belongs to another trust domain.
    #[error("{id} is not in trust domain {trust_domain}")]
    ForeignTrustDomain {
        /// The refused ID.
        id: SpiffeId,
        /// This CA's trust domain.
        trust_domain: TrustDomain,
    },
    /// The SPIFFE ID lies under `/baton/`, reserved for Baton's own identities.
    #[error("{id} is reserved: no workload may be enrolled under /baton/")]
    ReservedId {
        /// The refused ID.
        id: SpiffeId,
    },
    /// The lifetime asked for is outside the allowed range.
    #[error("certificate lifetime {asked:?} is outside {MIN_SVID_TTL:?}..={MAX_SVID_TTL:?}")]
    Lifetime {
        /// The lifetime asked for.
        asked: Duration,
    },
    /// The CSR is not acceptable.
    #[error("certificate signing request refused: {0}")]
    Csr(&'static str),
    /// The CA certificate or key in the data dir is not usable.
    #[error("CA certificate or key is unusable: {0}")]
    Ca(&'static str),
    /// The certificate library failed.
    #[error("certificate generation failed")]
    Generate(#[from] rcgen::Error),
    /// The system random number generator failed.
    #[error("the system random number generator failed")]
    Random,
}

/// Key types Baton generates and accepts for workloads: those that can sign the
/// ES256 / EdDSA client assertions of SPEC §3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyType {
    /// ECDSA on P-256 (ES256).
    #[default]
    EcP256,
    /// Ed25519 (EdDSA).
    Ed25519,
}

impl KeyType {
    fn algorithm(self) -> &'static SignatureAlgorithm {
        match self {
            KeyType::EcP256 => &PKCS_ECDSA_P256_SHA256,
            KeyType::Ed25519 => &PKCS_ED25519,
        }
    }

    /// Generates a fresh key pair of this type.
    pub fn generate(self) -> Result<KeyPair, PkiError> {
        Ok(KeyPair::generate_for(self.algorithm())?)
    }
}

/// A certificate Baton issued.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    /// DER encoding.
    pub der: Vec<u8>,
    /// End of validity.
    pub not_after: OffsetDateTime,
    /// Serial number, lower-case hex.
    pub serial: String,
}

impl IssuedCert {
    /// PEM encoding.
    pub fn pem(&self) -> String {
        pem_encode("CERTIFICATE", &self.der)
    }
}

/// The trust domain's root CA, with its private key unsealed in memory.
pub struct CertificateAuthority {
    trust_domain: TrustDomain,
    cert_der: Vec<u8>,
    not_after: OffsetDateTime,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("trust_domain", &self.trust_domain)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// Creates a new self-signed root CA for `trust_domain`.
    pub fn create(
        trust_domain: &TrustDomain,
        ttl: Duration,
        now: OffsetDateTime,
    ) -> Result<Self, PkiError> {
        let key = KeyType::EcP256.generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Baton");
        // RFC 5280 bounds commonName at 64 characters; the URI SAN carries the full name.
        let cn: String = format!("Baton root CA {trust_domain}")
            .chars()
            .take(64)
            .collect();
        dn.push(DnType::CommonName, cn);
        params.distinguished_name = dn;
        // SPIFFE X.509-SVID §4.1: a signing certificate may carry the trust domain's ID.
        params.subject_alt_names =
            vec![SanType::URI(trust_domain.id_uri().try_into().map_err(
                |_| PkiError::Ca("trust domain is not an IA5 string"),
            )?)];
        // Path length 1 leaves room for one intermediate (e.g. a regional issuing CA).
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = whole_seconds(now);
        params.not_before = now - CLOCK_SKEW;
        params.not_after = now + ttl;
        params.serial_number = Some(random_serial()?);
        let cert = params.self_signed(&key)?;
        Self::from_parts(cert.der(), key.serialized_der())
    }

    /// Loads a CA from its certificate and PKCS#8 private key, checking that they
    /// belong together and that the certificate is a CA of a SPIFFE trust domain.
    pub fn from_parts(cert_der: &[u8], key_pkcs8: &[u8]) -> Result<Self, PkiError> {
        let (rest, cert) = X509Certificate::from_der(cert_der)
            .map_err(|_| PkiError::Ca("CA certificate does not parse"))?;
        if !rest.is_empty() {
            return Err(PkiError::Ca("trailing bytes after the CA certificate"));
        }
        if !cert.is_ca() {
            return Err(PkiError::Ca("certificate is not a CA"));
        }
        let trust_domain = ca_trust_domain(&cert)?;
        let not_after = cert.validity().not_after.to_datetime();
        let key = KeyPair::try_from(key_pkcs8)
            .map_err(|_| PkiError::Ca("CA private key does not parse"))?;
        if key.subject_public_key_info() != cert.public_key().raw {
            return Err(PkiError::Ca(
                "CA private key does not match the CA certificate",
            ));
        }
        let issuer = Issuer::from_ca_cert_der(&cert_der.to_vec().into(), key)?;
        Ok(Self {
            trust_domain,
            cert_der: cert_der.to_vec(),
            not_after,
            issuer,
        })
    }

    /// The trust domain this CA serves.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The CA certificate, PEM: the trust bundle of this trust domain.
    pub fn cert_pem(&self) -> String {
        pem_encode("CERTIFICATE", &self.cert_der)
    }

    /// The CA private key, PKCS#8 DER, for sealing.
    pub fn key_pkcs8(&self) -> &[u8] {
        self.issuer.key().serialized_der()
    }

    /// End of the CA certificate's validity.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// Issues an X.509-SVID for a workload: exactly one URI SAN (`id`), `CA:false`,
    /// `digitalSignature`, client and server auth, valid for `ttl` from `now` (never
    /// past the CA's own expiry).
    pub fn issue_svid(
        &self,
        id: &SpiffeId,
        subject_key: &impl PublicKeyData,
        ttl: Duration,
        now: OffsetDateTime,
    ) -> Result<IssuedCert, PkiError> {
        check_workload_id(&self.trust_domain, id)?;
        if !(MIN_SVID_TTL..=MAX_SVID_TTL).contains(&ttl) {
            return Err(PkiError::Lifetime { asked: ttl });
        }
        let san = uri_san(id.as_str())?;
        let ekus = vec![
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::ServerAuth,
        ];
        self.sign_leaf(vec![san], ekus, subject_key, ttl, now)
    }

    /// Certifies a token-signing key (SPEC §2): its only URI SAN is the reserved
    /// `spiffe://<td>/baton/token-signer`, which no workload can obtain, so a verifier
    /// holding just the bundle can tell a signing key from a workload's key.
    pub fn issue_token_signer(
        &self,
        subject_key: &impl PublicKeyData,
        ttl: Duration,
        now: OffsetDateTime,
    ) -> Result<IssuedCert, PkiError> {
        let san = uri_san(self.trust_domain.token_signer_id().as_str())?;
        // No extended key usage: the certificate authenticates no TLS peer.
        self.sign_leaf(vec![san], Vec::new(), subject_key, ttl, now)
    }

    /// Issues the issuer's own TLS server certificate for `dns_names` and `ips`.
    pub fn issue_server_cert(
        &self,
        dns_names: &[String],
        ips: &[std::net::IpAddr],
        subject_key: &impl PublicKeyData,
        ttl: Duration,
        now: OffsetDateTime,
    ) -> Result<IssuedCert, PkiError> {
        let mut sans = Vec::with_capacity(dns_names.len() + ips.len());
        for name in dns_names {
            sans.push(SanType::DnsName(
                name.as_str()
                    .try_into()
                    .map_err(|_| PkiError::Ca("server name is not an IA5 string"))?,
            ));
        }
        sans.extend(ips.iter().copied().map(SanType::IpAddress));
        let ekus = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign_leaf(sans, ekus, subject_key, ttl, now)
    }

    fn sign_leaf(
        &self,
        sans: Vec<SanType>,
        ekus: Vec<ExtendedKeyUsagePurpose>,
        subject_key: &impl PublicKeyData,
        ttl: Duration,
        now: OffsetDateTime,
    ) -> Result<IssuedCert, PkiError> {
        let mut params = CertificateParams::default();
        // SPIFFE X.509-SVID §2: the identity is the SAN; the subject is left empty,
        // which makes rcgen mark the SAN critical (RFC 5280 §4.2.1.6).
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = ekus;
        params.use_authority_key_identifier_extension = true;
        let now = whole_seconds(now);
        params.not_before = now - CLOCK_SKEW;
        params.not_after = (now + ttl).min(self.not_after);
        let serial = random_serial()?;
        let serial_hex = crate::fsio::hex(&serial.to_bytes());
        params.serial_number = Some(serial);
        let cert = params.signed_by(subject_key, &self.issuer)?;
        Ok(IssuedCert {
            der: cert.der().to_vec(),
            not_after: params.not_after,
            serial: serial_hex,
        })
    }
}

fn uri_san(uri: &str) -> Result<SanType, PkiError> {
    Ok(SanType::URI(uri.try_into().map_err(|_| {
        PkiError::Ca("SPIFFE ID is not an IA5 string")
    })?))
}

/// Checks that `id` may be enrolled as a workload of `trust_domain`: a member of it,
/// and not under the reserved `/baton/` path.
pub fn check_workload_id(trust_domain: &TrustDomain, id: &SpiffeId) -> Result<(), PkiError> {
    if !id.is_member_of(trust_domain) {
        return Err(PkiError::ForeignTrustDomain {
            id: id.clone(),
            trust_domain: trust_domain.clone(),
        });
    }
    if id.is_reserved() {
        return Err(PkiError::ReservedId { id: id.clone() });
    }
    Ok(())
}

/// The trust domain named by a CA certificate's `spiffe://<td>` URI SAN.
fn ca_trust_domain(cert: &X509Certificate<'_>) -> Result<TrustDomain, PkiError> {
    let san = cert
        .subject_alternative_name()
        .map_err(|_| PkiError::Ca("CA certificate has a malformed SAN extension"))?
        .ok_or(PkiError::Ca("CA certificate names no trust domain"))?;
    san.value
        .general_names
        .iter()
        .find_map(|name| match name {
            GeneralName::URI(uri) => uri.strip_prefix("spiffe://"),
            _ => None,
        })
        .and_then(|td| TrustDomain::new(td).ok())
        .ok_or(PkiError::Ca("CA certificate names no trust domain"))
}

/// Reads a PEM (or DER) CSR, checks its self-signature — proof that the requester holds
/// the private key — and returns its public key if it can sign ES256 or EdDSA
/// assertions. Nothing else in the CSR is used.
pub fn csr_public_key(input: &[u8]) -> Result<SubjectPublicKeyInfo, PkiError> {
    if input.len() > MAX_CSR_BYTES {
        return Err(PkiError::Csr("larger than 16 KiB"));
    }
    let der = if input.trim_ascii_start().starts_with(b"-----BEGIN") {
        let (_, pem) =
            x509_parser::pem::parse_x509_pem(input).map_err(|_| PkiError::Csr("not valid PEM"))?;
        if !matches!(
            pem.label.as_str(),
            "CERTIFICATE REQUEST" | "NEW CERTIFICATE REQUEST"
        ) {
            return Err(PkiError::Csr("PEM block is not a CERTIFICATE REQUEST"));
        }
        pem.contents
    } else {
        input.to_vec()
    };
    let (rest, csr) = X509CertificationRequest::from_der(&der)
        .map_err(|_| PkiError::Csr("not a PKCS#10 certification request"))?;
    if !rest.is_empty() {
        return Err(PkiError::Csr("trailing bytes after the request"));
    }
    csr.verify_signature()
        .map_err(|_| PkiError::Csr("its signature does not verify with its own key"))?;
    let spki = SubjectPublicKeyInfo::from_der(csr.certification_request_info.subject_pki.raw)
        .map_err(|_| PkiError::Csr("key type not supported: use an EC P-256 or Ed25519 key"))?;
    let alg = spki.algorithm();
    if alg != &PKCS_ECDSA_P256_SHA256 && alg != &PKCS_ED25519 {
        return Err(PkiError::Csr(
            "key type not supported: use an EC P-256 or Ed25519 key",
        ));
    }
    Ok(spki)
}

/// Splits PEM text into the DER of each `CERTIFICATE` block, in order.
pub fn pem_certificates(pem: &[u8]) -> Result<Vec<Vec<u8>>, &'static str> {
    let mut certs = Vec::new();
    for block in x509_parser::pem::Pem::iter_from_buffer(pem) {
        let block = block.map_err(|_| "not valid PEM")?;
        if block.label != "CERTIFICATE" {
            return Err("PEM block is not a CERTIFICATE");
        }
        certs.push(block.contents);
    }
    if certs.is_empty() {
        return Err("no certificate found");
    }
    Ok(certs)
}

/// PEM-encodes DER under `label`, 64 columns, `\n` line endings.
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 2 * label.len() + 40);
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    for line in b64.as_bytes().chunks(64) {
        // base64 output is ASCII.
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
    out
}

/// X.509 times have whole seconds; so do the times Baton reports about them.
fn whole_seconds(t: OffsetDateTime) -> OffsetDateTime {
    t.replace_nanosecond(0).unwrap_or(t)
}

/// A random, positive, 128-bit serial number (CA/B BR §7.1: at least 64 random bits).
fn random_serial() -> Result<SerialNumber, PkiError> {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| PkiError::Random)?;
    // Top bit clear keeps the INTEGER positive; the next bit set keeps it 16 bytes long.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::extensions::ParsedExtension;

    fn td() -> TrustDomain {
        TrustDomain::new("example.org").unwrap()
    }

    fn now() -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    fn ca() -> CertificateAuthority {
        CertificateAuthority::create(&td(), DEFAULT_CA_TTL, now()).unwrap()
    }

    fn id(s: &str) -> SpiffeId {
        s.parse().unwrap()
    }

    #[test]
    fn svid_carries_exactly_the_asked_id_and_is_an_end_entity_signing_cert() {
        let ca = ca();
        let key = KeyType::EcP256.generate().unwrap();
        let svid = ca
            .issue_svid(
                &id("spiffe://example.org/fn/orders"),
                &key,
                Duration::from_secs(86400),
                now(),
            )
            .unwrap();
        let (_, cert) = X509Certificate::from_der(&svid.der).unwrap();
        assert!(!cert.is_ca());
        let bc = cert.basic_constraints().unwrap().unwrap();
        assert!(!bc.value.ca);
        let ku = cert.key_usage().unwrap().unwrap();
        assert!(ku.critical && ku.value.digital_signature() && !ku.value.key_cert_sign());
        let san = cert.subject_alternative_name().unwrap().unwrap();
        assert_eq!(
            san.value.general_names,
            vec![GeneralName::URI("spiffe://example.org/fn/orders")]
        );
        let lifetime =
            cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
        assert_eq!(lifetime, 86400 + 60);
        assert_eq!(svid.serial.len(), 32);
        let (_, ca_cert) = X509Certificate::from_der(ca.cert_der()).unwrap();
        cert.verify_signature(Some(ca_cert.public_key())).unwrap();
    }

    #[test]
    fn csr_contents_other_than_the_key_are_ignored() {
        // A hostile CSR asks for a DNS name, a reserved ID and certificate signing;
        // the SVID must carry none of it. (CA:true requests are covered end to end
        // with openssl, which can write them; rcgen cannot.)
        let key = KeyPair::generate_for(&PKCS_ED25519).unwrap();
        let mut req = CertificateParams::new(vec!["evil.example.com".to_owned()]).unwrap();
        req.subject_alt_names.push(SanType::URI(
            "spiffe://example.org/baton/token-signer"
                .try_into()
                .unwrap(),
        ));
        req.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let csr_pem = req.serialize_request(&key).unwrap().pem().unwrap();

        let spki = csr_public_key(csr_pem.as_bytes()).unwrap();
        let svid = ca()
            .issue_svid(
                &id("spiffe://example.org/fn/a"),
                &spki,
                Duration::from_secs(3600),
                now(),
            )
            .unwrap();
        let (_, cert) = X509Certificate::from_der(&svid.der).unwrap();
        assert!(!cert.is_ca());
        assert!(!cert.key_usage().unwrap().unwrap().value.key_cert_sign());
        let names = &cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names;
        assert_eq!(names, &vec![GeneralName::URI("spiffe://example.org/fn/a")]);
        assert_eq!(
            cert.public_key().raw,
            key.subject_public_key_info().as_slice()
        );
    }

    #[test]
    fn csr_with_bad_signature_or_unsupported_key_is_refused() {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let csr = CertificateParams::default()
            .serialize_request(&key)
            .unwrap();
        let mut der = csr.der().to_vec();
        let last = der.len() - 1;
        der[last] ^= 1;
        assert!(matches!(csr_public_key(&der), Err(PkiError::Csr(_))));

        let p384 = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let csr = CertificateParams::default()
            .serialize_request(&p384)
            .unwrap();
        let err = csr_public_key(csr.der()).unwrap_err();
        assert!(err.to_string().contains("P-256 or Ed25519"), "{err}");

        for junk in [
            &b""[..],
            b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n",
            &[0x30; 40],
        ] {
            assert!(matches!(csr_public_key(junk), Err(PkiError::Csr(_))));
        }
        assert!(matches!(
            csr_public_key(&vec![b'A'; MAX_CSR_BYTES + 1]),
            Err(PkiError::Csr(_))
        ));
    }

    #[test]
    fn foreign_and_reserved_ids_and_bad_lifetimes_are_refused() {
        let ca = ca();
        let key = KeyType::EcP256.generate().unwrap();
        let day = Duration::from_secs(86400);
        assert!(matches!(
            ca.issue_svid(&id("spiffe://other.org/fn"), &key, day, now()),
            Err(PkiError::ForeignTrustDomain { .. })
        ));
        assert!(matches!(
            ca.issue_svid(
                &id("spiffe://example.org/baton/token-signer"),
                &key,
                day,
                now()
            ),
            Err(PkiError::ReservedId { .. })
        ));
        assert!(matches!(
            ca.issue_svid(
                &id("spiffe://example.org/fn"),
                &key,
                MAX_SVID_TTL * 2,
                now()
            ),
            Err(PkiError::Lifetime { .. })
        ));
    }

    #[test]
    fn token_signer_cert_carries_only_the_reserved_id_and_no_tls_usage() {
        let ca = ca();
        let key = KeyType::EcP256.generate().unwrap();
        let cert = ca
            .issue_token_signer(&key, Duration::from_secs(3600), now())
            .unwrap();
        let (_, cert) = X509Certificate::from_der(&cert.der).unwrap();
        let names = &cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names;
        assert_eq!(
            names,
            &vec![GeneralName::URI("spiffe://example.org/baton/token-signer")]
        );
        assert!(!cert.is_ca());
        assert!(cert.extended_key_usage().unwrap().is_none());
    }

    #[test]
    fn server_cert_names_its_hosts() {
        let ca = ca();
        let key = KeyType::EcP256.generate().unwrap();
        let ip: std::net::IpAddr = "127.0.0.1".parse().unwrap();
        let cert = ca
            .issue_server_cert(
                &["localhost".to_owned()],
                &[ip],
                &key,
                Duration::from_secs(3600),
                now(),
            )
            .unwrap();
        let (_, cert) = X509Certificate::from_der(&cert.der).unwrap();
        let names = &cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names;
        assert_eq!(names.len(), 2);
        assert!(
            cert.extended_key_usage()
                .unwrap()
                .unwrap()
                .value
                .server_auth
        );
    }

    #[test]
    fn svid_never_outlives_its_ca() {
        let ca = CertificateAuthority::create(&td(), Duration::from_secs(3600), now()).unwrap();
        let key = KeyType::EcP256.generate().unwrap();
        let svid = ca
            .issue_svid(
                &id("spiffe://example.org/fn"),
                &key,
                Duration::from_secs(86400),
                now(),
            )
            .unwrap();
        assert!(svid.not_after <= ca.not_after());
    }

    #[test]
    fn ca_round_trips_through_its_parts_and_rejects_a_foreign_key() {
        let ca = ca();
        let again = CertificateAuthority::from_parts(ca.cert_der(), ca.key_pkcs8()).unwrap();
        assert_eq!(again.trust_domain(), &td());
        let (_, cert) = X509Certificate::from_der(ca.cert_der()).unwrap();
        let bc = cert
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::BasicConstraints(bc) => Some(bc.clone()),
                _ => None,
            })
            .unwrap();
        assert!(bc.ca);
        let other = KeyType::EcP256.generate().unwrap();
        assert!(matches!(
            CertificateAuthority::from_parts(ca.cert_der(), other.serialized_der()),
            Err(PkiError::Ca(_))
        ));
    }

    #[test]
    fn pem_round_trip() {
        let ca = ca();
        let pem = ca.cert_pem();
        assert_eq!(
            pem_certificates(pem.as_bytes()).unwrap(),
            vec![ca.cert_der().to_vec()]
        );
        assert!(pem_certificates(b"").is_err());
    }
}
