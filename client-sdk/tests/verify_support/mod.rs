// Test PKI and token minting for the verifier's tests, benchmark and doc examples:
// a trust-domain CA made with rcgen (as `baton init` makes it), token-signer and
// workload certificates (as the issuer's pki module issues them), JWKS documents,
// and tokens signed by hand with ring (as the issuer's mint module signs them).
//
// Doc examples `include!` this file, so it holds no inner attributes.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair as _};
use serde_json::{Value, json};

pub const TD: &str = "example.org";
pub const ISSUER: &str = "https://baton.example.org";
pub const AUDIENCE: &str = "spiffe://example.org/fn/payments";
pub const CALLER: &str = "spiffe://example.org/fn/orders";
pub const SIGNER_ID: &str = "spiffe://example.org/baton/token-signer";

pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn time(unix: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(unix).unwrap()
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    SystemRandom::new().fill(&mut bytes).unwrap();
    bytes
}

/// A fresh `jti`: 128 random bits, base64url.
pub fn random_id() -> String {
    URL_SAFE_NO_PAD.encode(random_bytes::<16>())
}

fn serial() -> SerialNumber {
    let mut bytes = random_bytes::<16>();
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    Es256,
    EdDsa,
}

impl Alg {
    pub fn name(self) -> &'static str {
        match self {
            Alg::Es256 => "ES256",
            Alg::EdDsa => "EdDSA",
        }
    }

    fn rcgen(self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            Alg::Es256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            Alg::EdDsa => &rcgen::PKCS_ED25519,
        }
    }
}

/// A certificate authority: the trust domain's root, or an intermediate under it.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    /// This CA's certificate, DER.
    pub der: Vec<u8>,
    /// This CA's certificate, PEM: the trust bundle when it is a root.
    pub pem: String,
    /// Certificates between this CA and the root, this CA first (empty for a root).
    chain: Vec<Vec<u8>>,
    td: String,
}

/// What to put in a leaf certificate.
pub struct LeafSpec<'a> {
    pub alg: Alg,
    pub uris: &'a [&'a str],
    pub not_before: i64,
    pub not_after: i64,
    pub is_ca: bool,
}

impl Ca {
    /// A root CA for `td`, valid from a minute ago for ten years.
    pub fn new(td: &str) -> Ca {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("test root CA {td}"));
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::URI(format!("spiffe://{td}").try_into().unwrap())];
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = unix_now();
        params.not_before = time(now - 60);
        params.not_after = time(now + 10 * 365 * 86_400);
        params.serial_number = Some(serial());
        let cert = params.self_signed(&key).unwrap();
        let der = cert.der().to_vec();
        Ca {
            pem: cert.pem(),
            der,
            issuer: Issuer::new(params, key),
            chain: Vec::new(),
            td: td.to_owned(),
        }
    }

    /// An intermediate CA under this one.
    pub fn intermediate(&self) -> Ca {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            format!("test intermediate CA {}", self.td),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.use_authority_key_identifier_extension = true;
        let now = unix_now();
        params.not_before = time(now - 60);
        params.not_after = time(now + 365 * 86_400);
        params.serial_number = Some(serial());
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let der = cert.der().to_vec();
        let mut chain = vec![der.clone()];
        chain.extend(self.chain.iter().cloned());
        Ca {
            pem: cert.pem(),
            der,
            issuer: Issuer::new(params, key),
            chain,
            td: self.td.clone(),
        }
    }

    /// The token-signing key of this CA's trust domain, as the issuer's keyring makes it.
    pub fn signer(&self, alg: Alg) -> Signer {
        let signer_id = format!("spiffe://{}/baton/token-signer", self.td);
        let now = unix_now();
        self.leaf(&LeafSpec {
            alg,
            uris: &[&signer_id],
            not_before: now - 60,
            not_after: now + 90 * 86_400,
            is_ca: false,
        })
    }

    /// A workload's X.509-SVID and key, as `baton enroll` issues them.
    pub fn workload(&self, alg: Alg, id: &str) -> Signer {
        let now = unix_now();
        self.leaf(&LeafSpec {
            alg,
            uris: &[id],
            not_before: now - 60,
            not_after: now + 86_400,
            is_ca: false,
        })
    }

    /// Any end-entity (or, for hostile tests, CA) certificate with these URI SANs.
    pub fn leaf(&self, spec: &LeafSpec<'_>) -> Signer {
        let key = KeyPair::generate_for(spec.alg.rcgen()).unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = spec
            .uris
            .iter()
            .map(|uri| SanType::URI((*uri).try_into().unwrap()))
            .collect();
        params.is_ca = if spec.is_ca {
            IsCa::Ca(BasicConstraints::Unconstrained)
        } else {
            IsCa::ExplicitNoCa
        };
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        params.not_before = time(spec.not_before);
        params.not_after = time(spec.not_after);
        params.serial_number = Some(serial());
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let mut chain = vec![cert.der().to_vec()];
        chain.extend(self.chain.iter().cloned());
        Signer::new(spec.alg, &key, chain)
    }
}

enum SigningKey {
    Es256(EcdsaKeyPair),
    EdDsa(Ed25519KeyPair),
}

/// A private key with its certificate chain: signs tokens, publishes its JWK.
pub struct Signer {
    pub kid: String,
    pub alg: Alg,
    key: SigningKey,
    /// Leaf first, then any intermediates (not the root).
    pub chain: Vec<Vec<u8>>,
}

impl Signer {
    fn new(alg: Alg, key: &KeyPair, chain: Vec<Vec<u8>>) -> Signer {
        let pkcs8 = key.serialize_der();
        let key = match alg {
            Alg::Es256 => SigningKey::Es256(
                EcdsaKeyPair::from_pkcs8(
                    &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                    &pkcs8,
                    &SystemRandom::new(),
                )
                .unwrap(),
            ),
            Alg::EdDsa => {
                SigningKey::EdDsa(Ed25519KeyPair::from_pkcs8_maybe_unchecked(&pkcs8).unwrap())
            }
        };
        Signer {
            kid: random_id(),
            alg,
            key,
            chain,
        }
    }

    /// The raw public key, as ring's `UnparsedPublicKey` takes it.
    pub fn public_key(&self) -> Vec<u8> {
        match &self.key {
            SigningKey::Es256(k) => k.public_key().as_ref().to_vec(),
            SigningKey::EdDsa(k) => k.public_key().as_ref().to_vec(),
        }
    }

    /// The JWK as the issuer publishes it: key, kid, use, alg and x5c.
    pub fn jwk(&self) -> Value {
        let x5c: Vec<String> = self.chain.iter().map(|der| STANDARD.encode(der)).collect();
        self.jwk_with(&self.public_key(), x5c)
    }

    /// A JWK for `public_key` (raw) carrying this signer's kid and the given x5c.
    pub fn jwk_with(&self, public_key: &[u8], x5c: Vec<String>) -> Value {
        match self.alg {
            Alg::Es256 => json!({
                "kty": "EC", "crv": "P-256",
                "x": URL_SAFE_NO_PAD.encode(&public_key[1..33]),
                "y": URL_SAFE_NO_PAD.encode(&public_key[33..65]),
                "kid": self.kid, "use": "sig", "alg": "ES256", "x5c": x5c,
            }),
            Alg::EdDsa => json!({
                "kty": "OKP", "crv": "Ed25519",
                "x": URL_SAFE_NO_PAD.encode(public_key),
                "kid": self.kid, "use": "sig", "alg": "EdDSA", "x5c": x5c,
            }),
        }
    }

    /// Signs `signing_input` (`header.payload`): 64 bytes for both algorithms.
    pub fn sign(&self, signing_input: &[u8]) -> Vec<u8> {
        match &self.key {
            SigningKey::Es256(k) => k
                .sign(&SystemRandom::new(), signing_input)
                .unwrap()
                .as_ref()
                .to_vec(),
            SigningKey::EdDsa(k) => k.sign(signing_input).as_ref().to_vec(),
        }
    }

    /// A compact JWS of `header` and `claims`, signed by this key.
    pub fn sign_raw(&self, header: &Value, claims: &Value) -> String {
        let mut token = URL_SAFE_NO_PAD.encode(serde_json::to_vec(header).unwrap());
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap()));
        let signature = self.sign(token.as_bytes());
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(signature));
        token
    }

    /// The header the issuer writes for this key.
    pub fn header(&self) -> Value {
        json!({"alg": self.alg.name(), "typ": "at+jwt", "kid": self.kid})
    }

    /// An access token with the issuer's header and these claims.
    pub fn token(&self, claims: &Value) -> String {
        self.sign_raw(&self.header(), claims)
    }
}

/// Valid claims, issued at `now` for 60 s, from CALLER to AUDIENCE by ISSUER.
pub fn claims(now: i64) -> Value {
    json!({
        "iss": ISSUER,
        "sub": CALLER,
        "client_id": CALLER,
        "aud": AUDIENCE,
        "iat": now,
        "nbf": now,
        "exp": now + 60,
        "jti": random_id(),
        "sid": "session-1",
        "scope": "payments:charge orders:read",
    })
}

/// A JWKS document of these JWKs.
pub fn jwks(keys: &[Value]) -> Vec<u8> {
    serde_json::to_vec(&json!({ "keys": keys })).unwrap()
}

impl Ca {
    /// A TLS server certificate for `localhost` and 127.0.0.1 and its PKCS#8 key, as
    /// `baton serve` makes its own.
    pub fn tls_server(&self) -> (Vec<u8>, Vec<u8>) {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![
            SanType::DnsName("localhost".try_into().unwrap()),
            SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])),
        ];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = unix_now();
        params.not_before = time(now - 60);
        params.not_after = time(now + 86_400);
        params.serial_number = Some(serial());
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.der().to_vec(), key.serialize_der())
    }
}
