#!/usr/bin/env bash
# Make sure the services the test suite talks to answer: PostgreSQL (127.0.0.1:5432,
# database "test") and Mosquitto (127.0.0.1:1883). Starts each one that does not.
set -euo pipefail

wait_for() {  # name, command...
    local name=$1; shift
    for _ in $(seq 1 60); do
        if "$@" >/dev/null 2>&1; then echo "ensure-services: $name answers"; return 0; fi
        sleep 0.5
    done
    echo "ensure-services: $name does not answer after 30 s" >&2
    return 1
}

pg_up() { pg_isready -q -h 127.0.0.1 -p 5432; }
mqtt_up() { timeout 2 bash -c 'exec 3<>/dev/tcp/127.0.0.1/1883'; }

if ! pg_up; then
    echo "ensure-services: starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
fi
wait_for PostgreSQL pg_up
if ! psql -h 127.0.0.1 -U postgres -d test -Atqc 'select 1' >/dev/null 2>&1; then
    echo "ensure-services: creating database test"
    psql -h 127.0.0.1 -U postgres -d postgres -qc 'create database test'
fi

if ! mqtt_up; then
    echo "ensure-services: starting Mosquitto"
    mkdir -p /run/mosquitto /var/lib/mosquitto /var/log/mosquitto
    chown mosquitto: /run/mosquitto /var/lib/mosquitto /var/log/mosquitto 2>/dev/null || true
    mosquitto -d -c /etc/mosquitto/mosquitto.conf
fi
wait_for Mosquitto mqtt_up
