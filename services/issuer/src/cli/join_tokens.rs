//! `baton join-tokens list | revoke`: the outstanding join tokens of the running
//! issuer, by handle. A token itself is shown once, by `baton enroll --join-token`,
//! and never again; its handle (the first hex digits of its SHA-256) names it safely.

use baton_issuer::admin::Request;
use baton_proto::SpiffeId;
use clap::{Args, Subcommand};
use serde_json::Value;

use super::{Context, admin, print_json, rfc3339};

#[derive(Debug, Args)]
pub(super) struct JoinTokensArgs {
    #[command(subcommand)]
    command: JoinTokensCommand,
}

#[derive(Debug, Subcommand)]
enum JoinTokensCommand {
    /// List outstanding (unused, unexpired) join tokens: handle, identity, expiry.
    List(ListArgs),
    /// Make outstanding join tokens unusable: one by handle, or every one bound to an
    /// identity (`--id`), e.g. when a deployment's configuration leaked.
    Revoke(RevokeArgs),
}

#[derive(Debug, Args)]
struct ListArgs {
    /// Print the issuer's reply as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct RevokeArgs {
    /// The token's handle, or its first 8 or more hex digits.
    #[arg(required_unless_present = "id", conflicts_with = "id")]
    handle: Option<String>,
    /// Revoke every outstanding join token bound to this SPIFFE ID instead.
    #[arg(long)]
    id: Option<SpiffeId>,
    /// Print the issuer's reply as JSON.
    #[arg(long)]
    json: bool,
}

pub(super) fn run(ctx: &Context, args: JoinTokensArgs) -> anyhow::Result<()> {
    match args.command {
        JoinTokensCommand::List(args) => list(ctx, &args),
        JoinTokensCommand::Revoke(args) => revoke(ctx, args),
    }
}

fn list(ctx: &Context, args: &ListArgs) -> anyhow::Result<()> {
    let request = Request::ListJoinTokens {};
    let reply = admin::call(ctx, &request)?;
    if !reply.is_ok() {
        return admin::refused(&request, &reply);
    }
    let tokens = reply.get("join_tokens").and_then(Value::as_array);
    if args.json {
        return print_json(&Value::Array(tokens.cloned().unwrap_or_default()));
    }
    match tokens {
        Some(tokens) if !tokens.is_empty() => {
            println!("{:<16}  {:<25}  ID", "HANDLE", "EXPIRES");
            for token in tokens {
                println!(
                    "{:<16}  {:<25}  {}",
                    token["handle"].as_str().unwrap_or("?"),
                    expiry(&token["expires_at"]),
                    token["id"].as_str().unwrap_or("?"),
                );
            }
        }
        _ => println!("no outstanding join tokens"),
    }
    Ok(())
}

fn revoke(ctx: &Context, args: RevokeArgs) -> anyhow::Result<()> {
    let request = Request::RevokeJoinTokens {
        handle: args.handle,
        id: args.id.map(|id| id.as_str().to_owned()),
    };
    let reply = admin::call(ctx, &request)?;
    if args.json {
        print_json(&reply.to_value())?;
    }
    if !reply.is_ok() {
        return admin::refused(&request, &reply);
    }
    if !args.json {
        let revoked = reply
            .get("revoked")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if revoked.is_empty() {
            println!("no outstanding join token matched; nothing was revoked");
        }
        for token in revoked {
            println!(
                "revoked join token {} for {}",
                token["handle"].as_str().unwrap_or("?"),
                token["id"].as_str().unwrap_or("?"),
            );
        }
    }
    Ok(())
}

fn expiry(value: &Value) -> String {
    value
        .as_i64()
        .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok())
        .map_or_else(|| "?".to_owned(), rfc3339)
}
