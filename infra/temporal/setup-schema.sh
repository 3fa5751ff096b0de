#!/bin/sh
# Create Temporal's two databases on PostgreSQL and bring their schemas to this release (docker-compose's
# temporal-schema service runs it with temporalio/admin-tools; the server image does no schema work).
# Safe to run on every start: an existing database is kept and update-schema applies only what is missing.
set -eu
tool() { temporal-sql-tool --plugin postgres12 --ep "$POSTGRES_SEEDS" -p "${DB_PORT:-5432}" -u "$POSTGRES_USER" --pw "$POSTGRES_PWD" "$@"; }
schema=/etc/temporal/schema/postgresql/v12
for db in temporal:temporal temporal_visibility:visibility; do
  name=${db%%:*}; dir=${db#*:}
  tool --db "$name" create-database 2>/dev/null || echo "database $name exists"
  tool --db "$name" setup-schema -v 0.0
  tool --db "$name" update-schema -d "$schema/$dir/versioned"
done
