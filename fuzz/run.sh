#!/usr/bin/env bash
# Builds the fuzz targets and runs each for N seconds from its committed seeds.
#
#   bash fuzz/run.sh                     # every target, 600 s each, one after another
#   bash fuzz/run.sh verify_token 60     # one target, 60 s
#
# Needs a nightly toolchain and cargo-fuzz (see fuzz/README.md). One fuzzer process at
# a time. New corpus entries go to fuzz/corpus/<target>/ (gitignored; the seeds stay
# untouched), logs to fuzz/logs/<target>.log, crashes to fuzz/artifacts/<target>/.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/.."
targets=(verify_token verify_claims client_assertion cert_chain spiffe_id)
if [[ $# -ge 1 && "$1" != all ]]; then targets=("$1"); fi
seconds="${2:-600}"

# Safe Rust throughout (every Baton crate forbids unsafe), so no sanitizer: panics,
# failed assertions and, with -a, integer overflow are the bugs, and they abort.
build_flags=(--sanitizer none --debug-assertions)

dict_for() {
    case "$1" in
        spiffe_id) echo fuzz/dicts/spiffe.dict ;;
        cert_chain) echo fuzz/dicts/x509.dict ;;
        *) echo fuzz/dicts/jose.dict ;;
    esac
}

max_len_for() {
    case "$1" in
        client_assertion) echo 20000 ;; # assertions may be 16 KiB (x5c)
        verify_token | verify_claims) echo 10000 ;; # tokens may be 8 KiB
        cert_chain) echo 8192 ;;
        *) echo 4096 ;;
    esac
}

cargo +nightly fuzz build "${build_flags[@]}"
mkdir -p fuzz/logs
status=0
for target in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$target" "fuzz/artifacts/$target"
    log="fuzz/logs/$target.log"
    echo "== $target: ${seconds}s, log $log"
    set +e
    cargo +nightly fuzz run "${build_flags[@]}" "$target" \
        "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
        -dict="$(dict_for "$target")" \
        -max_len="$(max_len_for "$target")" \
        -max_total_time="$seconds" \
        -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 >"$log" 2>&1
    rc=$?
    set -e
    # The last progress line (execs, cov, ft, corpus) and the final statistics.
    grep -E '^#[0-9]+' "$log" | tail -n 1 || true
    grep -E '^stat::' "$log" || true
    echo "corpus files: $(find "fuzz/corpus/$target" -type f | wc -l), exit $rc"
    if [[ $rc -ne 0 ]]; then
        status=$rc
        grep -E 'panicked|ERROR|artifact' "$log" | head -n 20 || true
    fi
done
exit "$status"
