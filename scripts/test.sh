#!/usr/bin/env bash
# The whole test suite: unit tests, then the real-VM integration tests
# (they boot QEMU guests under TCG or KVM; run scripts/setup.sh once first).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --locked --workspace
cargo test --locked --workspace -- --test-threads="${PYRO_TEST_THREADS:-2}"
