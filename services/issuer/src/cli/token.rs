//! `baton token inspect` (and, with the SDK, `mint` and `verify`): SPEC §9.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use baton_proto::SpiffeId;
use baton_sdk::{Auth, TokenClient, Verifier};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::print_json;

/// Largest token `inspect` decodes; verifiers refuse anything over 8 KiB anyway.
const MAX_INSPECT_BYTES: usize = 64 * 1024;

#[derive(Debug, Args)]
pub(super) struct TokenArgs {
    #[command(subcommand)]
    command: TokenCommand,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Caller side: print a fresh one-time token for an audience.
    Mint(MintArgs),
    /// Callee side: verify a token as the SDK's Verifier does; exit 0 with the caller
    /// as JSON, or 1 with the reason. Consumes nothing beyond this process.
    Verify(VerifyArgs),
    /// Decode a token's header and claims for debugging. Verifies NOTHING.
    Inspect(InspectArgs),
}

#[derive(Debug, Args)]
struct InspectArgs {
    /// The token, or `-` to read it from standard input.
    token: String,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

pub(super) fn run(args: TokenArgs) -> anyhow::Result<()> {
    match args.command {
        TokenCommand::Mint(args) => mint(args),
        TokenCommand::Verify(args) => verify(args),
        TokenCommand::Inspect(args) => inspect(args),
    }
}

#[derive(Debug, Args)]
struct MintArgs {
    /// Issuer URL (its identifier), e.g. https://localhost:8443.
    #[arg(long)]
    issuer: String,
    /// Trust bundle (PEM) the issuer's certificate must chain to.
    #[arg(long)]
    bundle: PathBuf,
    /// Workload certificate chain (PEM, leaf first).
    #[arg(long)]
    cert: PathBuf,
    /// Workload private key (PKCS#8 PEM).
    #[arg(long)]
    key: PathBuf,
    /// The callee's SPIFFE ID.
    #[arg(long)]
    audience: SpiffeId,
    /// Scopes to request, space-separated.
    #[arg(long)]
    scope: Option<String>,
    /// Authenticate with a signed client assertion instead of mTLS.
    #[arg(long)]
    assertion: bool,
}

#[derive(Debug, Args)]
struct VerifyArgs {
    /// Issuer URL: the expected `iss`, and where keys are fetched from without --jwks.
    #[arg(long)]
    issuer: String,
    /// Take the keys from this JWKS file instead of fetching them.
    #[arg(long)]
    jwks: Option<PathBuf>,
    /// Trust bundle (PEM) every signing key's certificate must chain to.
    #[arg(long)]
    bundle: PathBuf,
    /// This verifier's own SPIFFE ID: the token's required audience.
    #[arg(long)]
    audience: SpiffeId,
    /// The token, or `-` to read it from standard input.
    token: String,
}

fn read_file(path: &Path) -> anyhow::Result<Vec<u8>> {
    baton_issuer::fsio::read_bounded(path, 1024 * 1024)
        .with_context(|| format!("cannot read {}", path.display()))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn mint(args: MintArgs) -> anyhow::Result<()> {
    let client = TokenClient::builder(
        args.issuer.as_str(),
        &read_file(&args.bundle)?,
        &read_file(&args.cert)?,
        &read_file(&args.key)?,
    )
    .auth(if args.assertion {
        Auth::Assertion
    } else {
        Auth::Mtls
    })
    .build()?;
    let token = runtime()?.block_on(async {
        match &args.scope {
            Some(scope) => client.token_for_scope(&args.audience, scope).await,
            None => client.token_for(&args.audience).await,
        }
    })?;
    println!("{token}");
    Ok(())
}

fn verify(args: VerifyArgs) -> anyhow::Result<()> {
    let token = read_token(&args.token)?;
    let builder = Verifier::builder(
        args.issuer.as_str(),
        args.audience.clone(),
        &read_file(&args.bundle)?,
    )?;
    let verifier = match &args.jwks {
        Some(path) => builder.jwks(&read_file(path)?)?.build()?,
        None => runtime()?.block_on(builder.build_fetching())?,
    };
    match verifier.verify(&token) {
        Ok(caller) => print_json(&json!({
            "verified": true,
            "caller": caller.id,
            "audience": args.audience,
            "scopes": caller.scopes,
            "session_id": caller.session_id,
            "jti": caller.jti,
            "issued_at": caller.issued_at,
            "expires_at": caller.expires_at,
            "cnf_x5t_s256": caller.cnf_x5t_s256,
        })),
        Err(e) => bail!("token refused: {} ({e})", e.reason()),
    }
}

fn inspect(args: InspectArgs) -> anyhow::Result<()> {
    let token = read_token(&args.token)?;
    let (header, claims) = decode_unverified(&token)?;
    const WARNING: &str = "NOT VERIFIED: decoded only; signature, issuer, audience, expiry and one-time use were not checked";
    if args.json {
        return print_json(
            &json!({ "verified": false, "header": header, "claims": claims, "note": WARNING }),
        );
    }
    eprintln!("{WARNING}");
    println!("header: {}", serde_json::to_string_pretty(&header)?);
    println!("claims: {}", serde_json::to_string_pretty(&claims)?);
    if let Some(exp) = claims.get("exp").and_then(Value::as_i64) {
        let left = exp - time::OffsetDateTime::now_utc().unix_timestamp();
        if left >= 0 {
            println!("expires in {left}s");
        } else {
            println!("expired {}s ago", -left);
        }
    }
    Ok(())
}

fn read_token(arg: &str) -> anyhow::Result<String> {
    let raw = if arg == "-" {
        let mut buf = String::new();
        std::io::stdin()
            .take(MAX_INSPECT_BYTES as u64 + 1)
            .read_to_string(&mut buf)
            .context("cannot read the token from standard input")?;
        buf
    } else {
        arg.to_owned()
    };
    let token = raw.trim();
    if token.len() > MAX_INSPECT_BYTES {
        bail!("token is larger than {MAX_INSPECT_BYTES} bytes");
    }
    Ok(token.to_owned())
}

/// Splits a compact JWS and decodes header and payload as JSON, without any check.
fn decode_unverified(token: &str) -> anyhow::Result<(Value, Value)> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(_sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        bail!("not a compact JWS: expected three dot-separated parts");
    };
    let decode = |part: &str, what: &str| -> anyhow::Result<Value> {
        let bytes = URL_SAFE_NO_PAD
            .decode(part)
            .with_context(|| format!("{what} is not base64url"))?;
        serde_json::from_slice(&bytes).with_context(|| format!("{what} is not JSON"))
    };
    Ok((decode(h, "header")?, decode(p, "claims")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_without_verifying_and_refuses_garbage() {
        let h = URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256","typ":"at+jwt","kid":"k"}"#);
        let p = URL_SAFE_NO_PAD.encode(br#"{"sub":"spiffe://example.org/a","exp":1}"#);
        let (header, claims) = decode_unverified(&format!("{h}.{p}.c2ln")).unwrap();
        assert_eq!(header["kid"], "k");
        assert_eq!(claims["exp"], 1);
        for bad in [
            "",
            "a.b",
            "a.b.c.d",
            "!!.e30.x",
            &format!("{h}.bm90IGpzb24.x"),
        ] {
            assert!(decode_unverified(bad).is_err(), "{bad}");
        }
    }
}
