//! `baton init --trust-domain TD`

use std::time::Duration;

use anyhow::Context as _;
use baton_issuer::datadir::KekSource;
use baton_issuer::pki::DEFAULT_CA_TTL;
use baton_proto::TrustDomain;
use clap::Args;
use serde_json::json;

use super::{Context, now, print_json, rfc3339};

#[derive(Debug, Args)]
pub(super) struct InitArgs {
    /// Trust domain name, e.g. `example.org` (lower case, no scheme).
    #[arg(long)]
    trust_domain: TrustDomain,
    /// Lifetime of the root CA.
    #[arg(long, default_value_t = humantime::Duration::from(DEFAULT_CA_TTL))]
    ca_ttl: humantime::Duration,
    /// Print what was created as JSON.
    #[arg(long)]
    json: bool,
}

pub(super) fn run(ctx: &Context, args: InitArgs) -> anyhow::Result<()> {
    let ca_ttl: Duration = args.ca_ttl.into();
    let root = ctx.data_dir.root();
    let made = ctx
        .data_dir
        .init(&args.trust_domain, &ctx.kek, ca_ttl, now())
        .with_context(|| format!("cannot initialize {}", root.display()))?;
    let ca = made.store.ca();
    let bundle = ctx.data_dir.bundle_path();
    if args.json {
        return print_json(&json!({
            "trust_domain": ca.trust_domain(),
            "data_dir": root,
            "bundle": bundle,
            "kek": if made.dev_kek { "dev" } else { "file" },
            "ca_expires_at": ca.not_after().unix_timestamp(),
        }));
    }
    println!(
        "Initialized trust domain {} in {}",
        ca.trust_domain(),
        root.display()
    );
    println!("  trust bundle:   {}", bundle.display());
    println!("  root CA valid until {}", rfc3339(ca.not_after()));
    match &ctx.kek {
        KekSource::Dev => println!(
            "  sealing key:    {}/kek (dev only: for production keep the key apart from the data and set BATON_KEK_FILE)",
            root.display()
        ),
        KekSource::File(path) => println!("  sealing key:    {} (BATON_KEK_FILE)", path.display()),
    }
    println!(
        "Next: baton --data-dir {} enroll --id spiffe://{}/fn/hello --out ./hello",
        root.display(),
        ca.trust_domain()
    );
    Ok(())
}
