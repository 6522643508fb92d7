-- PostgreSQL roles for Steppe: a migration owner and a DML-only application role.
--
--   steppe_migrator  owns the schema; used only by `steppe db upgrade` (the migrations job).
--   steppe_app       coordinators, workers, the CLI and the HTTP API: SELECT/INSERT/UPDATE/DELETE
--                    on Steppe's tables (only SELECT/INSERT on the append-only workflow_events)
--                    and USAGE on their sequences; no DDL, no TRUNCATE.
--
-- Run as a superuser, connected to Steppe's database, BEFORE the first `steppe db upgrade`:
--   createdb steppe
--   psql -v ON_ERROR_STOP=1 -d steppe -f deploy/postgres/roles.sql
--   psql -d steppe -c "ALTER ROLE steppe_migrator PASSWORD '...'" -c "ALTER ROLE steppe_app PASSWORD '...'"
--   STEPPE_DATABASE_URL=postgresql://steppe_migrator:...@db/steppe?sslmode=require steppe db upgrade
--   STEPPE_DATABASE_URL=postgresql://steppe_app:...@db/steppe?sslmode=require steppe coordinator
-- It is idempotent: running it again (e.g. after an upgrade) changes nothing that is already right.
-- Tables that later migrations create are granted automatically (ALTER DEFAULT PRIVILEGES below).
-- Plain SQL only (no psql meta-commands), so any client can apply it.

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'steppe_migrator') THEN
        CREATE ROLE steppe_migrator LOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'steppe_app') THEN
        CREATE ROLE steppe_app LOGIN;
    END IF;
END
$$;

-- Neither role may create roles or databases, or bypass row security.
ALTER ROLE steppe_migrator NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
ALTER ROLE steppe_app NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;

-- The migrator owns the database (and so, from PostgreSQL 15, its public schema).
DO $$
BEGIN
    EXECUTE format('ALTER DATABASE %I OWNER TO steppe_migrator', current_database());
    EXECUTE format('REVOKE ALL ON DATABASE %I FROM PUBLIC', current_database());
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO steppe_migrator, steppe_app', current_database());
END
$$;

-- Only the migrator creates objects; before PostgreSQL 15 everyone could create in public.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE, CREATE ON SCHEMA public TO steppe_migrator;
GRANT USAGE ON SCHEMA public TO steppe_app;

-- Tables and sequences the migrator creates from now on: DML and sequence use for the app.
ALTER DEFAULT PRIVILEGES FOR ROLE steppe_migrator IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO steppe_app;
ALTER DEFAULT PRIVILEGES FOR ROLE steppe_migrator IN SCHEMA public
    GRANT USAGE, SELECT ON SEQUENCES TO steppe_app;

-- Tables that already exist (a database migrated before this file was applied): the tables of
-- orchestrator/store/tables.py. The app may read, never write, Alembic's version table.
DO $$
DECLARE
    tbl text;
BEGIN
    FOREACH tbl IN ARRAY ARRAY[
        'workflow_runs', 'workflow_steps', 'workflow_events', 'workflow_hooks',
        'workflow_definitions', 'dead_letters', 'coordinator_leases', 'run_commands', 'hook_executions',
        'workflow_versions', 'schedules', 'limit_slots', 'run_signals'
    ] LOOP
        IF to_regclass(format('public.%I', tbl)) IS NOT NULL THEN
            EXECUTE format('ALTER TABLE public.%I OWNER TO steppe_migrator', tbl);
            EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON public.%I TO steppe_app', tbl);
        END IF;
    END LOOP;
    -- The event log is append-only (migration 0004 adds a trigger that refuses changes too).
    IF to_regclass('public.workflow_events') IS NOT NULL THEN
        EXECUTE 'REVOKE UPDATE, DELETE, TRUNCATE ON public.workflow_events FROM steppe_app';
    END IF;
    -- Retention (migration 0005): the app calls steppe_prune_finished_runs, the only way events are
    -- deleted; the tokens that let that function's DELETEs through are the owner's alone.
    IF to_regclass('steppe_prune_tokens') IS NOT NULL THEN
        EXECUTE 'REVOKE ALL ON public.steppe_prune_tokens FROM steppe_app';
    END IF;
    IF to_regprocedure('public.steppe_prune_finished_runs(timestamptz, integer)') IS NOT NULL THEN
        EXECUTE 'GRANT EXECUTE ON FUNCTION public.steppe_prune_finished_runs(timestamptz, integer) TO steppe_app';
    END IF;
    IF to_regclass('public.alembic_version') IS NOT NULL THEN
        EXECUTE 'ALTER TABLE public.alembic_version OWNER TO steppe_migrator';
        EXECUTE 'REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON public.alembic_version FROM steppe_app';
        EXECUTE 'GRANT SELECT ON public.alembic_version TO steppe_app';
    END IF;
END
$$;

-- Sequences behind identity/serial columns (hook and dead-letter ids, …).
DO $$
DECLARE
    seq regclass;
BEGIN
    FOR seq IN SELECT c.oid::regclass FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE c.relkind = 'S' AND n.nspname = 'public' LOOP
        EXECUTE format('GRANT USAGE, SELECT ON SEQUENCE %s TO steppe_app', seq);
    END LOOP;
END
$$;
