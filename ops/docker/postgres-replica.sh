#!/usr/bin/env bash
# ops/docker/postgres-replica.sh - the entrypoint of compose's streaming replica, run as
# the postgres user. On the first start (no PG_VERSION in PGDATA) it copies the primary
# with pg_basebackup through the replication slot the primary's init script made, with
# -R, which writes standby.signal and primary_conninfo (host, user, slot). Then, and on
# every later start, it runs PostgreSQL as a hot standby that streams from the primary.
# The password comes from PGPASSWORD, for pg_basebackup and for the WAL receiver alike.
set -euo pipefail

: "${PRIMARY_HOST:?}" "${REPLICATION_SLOT:?}" "${PGPASSWORD:?}" "${PGDATA:?}"

if [[ ! -s $PGDATA/PG_VERSION ]]; then
  until pg_isready -q -h "$PRIMARY_HOST" -p 5432 -U replicator -d postgres; do
    echo "replica: waiting for the primary at $PRIMARY_HOST:5432" >&2
    sleep 1
  done
  echo "replica: copying the primary with pg_basebackup (slot $REPLICATION_SLOT)" >&2
  pg_basebackup -h "$PRIMARY_HOST" -p 5432 -U replicator -D "$PGDATA" \
    -R -X stream -S "$REPLICATION_SLOT" -c fast -w
  chmod 0700 "$PGDATA"
fi

exec postgres -c hot_standby=on -c hot_standby_feedback=on -c wal_receiver_status_interval=1s
