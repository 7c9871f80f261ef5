//! What SDK verification costs next to the signature check it cannot avoid.
//!
//! For each algorithm, in the same run: a raw ring verify of a token's signing input
//! (the floor), `Verifier::verify_at` of that token with a replay guard that accepts
//! everything (every other check, no bookkeeping), and `Verifier::verify_at` with the
//! default `LocalReplayGuard` on a fresh token per iteration (the real hot path).
//! Then an interleaved measurement prints the SDK / raw ratio (target ≤ 1.25×).
//!
//! `cargo bench -p baton-sdk --bench verify -- --warm-up-time 1 --measurement-time 3`

// Test and benchmark code: a failed fixture step is a failed test.
#![allow(clippy::unwrap_used, clippy::panic)]

#[path = "../tests/verify_support/mod.rs"]
#[allow(dead_code, unreachable_pub)]
mod verify_support;

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_sdk::{ReplayError, ReplayGuard, SpiffeId, Verifier};
use criterion::{BatchSize, Criterion};
use ring::signature::{ECDSA_P256_SHA256_FIXED, ED25519, UnparsedPublicKey, VerificationAlgorithm};
use verify_support::*;

/// A guard that records nothing: isolates the cost of the other checks.
#[derive(Debug)]
struct AcceptAll;

impl ReplayGuard for AcceptAll {
    fn consume(&self, _: &str, _: i64, _: i64) -> Result<(), ReplayError> {
        Ok(())
    }
}

struct Setup {
    alg: Alg,
    signer: Signer,
    /// Verifier whose guard accepts every jti, so one token verifies repeatedly.
    reusable: Verifier,
    /// Verifier with the default local guard: every token must be fresh.
    local: Verifier,
    token: String,
    now: i64,
}

impl Setup {
    fn new(alg: Alg) -> Setup {
        let ca = Ca::new(TD);
        let signer = ca.signer(alg);
        let audience: SpiffeId = AUDIENCE.parse().unwrap();
        let keys = jwks(&[signer.jwk()]);
        let builder = || {
            Verifier::builder(ISSUER, audience.clone(), ca.pem.as_bytes())
                .unwrap()
                .jwks(&keys)
                .unwrap()
        };
        let reusable = builder().replay_guard(Arc::new(AcceptAll)).build().unwrap();
        let local = builder().build().unwrap();
        let now = unix_now();
        let token = signer.token(&claims(now));
        reusable.verify_at(&token, now).unwrap();
        Setup {
            alg,
            signer,
            reusable,
            local,
            token,
            now,
        }
    }

    fn algorithm(&self) -> &'static dyn VerificationAlgorithm {
        match self.alg {
            Alg::Es256 => &ECDSA_P256_SHA256_FIXED,
            Alg::EdDsa => &ED25519,
        }
    }

    /// The signing input and signature of the token, for the raw check.
    fn parts(&self) -> (Vec<u8>, Vec<u8>) {
        use base64::Engine as _;
        let (input, signature) = self.token.rsplit_once('.').unwrap();
        let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(signature)
            .unwrap();
        (input.as_bytes().to_vec(), signature)
    }

    fn raw_verify(&self, public_key: &[u8], input: &[u8], signature: &[u8]) {
        UnparsedPublicKey::new(self.algorithm(), public_key)
            .verify(black_box(input), black_box(signature))
            .unwrap();
    }
}

fn benches(c: &mut Criterion, setups: &[Setup]) {
    for s in setups {
        let (input, signature) = s.parts();
        let public_key = s.signer.public_key();
        let mut group = c.benchmark_group(format!("verify_{}", s.alg.name()));
        group.bench_function("ring_raw_signature", |b| {
            b.iter(|| s.raw_verify(&public_key, &input, &signature))
        });
        group.bench_function("sdk_verify_at_accept_all_guard", |b| {
            b.iter(|| s.reusable.verify_at(black_box(&s.token), s.now).unwrap())
        });
        group.bench_function("sdk_verify_at_local_guard_fresh_tokens", |b| {
            b.iter_batched(
                || s.signer.token(&claims(s.now)),
                |token| s.local.verify_at(&token, s.now).unwrap(),
                BatchSize::SmallInput,
            )
        });
        group.finish();
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Raw and SDK verification interleaved round by round, so both see the same machine
/// state; the median per-operation time of each, and their ratio.
fn ratio_report(setups: &[Setup]) {
    const ROUNDS: usize = 15;
    const PER_ROUND: u32 = 1_000;
    println!();
    println!(
        "SDK verify vs raw ring signature check (median of {ROUNDS} interleaved rounds of {PER_ROUND}):"
    );
    for s in setups {
        let (input, signature) = s.parts();
        let public_key = s.signer.public_key();
        let fresh: Vec<Vec<String>> = (0..ROUNDS)
            .map(|_| {
                (0..PER_ROUND)
                    .map(|_| s.signer.token(&claims(s.now)))
                    .collect()
            })
            .collect();
        let (mut raw, mut reusable, mut local) = (Vec::new(), Vec::new(), Vec::new());
        for tokens in &fresh {
            let t = Instant::now();
            for _ in 0..PER_ROUND {
                s.raw_verify(&public_key, &input, &signature);
            }
            raw.push(t.elapsed() / PER_ROUND);
            let t = Instant::now();
            for _ in 0..PER_ROUND {
                black_box(s.reusable.verify_at(black_box(&s.token), s.now).unwrap());
            }
            reusable.push(t.elapsed() / PER_ROUND);
            let t = Instant::now();
            for token in tokens {
                black_box(s.local.verify_at(token, s.now).unwrap());
            }
            local.push(t.elapsed() / PER_ROUND);
        }
        let (raw, reusable, local) = (median(raw), median(reusable), median(local));
        let ratio = |d: Duration| d.as_secs_f64() / raw.as_secs_f64();
        println!(
            "  {:<5}  raw ring {:>9.2?}   verify_at (accept-all guard) {:>9.2?} = {:.3}x   verify_at (local guard, fresh tokens) {:>9.2?} = {:.3}x",
            s.alg.name(),
            raw,
            reusable,
            ratio(reusable),
            local,
            ratio(local),
        );
    }
}

fn main() {
    let setups = [Setup::new(Alg::Es256), Setup::new(Alg::EdDsa)];
    let mut criterion = Criterion::default().configure_from_args();
    benches(&mut criterion, &setups);
    criterion.final_summary();
    // `cargo test --benches` runs each benchmark once as a smoke test; the ratio is
    // measured only under `cargo bench`.
    if std::env::args().any(|a| a == "--bench") {
        ratio_report(&setups);
    }
}
