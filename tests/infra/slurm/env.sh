# Shared settings of the test Slurm cluster; sourced by the other scripts in this folder.
# Everything lives under one state dir so the cluster can be wiped by deleting it.
# shellcheck shell=bash
TW_SLURM_DIR=${TW_SLURM_DIR:-/tmp/tw-slurm}
TW_SLURM_NODES=${TW_SLURM_NODES:-8}             # nodes n1..nN, one slurmd each
TW_SLURM_CPUS=${TW_SLURM_CPUS:-2}               # CPUs per simulated node (config_overrides)
TW_SLURM_MEM_MB=${TW_SLURM_MEM_MB:-2048}        # RealMemory per simulated node
# slurmctld port; slurmd of nK listens on base+K. Each state dir gets its own ports, so two
# clusters (say the unit suite's and the e2e suite's) can run side by side.
if [[ -z ${TW_SLURM_PORT_BASE:-} ]]; then
    if [[ $TW_SLURM_DIR == /tmp/tw-slurm ]]; then
        TW_SLURM_PORT_BASE=16817
    else
        TW_SLURM_PORT_BASE=$((17000 + ($(cksum <<<"$TW_SLURM_DIR" | cut -d' ' -f1) % 200) * 50))
    fi
fi
# The first job id. Give each cluster on one machine its own range (the e2e harness starts at
# 10001): the example job (examples/slurm/train.sbatch) derives its rendezvous port from the
# job id, so two clusters counting from 1 hand out the same ports.
TW_SLURM_FIRST_JOB_ID=${TW_SLURM_FIRST_JOB_ID:-1}
TW_SLURM_SLURMD_TIMEOUT=${TW_SLURM_SLURMD_TIMEOUT:-30}
TW_SLURM_RETURN_TO_SERVICE=${TW_SLURM_RETURN_TO_SERVICE:-1}
TW_SLURM_CLUSTER=${TW_SLURM_CLUSTER:-twtest}
SLURM_CONF=$TW_SLURM_DIR/slurm.conf
export TW_SLURM_DIR SLURM_CONF

tw_slurm_nodes() {  # prints n1 .. nN, one a line
    local i
    for ((i = 1; i <= TW_SLURM_NODES; i++)); do echo "n$i"; done
}

tw_pid_alive() {  # pidfile, expected comm -> 0 when that process runs
    local pidfile=$1 comm=$2 pid
    [[ -s $pidfile ]] || return 1
    pid=$(<"$pidfile")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ -r /proc/$pid/comm && $(</proc/"$pid"/comm) == "$comm" ]] || return 1
    # a zombie (never reaped where PID 1 is not an init) is not running
    [[ $(awk '{print $3}' /proc/"$pid"/stat 2>/dev/null) != Z ]]
}

tw_ctld_pidfile() { echo "$TW_SLURM_DIR/run/slurmctld.pid"; }
tw_slurmd_pidfile() { echo "$TW_SLURM_DIR/run/slurmd-$1.pid"; }

tw_stepd_pids() {  # node -> pids of the slurmstepd processes serving that node's steps
    # slurmstepd listens on a unix socket in the node's spool dir; /proc/net/unix maps the
    # socket inode to that path, so a stepd is found even after its slurmd is gone.
    local node=$1 spool="$TW_SLURM_DIR/spool/$1" inodes pid fd
    inodes=$(awk -v p="$spool/" 'index($8, p) == 1 {print $7}' /proc/net/unix | sort -u)
    [[ -n $inodes ]] || return 0
    for pid in $(pgrep -x slurmstepd || true); do
        for fd in /proc/"$pid"/fd/*; do
            local link
            link=$(readlink "$fd" 2>/dev/null) || continue
            if [[ $link =~ ^socket:\[([0-9]+)\]$ ]] && grep -qx "${BASH_REMATCH[1]}" <<<"$inodes"; then
                echo "$pid"; break
            fi
        done
    done
}

tw_tree() {  # pid... -> those pids and all their descendants
    ps -e -o pid=,ppid= | awk -v roots="$*" '
        BEGIN { n = split(roots, r, " "); for (i = 1; i <= n; i++) keep[r[i]] = 1 }
        { parent[$1] = $2; pids[++m] = $1 }
        END {
            changed = 1
            while (changed) {
                changed = 0
                for (i = 1; i <= m; i++) { p = pids[i]; if (!(p in keep) && (parent[p] in keep)) { keep[p] = 1; changed = 1 } }
            }
            for (p in keep) print p
        }'
}

tw_kill_node() {  # node -> SIGKILL its slurmd, its slurmstepds and the job processes under them
    local node=$1 pids pf sweep
    pf=$(tw_slurmd_pidfile "$node")
    # Two sweeps: a slurmstepd that slurmd was forking at the first one has its socket by then.
    for sweep in 1 2; do
        pids=()
        if [[ $sweep == 1 ]] && tw_pid_alive "$pf" slurmd; then pids+=("$(<"$pf")"); fi
        mapfile -t -O "${#pids[@]}" pids < <(tw_stepd_pids "$node")
        if ((${#pids[@]})); then
            # shellcheck disable=SC2046
            kill -9 $(tw_tree "${pids[@]}") 2>/dev/null || true
        fi
        [[ $sweep == 1 ]] && sleep 0.3
    done
    rm -f "$pf"
}
