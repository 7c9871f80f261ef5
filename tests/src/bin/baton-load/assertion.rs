//! RFC 7523 client assertions, signed before the timed run so the client's signing is
//! never in the measured path: the key is parsed once, the header encoded once, and
//! each assertion differs only in its `jti`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::rand::{SecureRandom as _, SystemRandom};
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair};
use serde_json::json;

use crate::http::pem_blocks;

/// `client_assertion_type` of an RFC 7523 assertion.
pub(crate) const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// SPEC §3: an assertion lives at most 5 minutes.
pub(crate) const MAX_ASSERTION_LIFETIME_SECS: u64 = 300;

/// Fails for a run that would outlive its assertions: they are all signed before it,
/// each valid [`MAX_ASSERTION_LIFETIME_SECS`] from then; a minute is left for
/// calibration and signing.
pub(crate) fn check_run(run: std::time::Duration) -> anyhow::Result<()> {
    if run.as_secs() + 60 > MAX_ASSERTION_LIFETIME_SECS {
        bail!(
            "assertions live at most {MAX_ASSERTION_LIFETIME_SECS} s (SPEC §3): keep \
             --warmup plus --duration under {} s",
            MAX_ASSERTION_LIFETIME_SECS - 60
        );
    }
    Ok(())
}

enum Key {
    Es256(EcdsaKeyPair),
    EdDsa(Ed25519KeyPair),
}

/// A workload's parsed signing key (PKCS#8 P-256 or Ed25519).
pub(crate) struct Signer {
    key: Key,
    rng: SystemRandom,
}

impl Signer {
    pub(crate) fn from_pem(pem: &str) -> anyhow::Result<Self> {
        let der = pem_blocks(pem)?
            .pop()
            .context("the key file holds no PEM block")?;
        let rng = SystemRandom::new();
        let key =
            if let Ok(k) = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der, &rng) {
                Key::Es256(k)
            } else if let Ok(k) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der) {
                Key::EdDsa(k)
            } else {
                bail!("the key is neither a PKCS#8 P-256 nor an Ed25519 key");
            };
        Ok(Self { key, rng })
    }

    /// The JWS `alg` of this key.
    pub(crate) fn alg(&self) -> &'static str {
        match self.key {
            Key::Es256(_) => "ES256",
            Key::EdDsa(_) => "EdDSA",
        }
    }

    fn sign(&self, input: &[u8]) -> anyhow::Result<Vec<u8>> {
        Ok(match &self.key {
            Key::Es256(k) => k
                .sign(&self.rng, input)
                .map_err(|_| anyhow::anyhow!("ECDSA signing failed"))?
                .as_ref()
                .to_vec(),
            Key::EdDsa(k) => k.sign(input).as_ref().to_vec(),
        })
    }
}

/// Makes assertions for one client: `iss` = `sub` = `client_id`, one `aud`.
pub(crate) struct Factory {
    signer: Signer,
    header_b64: String,
    client_id: String,
    audience: String,
    /// Random per run, so that two runs against one issuer never share a `jti`.
    run: String,
    next: AtomicU64,
}

impl Factory {
    /// `chain_pem`, when given, goes into the `x5c` header (Baton's attestation);
    /// `kid`, when given, into `kid` (a peer server that looks keys up by id).
    pub(crate) fn new(
        signer: Signer,
        client_id: &str,
        audience: &str,
        chain_pem: Option<&str>,
        kid: Option<&str>,
    ) -> anyhow::Result<Self> {
        let mut header = json!({"alg": signer.alg(), "typ": "JWT"});
        if let Some(pem) = chain_pem {
            let x5c: Vec<String> = pem_blocks(pem)?
                .iter()
                .map(|d| STANDARD.encode(d))
                .collect();
            if x5c.is_empty() {
                bail!("the certificate file holds no certificate");
            }
            header["x5c"] = json!(x5c);
        }
        if let Some(kid) = kid {
            header["kid"] = json!(kid);
        }
        let mut run = [0u8; 12];
        signer
            .rng
            .fill(&mut run)
            .map_err(|_| anyhow::anyhow!("no randomness"))?;
        Ok(Self {
            header_b64: URL_SAFE_NO_PAD.encode(header.to_string()),
            signer,
            client_id: client_id.to_owned(),
            audience: audience.to_owned(),
            run: URL_SAFE_NO_PAD.encode(run),
            next: AtomicU64::new(0),
        })
    }

    fn one(&self, iat: u64) -> anyhow::Result<String> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let claims = json!({
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": self.audience,
            "jti": format!("{}-{n}", self.run),
            "iat": iat,
            "exp": iat + MAX_ASSERTION_LIFETIME_SECS,
        });
        let input = format!(
            "{}.{}",
            self.header_b64,
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = self.signer.sign(input.as_bytes())?;
        Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig)))
    }

    /// `n` fresh assertions, signed on every core this process may use.
    pub(crate) fn make(&self, n: usize) -> anyhow::Result<Vec<String>> {
        let iat = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let threads = std::thread::available_parallelism()
            .map_or(1, usize::from)
            .min(n.max(1));
        let per = n.div_ceil(threads);
        let parts = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let len = per.min(n.saturating_sub(t * per));
                    scope.spawn(move || {
                        (0..len)
                            .map(|_| self.one(iat))
                            .collect::<anyhow::Result<Vec<_>>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .map_err(|_| anyhow::anyhow!("a signing thread panicked"))?
                })
                .collect::<anyhow::Result<Vec<_>>>()
        })?;
        Ok(parts.into_iter().flatten().collect())
    }
}
