//! The SDK verifier (`Verifier::verify_at`) on arbitrary tokens.
//!
//! Selector byte `s`, then (see `baton_fuzz::pieces`):
//! - `s & 3 == 0`: the rest is the token itself (lossy UTF-8): size limit, segment
//!   split, base64url, header parsing, key lookup by `kid`, signature check.
//! - otherwise: `len ‖ header ‖ claims`, base64url-encoded and signed with a trusted
//!   token-signing key (`s & 0x80`: EdDSA, else ES256), so the header rules and every
//!   claim check behind the signature are reached.
#![no_main]

use baton_fuzz::{pieces, sdk, verify_token};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (selector, header, claims) = pieces(data);
    if selector & 3 == 0 {
        let token = String::from_utf8_lossy(data.get(1..).unwrap_or_default());
        verify_token(&token);
    } else {
        let (key, _) = sdk().key(selector);
        verify_token(&key.sign(header, claims));
    }
});
