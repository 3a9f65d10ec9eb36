#!/usr/bin/env bash
# Install Slurm (Debian's slurmctld, slurmd, client tools) unless it is already there.
# Quick on purpose: --no-install-recommends pulls 8 packages; apt-get update only when needed.
set -euo pipefail

have_slurm() { command -v slurmctld && command -v slurmd && command -v sbatch && command -v sinfo; } >/dev/null 2>&1

if have_slurm; then
    echo "slurm-install: already installed ($(slurmd -V 2>/dev/null))"
    exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
    echo "slurm-install: Slurm is missing and installing it needs root (apt-get install slurmctld slurmd slurm-client)" >&2
    exit 3
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "slurm-install: Slurm is missing and this system has no apt-get; install slurmctld, slurmd and the client tools by hand" >&2
    exit 3
fi
export DEBIAN_FRONTEND=noninteractive
pkgs=(slurmctld slurmd slurm-client)
if ! apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/tmp/tw-slurm-apt.log 2>&1; then
    apt-get update -qq >>/tmp/tw-slurm-apt.log 2>&1 || true
    if ! apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >>/tmp/tw-slurm-apt.log 2>&1; then
        tail -n 20 /tmp/tw-slurm-apt.log >&2
        echo "slurm-install: apt-get install ${pkgs[*]} failed (log: /tmp/tw-slurm-apt.log)" >&2
        exit 3
    fi
fi
have_slurm || { echo "slurm-install: packages installed but slurmctld/slurmd/sinfo are not on PATH" >&2; exit 3; }
echo "slurm-install: installed $(slurmd -V)"
