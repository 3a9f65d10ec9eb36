#!/usr/bin/env bash
# Say what of the test cluster runs. Exit 0 when slurmctld and every slurmd run, 1 otherwise.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=env.sh
source "$here/env.sh"
ok=0
if tw_pid_alive "$(tw_ctld_pidfile)" slurmctld; then
    echo "slurmctld: running (pid $(<"$(tw_ctld_pidfile)"))"
else
    echo "slurmctld: not running"; ok=1
fi
for node in $(tw_slurm_nodes); do
    if tw_pid_alive "$(tw_slurmd_pidfile "$node")" slurmd; then
        echo "slurmd $node: running (pid $(<"$(tw_slurmd_pidfile "$node")"))"
    else
        echo "slurmd $node: not running"; ok=1
    fi
done
echo "SLURM_CONF=$SLURM_CONF"
if ((ok == 0)) || tw_pid_alive "$(tw_ctld_pidfile)" slurmctld; then
    timeout 10 sinfo -N -o '%N %t %E' 2>&1 | sed 's/^/  /'
fi
exit $ok
