#!/usr/bin/env bash
# Slurm HealthCheckProgram: vet this node and drain it when the result is critical.
#
# slurmd runs this as root every HealthCheckInterval seconds. Slurm does not act on the
# exit status of a HealthCheckProgram, so this script drains the node itself (as NHC
# does) with the failing checks as the reason, and resumes nothing: resuming is the
# supervisor's decision (`trainwarden` vets a drained node before resuming it).
#
# Settings (environment, e.g. in /etc/default/trainwarden, sourced if present):
#   TRAINWARDEN_BIN          trainwarden executable (default: trainwarden on PATH)
#   TRAINWARDEN_EXPECT_GPUS  GPUs this node must have (default: not checked)
#   TRAINWARDEN_STORAGE      colon-separated filesystems to check (default: /tmp)
#   TRAINWARDEN_VET_TIMEOUT  seconds per check (default: 20)
#   TRAINWARDEN_VET_ARGS     extra arguments to `trainwarden vet`
#   TRAINWARDEN_DRAIN_ON     "critical" (default) or "unknown" (also drain when a check
#                            could not run) or "warning" (drain on any problem)
#   SCONTROL                 scontrol executable (default: scontrol)
set -u
[ -r /etc/default/trainwarden ] && . /etc/default/trainwarden

bin=${TRAINWARDEN_BIN:-trainwarden}
scontrol=${SCONTROL:-scontrol}
node=${SLURMD_NODENAME:-$(hostname -s)}
args=(vet --timeout "${TRAINWARDEN_VET_TIMEOUT:-20}")
[ -n "${TRAINWARDEN_EXPECT_GPUS:-}" ] && args+=(--expect-gpus "$TRAINWARDEN_EXPECT_GPUS")
IFS=: read -r -a paths <<< "${TRAINWARDEN_STORAGE:-}"
for p in "${paths[@]}"; do [ -n "$p" ] && args+=(--storage "$p"); done
# shellcheck disable=SC2206  # word splitting of the extra arguments is intended
[ -n "${TRAINWARDEN_VET_ARGS:-}" ] && args+=(${TRAINWARDEN_VET_ARGS})

out=$("$bin" "${args[@]}" 2>&1)
rc=$?
printf '%s\n' "$out" | logger -t trainwarden-healthcheck 2>/dev/null || true

drain=0
case "${TRAINWARDEN_DRAIN_ON:-critical}:$rc" in
  *:2) drain=1 ;;
  unknown:3|warning:3|warning:1) drain=1 ;;
esac
if [ "$drain" = 1 ]; then
  # The reason: the failing lines, joined, short enough for Slurm's reason field.
  reason=$(printf '%s\n' "$out" | grep -E '^(CRITICAL|UNKNOWN|WARNING) ' | head -3 \
           | tr -s ' ' | tr '\n' ';' | cut -c1-200)
  "$scontrol" update NodeName="$node" State=DRAIN Reason="trainwarden: ${reason:-vet exit $rc}"
fi
exit 0
