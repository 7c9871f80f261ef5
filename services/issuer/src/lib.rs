//! The Baton issuer: the trust domain's CA, sealed state, and (with later issues) the
//! token service. The `baton` binary is a thin command-line layer over these modules.
#![forbid(unsafe_code)]

pub mod config;
pub mod datadir;
pub mod fsio;
pub mod join_token;
pub mod pki;
pub mod seal;
