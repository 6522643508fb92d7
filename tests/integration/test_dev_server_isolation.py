"""The embedded servers trust nobody for being local: passwords, no dangerous commands, no root."""

from __future__ import annotations

import os
from pathlib import Path

import psycopg
import pytest
import redis
from psycopg import errors

from orchestrator.dev import PostgresServer, RedisServer
from orchestrator.dev.process import POSTGRES_OS_USER, as_server_user, process_cmdline, run_command

pytestmark = pytest.mark.integration

# What a local attacker holding the app's Redis password would try (CONFIG SET dir + SAVE writes
# a file as the server's user; MODULE LOAD runs code; REPLICAOF pulls data from elsewhere).
DENIED_TO_APP = [
    ("CONFIG", "SET", "dir", "/tmp"),
    ("CONFIG", "REWRITE"),
    ("SAVE",),
    ("BGSAVE",),
    ("MODULE", "LOAD", "/tmp/evil.so"),
    ("DEBUG", "SLEEP", "0"),
    ("ACL", "SETUSER", "intruder", "on", ">pw", "+@all", "~*"),
    ("REPLICAOF", "127.0.0.1", "1"),
    ("SLAVEOF", "127.0.0.1", "1"),
    ("SHUTDOWN", "NOSAVE"),
    ("MIGRATE", "127.0.0.1", "1", "k", "0", "1000"),
    ("RESTORE", "k", "0", "x"),
    ("MONITOR",),
]


def uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid in /proc/{pid}/status")


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_redis_refuses_clients_without_the_password(redis_server: RedisServer) -> None:
    with redis.Redis(host="127.0.0.1", port=redis_server.port) as anonymous, pytest.raises(redis.AuthenticationError):
        anonymous.ping()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(redis_server.url.replace("@", "x@")).ping()
    with redis.Redis.from_url(redis_server.url) as app:
        assert app.ping()
        assert app.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}  # start-up check


@pytest.mark.parametrize("command", DENIED_TO_APP, ids=lambda c: " ".join(c[:2]))
def test_redis_app_user_cannot_reconfigure_or_take_over_the_server(
    redis_server: RedisServer, command: tuple[str, ...]
) -> None:
    # Redis 7 refuses MODULE to everyone unless enable-module-command says otherwise; the ACL first.
    refused = "no permissions|MODULE command not allowed"
    with redis.Redis.from_url(redis_server.url) as app, pytest.raises(redis.ResponseError, match=refused):
        app.execute_command(*command)
    with redis.Redis.from_url(redis_server.admin_url) as admin:
        assert admin.config_get("dir")["dir"] == str(redis_server.data_dir)  # nothing moved
        assert admin.ping()


def test_redis_secrets_never_leave_their_0600_files(redis_server: RedisServer) -> None:
    passwords = redis_server.passwords()
    assert mode(redis_server.credentials_file) == 0o600
    conf = redis_server.data_dir / "steppe-redis.conf"
    assert mode(conf) == 0o600
    text = conf.read_text()
    assert not any(pw in text for pw in passwords.values()), "the server's config holds hashes only"
    assert not any(pw in process_cmdline(redis_server.pid) for pw in passwords.values())


@pytest.mark.skipif(os.geteuid() != 0, reason="started by a normal user, the servers run as that user")
def test_servers_started_by_root_run_as_the_unprivileged_user(
    redis_server: RedisServer, postgres_server: PostgresServer
) -> None:
    import pwd

    unprivileged = pwd.getpwnam(POSTGRES_OS_USER).pw_uid
    assert uid_of(redis_server.pid) == unprivileged
    assert redis_server.data_dir.stat().st_uid == unprivileged
    assert mode(redis_server.data_dir) == 0o700
    assert uid_of(postgres_server.pid) == unprivileged


def test_postgres_requires_a_password_for_every_role(postgres_server: PostgresServer) -> None:
    for role in ("steppe", "steppe_migrator", "steppe_app"):
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(f"postgresql://{role}@127.0.0.1:{postgres_server.port}/postgres", connect_timeout=5)
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(f"postgresql://{role}:wrong@127.0.0.1:{postgres_server.port}/postgres", connect_timeout=5)
    assert mode(postgres_server.data_dir.parent / "postgres.credentials.json") == 0o600


def test_postgres_app_role_is_dml_only(postgres_server: PostgresServer, database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        user, superuser = conn.execute(
            "SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user"
        ).fetchone()  # type: ignore[misc]
        assert (user, superuser) == ("steppe_app", False)
        assert conn.execute("SELECT count(*) FROM workflow_runs").fetchone() is not None  # DML works
        for attack in (
            "COPY (SELECT 1) TO PROGRAM 'id'",  # a shell as the server's OS user
            "COPY workflow_runs FROM '/etc/passwd'",
            "CREATE TABLE intruder (v text)",
            "DROP TABLE workflow_runs",
            "ALTER TABLE workflow_runs DISABLE TRIGGER ALL",
            "CREATE ROLE intruder SUPERUSER",
            "ALTER ROLE steppe_app SUPERUSER",
            "TRUNCATE workflow_runs CASCADE",
        ):
            with pytest.raises(errors.InsufficientPrivilege):
                conn.execute(attack)
    database = database_url.rsplit("/", 1)[1]
    with psycopg.connect(postgres_server.owner_url(database)) as conn:  # migrations: owner, not superuser
        assert conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone() == (False,)
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("COPY (SELECT 1) TO PROGRAM 'id'")


def test_dev_up_secures_servers_started_before_passwords() -> None:
    """A STEPPE_HOME from an older Steppe: Redis without a password, PostgreSQL with trust."""
    from orchestrator.dev import DevServers
    from orchestrator.settings import Settings
    from tests.conftest import private_dir, redis_binary_for_tests

    home = private_dir("steppe-legacy-")

    class OpenRedis(RedisServer):
        secured = False

    binary = redis_binary_for_tests()
    old_redis = OpenRedis.start(home / "redis", binary=binary)
    old_postgres = PostgresServer.start(home / "postgres", settings={"fsync": "off"})
    old_postgres.stop("fast")
    # As clusters initialised before: trust for everyone, no credentials file, started by pg_ctl.
    (home / "postgres" / "pg_hba.conf").write_text("local all all trust\nhost all all 127.0.0.1/32 trust\n")
    (home / "postgres.credentials.json").unlink()
    pg_ctl = [str(old_postgres.bindir / "pg_ctl"), "-D", str(old_postgres.data_dir), "-l", str(old_postgres.log_file)]
    run_command(as_server_user([*pg_ctl, "-w", "start"]), what="pg_ctl start")
    old_pid = PostgresServer.running_in(old_postgres.data_dir).pid  # type: ignore[union-attr]
    psycopg.connect(f"postgresql://steppe@127.0.0.1:{old_postgres.port}/steppe").close()  # trusted
    servers = DevServers(settings=Settings(home=home, redis={"server_path": binary}))
    try:
        servers.up()
        state = servers.read_state()
        anonymous = redis.Redis(host="127.0.0.1", port=state["redis"]["port"])
        with anonymous, pytest.raises(redis.AuthenticationError):
            anonymous.ping()
        with redis.Redis.from_url(state["redis"]["url"]) as app:
            assert app.ping()
        port = state["postgres"]["port"]
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(f"postgresql://steppe@127.0.0.1:{port}/steppe", connect_timeout=5)
        with psycopg.connect(state["postgres"]["url"]) as conn:
            assert conn.execute("SELECT current_user").fetchone() == ("steppe_app",)
        assert state["postgres"]["pid"] == old_pid  # secured in place, not restarted
    finally:
        servers.down()
        old_redis.kill()
