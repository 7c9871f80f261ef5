//! `baton identities revoke SPIFFE_ID [--json]` and `baton identities list [--json]`
//! (SPEC §9): the identity deny list and inventory of the running issuer.

use baton_issuer::admin::Request;
use baton_proto::SpiffeId;
use clap::{Args, Subcommand};

use super::{Context, admin, print_json};

#[derive(Debug, Args)]
pub(super) struct IdentitiesArgs {
    #[command(subcommand)]
    command: IdentitiesCommand,
}

#[derive(Debug, Subcommand)]
enum IdentitiesCommand {
    /// Put a workload identity on the running issuer's deny list (persisted in the
    /// data directory): it gets no new token, and its outstanding tokens introspect
    /// inactive.
    Revoke(RevokeArgs),
    /// Every enrolled or seen identity: certificate expiry, last token, outstanding
    /// join tokens, deny status (admin socket only).
    List(super::visibility::ListArgs),
}

#[derive(Debug, Args)]
struct RevokeArgs {
    /// The workload's SPIFFE ID, e.g. spiffe://example.org/fn/orders.
    id: SpiffeId,
    /// Print the issuer's reply as JSON.
    #[arg(long)]
    json: bool,
}

pub(super) fn run(ctx: &Context, args: IdentitiesArgs) -> anyhow::Result<()> {
    match args.command {
        IdentitiesCommand::Revoke(args) => revoke(ctx, &args),
        IdentitiesCommand::List(args) => super::visibility::list_identities(ctx, &args),
    }
}

fn revoke(ctx: &Context, args: &RevokeArgs) -> anyhow::Result<()> {
    let request = Request::RevokeIdentity {
        id: args.id.as_str().to_owned(),
    };
    let reply = admin::call(ctx, &request)?;
    if args.json {
        print_json(&reply.to_value())?;
    }
    if !reply.is_ok() {
        return admin::refused(&request, &reply);
    }
    if !args.json {
        let already = reply.get("already_revoked") == Some(&serde_json::Value::Bool(true));
        if already {
            println!("{} was already revoked", args.id);
        } else {
            println!(
                "revoked {}: it gets no new tokens and its outstanding tokens introspect inactive",
                args.id
            );
        }
    }
    Ok(())
}
