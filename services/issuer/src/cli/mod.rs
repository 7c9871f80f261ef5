//! Command-line surface of `baton`. Each command parses its flags into typed values,
//! calls the library, and prints a human summary or, with `--json`, data.

mod admin;
mod enroll;
mod identities;
mod init;
mod join_tokens;
mod kek;
mod keys;
mod policy;
mod serve;
mod token;
mod visibility;

use std::path::PathBuf;

use anyhow::Context as _;
use baton_issuer::config::Config;
use baton_issuer::datadir::{DataDir, KekSource};
use clap::{Parser, Subcommand};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Baton: one-time workload identity tokens for function-to-function calls.
#[derive(Debug, Parser)]
#[command(name = "baton", version, propagate_version = true)]
pub(crate) struct Cli {
    /// Data directory: CA, sealed keys, configuration (and the admin socket).
    #[arg(
        long,
        global = true,
        env = "BATON_DATA_DIR",
        default_value = "baton-data"
    )]
    data_dir: PathBuf,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a new trust domain: root CA, sealed keys, dev KEK and default config.
    Init(init::InitArgs),
    /// Issue a workload certificate (X.509-SVID), or a join token for a function to
    /// fetch its first certificate itself.
    Enroll(enroll::EnrollArgs),
    /// Workload identities of the running issuer: list the inventory, revoke one
    /// (deny list).
    Identities(identities::IdentitiesArgs),
    /// Outstanding join tokens of the running issuer: list, revoke.
    JoinTokens(join_tokens::JoinTokensArgs),
    /// Signing keys of the running issuer: list, rotate, revoke.
    Keys(keys::KeysArgs),
    /// The key-encryption key that seals every private key at rest: rotate, verify.
    Kek(kek::KekArgs),
    /// Check a token policy file, reload the running issuer's policy (SPEC §6), or
    /// report where it grants more than is used.
    Policy(policy::PolicyArgs),
    /// Run the issuer. On a fresh machine it first initializes a dev trust domain
    /// (example.org) in the data directory and listens on loopback only.
    Serve(serve::ServeArgs),
    /// Caller- and callee-side token helpers.
    Token(token::TokenArgs),
    /// The running issuer's live call graph: who asks for tokens for whom, with
    /// counts, denials and last use (admin socket only).
    Graph(visibility::GraphArgs),
    /// Write one self-contained HTML report: the call graph as SVG, the identity
    /// inventory, the least-privilege report and recent anomalies (admin socket only).
    Report(visibility::ReportArgs),
}

pub(crate) fn run(cli: Cli) -> anyhow::Result<()> {
    let ctx = Context {
        data_dir: DataDir::new(cli.data_dir),
        kek: kek_source(),
    };
    match cli.command {
        Command::Init(args) => init::run(&ctx, args),
        Command::Enroll(args) => enroll::run(&ctx, args),
        Command::Identities(args) => identities::run(&ctx, args),
        Command::JoinTokens(args) => join_tokens::run(&ctx, args),
        Command::Keys(args) => keys::run(&ctx, args),
        Command::Kek(args) => kek::run(&ctx, args),
        Command::Policy(args) => policy::run(&ctx, args),
        Command::Serve(args) => serve::run(&ctx, args),
        Command::Token(args) => token::run(args),
        Command::Graph(args) => visibility::graph(&ctx, &args),
        Command::Report(args) => visibility::report(&ctx, &args),
    }
}

/// What every command shares: where the data lives and how to unseal it.
struct Context {
    data_dir: DataDir,
    kek: KekSource,
}

impl Context {
    /// The data directory's configuration, with `BATON_*` overrides applied.
    fn config(&self) -> anyhow::Result<Config> {
        let path = self.data_dir.config_path();
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        Config::from_toml(&text, std::env::vars()).with_context(|| format!("{}", path.display()))
    }
}

/// `BATON_KEK_FILE` names an operator-managed KEK; without it the dev KEK in the data
/// directory is used.
fn kek_source() -> KekSource {
    match std::env::var_os("BATON_KEK_FILE") {
        Some(path) if !path.is_empty() => KekSource::File(path.into()),
        _ => KekSource::Dev,
    }
}

/// The current time in whole seconds, the resolution of X.509 and JWT times.
fn now() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(0).unwrap_or(now)
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

fn print_json(value: &serde_json::Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}
