//! The HTTPS listener's TLS configuration (SPEC §5, RFC 8705 §2).
//!
//! Client certificates are requested but optional, and the TLS layer checks only that
//! the client holds the private key of the certificate it presents (the handshake
//! signature). Whether that certificate chains to the trust bundle and names an
//! acceptable SPIFFE ID is decided per request by the [`Attestor`](crate::attest::Attestor)
//! with the same path validator, so that an untrusted certificate is answered with
//! RFC 6749 `invalid_client` instead of an opaque handshake failure — and a request
//! with no attestation simply carries no identity.

use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme};
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::pki::{CertificateAuthority, KeyType, PkiError};

/// Lifetime of the listener's certificate. It is made afresh at every start and never
/// stored; a later release renews it in place.
const SERVER_CERT_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// Why the TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// The server certificate could not be issued.
    #[error("cannot issue the listener's certificate")]
    Certificate(#[from] PkiError),
    /// rustls refused the configuration.
    #[error("TLS configuration refused")]
    Rustls(#[from] rustls::Error),
}

/// Builds the listener's rustls configuration: a fresh P-256 server certificate from
/// the trust domain's CA for `dns_names` and `ips`, TLS 1.2 and 1.3 with ring,
/// optional client certificates.
pub fn server_config(
    ca: &CertificateAuthority,
    dns_names: &[String],
    ips: &[std::net::IpAddr],
    now: OffsetDateTime,
) -> Result<ServerConfig, TlsSetupError> {
    let key = KeyType::EcP256.generate()?;
    let cert = ca.issue_server_cert(dns_names, ips, &key, SERVER_CERT_TTL, now)?;
    let key_der = Zeroizing::new(key.serialize_der());
    let chain = vec![
        CertificateDer::from(cert.der),
        CertificateDer::from(ca.cert_der().to_vec()),
    ];
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let hints = match x509_parser::parse_x509_certificate(ca.cert_der()) {
        Ok((_, c)) => vec![DistinguishedName::from(c.subject().as_raw().to_vec())],
        Err(_) => Vec::new(),
    };
    let verifier = Arc::new(PossessionOnly {
        algorithms: provider.signature_verification_algorithms,
        hints,
    });
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            chain,
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_der.to_vec())),
        )?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Client-certificate verifier that proves possession only; see the module docs.
#[derive(Debug)]
struct PossessionOnly {
    algorithms: WebPkiSupportedAlgorithms,
    hints: Vec<DistinguishedName>,
}

impl ClientCertVerifier for PossessionOnly {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        // Callers may authenticate with a client assertion instead (RFC 7523).
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // Deferred to the Attestor, per request (module docs).
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The provider the whole process uses: ring, chosen explicitly (CRATES.md: relying on
/// the process default panics when two providers are compiled in).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
