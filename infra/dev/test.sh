#!/usr/bin/env bash
# Runs every test of the workspace: unit, property, doc and end-to-end tests (the
# end-to-end ones drive the real `baton` binary and openssl).
set -euo pipefail
cd "$(dirname "$0")/../.."
# `cargo test` builds a package's binaries only for that package's own integration
# tests; the workspace-level tests in tests/ need `baton` built explicitly.
cargo build --workspace --locked --bins
cargo build -p baton-sdk --locked --examples --all-features
exec cargo test --workspace --locked "$@"
