//! reqwest integration for callers (SPEC §8): attach a fresh one-time token to an
//! outgoing request.
//!
//! ```no_run
//! use baton_sdk::reqwest_ext::RequestBuilderExt as _;
//! use baton_sdk::{SpiffeId, TokenClient};
//!
//! # async fn run(tokens: TokenClient) -> Result<(), Box<dyn std::error::Error>> {
//! let payments: SpiffeId = "spiffe://example.org/fn/payments".parse()?;
//! let http = reqwest::Client::new();
//! let response = http
//!     .post("https://payments.internal/charge")
//!     .baton_token(&tokens, &payments)
//!     .await?
//!     .send()
//!     .await?;
//! # let _ = response;
//! # Ok(())
//! # }
//! ```

use std::future::Future;

use baton_proto::SpiffeId;

use crate::{TokenClient, TokenError};

/// Adds [`baton_token`](RequestBuilderExt::baton_token) to [`reqwest::RequestBuilder`].
pub trait RequestBuilderExt: Sized {
    /// Gets a fresh one-time token for `audience` from `client` and attaches it as
    /// `Authorization: Bearer <token>` (marked sensitive, so reqwest never prints it).
    ///
    /// A token is good for one request: call this for every request, including each
    /// retry, rather than cloning a built request.
    ///
    /// ```no_run
    /// use baton_sdk::reqwest_ext::RequestBuilderExt as _;
    /// # async fn run(tokens: baton_sdk::TokenClient, payments: baton_sdk::SpiffeId) -> Result<(), baton_sdk::TokenError> {
    /// let request = reqwest::Client::new()
    ///     .get("https://payments.internal/balance")
    ///     .baton_token(&tokens, &payments)
    ///     .await?;
    /// # let _ = request;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// Whatever [`TokenClient::token_for`] returns; the request is dropped.
    fn baton_token(
        self,
        client: &TokenClient,
        audience: &SpiffeId,
    ) -> impl Future<Output = Result<reqwest::RequestBuilder, TokenError>> + Send;
}

impl RequestBuilderExt for reqwest::RequestBuilder {
    async fn baton_token(
        self,
        client: &TokenClient,
        audience: &SpiffeId,
    ) -> Result<reqwest::RequestBuilder, TokenError> {
        let token = client.token_for(audience).await?;
        Ok(self.bearer_auth(token))
    }
}
