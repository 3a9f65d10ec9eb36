#!/usr/bin/env bash
# Simulate a node dying: SIGKILL its slurmd, its slurmstepd processes and the job processes under
# them. slurmctld notices as on a real cluster (NOT_RESPONDING, then DOWN after SlurmdTimeout).
# Bring it back with start.sh (restarts missing slurmds).  Usage: kill-node.sh n3 [n5 ...]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=env.sh
source "$here/env.sh"
(($#)) || { echo "usage: kill-node.sh NODE..." >&2; exit 2; }
for node in "$@"; do
    [[ $node =~ ^n[0-9]+$ ]] || { echo "kill-node: not a node of this cluster: $node" >&2; exit 2; }
    tw_kill_node "$node"
    echo "kill-node: $node killed"
done
