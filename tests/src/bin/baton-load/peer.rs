//! `baton-load peer`: the same measurement against another OAuth 2.0 authorization
//! server, for comparison: RFC 6749 §4.4 `client_credentials` with RFC 7523
//! `private_key_jwt` client authentication (pre-signed assertions, `iss` = `sub` =
//! client_id, `aud` = the token URL, unique `jti`) and an RFC 8707 `resource`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::bail;
use clap::Args;
use serde_json::{Value, json};

use crate::assertion::{ASSERTION_TYPE, Factory, Signer};
use crate::http::{self, Conn, Connections, Endpoint, form, status_kind};
use crate::run::{self, Outcome, Plan, Pool};
use crate::supply::Supply;
use crate::{RunArgs, read};

#[derive(Args, Debug)]
pub(crate) struct PeerArgs {
    /// The peer's token endpoint.
    #[arg(long)]
    token_url: String,
    /// The registered client's id (`client_id`; `iss` and `sub` of its assertions).
    #[arg(long)]
    client_id: String,
    /// The client's PKCS#8 key (PEM, P-256 for ES256, or Ed25519 for EdDSA).
    #[arg(long)]
    key: PathBuf,
    /// The RFC 8707 resource indicator to ask a token for.
    #[arg(long)]
    resource: String,
    /// CA certificates (PEM) to trust for an https token URL.
    #[arg(long)]
    bundle: Option<PathBuf>,
    /// Allow a plain-http token URL (a peer on loopback).
    #[arg(long)]
    insecure_http: bool,
    /// `scope` to request, if any.
    #[arg(long)]
    scope: Option<String>,
    /// `kid` header of the assertions, if the peer wants one.
    #[arg(long)]
    kid: Option<String>,
    /// `aud` of the assertions (default: the token URL, as RFC 7523 says).
    #[arg(long)]
    assertion_audience: Option<String>,
    /// Assertions to sign before the run (default: estimated by a calibration run).
    #[arg(long)]
    assertions: Option<usize>,
    #[command(flatten)]
    run: RunArgs,
}

pub(crate) async fn run(args: PeerArgs) -> anyhow::Result<Value> {
    let plan = args.run.plan("peer")?;
    let url = args.token_url.as_str();
    let bundle = match (url.split_once("://").map(|(s, _)| s), &args.bundle) {
        (Some("https"), Some(path)) => Some(read(path)?),
        (Some("https"), None) => bail!("an https --token-url needs --bundle (the CA to trust)"),
        (Some("http"), _) if args.insecure_http => None,
        (Some("http"), _) => bail!("a plain-http --token-url needs --insecure-http"),
        _ => bail!("--token-url must be an http(s) URL"),
    };
    let tls = http::tls_config(bundle.as_deref(), None)?;
    let connections = Connections::default();
    let endpoint = Endpoint::new(url, bundle.is_some().then_some(&tls))?;
    let conns = Conn::per_worker(&endpoint, &connections, plan.concurrency);
    let aud = args.assertion_audience.as_deref().unwrap_or(url);
    let factory = Factory::new(
        Signer::from_pem(&read(&args.key)?)?,
        &args.client_id,
        aud,
        None,
        args.kid.as_deref(),
    )?;
    let mut pairs = vec![
        ("grant_type", "client_credentials"),
        ("client_id", args.client_id.as_str()),
        ("resource", args.resource.as_str()),
        ("client_assertion_type", ASSERTION_TYPE),
    ];
    if let Some(scope) = &args.scope {
        pairs.push(("scope", scope));
    }
    let prefix: Arc<str> = format!("{}&client_assertion=", form(&pairs)).into();

    let op = |pool: Arc<Pool>| {
        let (conns, prefix) = (Arc::clone(&conns), Arc::clone(&prefix));
        move |worker: usize| {
            let conns = Arc::clone(&conns);
            let body = pool.take().map(|a| format!("{prefix}{a}"));
            async move {
                let Some(body) = body else {
                    return Outcome::Exhausted;
                };
                let mut conn = conns[worker].lock().await;
                match conn.post_form(body).await {
                    Ok(answer) if answer.status == 200 => match http::tokens(&answer.body) {
                        Some(t) if !t.is_empty() => Outcome::Ok(1),
                        _ => Outcome::Err("malformed_token_response".to_owned()),
                    },
                    Ok(answer) => Outcome::Err(status_kind(&answer)),
                    Err(kind) => Outcome::Err(kind),
                }
            }
        }
    };
    crate::assertion::check_run(plan.warmup + plan.duration)?;
    let supply = Supply::prepare(
        &plan,
        args.assertions,
        2048,
        async |n| factory.make(n),
        async |pool, plan: Plan| run::run_async(&plan, op(pool)).await,
    )
    .await?;
    let opened = connections.opened();
    let measured = run::run_async(&plan, op(Arc::clone(&supply.pool))).await?;

    let mut out = serde_json::Map::new();
    out.insert("mode".into(), json!("peer"));
    out.insert(
        "connections_opened".into(),
        json!(connections.opened() - opened),
    );
    supply.fields(&mut out);
    measured.fields(&plan, &mut out);
    Ok(Value::Object(out))
}
