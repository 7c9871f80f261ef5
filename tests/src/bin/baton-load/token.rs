//! `baton-load token`: `POST /v1/token` for one audience, attested by a client assertion
//! (pre-signed, one per request) or by the workload certificate over mTLS.

use std::path::PathBuf;
use std::sync::Arc;

use baton_proto::metadata::TOKEN_PATH;
use clap::Args;
use serde_json::{Value, json};

use crate::assertion::{ASSERTION_TYPE, Factory, Signer};
use crate::http::{self, Conn, Connections, Endpoint, Identity, form, form_encode, token_outcome};
use crate::run::{self, Outcome, Plan, Pool};
use crate::supply::Supply;
use crate::{AuthMode, IssuerArgs, RunArgs, issuer, read};

#[derive(Args, Debug)]
pub(crate) struct TokenArgs {
    #[command(flatten)]
    issuer: IssuerArgs,
    /// The caller's workload certificate chain (PEM, leaf first).
    #[arg(long)]
    cert: PathBuf,
    /// The caller's PKCS#8 key (PEM, P-256 or Ed25519).
    #[arg(long)]
    key: PathBuf,
    /// The callee's SPIFFE ID (`audience`).
    #[arg(long)]
    audience: String,
    /// How the caller proves itself.
    #[arg(long, value_enum)]
    mode: AuthMode,
    /// Tokens per request (the batch `count`, 1 to 64).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=64))]
    count: u8,
    /// Assertions to sign before the run (default: estimated by a calibration run).
    #[arg(long)]
    assertions: Option<usize>,
    #[command(flatten)]
    run: RunArgs,
}

pub(crate) async fn run(args: TokenArgs) -> anyhow::Result<Value> {
    let label = match args.mode {
        AuthMode::Assertion => "token-assertion",
        AuthMode::Mtls => "token-mtls",
    };
    let plan = match args.count {
        1 => args.run.plan(label)?,
        n => args.run.plan(&format!("{label} x{n}"))?,
    };
    let bundle = read(&args.issuer.bundle)?;
    let chain = read(&args.cert)?;
    let key = read(&args.key)?;
    let identity = Identity {
        chain_pem: &chain,
        key_pem: &key,
    };
    let tls = http::tls_config(
        Some(&bundle),
        (args.mode == AuthMode::Mtls).then_some(&identity),
    )?;
    let connections = Connections::default();
    let base = args.issuer.base();
    let endpoint = Endpoint::new(&format!("{base}{TOKEN_PATH}"), Some(&tls))?;
    let conns = Conn::per_worker(&endpoint, &connections, plan.concurrency);
    let count = args.count.to_string();
    let mut pairs = vec![
        ("grant_type", "client_credentials"),
        ("audience", args.audience.as_str()),
    ];
    if args.count > 1 {
        pairs.push(("count", &count));
    }
    let prefix: Arc<str> = form(&pairs).into();
    let n = args.count;
    // Everything but the assertion itself, encoded once.
    let assertion_prefix: Arc<str> = format!(
        "{prefix}&client_assertion_type={}&client_assertion=",
        form_encode(ASSERTION_TYPE)
    )
    .into();

    let mut out = serde_json::Map::new();
    out.insert("mode".into(), json!(label));
    out.insert("count".into(), json!(n));
    let measured = match args.mode {
        AuthMode::Mtls => {
            let op = move |worker: usize| {
                let (conns, body) = (Arc::clone(&conns), prefix.to_string());
                async move {
                    let mut conn = conns[worker].lock().await;
                    token_outcome(conn.post_form(body).await, n)
                }
            };
            let opened = connections.opened();
            let m = run::run_async(&plan, op).await?;
            out.insert(
                "connections_opened".into(),
                json!(connections.opened() - opened),
            );
            m
        }
        AuthMode::Assertion => {
            let issuer_id = match &args.issuer.issuer_id {
                Some(id) => id.clone(),
                None => issuer::discover(&http::client(&tls)?, base).await?,
            };
            let client_id = issuer::spiffe_id(&chain)?;
            let factory = Factory::new(
                Signer::from_pem(&key)?,
                &client_id,
                &issuer_id,
                Some(&chain),
                None,
            )?;
            let op = |pool: Arc<Pool>| {
                let (conns, prefix) = (Arc::clone(&conns), Arc::clone(&assertion_prefix));
                move |worker: usize| {
                    let conns = Arc::clone(&conns);
                    // JWS characters (base64url and '.') need no form encoding.
                    let body = pool.take().map(|a| format!("{prefix}{a}"));
                    async move {
                        match body {
                            Some(body) => {
                                let mut conn = conns[worker].lock().await;
                                token_outcome(conn.post_form(body).await, n)
                            }
                            None => Outcome::Exhausted,
                        }
                    }
                }
            };
            crate::assertion::check_run(plan.warmup + plan.duration)?;
            let supply = Supply::prepare(
                &plan,
                args.assertions,
                2048,
                async |k| factory.make(k),
                async |pool, plan: Plan| run::run_async(&plan, op(pool)).await,
            )
            .await?;
            supply.fields(&mut out);
            let opened = connections.opened();
            let m = run::run_async(&plan, op(Arc::clone(&supply.pool))).await?;
            out.insert(
                "connections_opened".into(),
                json!(connections.opened() - opened),
            );
            m
        }
    };
    measured.fields(&plan, &mut out);
    if n > 1 {
        out.insert("tokens_per_s".into(), json!(measured.units_per_second()));
    }
    Ok(Value::Object(out))
}
