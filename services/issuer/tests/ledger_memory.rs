//! Measures what the in-memory replay ledger costs per outstanding `jti` (SPEC §7,
//! issue 5: a million outstanding tokens must fit well under 256 MiB).
//!
//! It fills a ledger with one million live entries and reads the process's resident
//! set size from `/proc/self/status` before and after, so the figure includes the hash
//! tables' slack and the allocator's overhead, not just `size_of` the entries. It runs
//! as its own test binary (one test, no other allocations in flight) so the reading is
//! not muddied by other tests. Run it with `--nocapture` to see the numbers.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

use baton_issuer::ledger::{LedgerError, MemoryLedger, ReplayLedger};

const ENTRIES: usize = 1_000_000;
const T0: i64 = 1_800_000_000;

/// `VmRSS` (or `VmHWM`, the peak) of this process, in bytes.
fn status_kib(field: &str) -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("{field} not in /proc/self/status"));
    let kib: usize = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap();
    kib * 1024
}

#[tokio::test]
async fn a_million_outstanding_jtis_fit_well_under_256_mib() {
    let before = status_kib("VmRSS:");
    let ledger = MemoryLedger::new(ENTRIES, T0);
    let mut key = String::with_capacity(64);
    for i in 0..ENTRIES {
        use std::fmt::Write as _;
        key.clear();
        // Shaped like the issuer's keys: a prefix and a 22-character base64url jti.
        write!(key, "access-token {i:022}").unwrap();
        ledger.consume(&key, None, T0 + 300, T0).await.unwrap();
    }
    let after = status_kib("VmRSS:");
    let peak = status_kib("VmHWM:");
    assert_eq!(ledger.len(), ENTRIES);
    assert_eq!(
        ledger
            .consume("access-token one-too-many", None, T0 + 300, T0)
            .await,
        Err(LedgerError::Full),
        "the capacity is a hard bound"
    );
    assert_eq!(
        ledger
            .consume(
                &format!("access-token {:022}", 123_456),
                None,
                T0 + 300,
                T0 + 1
            )
            .await,
        Err(LedgerError::Replayed)
    );

    let grown = after.saturating_sub(before);
    let per_jti = grown as f64 / ENTRIES as f64;
    println!(
        "replay ledger: {ENTRIES} outstanding jtis take {:.1} MiB resident ({per_jti:.1} bytes per jti); process peak {:.1} MiB",
        grown as f64 / 1048576.0,
        peak as f64 / 1048576.0,
    );
    // 20-byte entries plus one control byte in tables between 7/16 and 7/8 full:
    // 24 to 48 bytes per entry. Anything far above means the layout regressed.
    assert!(per_jti < 64.0, "{per_jti:.1} bytes per outstanding jti");
    assert!(
        peak < 128 * 1024 * 1024,
        "peak {peak} bytes: a million jtis must fit well under 256 MiB"
    );
}
