//! `baton init --trust-domain TD`, and `baton init --from SEED` for a replica.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use baton_issuer::datadir::{DataDir, KekSource};
use baton_issuer::pki::{CertificateAuthority, DEFAULT_CA_TTL};
use baton_proto::TrustDomain;
use clap::Args;
use serde_json::json;

use super::{Context, now, print_json, rfc3339};

#[derive(Debug, Args)]
pub(super) struct InitArgs {
    /// Trust domain name, e.g. `example.org` (lower case, no scheme).
    #[arg(long, required_unless_present = "from")]
    trust_domain: Option<TrustDomain>,
    /// Lifetime of the root CA.
    #[arg(long, default_value_t = humantime::Duration::from(DEFAULT_CA_TTL), conflicts_with = "from")]
    ca_ttl: humantime::Duration,
    /// Make a replica's data directory from an existing one (or from its files
    /// `bundle.pem`, `ca.key.sealed` and optionally `config.toml`, e.g. a mounted
    /// Secret): the same trust domain for another issuer replica of a shared store. The
    /// sealed CA key must open under the KEK in use. Done already: nothing to do.
    #[arg(long, value_name = "DIR", conflicts_with = "trust_domain")]
    from: Option<PathBuf>,
    /// Succeed without changing anything when the data directory already holds this
    /// trust domain (for start-up scripts that run on every start).
    #[arg(long)]
    if_missing: bool,
    /// Print what was created as JSON.
    #[arg(long)]
    json: bool,
}

pub(super) fn run(ctx: &Context, args: InitArgs) -> anyhow::Result<()> {
    let root = ctx.data_dir.root();
    let bundle = ctx.data_dir.bundle_path();
    if let Some(seed) = &args.from {
        let made = ctx
            .data_dir
            .init_from(&DataDir::new(seed), &ctx.kek)
            .with_context(|| {
                format!(
                    "cannot make {} a replica of {}",
                    root.display(),
                    seed.display()
                )
            })?;
        let ca = made.store.ca();
        if args.json {
            let mut report = summary(ctx, ca, made.copied);
            report["from"] = json!(seed);
            return print_json(&report);
        }
        let verb = if made.copied {
            "Copied"
        } else {
            "Already holds"
        };
        println!(
            "{verb} trust domain {} from {} in {}",
            ca.trust_domain(),
            seed.display(),
            root.display()
        );
        return Ok(());
    }
    let Some(trust_domain) = &args.trust_domain else {
        anyhow::bail!("--trust-domain or --from is required");
    };
    if args.if_missing && ctx.data_dir.exists() {
        let store = ctx
            .data_dir
            .open(&ctx.kek)
            .with_context(|| format!("cannot open {}", root.display()))?;
        let existing = store.ca().trust_domain();
        if existing != trust_domain {
            anyhow::bail!(
                "{} already holds trust domain {existing}, not {trust_domain}",
                root.display()
            );
        }
        if args.json {
            return print_json(&summary(ctx, store.ca(), false));
        }
        println!(
            "{} already holds trust domain {existing}; nothing to do",
            root.display()
        );
        return Ok(());
    }
    let ca_ttl: Duration = args.ca_ttl.into();
    let made = ctx
        .data_dir
        .init(trust_domain, &ctx.kek, ca_ttl, now())
        .with_context(|| format!("cannot initialize {}", root.display()))?;
    let ca = made.store.ca();
    if args.json {
        return print_json(&summary(ctx, ca, true));
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

/// What `--json` prints: the trust domain, where it lives, and whether this run wrote it.
fn summary(ctx: &Context, ca: &CertificateAuthority, created: bool) -> serde_json::Value {
    json!({
        "trust_domain": ca.trust_domain(),
        "data_dir": ctx.data_dir.root(),
        "bundle": ctx.data_dir.bundle_path(),
        "kek": if ctx.kek == KekSource::Dev { "dev" } else { "file" },
        "ca_expires_at": ca.not_after().unix_timestamp(),
        "created": created,
    })
}
