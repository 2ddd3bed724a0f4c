#!/usr/bin/env bash
# The whole test suite: unit tests, then the real-VM integration tests
# (they boot QEMU guests under TCG or KVM; run scripts/setup.sh once first).
# Ends with one line totalling every test binary's results.
set -euo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo build --locked --workspace
# The MCP tests use the official MCP Python SDK as their client.
if [ ! -x target/mcp-venv/bin/python ] || ! target/mcp-venv/bin/python -c 'import mcp' 2>/dev/null; then
    python3 -m venv target/mcp-venv
    target/mcp-venv/bin/pip install --quiet "mcp==1.26.0"
fi
status=0
cargo test --locked --workspace --no-fail-fast -- --test-threads="${PYRO_TEST_THREADS:-2}" 2>&1 | tee "$log" || status=$?
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed;?$/) p += $(i-1); if ($(i) ~ /^failed;?$/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit $status
