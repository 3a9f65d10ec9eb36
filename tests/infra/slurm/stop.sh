#!/usr/bin/env bash
# Stop the test cluster: slurmctld, every slurmd, and any slurmstepd (with its job processes)
# left from this cluster. Safe to run when nothing runs.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=env.sh
source "$here/env.sh"

[[ -d $TW_SLURM_DIR ]] || { echo "slurm-stop: nothing at $TW_SLURM_DIR"; exit 0; }
pf=$(tw_ctld_pidfile)
if tw_pid_alive "$pf" slurmctld; then
    pid=$(<"$pf")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do [[ -d /proc/$pid ]] || break; sleep 0.1; done
    [[ -d /proc/$pid ]] && kill -9 "$pid" 2>/dev/null || true
fi
rm -f "$pf"
# Nodes: stop them the hard way, the same as kill-node.sh; nothing on them must survive.
for f in "$TW_SLURM_DIR"/run/slurmd-*.pid; do
    [[ -e $f ]] || continue
    node=${f##*/slurmd-}; node=${node%.pid}
    tw_kill_node "$node"
    rm -f "$f"
done
for d in "$TW_SLURM_DIR"/spool/*/; do
    [[ -d $d ]] || continue
    tw_kill_node "$(basename "$d")"
done
echo "slurm-stop: stopped the cluster at $TW_SLURM_DIR"
