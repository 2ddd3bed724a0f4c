#!/usr/bin/env bash
# The whole test suite, in two tiers:
#   1. the fast tier: unit, property and golden tests of every crate, the
#      agent driven over a socket pair, the module-graph and dependency
#      checks. No VM, no QEMU needed; seconds once built.
#   2. the real-VM tier: one test binary (crates/pyro-cli/tests/vm) whose
#      tests boot QEMU guests under TCG or KVM (run scripts/setup.sh once
#      first). It keeps its kernels, environments and templates in
#      target/test-cache, never in the machine's own cache.
# The second tier runs even when the first fails, so one run shows both.
# Ends with one line totalling every test binary's results.
set -euo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
threads="${PYRO_TEST_THREADS:-2}"

echo "[test] building"
cargo build --locked --workspace --all-targets

echo "[test] fast tier (no VM)"
start=$(date +%s)
cargo test --locked --workspace --lib --bins --test dependencies --test modules --test golden \
    --no-fail-fast 2>&1 | tee -a "$log" || status=$?
echo "[test] fast tier took $(($(date +%s) - start))s"

if [ "${PYRO_TEST_FAST_ONLY:-0}" != 1 ]; then
    # The MCP test's client is the official MCP Python SDK.
    if [ ! -x target/mcp-venv/bin/python ] || ! target/mcp-venv/bin/python -c 'import mcp' 2>/dev/null; then
        python3 -m venv target/mcp-venv
        target/mcp-venv/bin/pip install --quiet "mcp==1.26.0"
    fi
    echo "[test] real-VM tier"
    start=$(date +%s)
    cargo test --locked -p pyro-cli --test vm --no-fail-fast -- --test-threads="$threads" 2>&1 \
        | tee -a "$log" || status=$?
    echo "[test] real-VM tier took $(($(date +%s) - start))s"
fi

awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed;?$/) p += $(i-1); if ($(i) ~ /^failed;?$/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit $status
