//! `baton keys list [--json] | rotate | revoke KID [--force]` (SPEC §9): the signing-key
//! lifecycle of the running issuer, through its admin socket.

use baton_issuer::admin::{Reply, Request};
use clap::{Args, Subcommand};
use serde_json::Value;
use time::OffsetDateTime;

use super::{Context, admin, print_json, rfc3339};

#[derive(Debug, Args)]
pub(super) struct KeysArgs {
    #[command(subcommand)]
    command: KeysCommand,
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// List the signing keys: kid, state, algorithm, created, activated, retires-at.
    List(JsonArg),
    /// Promote the pre-published `next` key, retire the active one (published until
    /// its tokens have expired) and pre-publish a new `next` key; persisted before it
    /// answers.
    Rotate(JsonArg),
    /// Emergency: withdraw a key at once. It leaves the JWKS and its tokens
    /// introspect inactive. The active key needs --force (the next key is promoted).
    Revoke(RevokeArgs),
}

#[derive(Debug, Args)]
struct JsonArg {
    /// Print the issuer's reply as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct RevokeArgs {
    /// The key id, as `baton keys list` shows it. A kid is a base64url thumbprint, so
    /// it may begin with `-`; it is taken as the key id, not as a flag.
    #[arg(allow_hyphen_values = true)]
    kid: String,
    /// Allow revoking the active key: every token it signed becomes inactive.
    #[arg(long)]
    force: bool,
    /// Print the issuer's reply as JSON.
    #[arg(long)]
    json: bool,
}

pub(super) fn run(ctx: &Context, args: KeysArgs) -> anyhow::Result<()> {
    let (request, json) = match args.command {
        KeysCommand::List(a) => (Request::ListKeys {}, a.json),
        KeysCommand::Rotate(a) => (Request::RotateKeys {}, a.json),
        KeysCommand::Revoke(a) => (
            Request::RevokeKey {
                kid: a.kid,
                force: a.force,
            },
            a.json,
        ),
    };
    let reply = admin::call(ctx, &request)?;
    if json {
        print_json(&reply.to_value())?;
    }
    if !reply.is_ok() {
        return admin::refused(&request, &reply);
    }
    if !json {
        match request {
            Request::RotateKeys {} => println!("rotated the signing keys"),
            Request::RevokeKey { kid, .. } => println!(
                "revoked {kid}: it is no longer published and its tokens introspect inactive"
            ),
            _ => {}
        }
        print_table(&reply);
    }
    Ok(())
}

fn print_table(reply: &Reply) {
    let time = |v: Option<&Value>| {
        v.and_then(Value::as_i64)
            .and_then(|t| OffsetDateTime::from_unix_timestamp(t).ok())
            .map_or_else(|| "-".to_owned(), rfc3339)
    };
    println!(
        "{:<43}  {:<7}  {:<5}  {:<20}  {:<20}  RETIRES",
        "KID", "STATE", "ALG", "CREATED", "ACTIVATED"
    );
    let keys = reply.get("keys").and_then(Value::as_array);
    for key in keys.into_iter().flatten() {
        let text = |name| key.get(name).and_then(Value::as_str).unwrap_or("-");
        println!(
            "{:<43}  {:<7}  {:<5}  {:<20}  {:<20}  {}",
            text("kid"),
            text("state"),
            text("alg"),
            time(key.get("created_at")),
            time(key.get("activated_at")),
            time(key.get("retires_at")),
        );
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        command: KeysCommand,
    }

    fn revoke(args: &[&str]) -> (String, bool, bool) {
        let argv = ["keys", "revoke"].iter().chain(args);
        match Cli::try_parse_from(argv).map(|cli| cli.command) {
            Ok(KeysCommand::Revoke(a)) => (a.kid, a.force, a.json),
            other => panic!("{args:?} parsed as {other:?}"),
        }
    }

    #[test]
    fn a_kid_that_begins_with_a_hyphen_is_a_kid() {
        let kid = "-zR8kq2Jx0c1bQYp3mB5nJvW7aL9sD4fG6hK8uE2iT0";
        assert_eq!(revoke(&[kid]), (kid.to_owned(), false, false));
        assert_eq!(
            revoke(&[kid, "--force", "--json"]),
            (kid.to_owned(), true, true)
        );
        assert_eq!(revoke(&["--", kid]), (kid.to_owned(), false, false));
        assert_eq!(revoke(&["--force", kid]), (kid.to_owned(), true, false));
    }
}
