#!/usr/bin/env bash
# ops/docker/postgres-primary-init.sh - run once by the postgres image's entrypoint
# (/docker-entrypoint-initdb.d/) when the primary's data directory is first created.
# It prepares streaming replication, as ops/lib/postgres.sh does for the dev stack:
# a `replicator` role, a physical replication slot for the replica (so the primary keeps
# the WAL the replica has not received yet), and a pg_hba.conf line that lets the role
# connect for replication with its password. The server restarts after the init
# scripts, which loads the new pg_hba.conf line.
set -euo pipefail

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  --set=password="$REPLICATION_PASSWORD" --set=slot="$REPLICATION_SLOT" <<'SQL'
CREATE ROLE replicator WITH REPLICATION LOGIN PASSWORD :'password';
SELECT pg_create_physical_replication_slot(:'slot');
SQL

printf 'host replication replicator all scram-sha-256\n' >>"$PGDATA/pg_hba.conf"
