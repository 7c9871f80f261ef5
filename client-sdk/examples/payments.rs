//! Callee example: `payments` serves `POST /charge` only to callers presenting a valid,
//! unused Baton token addressed to `spiffe://example.org/fn/payments`. Keys come from the
//! issuer's JWKS, checked against the trust bundle, and are refreshed in the background.
//!
//! With an issuer running (`cargo run --bin baton -- serve --policy infra/config/policy.toml`):
//!
//! ```sh
//! cargo run -p baton-sdk --features axum --example payments -- \
//!     https://localhost:8443 baton-data/bundle.pem 127.0.0.1:8081
//! ```

use std::error::Error;
use std::sync::Arc;

use axum::routing::post;
use axum::{Json, Router};
use baton_sdk::{SpiffeId, VerifiedCaller, Verifier};
use serde_json::{Value, json};

async fn charge(caller: VerifiedCaller) -> Json<Value> {
    Json(json!({
        "charged_for": caller.id,
        "scopes": caller.scopes,
        "jti": caller.jti,
    }))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(issuer), Some(bundle)) = (args.next(), args.next()) else {
        return Err("usage: payments ISSUER_URL BUNDLE_PEM [LISTEN_ADDR]".into());
    };
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:8081".to_owned());
    let me: SpiffeId = "spiffe://example.org/fn/payments".parse()?;

    let verifier = Verifier::builder(issuer, me, &std::fs::read(bundle)?)?
        .build_fetching()
        .await?;
    let app = Router::new()
        .route("/charge", post(charge))
        .with_state(Arc::new(verifier));
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("payments listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
