//! `baton-load`: Baton's load generator (issue 9).
//!
//! Drives `POST /v1/token` (client assertion or mTLS, optionally batch `count`),
//! `POST /v1/introspect` (by the token's audience: its one use), the SDK's in-process
//! `Verifier::verify` loop, and, for comparison, a peer OAuth 2.0 server's
//! client-credentials grant with `private_key_jwt`. Each mode runs a fixed number of
//! workers with keep-alive connections for a warm-up and a fixed measured window,
//! prints a progress line on stderr each second, and one JSON object on stdout at the
//! end: throughput and exact latency percentiles from every recorded request.
//!
//! One-time inputs (assertions, tokens) are made before the timed run, sized by a
//! short calibration run, so signing and minting are never in the measured path.
//! It pins nothing by itself: `infra/bench/run.sh` pins server and load to different
//! cores with `taskset`.
#![forbid(unsafe_code)]

mod assertion;
mod http;
mod introspect;
mod issuer;
mod peer;
mod run;
mod supply;
mod token;
mod verify;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "baton-load",
    version,
    about = "Load generator for the Baton issuer and SDK: throughput and latency percentiles as JSON"
)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// POST /v1/token with a client assertion or over mTLS.
    Token(token::TokenArgs),
    /// POST /v1/introspect by the tokens' audience (each token introspected once).
    Introspect(introspect::IntrospectArgs),
    /// The SDK's Verifier::verify loop in process, over pre-minted tokens.
    Verify(verify::VerifyArgs),
    /// A peer OAuth 2.0 server: client_credentials with private_key_jwt and `resource`.
    Peer(peer::PeerArgs),
}

/// The shape of every run.
#[derive(Args, Debug, Clone)]
pub(crate) struct RunArgs {
    /// Concurrent workers, each with one request in flight on its own connection.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=4096))]
    concurrency: u16,
    /// Length of the measured window, in seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Warm-up before the window, in seconds (run, not counted).
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// No progress line on stderr.
    #[arg(long)]
    quiet: bool,
    /// Keep the load generator's runtime busy while HTTP requests run (a spinning task
    /// per runtime worker), so that no answer has to wake a sleeping client. On
    /// loopback the server's send runs the client's receive path, wake-up included, and
    /// on a VM waking an idle vCPU costs the sending server about 10 µs of exits per
    /// answer: a cost of the client sharing the machine, which a server with remote
    /// clients never pays. Pin the load to its own cores when using this.
    #[arg(long)]
    spin: bool,
}

impl RunArgs {
    /// The plan of the timed run, checked.
    pub(crate) fn plan(&self, label: &str) -> anyhow::Result<run::Plan> {
        let secs = |name: &str, v: f64, min: f64| -> anyhow::Result<Duration> {
            if !(v.is_finite() && v >= min && v <= 3600.0) {
                bail!("--{name} must be between {min} and 3600 seconds");
            }
            Ok(Duration::from_secs_f64(v))
        };
        Ok(run::Plan {
            label: label.to_owned(),
            concurrency: usize::from(self.concurrency),
            warmup: secs("warmup", self.warmup, 0.0)?,
            duration: secs("duration", self.duration, 0.1)?,
            progress: !self.quiet,
            spin: self.spin,
        })
    }
}

/// Where the issuer is and how to trust it.
#[derive(Args, Debug, Clone)]
pub(crate) struct IssuerArgs {
    /// Base URL of the issuer, e.g. https://127.0.0.1:8443.
    #[arg(long)]
    issuer: String,
    /// The issuer identifier (`iss`; `aud` of assertions) when it differs from
    /// --issuer. Default: the `issuer` of its RFC 8414 metadata.
    #[arg(long)]
    issuer_id: Option<String>,
    /// The trust bundle (PEM): the trust domain's CA certificates.
    #[arg(long)]
    bundle: PathBuf,
}

impl IssuerArgs {
    pub(crate) fn base(&self) -> &str {
        self.issuer.trim_end_matches('/')
    }
}

/// How an introspecting or token-requesting workload proves itself.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AuthMode {
    /// RFC 7523 `private_key_jwt`: a signed client assertion per request.
    Assertion,
    /// RFC 8705 `tls_client_auth`: the workload certificate on the connection.
    Mtls,
}

/// A file's text, or an error naming the file.
pub(crate) fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("baton-load: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let report = runtime.block_on(async {
        match cli.mode {
            Mode::Token(args) => token::run(args).await,
            Mode::Introspect(args) => introspect::run(args).await,
            Mode::Verify(args) => verify::run(args).await,
            Mode::Peer(args) => peer::run(args).await,
        }
    });
    match report {
        Ok(report) => {
            println!("{report}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("baton-load: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
