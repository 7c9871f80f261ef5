#!/bin/sh
# The compose demo's one-shot seed job (infra/compose.yaml), run at every `up`:
#   - the trust domain, made once in the `seed` volume, which only the issuers mount;
#   - fresh workload certificates for the demo functions in the `fn` volume, which
#     only the functions mount (they never see the CA key or the KEK).
# A demo: the KEK is the dev one, beside the sealed keys. Production keeps the KEK in
# a secret store (infra/k8s/, docs/operations.md).
# (DEMO_SEED_DIR and DEMO_FN_DIR move the two volumes, for tests/tests/infra.rs.)
set -eu

seed=${DEMO_SEED_DIR:-/seed}
fn_dir=${DEMO_FN_DIR:-/fn}
data=$seed/data
baton --data-dir "$data" init --trust-domain example.org --if-missing
for fn in orders payments; do
  baton --data-dir "$data" enroll --id "spiffe://example.org/fn/$fn" --out "$fn_dir/$fn"
done
cp "$data/bundle.pem" "$fn_dir/bundle.pem"
echo "seeded: trust domain example.org, certificates for orders and payments"
