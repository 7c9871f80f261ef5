//! What the modes need from the issuer before a run: its identifier (RFC 8414
//! discovery), a workload's SPIFFE ID, and a supply of fresh tokens minted in batches.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use baton_proto::metadata::{METADATA_PATH, TOKEN_PATH};

use crate::http::{self, Identity, form, post_form, status_kind};
use crate::read;
use crate::run::{Measured, Plan, Pool};
use crate::supply::Supply;

/// The most tokens one `/v1/token` request may mint (SPEC §5).
pub(crate) const BATCH: usize = 64;

/// Concurrent batch-mint requests while preparing tokens.
const MINTERS: usize = 4;

/// The issuer identifier (`iss` of its tokens, `aud` of assertions) from its RFC 8414
/// metadata at `base`.
pub(crate) async fn discover(client: &reqwest::Client, base: &str) -> anyhow::Result<String> {
    let url = format!("{base}{METADATA_PATH}");
    let response = client
        .get(&url)
        .send()
        .await
        .with_context(|| format!("cannot fetch {url}"))?;
    if !response.status().is_success() {
        bail!("{url} answered {}", response.status());
    }
    let body: serde_json::Value = response.json().await.context("issuer metadata")?;
    body.get("issuer")
        .and_then(|v| v.as_str())
        .map(str::to_owned)
        .context("issuer metadata without `issuer`")
}

/// The one SPIFFE ID (URI SAN) of the first certificate of `chain_pem`.
pub(crate) fn spiffe_id(chain_pem: &str) -> anyhow::Result<String> {
    let der = http::pem_blocks(chain_pem)?
        .into_iter()
        .next()
        .context("the certificate file holds no certificate")?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| anyhow::anyhow!("cannot parse the certificate: {e}"))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| anyhow::anyhow!("bad subjectAltName: {e}"))?
        .context("the certificate has no subjectAltName")?;
    san.value
        .general_names
        .iter()
        .find_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) if uri.starts_with("spiffe://") => {
                Some((*uri).to_owned())
            }
            _ => None,
        })
        .context("the certificate carries no SPIFFE ID")
}

/// Tokens minted for a run, and until when all of them stay valid.
pub(crate) struct Minted {
    pub(crate) tokens: Vec<String>,
    /// The earliest expiry among them (measured from before the first request).
    pub(crate) valid_until: Instant,
}

/// Mints at least `n` tokens for `audience` in batches of 64, `parallel` requests at a
/// time (the client presents the caller's certificate over mTLS). A 429 waits out its
/// `Retry-After`; any other failure stops with its error kind.
pub(crate) async fn mint(
    client: &reqwest::Client,
    parallel: usize,
    token_url: &str,
    audience: &str,
    n: usize,
) -> anyhow::Result<Minted> {
    let started = Instant::now();
    let batches = n.div_ceil(BATCH);
    let count = BATCH.to_string();
    let body = form(&[
        ("grant_type", "client_credentials"),
        ("audience", audience),
        ("count", &count),
    ]);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..parallel {
        let (client, url, body, next) = (
            client.clone(),
            token_url.to_owned(),
            body.clone(),
            next.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut tokens = Vec::new();
            let mut lifetime = u64::MAX;
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < batches {
                loop {
                    let answer = post_form(&client, &url, body.clone())
                        .await
                        .map_err(|kind| anyhow::anyhow!("minting failed: {kind}"))?;
                    if answer.status == 429 {
                        let wait = answer.retry_after.unwrap_or(1).clamp(1, 10);
                        tokio::time::sleep(Duration::from_secs(wait)).await;
                        continue;
                    }
                    if answer.status != 200 {
                        bail!("minting failed: {}", status_kind(&answer));
                    }
                    let body: serde_json::Value =
                        serde_json::from_slice(&answer.body).context("mint answer")?;
                    lifetime =
                        lifetime.min(body.get("expires_in").and_then(|v| v.as_u64()).unwrap_or(0));
                    tokens
                        .extend(http::tokens(&answer.body).context("mint answer without tokens")?);
                    break;
                }
            }
            Ok::<_, anyhow::Error>((tokens, lifetime))
        }));
    }
    let mut tokens = Vec::with_capacity(batches * BATCH);
    let mut lifetime = u64::MAX;
    for task in tasks {
        let (some, life) = task.await.context("a minting task failed")??;
        tokens.extend(some);
        lifetime = lifetime.min(life);
    }
    Ok(Minted {
        tokens,
        valid_until: started + Duration::from_secs(if lifetime == u64::MAX { 0 } else { lifetime }),
    })
}

/// Fails unless tokens valid until `valid_until` outlive a run of `run` starting now,
/// with 2 s to spare for clock granularity (`iat`/`exp` are whole seconds).
pub(crate) fn check_lifetime(valid_until: Instant, run: Duration) -> anyhow::Result<()> {
    let needed = Instant::now() + run + Duration::from_secs(2);
    if needed > valid_until {
        bail!(
            "the minted tokens expire {:.1} s from now, before the run would end ({:.1} s): \
             shorten --duration or raise the issuer's token_ttl (at most 300 s)",
            valid_until
                .saturating_duration_since(Instant::now())
                .as_secs_f64(),
            run.as_secs_f64()
        );
    }
    Ok(())
}

/// Clients that mint tokens as the caller, and where.
pub(crate) struct Minter {
    client: reqwest::Client,
    url: String,
    audience: String,
}

impl Minter {
    pub(crate) fn new(
        bundle: &str,
        caller_cert: &Path,
        caller_key: &Path,
        base: &str,
        audience: &str,
    ) -> anyhow::Result<Self> {
        let (chain, key) = (read(caller_cert)?, read(caller_key)?);
        let tls = http::tls_config(
            Some(bundle),
            Some(&Identity {
                chain_pem: &chain,
                key_pem: &key,
            }),
        )?;
        Ok(Self {
            client: http::client(&tls)?,
            url: format!("{base}{TOKEN_PATH}"),
            audience: audience.to_owned(),
        })
    }

    /// At least `n` fresh tokens for the audience.
    pub(crate) async fn mint(&self, n: usize) -> anyhow::Result<Minted> {
        mint(&self.client, MINTERS, &self.url, &self.audience, n).await
    }

    /// Mints the tokens of a run: `fixed`, or as many as calibration says.
    pub(crate) async fn supply(
        &self,
        plan: &Plan,
        fixed: Option<usize>,
        first: usize,
        spend: impl AsyncFnMut(Arc<Pool>, Plan) -> anyhow::Result<Measured>,
    ) -> anyhow::Result<Supply> {
        let mut valid_until = None;
        let supply = Supply::prepare(
            plan,
            fixed,
            first,
            async |n| {
                let minted = self.mint(n).await?;
                valid_until = Some(minted.valid_until);
                Ok(minted.tokens)
            },
            spend,
        )
        .await?;
        if let Some(until) = valid_until {
            check_lifetime(until, plan.warmup + plan.duration)?;
        }
        Ok(supply)
    }
}
