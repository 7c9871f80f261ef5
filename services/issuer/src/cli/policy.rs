//! `baton policy check FILE [--trust-domain TD] [--json]`, `baton policy reload
//! [--json]` and `baton policy report [--window D] [--min-denials N] [--json]`.

use std::path::PathBuf;

use anyhow::Context as _;
use baton_issuer::admin::Request;
use baton_issuer::policy::{Policy, PolicyError};
use baton_proto::TrustDomain;
use clap::{Args, Subcommand};
use serde_json::json;

use super::{Context, admin, print_json};

#[derive(Debug, Args)]
pub(super) struct PolicyArgs {
    #[command(subcommand)]
    command: PolicyCommand,
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Validate a policy file without loading it into any issuer: exit 0 and a summary,
    /// or exit 1 and the first problem (rule number and field).
    Check(CheckArgs),
    /// Make the running issuer reread its policy file, as SIGHUP does: a valid policy
    /// is put in force; an invalid one is refused (exit 1) and the old one stays.
    Reload(ReloadArgs),
    /// Least privilege, from the running issuer's call graph: rules unused in the
    /// window, rules broader than their use, callers that keep being refused — each
    /// with a concrete narrower (or added) rule.
    Report(super::visibility::PolicyReportArgs),
}

#[derive(Debug, Args)]
struct ReloadArgs {
    /// Print the issuer's reply as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct CheckArgs {
    /// The policy file (TOML, `[[allow]]` rules).
    file: PathBuf,
    /// The issuer's trust domain, e.g. `example.org`: rules naming any other are
    /// refused. Without it, trust domains are not checked.
    #[arg(long)]
    trust_domain: Option<TrustDomain>,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

pub(super) fn run(ctx: &Context, args: PolicyArgs) -> anyhow::Result<()> {
    match args.command {
        PolicyCommand::Check(args) => check(&args),
        PolicyCommand::Reload(args) => reload(ctx, &args),
        PolicyCommand::Report(args) => super::visibility::policy_report(ctx, &args),
    }
}

fn reload(ctx: &Context, args: &ReloadArgs) -> anyhow::Result<()> {
    let request = Request::ReloadPolicy {};
    let reply = admin::call(ctx, &request)?;
    if args.json {
        print_json(&reply.to_value())?;
    }
    if !reply.is_ok() {
        return admin::refused(&request, &reply);
    }
    if !args.json {
        let count = |key| {
            reply
                .get(key)
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0)
        };
        let file = reply
            .get("file")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("the policy file");
        println!(
            "policy reloaded from {file}: {} rules ({} exact callers, {} prefix callers)",
            count("rules"),
            count("exact_callers"),
            count("prefix_callers")
        );
    }
    Ok(())
}

fn check(args: &CheckArgs) -> anyhow::Result<()> {
    let policy = match Policy::load(&args.file, args.trust_domain.as_ref()) {
        Ok(policy) => policy,
        // A read error already names the file.
        Err(e @ PolicyError::Read { .. }) => return Err(e.into()),
        Err(e) => return Err(e).with_context(|| args.file.display().to_string()),
    };
    let summary = policy.summary();
    if args.json {
        return print_json(&json!({
            "file": args.file,
            "valid": true,
            "rules": summary.rules,
            "exact_callers": summary.exact_callers,
            "prefix_callers": summary.prefix_callers,
            "trust_domain": args.trust_domain,
            "trust_domain_checked": args.trust_domain.is_some(),
        }));
    }
    println!("policy OK: {summary}");
    match &args.trust_domain {
        Some(td) => println!("  every rule is in trust domain {td}"),
        None => println!(
            "  trust domains not checked: pass --trust-domain TD to refuse rules naming another"
        ),
    }
    Ok(())
}
