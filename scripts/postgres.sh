#!/usr/bin/env bash
# Start Debian's PostgreSQL (no systemd here) and make the role and database the
# cluster tests use. Safe to run again.
set -euo pipefail
ver=$(ls /etc/postgresql | sort -V | tail -n1)
if ! pg_lsclusters -h | awk -v v="$ver" '$1==v && $2=="main" {print $4}' | grep -q online; then
  pg_ctlcluster "$ver" main start
fi
for _ in $(seq 50); do pg_isready -q -h 127.0.0.1 && break; sleep 0.2; done
psql_do() { su postgres -c "psql -qtA -c \"$1\""; }
[ "$(psql_do "SELECT 1 FROM pg_roles WHERE rolname='vpshost'")" = 1 ] ||
  psql_do "CREATE ROLE vpshost LOGIN PASSWORD 'vpshost'"
for db in vpshost_test vpshost_cluster; do
  [ "$(psql_do "SELECT 1 FROM pg_database WHERE datname='$db'")" = 1 ] ||
    psql_do "CREATE DATABASE $db OWNER vpshost"
done
echo "PostgreSQL $ver ready: postgresql+psycopg://vpshost:vpshost@127.0.0.1/vpshost_test"
