//! The Baton issuer: the trust domain's CA, sealed state, attestation, policy, the
//! signing keyring and token minting. The `baton` binary is a thin command-line
//! layer over these modules.
#![forbid(unsafe_code)]

pub mod admin;
pub mod attest;
pub mod audit;
pub mod config;
pub mod datadir;
pub mod deny;
pub mod fsio;
pub mod introspect;
pub mod join_token;
mod jws;
pub mod kek_rotate;
pub mod keyring;
pub mod ledger;
pub mod lifecycle;
pub mod metrics;
pub mod mint;
pub mod pki;
pub mod policy;
pub mod replica;
pub mod seal;
pub mod server;
pub mod shared;
pub mod svid;
pub mod visibility;
