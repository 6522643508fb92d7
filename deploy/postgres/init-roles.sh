#!/bin/sh
# First start of the compose PostgreSQL (docker-entrypoint-initdb.d): create Steppe's roles
# (deploy/postgres/roles.sql) and give them the passwords from the environment.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" --file /steppe/roles.sql
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v migrator="$STEPPE_DB_MIGRATOR_PASSWORD" -v app="$STEPPE_DB_APP_PASSWORD" <<'SQL'
ALTER ROLE steppe_migrator PASSWORD :'migrator';
ALTER ROLE steppe_app PASSWORD :'app';
SQL
