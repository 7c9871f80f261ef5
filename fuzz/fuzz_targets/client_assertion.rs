//! The issuer's client-assertion attestation (`Attestor::attest_assertion`, RFC 7523
//! `private_key_jwt`): JWS parsing, the header (`alg`, `typ`, `x5c`, `crit`), the x5c
//! chain walk to the bundle, the algorithm bound to the certificate key, the signature,
//! the deny list, the claims (unique members, `iss` = `sub` = the certificate's ID,
//! `aud`, `jti`, `exp`, `nbf`, `iat`, lifetime) and one-time use in the ledger.
//!
//! Selector byte `s` (`s & 0x80`: the Ed25519 workload, else the ES256 one), then:
//! - `s & 3 == 0`: the rest is the assertion itself (lossy UTF-8);
//! - `s & 3 == 1`: `len ‖ header ‖ claims`, signed with the workload's key;
//! - otherwise: the rest is the claims, under the header the SDK writes (the
//!   workload's real x5c chain), signed with its key.
#![no_main]

use baton_fuzz::{assertion_header, attest_assertion, issuer, pieces};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (selector, header, claims) = pieces(data);
    let (key, chain, _) = issuer().workload(selector);
    match selector & 3 {
        0 => {
            let jws = String::from_utf8_lossy(data.get(1..).unwrap_or_default());
            attest_assertion(&jws);
        }
        1 => attest_assertion(&key.sign(header, claims)),
        _ => {
            let claims = data.get(1..).unwrap_or_default();
            attest_assertion(&key.sign(&assertion_header(key.alg(), &[chain]), claims));
        }
    }
});
