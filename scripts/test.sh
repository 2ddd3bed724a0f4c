#!/usr/bin/env bash
# The whole test suite, in two tiers:
#   1. the fast tier: unit, property and golden tests of every crate, the
#      agent driven over a socket pair, the module-graph and dependency
#      checks. No VM, no QEMU needed; seconds once built.
#   2. the real-VM tier: one test binary (crates/pyro-cli/tests/vm) whose
#      tests boot QEMU guests under TCG or KVM (run scripts/setup.sh once
#      first). It keeps its kernels, environments and templates in
#      target/test-cache, never in the machine's own cache.
#   3. the Python tier: builds the pyro-mcp wheel (scripts/build-wheel.sh)
#      and runs crates/pyro-py/tests with pytest on real guests: the SDK,
#      the wheel installed into fresh venvs and through uvx, the examples,
#      and pyro_mcp.ray on a three-node Ray cluster the tests start (root).
# The second tier runs even when the first fails, so one run shows both.
# Ends with one line totalling every test binary's results.
set -euo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
threads="${PYRO_TEST_THREADS:-2}"
# No warm pool of one-shot runs unless a test asks for one (a pooled guest
# outlives the run that started its filler).
export PYRO_POOL_SIZE=0

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

    echo "[test] python tier"
    start=$(date +%s)
    if ! scripts/build-wheel.sh; then
        echo "[test] the wheel did not build" | tee -a "$log"
        echo "test result: FAILED. 0 passed; 1 failed;" >>"$log"
        status=1
    fi
    py=target/py-venv
    if [ ! -x "$py/bin/python" ] || ! "$py/bin/python" -c 'import pytest, mcp, langchain_core, openai, mypy, ray' 2>/dev/null \
        || [ ! -x "$py/bin/uvx" ]; then
        python3 -m venv "$py"
        "$py/bin/pip" install --quiet "pytest==9.2.0" "mcp==1.26.0" "langchain-core==1.8.3" \
            "openai==3.57.0" "uv==0.13.9" "mypy==1.19.1" "ray==2.60.0"
    fi
    wheel=$(ls dist/pyro_mcp-*.whl 2>/dev/null || true)
    [ -n "$wheel" ] && "$py/bin/pip" install --quiet --force-reinstall --no-deps "$wheel"
    [ -n "$wheel" ] && (
        unset PYRO_ENVIRONMENT_CACHE_DIR PYRO_TEMPLATE_CACHE_DIR PYRO_KERNEL_IMAGE PYRO_FAST_START PYRO_ENVIRONMENT_REGISTRY \
            PYRO_MAX_RUNNING_VMS PYRO_MAX_GUEST_MEMORY_MIB PYRO_ACCEL PYRO_HOME PYRO_BIN XDG_CACHE_HOME XDG_DATA_HOME
        export PYRO_CACHE_DIR="$PWD/target/test-cache" PYRO_TEST_WHEEL="$PWD/$wheel" PYTHONDONTWRITEBYTECODE=1
        cd crates/pyro-py/tests
        "../../../$py/bin/python" -m pytest -p no:cacheprovider -v -rs
    ) 2>&1 | tee -a "$log" || status=$?
    echo "[test] python tier took $(($(date +%s) - start))s"
fi

# cargo's "test result:" lines and pytest's closing "=== N passed, M failed in Ts ===".
awk '/^test result:|^=+ .*(passed|failed).* in [0-9.]+s/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed[;,]?$/) p += $(i-1); if ($(i) ~ /^failed[;,]?$/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit $status
