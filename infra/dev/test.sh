#!/usr/bin/env bash
# Runs every test of the workspace: unit, property, doc and end-to-end tests (the
# end-to-end ones drive the real `baton` binary and openssl).
set -euo pipefail
cd "$(dirname "$0")/../.."
exec cargo test --workspace --locked "$@"
