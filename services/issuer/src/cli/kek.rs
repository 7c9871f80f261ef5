//! `baton kek rotate --new-kek-file F` and `baton kek verify` (SPEC §9): re-seal every
//! sealed secret under a new key-encryption key, crash-safe, and check that the key in
//! use opens every one (docs/kek-rotation.md).

use std::path::PathBuf;

use anyhow::Context as _;
use baton_issuer::config::Config;
use baton_issuer::datadir::KekSource;
use baton_issuer::kek_rotate::{self, FAILPOINT_PREFIX, Step};
use baton_issuer::keyring::{Home, Keyring};
use baton_issuer::shared::{self, SharedStore};
use clap::{Args, Subcommand};
use serde_json::json;

use super::{Context, print_json, serve};

#[derive(Debug, Args)]
pub(super) struct KekArgs {
    #[command(subcommand)]
    command: KekCommand,
}

#[derive(Debug, Subcommand)]
enum KekCommand {
    /// Re-seal every sealed secret — the CA key, the signing keys, and in distributed
    /// mode the signing keys in Redis — under a new key-encryption key, crash-safe.
    /// Stop the issuer (in distributed mode, every replica) first. The current key
    /// comes from BATON_KEK_FILE or, in dev, <data-dir>/kek (which is then replaced).
    Rotate(RotateArgs),
    /// Check that the key-encryption key in use opens every sealed secret, as the
    /// issuer does when it starts.
    Verify(VerifyArgs),
}

#[derive(Debug, Args)]
struct StoreArgs {
    /// Configuration file, for its `store` [default: <data-dir>/config.toml].
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// State store, as `serve` takes it [default: the configuration's, or BATON_STORE].
    #[arg(long, value_name = "URL")]
    store: Option<String>,
}

#[derive(Debug, Args)]
struct RotateArgs {
    /// The new key-encryption key: 32 bytes, raw or base64, in a file only its owner
    /// may read (e.g. `openssl rand -base64 32 > F && chmod 600 F`).
    #[arg(long, value_name = "FILE")]
    new_kek_file: PathBuf,
    #[command(flatten)]
    store: StoreArgs,
    /// Print what was done as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct VerifyArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

pub(super) fn run(ctx: &Context, args: KekArgs) -> anyhow::Result<()> {
    // Recovery notices and the rotation's audit event go to stderr.
    serve::init_logging(baton_issuer::config::LogFormat::Auto);
    match args.command {
        KekCommand::Rotate(args) => rotate(ctx, args),
        KekCommand::Verify(args) => verify(ctx, args),
    }
}

fn rotate(ctx: &Context, args: RotateArgs) -> anyhow::Result<()> {
    let root = ctx.data_dir.root();
    let store = connect(ctx, &args.store)?;
    // Crash-consistency tests: abort at a step, as a power cut would (no destructor,
    // no cleanup runs).
    let crash_at = std::env::var("BATON_FAILPOINT")
        .ok()
        .and_then(|v| v.strip_prefix(FAILPOINT_PREFIX).and_then(Step::from_name));
    let mut on_step = |step: Step| {
        if Some(step) == crash_at {
            eprintln!(
                "baton: failpoint {FAILPOINT_PREFIX}{}: aborting",
                step.name()
            );
            std::process::abort();
        }
    };
    let done = kek_rotate::rotate(
        &ctx.data_dir,
        &ctx.kek,
        &args.new_kek_file,
        store.as_ref(),
        &mut on_step,
    )
    .with_context(|| format!("cannot rotate the key-encryption key of {}", root.display()))?;

    let new_file = args.new_kek_file.display();
    let next = match &ctx.kek {
        KekSource::Dev => format!(
            "{}/kek now holds the new key; {new_file} is a copy of it: keep it safe or remove it",
            root.display()
        ),
        KekSource::File(old) => format!(
            "from now on set BATON_KEK_FILE={new_file} for every baton command; the old key {} opens nothing here any more{}",
            old.display(),
            if store.is_some() {
                " (rotate every other replica's data directory too, then restart the replicas)"
            } else {
                ""
            }
        ),
    };
    if args.json {
        return print_json(&json!({
            "data_dir": root,
            "kek": if ctx.kek == KekSource::Dev { "dev" } else { "file" },
            "old_kek_id": done.old_kek_id,
            "new_kek_id": done.new_kek_id,
            "resealed": { "files": done.resealed_files, "shared": done.resealed_shared },
            "already_new": done.already_new,
            "dev_kek_replaced": done.dev_kek_replaced,
            "finished_interrupted": done.finished_interrupted,
            "next": next,
        }));
    }
    if done.finished_interrupted {
        println!("Finished a key-encryption key rotation that had been interrupted.");
    }
    println!(
        "Re-sealed {} secret(s) in {} and {} in the shared store under key-encryption key {} (was {}).",
        done.resealed_files,
        root.display(),
        done.resealed_shared,
        done.new_kek_id,
        done.old_kek_id
    );
    if done.already_new > 0 {
        println!(
            "  {} were already sealed under it and were left as they were.",
            done.already_new
        );
    }
    println!("Next: {next}");
    Ok(())
}

fn verify(ctx: &Context, args: VerifyArgs) -> anyhow::Result<()> {
    let root = ctx.data_dir.root();
    let store = connect(ctx, &args.store)?;
    let data = ctx
        .data_dir
        .open(&ctx.kek)
        .with_context(|| format!("cannot open {}", root.display()))?;
    let files = Keyring::current(Home::Files(&data))
        .context("the data directory's keyring")?
        .map_or(0, |k| k.keys().len());
    let shared = match &store {
        Some(store) => Keyring::current(Home::Shared(&data, store))
            .context("the shared keyring")?
            .map_or(0, |k| k.keys().len()),
        None => 0,
    };
    let kek_id = data.kek().id();
    if args.json {
        return print_json(&json!({
            "data_dir": root,
            "kek_id": kek_id,
            "opened": { "files": 1 + files, "shared": shared },
        }));
    }
    println!(
        "Key-encryption key {kek_id} opens every sealed secret: {} in {} and {shared} in the shared store.",
        1 + files,
        root.display()
    );
    Ok(())
}

/// The shared store `serve` would use: `--store`, else BATON_STORE, else the
/// configuration file's `store`; `None` when embedded.
fn connect(ctx: &Context, args: &StoreArgs) -> anyhow::Result<Option<SharedStore>> {
    let path = args
        .config
        .clone()
        .unwrap_or_else(|| ctx.data_dir.config_path());
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && args.config.is_none() => {
            String::new()
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let flag = args
        .store
        .clone()
        .map(|store| ("BATON_STORE".to_owned(), store));
    let config = Config::from_toml(&text, std::env::vars().chain(flag))
        .with_context(|| format!("{}", path.display()))?;
    config
        .redis_url()
        .map(|url| {
            SharedStore::connect(url, shared::DEFAULT_TIMEOUT)
                .context("cannot use the distributed store")
        })
        .transpose()
}
