//! Caller example: `orders` calls `payments` with a fresh one-time token per request,
//! obtained with its workload certificate over mTLS, then shows that a token presented
//! twice is refused.
//!
//! With an issuer and the `payments` example running:
//!
//! ```sh
//! cargo run --bin baton -- enroll --id spiffe://example.org/fn/orders --out orders
//! cargo run -p baton-sdk --features reqwest --example orders -- \
//!     https://localhost:8443 baton-data/bundle.pem orders/svid.pem orders/svid.key \
//!     http://127.0.0.1:8081
//! ```

use std::error::Error;

use baton_sdk::{RequestBuilderExt as _, SpiffeId, TokenClient};

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [issuer, bundle, cert, key, payments_url] = args.as_slice() else {
        return Err("usage: orders ISSUER_URL BUNDLE_PEM SVID_PEM SVID_KEY PAYMENTS_URL".into());
    };
    let client = TokenClient::builder(
        issuer.as_str(),
        &std::fs::read(bundle)?,
        &std::fs::read(cert)?,
        &std::fs::read(key)?,
    )
    .build()?;
    let payments: SpiffeId = "spiffe://example.org/fn/payments".parse()?;
    println!("orders is {}", client.id());

    // The plain-HTTP hop to payments still needs a TLS provider chosen for reqwest.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let charge = format!("{}/charge", payments_url.trim_end_matches('/'));

    for _ in 0..2 {
        let response = http
            .post(&charge)
            .baton_token(&client, &payments)
            .await?
            .send()
            .await?;
        println!("charge: {} {}", response.status(), response.text().await?);
    }

    // One-time: the same token a second time is refused.
    let token = client.token_for(&payments).await?;
    for attempt in ["first", "second"] {
        let response = http.post(&charge).bearer_auth(&token).send().await?;
        let reason = response
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        println!("same token, {attempt} use: {} {reason}", response.status());
    }
    Ok(())
}
