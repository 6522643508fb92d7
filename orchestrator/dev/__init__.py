"""Lab gear, apart from the runtime (which never imports it): the embedded development servers
(Redis + PostgreSQL on loopback) for `steppe dev` and the tests, a local cluster of coordinator and
worker subprocesses (`cluster.py`, used by `steppe run` and `steppe bench`), the benchmarks
(`benchmark.py`), a private Redis Cluster (`redis_cluster.py`) and the network-namespace hosts of
the multi-host demo (`netns.py`, `multihost.py`).

RedisServer.start(data_dir, binary=None, port=None, appendonly=True) -> RedisServer
    .url (app user: no CONFIG SET, DEBUG, MODULE, …)  .admin_url (every command)
PostgresServer.start(data_dir, port=None, settings=None) -> PostgresServer
    .url / .app_url(db) (steppe_app, DML only)  .owner_url(db) (migrations)  .url_for(db) (superuser)

Both require passwords, generated into `<data_dir>.credentials.json` (mode 0600); started by
root, both run as the unprivileged `postgres` OS user.
DevServers(settings=...).up() / .down() / .status() -> list[ServerReport]
"""

from orchestrator.dev.launcher import DevServers, ServerReport
from orchestrator.dev.postgres_server import PostgresServer, find_postgres_bindir
from orchestrator.dev.redis_server import RedisBinary, RedisServer, find_redis_server

__all__ = [
    "DevServers",
    "PostgresServer",
    "RedisBinary",
    "RedisServer",
    "ServerReport",
    "find_postgres_bindir",
    "find_redis_server",
]
