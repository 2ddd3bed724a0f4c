#!/usr/bin/env bash
# pyro's figures beside references measured in the same run, on this host:
#
#   one-shot runs   `pyro run debian:12 -- true` from the warm pool, restored
#                   from the template, and booted; against a bare `true` and
#                   gVisor's `runsc do true` (Debian package runsc; skipped
#                   with a note if missing)
#   exec            `workspace exec W -- true` through the CLI, and from the
#                   library in-process (crates/pyro/examples/exec_loop.rs),
#                   against a fork+exec of `true` on the host and inside the
#                   guest
#   workspaces      create, pause, resume, fork of 1 and of 4
#   bulk data       100 MiB pushed, exported and streamed as stdout
#   density         20 idle 512 MiB workspaces: memory running, running
#                   with KSM, paused (skipped with BENCH_QUICK=1; it turns
#                   KSM on for a minute and restores its settings)
#
# It works in a scratch PYRO_HOME (the caches are the usual ones). Usage:
# scripts/bench.sh [RUNS] (default 10).
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-10}"
pyro="${PYRO:-target/release/pyro}"
[ -x "$pyro" ] || cargo build --release --locked -p pyro-cli >&2
cargo build --release --locked -p pyro --example exec_loop >&2
exec_loop=target/release/examples/exec_loop
pyro=$(realpath "$pyro")

home=$(mktemp -d /tmp/pyro-bench-XXXXXX)
export PYRO_HOME="$home" PYRO_BIN="$pyro"
cleanup() {
    PYRO_POOL_SIZE=0 "$pyro" workspace list --json 2>/dev/null \
        | python3 -c 'import json,sys; [print(w["workspace_id"]) for w in json.load(sys.stdin)["workspaces"]]' \
        | while read -r id; do "$pyro" workspace delete "$id" >/dev/null 2>&1 || true; done
    pkill -9 -f "__supervise $home" 2>/dev/null || true
    rm -rf "$home"
}
trap cleanup EXIT

now_ns() { date +%s%N; }
ms_since() { awk -v a="$1" -v b="$(now_ns)" 'BEGIN { printf "%.3f\n", (b - a) / 1e6 }'; }
# p50 and p95 of the figures on stdin.
percentiles() {
    sort -n | awk '{ v[NR] = $1 } END {
        p50 = v[int((NR + 1) / 2)]; i95 = int(NR * 0.95 + 0.999); if (i95 < 1) i95 = 1;
        printf "%.1f %.1f\n", p50, v[i95] }'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
# Times `runs` executions of a command; one millisecond figure a line.
time_runs() {
    local i t0
    for ((i = 0; i < runs; i++)); do
        t0=$(now_ns)
        "$@" >/dev/null 2>&1
        ms_since "$t0"
    done
}
row() { printf "  %-46s %9s %9s %s\n" "$@"; }
json_field() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
pool_waiting() { find "$home/pool" -mindepth 2 -maxdepth 2 ! -name '.*' 2>/dev/null | wc -l; }

"$pyro" env pull debian:12 >/dev/null
PYRO_POOL_SIZE=0 "$pyro" run debian:12 -- true >/dev/null 2>&1 # template, page cache

echo "accelerator: $("$pyro" doctor --json | json_field 'd["accelerator"]["accel"]')   runs: $runs"
echo
echo "one-shot runs                                          p50 ms    p95 ms"
read -r true_p50 true_p95 < <(time_runs true | percentiles)
row "true (bare)" "$true_p50" "$true_p95"
have_runsc=0
if command -v runsc >/dev/null && runsc --network=none --ignore-cgroups do true >/dev/null 2>&1; then
    have_runsc=1
    read -r runsc_p50 runsc_p95 < <(time_runs runsc --network=none --ignore-cgroups do true | percentiles)
    row "runsc do true" "$runsc_p50" "$runsc_p95"
else
    echo "  (runsc is not installed or cannot run here: apt-get install runsc)"
fi
pooled=$(mktemp)
for ((i = 0; i < runs; i++)); do
    PYRO_POOL_SIZE=1 "$pyro" run debian:12 -- true >/dev/null 2>&1 # leaves one waiting
    until [ "$(pool_waiting)" -ge 1 ]; do sleep 0.05; done
    t0=$(now_ns)
    out=$(PYRO_POOL_SIZE=1 "$pyro" run --json debian:12 -- true)
    ms_since "$t0" >> "$pooled"
    [ "$(echo "$out" | json_field 'd["timings"]["start"]')" = pooled ] || echo "  (a run was not pooled)"
done
read -r pool_p50 pool_p95 < <(percentiles < "$pooled")
read -r rest_p50 rest_p95 < <(PYRO_POOL_SIZE=0 time_runs "$pyro" run debian:12 -- true | percentiles)
read -r boot_p50 boot_p95 < <(PYRO_POOL_SIZE=0 PYRO_FAST_START=0 time_runs "$pyro" run debian:12 -- true | percentiles)
row "pyro run debian:12 -- true (pooled)" "$pool_p50" "$pool_p95"
row "  restored from the template (no pool)" "$rest_p50" "$rest_p95"
row "  booted (PYRO_FAST_START=0)" "$boot_p50" "$boot_p95"
if [ $have_runsc = 1 ]; then
    echo "  ratios to runsc (p50): pooled $(ratio "$pool_p50" "$runsc_p50")x  restored $(ratio "$rest_p50" "$runsc_p50")x  booted $(ratio "$boot_p50" "$runsc_p50")x"
fi
# Drain the pool (once its last filler is done): what follows measures
# workspaces alone.
while pgrep -f "pyro __pool-fill" >/dev/null; do sleep 0.2; done
find "$home/pool" -mindepth 2 -maxdepth 2 ! -name '.*' -printf '%f\n' 2>/dev/null \
    | while read -r id; do pkill -9 -f "__supervise $home/vms/$id" || true; done

export PYRO_POOL_SIZE=0
echo
echo "exec round trip of \`true\` in a running workspace       p50 ms    p95 ms"
w=$("$pyro" workspace create debian:12 --on-idle none --id-only 2>/dev/null)
"$pyro" workspace exec "$w" -- true >/dev/null 2>&1
read -r cli_p50 cli_p95 < <(time_runs "$pyro" workspace exec "$w" -- true | percentiles)
read -r argv_p50 argv_p95 < <(time_runs "$pyro" workspace exec "$w" -- cat /dev/null | percentiles)
read -r lib_p50 lib_p95 < <("$exec_loop" "$w" "$((runs * 2))" true | percentiles)
guest=$("$pyro" workspace exec "$w" -- sh -c 'n=50; s=$(date +%s%N); i=0; while [ $i -lt $n ]; do /bin/true; i=$((i+1)); done; e=$(date +%s%N); echo $(( (e - s) / n / 1000 ))' 2>/dev/null)
guest_ms=$(awk -v us="$guest" 'BEGIN { printf "%.1f", us / 1000 }')
row "fork+exec of true on the host (bare)" "$true_p50" "$true_p95"
row "fork+exec of /bin/true inside the guest" "$guest_ms" "-"
row "CLI: workspace exec -- true (shell rule)" "$cli_p50" "$cli_p95"
row "CLI: workspace exec -- cat /dev/null (argv)" "$argv_p50" "$argv_p95"
row "library in-process: exec_workspace(\"true\")" "$lib_p50" "$lib_p95"
echo "  library / guest floor: $(ratio "$lib_p50" "$guest_ms")x   CLI / library: $(ratio "$cli_p50" "$lib_p50")x"

echo
echo "bulk data: 100 MiB of random bytes                      seconds     MB/s"
mkdir "$home/push"
head -c $((100 << 20)) /dev/urandom > "$home/push/blob"
t0=$(now_ns); "$pyro" workspace sync push "$w" "$home/push" >/dev/null; s=$(ms_since "$t0")
row "sync push" "$(awk -v m="$s" 'BEGIN { printf "%.2f", m / 1000 }')" "$(awk -v m="$s" 'BEGIN { printf "%.0f", 104.8576 / (m / 1000) }')"
t0=$(now_ns); "$pyro" workspace export "$w" blob --output "$home/out" >/dev/null; s=$(ms_since "$t0")
row "export" "$(awk -v m="$s" 'BEGIN { printf "%.2f", m / 1000 }')" "$(awk -v m="$s" 'BEGIN { printf "%.0f", 104.8576 / (m / 1000) }')"
t0=$(now_ns); "$pyro" workspace exec "$w" -- cat blob > "$home/streamed"; s=$(ms_since "$t0")
row "exec -- cat (streamed stdout)" "$(awk -v m="$s" 'BEGIN { printf "%.2f", m / 1000 }')" "$(awk -v m="$s" 'BEGIN { printf "%.0f", 104.8576 / (m / 1000) }')"
cmp -s "$home/push/blob" "$home/streamed" || echo "  (the streamed copy differs!)"

echo
echo "workspaces                                              p50 ms    p95 ms"
creates=$(mktemp); pauses=$(mktemp); resumes=$(mktemp)
for ((i = 0; i < runs; i++)); do
    t0=$(now_ns); id=$("$pyro" workspace create debian:12 --id-only 2>/dev/null); ms_since "$t0" >> "$creates"
    "$pyro" workspace delete "$id" >/dev/null
done
for ((i = 0; i < runs; i++)); do
    t0=$(now_ns); "$pyro" workspace pause "$w" >/dev/null; ms_since "$t0" >> "$pauses"
    t0=$(now_ns); "$pyro" workspace resume "$w" >/dev/null 2>&1; ms_since "$t0" >> "$resumes"
done
read -r c50 c95 < <(percentiles < "$creates")
read -r p50 p95 < <(percentiles < "$pauses")
read -r r50 r95 < <(percentiles < "$resumes")
row "create" "$c50" "$c95"
row "pause" "$p50" "$p95"
row "resume" "$r50" "$r95"
for n in 1 4; do
    forks=$(mktemp)
    for ((i = 0; i < 3; i++)); do
        t0=$(now_ns)
        out=$("$pyro" workspace fork "$w" --count "$n" --json 2>/dev/null)
        ms_since "$t0" >> "$forks"
        echo "$out" | json_field '"\n".join(x["workspace_id"] for x in d["workspaces"])' \
            | while read -r id; do "$pyro" workspace delete "$id" >/dev/null; done
    done
    read -r f50 f95 < <(percentiles < "$forks")
    row "fork of $n (3 runs)" "$f50" "$f95"
done
"$pyro" workspace delete "$w" >/dev/null

[ "${BENCH_QUICK:-0}" = 1 ] && exit 0
echo
echo "density: 20 idle workspaces of 512 MiB          per VM RSS MiB   PSS MiB"
ids=()
for ((i = 0; i < 20; i++)); do
    ids+=("$("$pyro" workspace create debian:12 --mem-mib 512 --on-idle none --id-only 2>/dev/null)")
done
sleep 10
density() { "$pyro" doctor --json | json_field "'%d %d %d' % (d['density']['running_vms'], d['density']['qemu_rss_mib'], d['density']['qemu_pss_mib'])"; }
per_vm() { awk -v n="$1" -v r="$2" -v p="$3" 'BEGIN { if (n == 0) print "0 0"; else printf "%.0f %.0f\n", r / n, p / n }'; }
read -r n rss pss < <(density)
read -r r p < <(per_vm "$n" "$rss" "$pss")
row "running ($n VMs)" "$r" "$p"
if [ -w /sys/kernel/mm/ksm/run ]; then
    ksm=/sys/kernel/mm/ksm
    old_run=$(cat $ksm/run) old_scan=$(cat $ksm/pages_to_scan) old_sleep=$(cat $ksm/sleep_millisecs)
    echo 5000 > $ksm/pages_to_scan; echo 20 > $ksm/sleep_millisecs; echo 1 > $ksm/run
    sleep 60
    read -r n rss pss < <(density)
    read -r r p < <(per_vm "$n" "$rss" "$pss")
    row "running, KSM on for 60 s" "$r" "$p"
    [ "$old_run" = 1 ] || echo 2 > $ksm/run # unmerge what this merged
    sleep 2
    echo "$old_scan" > $ksm/pages_to_scan; echo "$old_sleep" > $ksm/sleep_millisecs; echo "$old_run" > $ksm/run
else
    echo "  (KSM cannot be turned on here: needs root and /sys/kernel/mm/ksm)"
fi
for id in "${ids[@]}"; do "$pyro" workspace pause "$id" >/dev/null; done
read -r n rss pss < <(density)
saved=$(du -cm "$home"/workspaces/*/vm/paused/state.bin | tail -1 | cut -f1)
row "paused ($n VMs run; ${saved} MiB of state on disk)" "0" "0"
