#!/usr/bin/env bash
# Slurm Prolog (or a file in a Prolog directory): vet the node before a job starts on it.
#
# A prolog that exits non-zero makes Slurm drain the node and requeue the job, so this
# fails only on a critical result; warnings are logged and the job goes ahead. Keep it
# fast: the default timeout is short and the fabric window is small.
# Settings: as trainwarden-healthcheck.sh (TRAINWARDEN_BIN, TRAINWARDEN_EXPECT_GPUS,
# TRAINWARDEN_STORAGE, TRAINWARDEN_VET_ARGS); TRAINWARDEN_PROLOG_TIMEOUT (default 10).
set -u
[ -r /etc/default/trainwarden ] && . /etc/default/trainwarden

bin=${TRAINWARDEN_BIN:-trainwarden}
args=(vet --timeout "${TRAINWARDEN_PROLOG_TIMEOUT:-10}" --window 0.2)
[ -n "${TRAINWARDEN_EXPECT_GPUS:-}" ] && args+=(--expect-gpus "$TRAINWARDEN_EXPECT_GPUS")
IFS=: read -r -a paths <<< "${TRAINWARDEN_STORAGE:-}"
for p in "${paths[@]}"; do [ -n "$p" ] && args+=(--storage "$p"); done
# shellcheck disable=SC2206
[ -n "${TRAINWARDEN_VET_ARGS:-}" ] && args+=(${TRAINWARDEN_VET_ARGS})

out=$("$bin" "${args[@]}" 2>&1)
rc=$?
printf '%s\n' "$out" | logger -t trainwarden-prolog 2>/dev/null || true
if [ "$rc" = 2 ]; then
  printf '%s\n' "$out" >&2
  exit 1
fi
exit 0
