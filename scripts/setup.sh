#!/usr/bin/env bash
# Sets up pyro on a fresh Debian 12 machine and runs the first sandbox:
#   1. installs the host packages pyro uses (QEMU, qemu-img, mmdebstrap, ...),
#   2. builds and installs the `pyro` binary (to /usr/local/bin as root,
#      ~/.local/bin otherwise),
#   3. runs `pyro run debian:12 -- git --version`, which fetches the guest
#      kernel and builds the debian:12 environment on first use.
# Set PYRO_SETUP_SKIP_RUN=1 to stop after step 2.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

packages=(
    qemu-system-x86   # the VMM (microvm machine)
    qemu-utils        # qemu-img: copy-on-write disks
    mmdebstrap        # builds environments from Debian packages
    e2fsprogs         # mkfs.ext4 -d: environment images
    cpio              # the initramfs
    kmod              # depmod: module dependencies of the guest kernel
    ca-certificates
    passt             # user-mode networking
    fakeroot uidmap   # building environments as a regular user
    python3 python3-venv  # the test suite's MCP client (the official Python SDK)
    dnsmasq-base      # the network tests' DNS server (no system service)
)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f '${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# The guest kernel is fetched with `apt-get download`, which needs fresh lists.
echo "[setup] apt-get update"
$SUDO apt-get update -qq
if [ ${#missing[@]} -gt 0 ]; then
    echo "[setup] installing: ${missing[*]}"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if ! command -v cargo >/dev/null; then
    echo "[setup] cargo is required: install Rust (https://rustup.rs) and rerun" >&2
    exit 1
fi
echo "[setup] building pyro"
cargo build --release --locked -p pyro-cli
if [ "$(id -u)" -eq 0 ]; then
    bindir=/usr/local/bin
else
    bindir="$HOME/.local/bin"
    mkdir -p "$bindir"
fi
install -m 0755 target/release/pyro "$bindir/pyro"
echo "[setup] installed $bindir/pyro"

if [ "${PYRO_SETUP_SKIP_RUN:-0}" != 1 ]; then
    "$bindir/pyro" run debian:12 -- git --version
fi
