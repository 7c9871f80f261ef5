#!/usr/bin/env bash
# Quick start on the embedded default (no external service): builds `baton`, creates
# a dev trust domain in ./baton-data (once), enrolls a workload from an openssl CSR
# and shows that openssl accepts its certificate.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --locked --bin baton
baton=target/release/baton
data=${BATON_DATA_DIR:-baton-data}
demo=$(mktemp -d)

[ -f "$data/bundle.pem" ] || "$baton" --data-dir "$data" init --trust-domain example.org

openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -keyout "$demo/orders.key" -out "$demo/orders.csr" -subj "/CN=orders" 2>/dev/null
"$baton" --data-dir "$data" enroll --id spiffe://example.org/fn/orders \
  --csr "$demo/orders.csr" --out "$demo"
openssl verify -CAfile "$demo/bundle.pem" "$demo/svid.pem"
openssl x509 -in "$demo/svid.pem" -noout -ext subjectAltName,basicConstraints,keyUsage
echo
echo "A join token for a function to fetch its own first certificate:"
"$baton" --data-dir "$data" enroll --id spiffe://example.org/fn/payments --join-token
echo
echo "Workload files are in $demo"
