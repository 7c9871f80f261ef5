//! The floor's TLS: a fresh self-signed P-256 server certificate, and the issuer's
//! rustls settings (ring, TLS 1.2 and 1.3 safe defaults, ALPN `h2` and `http/1.1`,
//! client certificates requested but optional).
//!
//! One difference from the issuer, on purpose: client chains are validated by rustls
//! once per connection (`WebPkiClientVerifier`), where the issuer checks only
//! possession in the handshake and the chain per request (from a cache). Connections
//! are kept alive under load, so this moves no work into or out of the measured path
//! but the cache lookup the floor is meant to leave out.

use std::net::IpAddr;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use rcgen::{
    CertificateParams, ExtendedKeyUsagePurpose, KeyPair, PKCS_ECDSA_P256_SHA256, SanType,
    SerialNumber,
};
use ring::rand::{SecureRandom as _, SystemRandom};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;

/// The server configuration, and the PEM of the certificate it serves.
pub(crate) struct Served {
    pub(crate) config: rustls::ServerConfig,
    pub(crate) cert_pem: String,
}

/// Lifetime of the throw-away certificate: longer than any benchmark.
const CERT_TTL: time::Duration = time::Duration::days(7);

/// A configuration serving a new certificate for `localhost` and `ip` (and loopback
/// when `ip` is unspecified), and accepting client certificates that chain to
/// `client_bundle_pem`.
pub(crate) fn server_config(ip: IpAddr, client_bundle_pem: &str) -> anyhow::Result<Served> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::new(vec!["localhost".to_owned()])?;
    let ips = if ip.is_unspecified() {
        vec![
            IpAddr::from([127, 0, 0, 1]),
            IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]),
        ]
    } else {
        vec![ip]
    };
    params
        .subject_alt_names
        .extend(ips.into_iter().map(SanType::IpAddress));
    // CRATES.md: rcgen's default validity (1975–4096) and key-derived serial are
    // never what a certificate should carry.
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + CERT_TTL;
    let mut serial = [0u8; 16];
    SystemRandom::new()
        .fill(&mut serial)
        .map_err(|_| anyhow::anyhow!("no randomness"))?;
    serial[0] &= 0x7f;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.self_signed(&key)?;

    let mut roots = rustls::RootCertStore::empty();
    for der in baton_tests::try_pem_blocks(client_bundle_pem).context("bad base64 in PEM")? {
        roots
            .add(CertificateDer::from(der))
            .context("client trust bundle")?;
    }
    if roots.is_empty() {
        bail!("the client trust bundle holds no certificate");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        // Callers may authenticate with a client assertion instead (RFC 7523).
        .allow_unauthenticated()
        .build()
        .context("client certificate verifier")?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Served {
        config,
        cert_pem: cert.pem(),
    })
}
