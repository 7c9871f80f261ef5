//! Wire types shared by the Baton issuer and its client SDK.
//!
//! Everything a Baton component sends or receives over the network is described
//! here once: SPIFFE IDs (SPEC §2), access-token claims (§4), the HTTP request and
//! response bodies of the issuer (§5), RFC 6749 error bodies, JWKS and RFC 8414
//! metadata. The crate has no I/O and no crypto; it only parses and serializes.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod claims;
pub mod error;
pub mod json;
pub mod jwks;
pub mod metadata;
pub mod requests;
pub mod responses;
pub mod spiffe_id;

pub use spiffe_id::{SpiffeId, SpiffeIdError, TrustDomain};
