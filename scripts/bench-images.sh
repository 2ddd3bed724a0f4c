#!/usr/bin/env bash
# Pulling an image of about 1 GiB of layers from a registry on loopback:
# `pyro env pull` (download, then flattening and the ext4 image) beside
# `skopeo copy` of the same image to a directory, measured in the same run.
#
# It starts Debian's docker-registry on a free loopback port, builds the
# image with umoci from LAYERS layers of incompressible data (default 4 x
# 256 MiB; BENCH_LAYER_MIB sets the size) and pushes it with skopeo. The
# image store is a scratch one; the kernel cache is the usual. Usage:
# scripts/bench-images.sh [LAYERS]
set -euo pipefail
cd "$(dirname "$0")/.."
layers="${1:-4}"
mib="${BENCH_LAYER_MIB:-256}"
pyro="${PYRO:-target/release/pyro}"
[ -x "$pyro" ] || cargo build --release --locked -p pyro-cli >&2
pyro=$(realpath "$pyro")

work=$(mktemp -d /tmp/pyro-bench-images-XXXXXX)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat >"$work/registry.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $work/registry
http:
  addr: 127.0.0.1:$port
EOF
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
registry=$!
cleanup() {
    kill "$registry" 2>/dev/null || true
    wait "$registry" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
until python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), 1)" 2>/dev/null; do sleep 0.1; done

echo "building an image of $layers x $mib MiB layers" >&2
umoci init --layout "$work/oci" >/dev/null
umoci new --image "$work/oci:big" >/dev/null
mkdir -p "$work/layer/bin"
cp /bin/busybox "$work/layer/bin/busybox"
ln -sf busybox "$work/layer/bin/sh"
for i in $(seq 1 "$layers"); do
    head -c "${mib}M" /dev/urandom >"$work/layer/data$i"
    tar -C "$work/layer" -cf "$work/layer$i.tar" .
    rm "$work/layer/data$i" "$work/layer/bin/busybox" "$work/layer/bin/sh" 2>/dev/null || true
    umoci raw add-layer --image "$work/oci:big" "$work/layer$i.tar" >/dev/null
    rm "$work/layer$i.tar"
done
reference="127.0.0.1:$port/bench/big:1"
skopeo copy --quiet --dest-tls-verify=false "oci:$work/oci:big" "docker://$reference"
bytes=$(du -sb "$work/registry/docker/registry/v2/blobs" | cut -f1)
rm -rf "$work/oci"

seconds() { python3 -c "import sys; print(f'{(int(sys.argv[2]) - int(sys.argv[1])) / 1e9:.2f}')" "$@"; }
mbs() { python3 -c "import sys; print(f'{int(sys.argv[1]) / 1e6 / float(sys.argv[2]):.0f}')" "$@"; }

sync
t0=$(date +%s%N)
skopeo copy --quiet --src-tls-verify=false "docker://$reference" "dir:$work/skopeo"
t1=$(date +%s%N)
rm -rf "$work/skopeo"
skopeo_s=$(seconds "$t0" "$t1")

sync
t0=$(date +%s%N)
PYRO_HOME="$work/home" PYRO_ENVIRONMENT_CACHE_DIR="$work/envs" PYRO_TEMPLATE_CACHE_DIR="$work/templates" \
    "$pyro" env pull "$reference" 2>&1 >/dev/null | python3 -c 'import sys, time; t0 = time.time()
for line in sys.stdin: sys.stdout.write(f"{time.time() - t0:7.2f} {line}")' >"$work/pull.log"
t1=$(date +%s%N)
pull_s=$(seconds "$t0" "$t1")
download_s=$(sed -n 's/.*phase=downloaded .* seconds=\([0-9.]*\).*/\1/p' "$work/pull.log")

printf '%-50s %8s %8s\n' "pulling $(python3 -c "print(f'{$bytes / 2**30:.2f}')") GiB of layers (loopback)" seconds MB/s
printf '%-50s %8s %8s\n' "  skopeo copy docker:// dir:" "$skopeo_s" "$(mbs "$bytes" "$skopeo_s")"
printf '%-50s %8s %8s\n' "  pyro env pull: download (verified)" "$download_s" "$(mbs "$bytes" "$download_s")"
printf '%-50s %8s %8s\n' "  pyro env pull: all (download, flatten, ext4)" "$pull_s" "$(mbs "$bytes" "$pull_s")"
echo "pyro's phases (seconds since the pull started):"
grep -E 'phase=(download |downloaded|unpack|image|ready)' "$work/pull.log" | sed 's/^/  /'
printf 'ratio to skopeo: download %.2fx, whole pull %.2fx\n' \
    "$(python3 -c "print($download_s / $skopeo_s)")" "$(python3 -c "print($pull_s / $skopeo_s)")"
