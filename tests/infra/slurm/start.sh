#!/usr/bin/env bash
# Bring the test cluster up: install Slurm if missing, write slurm.conf, start slurmctld and one
# slurmd per node, wait until every node answers. Idempotent: what already runs is left alone,
# so `start.sh` after `kill-node.sh n3` restarts just n3's slurmd.
# Usage: start.sh [--clean]   (--clean: forget saved job/node state, e.g. old drains)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=env.sh
source "$here/env.sh"
clean=
[[ ${1:-} == --clean ]] && clean=-c

t0=$(date +%s%N)
"$here/install.sh"
before=$(cksum "$SLURM_CONF" 2>/dev/null || true)
"$here/configure.sh" >/dev/null
after=$(cksum "$SLURM_CONF")
if [[ -n $before && $before != "$after" ]] && tw_pid_alive "$(tw_ctld_pidfile)" slurmctld; then
    echo "slurm-start: slurm.conf changed; restarting the cluster"
    "$here/stop.sh"
fi

wait_until() {  # seconds, description, command...
    local limit=$1 what=$2; shift 2
    local end=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= end)); then
            echo "slurm-start: $what not reached after ${limit} s (logs: $TW_SLURM_DIR/log)" >&2
            return 1
        fi
        sleep 0.3
    done
}

if tw_pid_alive "$(tw_ctld_pidfile)" slurmctld; then
    echo "slurm-start: slurmctld already running (pid $(<"$(tw_ctld_pidfile)"))"
else
    rm -f "$(tw_ctld_pidfile)"
    # shellcheck disable=SC2086
    slurmctld -f "$SLURM_CONF" $clean -i
    wait_until 30 "slurmctld answering" scontrol ping
    echo "slurm-start: slurmctld started (pid $(<"$(tw_ctld_pidfile)"))"
fi

started=()
for node in $(tw_slurm_nodes); do
    if tw_pid_alive "$(tw_slurmd_pidfile "$node")" slurmd; then continue; fi
    mkdir -p "$TW_SLURM_DIR/spool/$node"
    slurmd -f "$SLURM_CONF" -N "$node"
    started+=("$node")
done
((${#started[@]})) && echo "slurm-start: slurmd started for ${started[*]}"

nodes_answer() {  # every node registered and responding ('*' = not responding)
    local out
    out=$(sinfo -h -N -o '%N %t') || return 1
    [[ $(wc -l <<<"$out") -ge $TW_SLURM_NODES ]] || return 1
    ! grep -Eq '(\*|unk|unk\*)$' <<<"$out"
}
wait_until 60 "all $TW_SLURM_NODES nodes responding" nodes_answer
ms=$((($(date +%s%N) - t0) / 1000000))
printf 'slurm-start: cluster up in %d.%03d s; SLURM_CONF=%s\n' $((ms / 1000)) $((ms % 1000)) "$SLURM_CONF"
sinfo -N -o '%N %t %E' | sed 's/^/  /' | head -n 20
