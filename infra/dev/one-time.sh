#!/usr/bin/env bash
# One-time use on the embedded default, with curl: mint a token over mTLS, introspect
# it twice as its audience (active, then {"active":false}), revoke a session, deny an
# identity and reload the policy through the admin socket. Uses a throw-away data
# directory and a free loopback port; BATON=path/to/baton skips the build.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ -z "${BATON:-}" ]; then
  cargo build --release --locked --bin baton
  BATON=target/release/baton
fi
work=$(mktemp -d)
data="$work/baton-data"
baton() { "$BATON" --data-dir "$data" "$@"; }

baton init --trust-domain example.org >/dev/null
baton enroll --id spiffe://example.org/fn/orders --out "$work/orders" >/dev/null
baton enroll --id spiffe://example.org/fn/payments --out "$work/payments" >/dev/null
cat >"$work/policy.toml" <<'POLICY'
[[allow]]
caller = "spiffe://example.org/fn/orders"
audience = "spiffe://example.org/fn/payments"
POLICY

baton serve --listen 127.0.0.1:0 --policy "$work/policy.toml" --log-format json 2>"$work/issuer.log" &
issuer=$!
trap 'kill $issuer 2>/dev/null; wait $issuer 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 100); do
  addr=$(sed -n 's/.*"https_addr":"\([^"]*\)".*/\1/p' "$work/issuer.log" | head -n1)
  [ -n "$addr" ] && break
  sleep 0.1
done
[ -n "$addr" ] || { cat "$work/issuer.log"; exit 1; }

as() { # as WORKLOAD PATH FORM...
  local who=$1 path=$2; shift 2
  curl -sS --cacert "$data/bundle.pem" --cert "$work/$who/svid.pem" --key "$work/$who/svid.key" \
    "https://$addr$path" "$@"
}
token() { as orders /v1/token -d grant_type=client_credentials \
  -d audience=spiffe://example.org/fn/payments "$@" | sed 's/.*"access_token":"\([^"]*\)".*/\1/'; }

t=$(token)
echo "introspect #1: $(as payments /v1/introspect -d "token=$t")"
echo "introspect #2: $(as payments /v1/introspect -d "token=$t")"

t=$(token)
echo "revoke (by its caller): HTTP $(as orders /v1/revoke -d "token=$t" -o /dev/null -w '%{http_code}')"
echo "introspect a token of the revoked session: $(as payments /v1/introspect -d "token=$t")"

t=$(token)
baton identities revoke spiffe://example.org/fn/orders
echo "introspect a token of the revoked identity: $(as payments /v1/introspect -d "token=$t")"
echo "a new token for it: $(as orders /v1/token -d grant_type=client_credentials \
  -d audience=spiffe://example.org/fn/payments)"

baton policy reload
