//! `baton-floor`: the HTTP floor of Baton's load benchmark (issue 9). Not a product
//! and not an issuer: a measurement baseline.
//!
//! Issue 9 asks that minting over HTTP on one server core reach 70 % of the in-process
//! ceiling, or that the gap be explained. This server turns the explanation into a
//! same-run measurement. It runs on exactly the issuer's stack — a Tokio multi-thread
//! runtime with default settings, an axum 0.8 router, axum-server 0.9 with
//! `RustlsAcceptor` and `NoDelayAcceptor`, rustls on ring with TLS 1.2/1.3 safe
//! defaults and ALPN `h2`/`http/1.1`, client certificates requested but optional —
//! and does per request only the cryptography Baton cannot avoid:
//!
//! - `POST /v1/token` with a client assertion: one signature verification (ES256 or
//!   EdDSA) with the one caller's public key, taken from its certificate at start.
//!   This is Baton's "cached chain verdict" case: the chain was checked before, so no
//!   path validation per request. The verification is real: a wrong signature is
//!   refused with 401, so a benchmark cannot measure a floor that skipped it.
//! - `POST /v1/token` over mTLS: nothing per request but the check that a client
//!   certificate is on the connection. The chain is validated once per connection by
//!   rustls (`WebPkiClientVerifier`), which is fine: the load keeps connections alive.
//! - Minting `count` tokens (1 to 64): each one fresh 16-byte `jti` from the system
//!   RNG, claims of the issuer's shape and size serialized as the issuer serializes
//!   them, and one ES256 signature (ring, a key pair parsed once at start); one fresh
//!   16-byte `sid` per request; the protected header encoded once at start. Over mTLS
//!   the tokens carry `cnf.x5t#S256` (one SHA-256 of the leaf), as Baton's do, so
//!   tokens have the same size in both modes as in Baton.
//! - `POST /v1/introspect`: requires a client certificate, and verifies the token's
//!   signature with the floor's own key: the one verification introspection needs.
//!   Its answer splices the token's own claims after `"active":true`, parsing nothing.
//! - `GET /.well-known/oauth-authorization-server`: RFC 8414 metadata, so the load
//!   generator discovers the issuer identifier as it does against Baton.
//!
//! And nothing else, deliberately: no form decoding (parameters are found by scanning
//! the raw body; JWS characters need no decoding, only `audience` is percent-decoded
//! into the claims), no JSON parsing of assertions or tokens (so no claim checks:
//! expiry, audience, issuer), no `x5c` decoding or chain fingerprint, no replay ledger,
//! policy, rate limiter, deny list, metrics, audit log, tracing or middleware. Every
//! token names the one caller of `--caller-cert` as `sub`: the floor serves one caller.
//!
//! Measured by `baton-load` pinned like the issuer (`infra/bench/run.sh`), Baton ÷
//! floor is Baton's own overhead, and floor ÷ in-process ceiling is what the kernel,
//! HTTP and TLS cost on this machine.
//!
//! ```text
//! baton-floor --listen 127.0.0.1:0 --bundle-out floor.pem \
//!   --caller-cert orders/svid.pem --client-bundle baton-data/bundle.pem
//! ```
//!
//! prints `{"msg":"listening","https_addr":"127.0.0.1:PORT","issuer":"…"}` on stderr
//! and serves until SIGTERM or ctrl-c.
#![forbid(unsafe_code)]

mod jws;
mod routes;
mod tls;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};

#[derive(Parser)]
#[command(
    name = "baton-floor",
    version,
    about = "Baton's HTTP floor: the issuer's server stack doing only the unavoidable cryptography, as a benchmark baseline"
)]
struct Cli {
    /// Address to listen on (port 0: any free port, named in the "listening" line).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Where to write the PEM of the self-signed certificate served (clients trust it).
    #[arg(long)]
    bundle_out: PathBuf,
    /// The one caller's certificate chain (PEM, leaf first): its assertions are
    /// verified with the leaf's public key, and its SPIFFE ID is every token's `sub`.
    #[arg(long)]
    caller_cert: PathBuf,
    /// Trust bundle (PEM) for TLS client certificates, checked once per connection.
    #[arg(long)]
    client_bundle: PathBuf,
    /// The `iss` of the tokens [default: https://<listen address>].
    #[arg(long)]
    issuer_id: Option<String>,
}

/// How long connections may finish their requests after SIGTERM.
const GRACE: Duration = Duration::from_secs(2);

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // As the issuer: the default multi-thread runtime (one worker per core it may use).
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("baton-floor: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("baton-floor: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(cli: Cli) -> anyhow::Result<()> {
    let caller_pem = read(&cli.caller_cert)?;
    let caller = jws::Caller::from_chain_pem(&caller_pem)
        .with_context(|| format!("{}", cli.caller_cert.display()))?;
    let client_bundle = read(&cli.client_bundle)?;

    let listener = std::net::TcpListener::bind(cli.listen)
        .with_context(|| format!("cannot listen on {}", cli.listen))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let issuer = cli.issuer_id.unwrap_or_else(|| format!("https://{addr}"));

    let served = tls::server_config(addr.ip(), &client_bundle)?;
    std::fs::write(&cli.bundle_out, &served.cert_pem)
        .with_context(|| format!("cannot write {}", cli.bundle_out.display()))?;
    let minter = jws::Minter::generate(&issuer, caller.id())?;
    let app = routes::app(routes::Floor::new(issuer.clone(), caller, minter));

    // The issuer's acceptor chain, exactly (services/issuer/src/cli/serve.rs).
    let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(
        axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(served.config)),
    )
    .acceptor(axum_server::accept::NoDelayAcceptor::new());
    let handle = axum_server::Handle::new();
    let server = axum_server::from_tcp(listener)?
        .acceptor(acceptor)
        .handle(handle.clone())
        .serve(app.into_make_service());

    // Installed before "listening": a SIGTERM sent as soon as the line appears must
    // stop the server gracefully, not kill it by the default action.
    let mut term = signal(SignalKind::terminate()).context("cannot install signal handlers")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install signal handlers")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        handle.graceful_shutdown(Some(GRACE));
    });
    eprintln!(
        "{}",
        serde_json::json!({"msg": "listening", "https_addr": addr.to_string(), "issuer": issuer})
    );
    server.await.context("HTTPS listener failed")
}
