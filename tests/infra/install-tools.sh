#!/usr/bin/env bash
# Install the command-line tools the test suite checks the shipped files with, unless they
# are there: promtool (Debian's prometheus package) runs `promtool check`/`test rules` on
# deploy/prometheus. Without root or apt-get, say so and go on: those tests then skip.
set -euo pipefail

need=()
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
if [[ ${#need[@]} -eq 0 ]]; then
    echo "install-tools: promtool $(promtool --version 2>&1 | head -n1 | awk '{print $3}') is there"
    exit 0
fi
if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
    echo "install-tools: ${need[*]} missing and cannot be installed here (needs root and apt-get); the tests that use them skip" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
log=/tmp/tw-tools-apt.log
# The package's own service is never started: there is no systemd here, and the suite
# only runs promtool.
if ! apt-get install -y -qq --no-install-recommends "${need[@]}" >"$log" 2>&1; then
    apt-get update -qq >>"$log" 2>&1 || true
    if ! apt-get install -y -qq --no-install-recommends "${need[@]}" >>"$log" 2>&1; then
        tail -n 20 "$log" >&2
        echo "install-tools: apt-get install ${need[*]} failed (log: $log)" >&2
        exit 1
    fi
fi
echo "install-tools: installed ${need[*]}"
