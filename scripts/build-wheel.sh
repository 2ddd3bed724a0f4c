#!/usr/bin/env bash
# Builds the Python wheel `pyro-mcp` into dist/: the `pyro_mcp` package
# (the SDK over the Rust library, an abi3 extension for Python 3.9+) with
# the `pyro` binary inside it. Needs Rust and python3 (with venv); maturin
# is installed into target/build-venv from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
maturin_version="1.16.0"

echo "[wheel] building the pyro binary"
cargo build --release --locked -p pyro-cli
install -D -m 0755 target/release/pyro crates/pyro-py/python/pyro_mcp/_bin/pyro

venv=target/build-venv
if ! "$venv/bin/maturin" --version 2>/dev/null | grep -q "$maturin_version"; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet "maturin==$maturin_version"
fi
echo "[wheel] building the wheel"
rm -f dist/pyro_mcp-*.whl
"$venv/bin/maturin" build --release --locked --quiet \
    -m crates/pyro-py/Cargo.toml --out dist
ls dist/pyro_mcp-*.whl
