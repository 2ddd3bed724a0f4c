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
    nftables          # as root: keeps guests' egress off the host and its neighbours
    fakeroot uidmap   # building environments as a regular user
    python3 python3-venv  # the test suite's MCP client (the official Python SDK)
    dnsmasq-base      # the network tests' DNS server (no system service)
    # The image tests: a registry on loopback, images built and pushed by
    # the tests, a test CA and basic auth, a static busybox to fill them.
    docker-registry umoci skopeo openssl apache2-utils busybox-static
    # The Ray tests: a cluster whose nodes live in network namespaces.
    iproute2
)
# The guest kernel is fetched with `apt-get download`, which needs fresh lists.
echo "[setup] apt-get update"
$SUDO apt-get update -qq
# The whole set is installed in one transaction, every time. QEMU's packages
# come from one source and must match: a machine may carry a newer
# backported qemu-utils that installing qemu-system-x86 would remove, so
# qemu-utils is asked for at qemu-system-x86's own version.
qemu_version=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ { print $2 }')
if [ -z "$qemu_version" ] || [ "$qemu_version" = "(none)" ]; then
    echo "[setup] no qemu-system-x86 package is available from apt" >&2
    exit 1
fi
selected=()
for p in "${packages[@]}"; do
    case "$p" in
        qemu-system-x86|qemu-utils) selected+=("$p=$qemu_version") ;;
        *) selected+=("$p") ;;
    esac
done
echo "[setup] installing: ${packages[*]} (QEMU $qemu_version)"
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    --allow-downgrades "${selected[@]}" >/dev/null

# Every tool pyro and its tests run, and the package that provides it.
tools=(
    qemu-system-x86_64:qemu-system-x86 qemu-img:qemu-utils mmdebstrap:mmdebstrap
    mkfs.ext4:e2fsprogs cpio:cpio depmod:kmod passt:passt fakeroot:fakeroot
    newuidmap:uidmap python3:python3 dnsmasq:dnsmasq-base nft:nftables
    docker-registry:docker-registry umoci:umoci skopeo:skopeo openssl:openssl
    htpasswd:apache2-utils busybox:busybox-static ip:iproute2
)
absent=()
for t in "${tools[@]}"; do
    PATH="$PATH:/usr/sbin:/sbin" command -v "${t%%:*}" >/dev/null || absent+=("$t")
done
if [ ${#absent[@]} -gt 0 ]; then
    echo "[setup] missing after install: ${absent[*]}" >&2
    exit 1
fi
# The registry is started by the tests, on loopback, when they need it; a
# service the package may have started (where systemd runs) would listen
# on every address.
if command -v systemctl >/dev/null && systemctl is-active --quiet docker-registry 2>/dev/null; then
    $SUDO systemctl disable --now docker-registry >/dev/null 2>&1 || true
fi
python3 -c 'import venv' 2>/dev/null || { echo "[setup] python3-venv is missing" >&2; exit 1; }
echo "[setup] verified: $(qemu-system-x86_64 --version | head -1); $(qemu-img --version | head -1)"

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
