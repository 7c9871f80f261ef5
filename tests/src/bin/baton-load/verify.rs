//! `baton-load verify`: the SDK's callee loop in process. A `Verifier` fetching its keys
//! from the issuer's JWKS, with the default local replay guard, verifies pre-minted
//! tokens on `--concurrency` threads; each token once. Also the SDK's cold start: from
//! building the verifier (key fetch on loopback included) to the first verified token.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use baton_proto::metadata::JWKS_PATH;
use baton_sdk::{SpiffeId, Verifier};
use clap::Args;
use serde_json::{Value, json};

use crate::issuer::{self, Minter};
use crate::run::{self, Measured, Outcome, Plan, Pool};
use crate::supply::note;
use crate::{IssuerArgs, RunArgs, http, read};

#[derive(Args, Debug)]
pub(crate) struct VerifyArgs {
    #[command(flatten)]
    issuer: IssuerArgs,
    /// The verifying callee's SPIFFE ID (the tokens' audience).
    #[arg(long)]
    audience: String,
    /// A caller allowed to get tokens for the audience (PEM chain): it mints, over mTLS.
    #[arg(long)]
    caller_cert: PathBuf,
    /// The caller's PKCS#8 key (PEM).
    #[arg(long)]
    caller_key: PathBuf,
    /// Tokens to mint before the run (default: estimated by a calibration run).
    #[arg(long)]
    tokens: Option<usize>,
    #[command(flatten)]
    run: RunArgs,
}

/// Verifies tokens from `pool` on the plan's threads, off the async runtime.
async fn spend(verifier: &Arc<Verifier>, pool: Arc<Pool>, plan: Plan) -> anyhow::Result<Measured> {
    let verifier = Arc::clone(verifier);
    tokio::task::spawn_blocking(move || {
        run::run_threads(&plan, |_| match pool.take() {
            None => Outcome::Exhausted,
            Some(token) => match verifier.verify(token) {
                Ok(_) => Outcome::Ok(1),
                Err(e) => Outcome::Err(format!("verify_{}", e.reason())),
            },
        })
    })
    .await?
}

pub(crate) async fn run(args: VerifyArgs) -> anyhow::Result<Value> {
    let plan = args.run.plan("verify")?;
    let bundle = read(&args.issuer.bundle)?;
    let audience: SpiffeId = args
        .audience
        .parse()
        .map_err(|e| anyhow::anyhow!("--audience: {e}"))?;
    let base = args.issuer.base();
    let minter = Minter::new(
        &bundle,
        &args.caller_cert,
        &args.caller_key,
        base,
        audience.as_str(),
    )?;
    let issuer_id = match &args.issuer.issuer_id {
        Some(id) => id.clone(),
        None => {
            let plain = http::client(&http::tls_config(Some(&bundle), None)?)?;
            issuer::discover(&plain, base).await?
        }
    };

    // Cold start: a fresh verifier, its first key fetch, its first token.
    let first = minter.mint(1).await?;
    let first = first
        .tokens
        .first()
        .ok_or_else(|| anyhow::anyhow!("the issuer minted no token"))?;
    let t = Instant::now();
    let mut builder = Verifier::builder(issuer_id.as_str(), audience, bundle.as_bytes())?;
    if issuer_id.trim_end_matches('/') != base {
        builder = builder.jwks_url(format!("{base}{JWKS_PATH}"));
    }
    let verifier = Arc::new(builder.build_fetching().await?);
    let built = t.elapsed();
    let t1 = Instant::now();
    verifier
        .verify(first)
        .map_err(|e| anyhow::anyhow!("the first token did not verify: {e}"))?;
    let first_verify = t1.elapsed();
    let cold_start = t.elapsed();
    note(
        &plan,
        &format!(
            "cold start {:.1} ms (keys fetched in {:.1} ms)",
            ms(cold_start),
            ms(built)
        ),
    );

    let supply = minter
        .supply(&plan, args.tokens, 4096, async |pool, plan| {
            spend(&verifier, pool, plan).await
        })
        .await?;
    note(&plan, "verifying");
    let measured = spend(&verifier, Arc::clone(&supply.pool), plan.clone()).await?;

    let mut out = serde_json::Map::new();
    out.insert("mode".into(), json!("verify"));
    out.insert("cold_start_ms".into(), json!(run::round3(ms(cold_start))));
    out.insert(
        "cold_start_key_fetch_ms".into(),
        json!(run::round3(ms(built))),
    );
    out.insert(
        "cold_start_first_verify_us".into(),
        json!(run::round1(first_verify.as_secs_f64() * 1e6)),
    );
    out.insert("threads".into(), json!(plan.concurrency));
    supply.fields(&mut out);
    measured.fields(&plan, &mut out);
    Ok(Value::Object(out))
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
