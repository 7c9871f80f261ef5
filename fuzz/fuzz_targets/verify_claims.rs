//! The SDK's claim checks behind a valid signature: claims parsing (unique members,
//! UTF-8, types), `iss`, `aud`, `sub` = `client_id`, `exp`, `nbf`, `iat`, lifetime,
//! `jti`, `scope`, `cnf`, then the replay guard.
//!
//! Selector byte `s` (`s & 0x80`: EdDSA, else ES256 signer), then the claims bytes,
//! signed under the header the issuer writes (`alg`, `typ` `at+jwt`, `kid`).
#![no_main]

use baton_fuzz::{sdk, token_header, verify_token};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, claims)) = data.split_first() else {
        return;
    };
    let (key, kid) = sdk().key(selector);
    verify_token(&key.sign(&token_header(key.alg(), kid), claims));
});
