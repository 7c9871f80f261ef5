//! `baton-load introspect`: `POST /v1/introspect` by the tokens' audience over mTLS.
//! That introspection is each token's one use (SPEC §5), so every token is minted
//! beforehand (batches of 64, by a caller the policy allows) and introspected once;
//! an `active:false` answer is an error.

use std::path::PathBuf;
use std::sync::Arc;

use baton_proto::metadata::INTROSPECT_PATH;
use clap::Args;
use serde_json::{Value, json};

use crate::http::{self, Conn, Connections, Endpoint, Identity, form, status_kind};
use crate::issuer::{self, Minter};
use crate::run::{self, Outcome, Plan, Pool};
use crate::supply::note;
use crate::{IssuerArgs, RunArgs, read};

#[derive(Args, Debug)]
pub(crate) struct IntrospectArgs {
    #[command(flatten)]
    issuer: IssuerArgs,
    /// The audience's workload certificate chain (PEM): it introspects.
    #[arg(long)]
    cert: PathBuf,
    /// The audience's PKCS#8 key (PEM).
    #[arg(long)]
    key: PathBuf,
    /// The audience's SPIFFE ID (default: the one in --cert).
    #[arg(long)]
    audience: Option<String>,
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

pub(crate) async fn run(args: IntrospectArgs) -> anyhow::Result<Value> {
    let plan = args.run.plan("introspect")?;
    let bundle = read(&args.issuer.bundle)?;
    let (chain, key) = (read(&args.cert)?, read(&args.key)?);
    let audience = match &args.audience {
        Some(id) => id.clone(),
        None => issuer::spiffe_id(&chain)?,
    };
    let base = args.issuer.base();
    let tls = http::tls_config(
        Some(&bundle),
        Some(&Identity {
            chain_pem: &chain,
            key_pem: &key,
        }),
    )?;
    let connections = Connections::default();
    let endpoint = Endpoint::new(&format!("{base}{INTROSPECT_PATH}"), Some(&tls))?;
    let conns = Conn::per_worker(&endpoint, &connections, plan.concurrency);
    let minter = Minter::new(
        &bundle,
        &args.caller_cert,
        &args.caller_key,
        base,
        &audience,
    )?;

    let op = |pool: Arc<Pool>| {
        let conns = Arc::clone(&conns);
        move |worker: usize| {
            let conns = Arc::clone(&conns);
            let body = pool.take().map(|token| form(&[("token", token)]));
            async move {
                let Some(body) = body else {
                    return Outcome::Exhausted;
                };
                let mut conn = conns[worker].lock().await;
                match conn.post_form(body).await {
                    Ok(answer) if answer.status == 200 => {
                        let active = serde_json::from_slice::<Value>(&answer.body)
                            .ok()
                            .and_then(|v| v.get("active")?.as_bool());
                        match active {
                            Some(true) => Outcome::Ok(1),
                            Some(false) => Outcome::Err("inactive".to_owned()),
                            None => Outcome::Err("malformed_introspection".to_owned()),
                        }
                    }
                    Ok(answer) => Outcome::Err(status_kind(&answer)),
                    Err(kind) => Outcome::Err(kind),
                }
            }
        }
    };
    let supply = minter
        .supply(&plan, args.tokens, 1024, async |pool, plan: Plan| {
            run::run_async(&plan, op(pool)).await
        })
        .await?;
    note(&plan, "introspecting");
    let opened = connections.opened();
    let measured = run::run_async(&plan, op(Arc::clone(&supply.pool))).await?;

    let mut out = serde_json::Map::new();
    out.insert("mode".into(), json!("introspect"));
    out.insert(
        "connections_opened".into(),
        json!(connections.opened() - opened),
    );
    supply.fields(&mut out);
    measured.fields(&plan, &mut out);
    Ok(Value::Object(out))
}
