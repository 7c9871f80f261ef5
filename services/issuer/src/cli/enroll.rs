//! `baton enroll --id ID [--csr FILE] --out DIR` and `baton enroll --id ID --join-token`

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use baton_issuer::fsio::{self, Mode};
use baton_issuer::join_token::{self, JoinTokens};
use baton_issuer::pki::{self, KeyType};
use baton_issuer::shared::{self, SharedStore};
use baton_proto::SpiffeId;
use clap::{Args, ValueEnum};
use serde_json::json;
use zeroize::Zeroizing;

use super::{Context, now, print_json, rfc3339};

#[derive(Debug, Args)]
pub(super) struct EnrollArgs {
    /// The workload's SPIFFE ID, e.g. `spiffe://example.org/fn/orders`.
    #[arg(long)]
    id: SpiffeId,
    /// Print a one-time join token bound to the ID instead of issuing a certificate.
    #[arg(long, conflicts_with_all = ["csr", "out", "key_type"])]
    join_token: bool,
    /// Lifetime: of the join token (default 15m, at most 24h) or of the certificate
    /// (default `svid_ttl` from the configuration, at most 7days).
    #[arg(long)]
    ttl: Option<humantime::Duration>,
    /// PEM certificate signing request; the private key then never leaves the
    /// workload. Only its public key is used: the certificate carries `--id` alone.
    #[arg(long)]
    csr: Option<PathBuf>,
    /// Directory to write `svid.pem`, `bundle.pem` and (without `--csr`) `svid.key` into.
    #[arg(long, required_unless_present = "join_token")]
    out: Option<PathBuf>,
    /// Type of the key generated when no `--csr` is given.
    #[arg(long, value_enum, default_value_t = KeyTypeArg::EcP256, conflicts_with = "csr")]
    key_type: KeyTypeArg,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum KeyTypeArg {
    /// ECDSA P-256 (signs ES256 assertions).
    EcP256,
    /// Ed25519 (signs EdDSA assertions).
    Ed25519,
}

impl From<KeyTypeArg> for KeyType {
    fn from(arg: KeyTypeArg) -> Self {
        match arg {
            KeyTypeArg::EcP256 => KeyType::EcP256,
            KeyTypeArg::Ed25519 => KeyType::Ed25519,
        }
    }
}

pub(super) fn run(ctx: &Context, args: EnrollArgs) -> anyhow::Result<()> {
    if args.join_token {
        join(ctx, &args)
    } else {
        certificate(ctx, &args)
    }
}

fn join(ctx: &Context, args: &EnrollArgs) -> anyhow::Result<()> {
    let store = ctx.data_dir.open(&ctx.kek)?;
    let ttl = args.ttl.map_or(join_token::DEFAULT_TTL, Duration::from);
    let mut tokens = JoinTokens::new(ctx.data_dir.join_tokens_path());
    // Distributed mode: the token goes where every replica redeems it.
    if let Some(url) = ctx.config()?.redis_url() {
        let shared = SharedStore::connect(url, shared::DEFAULT_TIMEOUT)
            .context("cannot reach the distributed store")?;
        tokens = tokens.with_shared_store(shared);
    }
    let made = tokens
        .create(store.ca().trust_domain(), &args.id, ttl, now())
        .with_context(|| format!("cannot make a join token for {}", args.id))?;
    if args.json {
        return print_json(&json!({
            "join_token": made.token.as_str(),
            "handle": made.handle,
            "id": args.id,
            "expires_at": made.expires_at.unix_timestamp(),
        }));
    }
    eprintln!(
        "One-time join token for {}, valid until {} (handle {}, for `baton join-tokens revoke`):",
        args.id,
        rfc3339(made.expires_at),
        made.handle,
    );
    println!("{}", made.token.as_str());
    Ok(())
}

fn certificate(ctx: &Context, args: &EnrollArgs) -> anyhow::Result<()> {
    let Some(out) = &args.out else {
        bail!("--out is required to issue a certificate");
    };
    let store = ctx.data_dir.open(&ctx.kek)?;
    let ttl = match args.ttl {
        Some(ttl) => ttl.into(),
        None => ctx.config()?.svid_ttl,
    };
    // Check the request fully before anything is written.
    pki::check_workload_id(store.ca().trust_domain(), &args.id)?;
    refuse_inside(out, ctx.data_dir.root())?;
    let now = now();
    let (svid, key_pem) = match &args.csr {
        Some(csr_path) => {
            let csr = fsio::read_bounded(csr_path, pki::MAX_CSR_BYTES as u64)
                .with_context(|| format!("cannot read {}", csr_path.display()))?;
            let public_key =
                pki::csr_public_key(&csr).with_context(|| format!("{}", csr_path.display()))?;
            (
                store.ca().issue_svid(&args.id, &public_key, ttl, now)?,
                None,
            )
        }
        None => {
            let key = KeyType::from(args.key_type).generate()?;
            let svid = store.ca().issue_svid(&args.id, &key, ttl, now)?;
            (svid, Some(Zeroizing::new(key.serialize_pem())))
        }
    };

    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let write = |name: &str, bytes: &[u8], mode| -> anyhow::Result<PathBuf> {
        let path = out.join(name);
        fsio::write_atomic(&path, bytes, mode)
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(path)
    };
    // The key goes first: a certificate on disk always has its key beside it.
    let key_path = match &key_pem {
        Some(pem) => Some(write("svid.key", pem.as_bytes(), Mode::Private)?),
        None => None,
    };
    let svid_path = write("svid.pem", svid.pem().as_bytes(), Mode::Public)?;
    let bundle_path = write("bundle.pem", store.bundle_pem().as_bytes(), Mode::Public)?;
    super::visibility::record_enrollment(
        ctx,
        &args.id,
        svid.not_after.unix_timestamp(),
        now.unix_timestamp(),
    );

    if args.json {
        return print_json(&json!({
            "id": args.id,
            "serial": svid.serial,
            "expires_at": svid.not_after.unix_timestamp(),
            "svid": svid_path,
            "bundle": bundle_path,
            "key": key_path,
        }));
    }
    println!(
        "Issued {} (serial {}, valid until {})",
        args.id,
        svid.serial,
        rfc3339(svid.not_after)
    );
    println!("  certificate: {}", svid_path.display());
    println!("  bundle:      {}", bundle_path.display());
    match key_path {
        Some(path) => println!("  private key: {}", path.display()),
        None => println!("  private key: stays with the CSR's owner"),
    }
    Ok(())
}

/// The data directory must never hold a plaintext private key: refuse to write the
/// workload's files into it. Checked before anything is created.
fn refuse_inside(out: &Path, data_dir: &Path) -> anyhow::Result<()> {
    let (Some(out), Ok(data_dir)) = (resolve(out), data_dir.canonicalize()) else {
        return Ok(());
    };
    if out.starts_with(&data_dir) {
        bail!(
            "--out {} is inside the data directory {}; write workload files elsewhere",
            out.display(),
            data_dir.display()
        );
    }
    Ok(())
}

/// `path` made absolute with symbolic links resolved, even if its last components do
/// not exist yet: the deepest existing ancestor is canonicalized, the rest appended.
fn resolve(path: &Path) -> Option<PathBuf> {
    let path = std::path::absolute(path).ok()?;
    let mut existing = path.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = existing.canonicalize() {
            return Some(rest.iter().rev().fold(real, |acc, c| acc.join(c)));
        }
        rest.push(existing.file_name()?.to_owned());
        existing = existing.parent()?;
    }
}
