"""A private Redis Cluster on loopback (masters + replicas) for tests and benchmarks.

Every node is a `RedisServer` (same binary choice, AOF, pid handling) started with
`cluster-enabled yes` in its own directory. The cluster is assembled from Python with plain
commands, so any redis-server >= 6.2 works (no `redis-cli --cluster`): CLUSTER MEET, ADDSLOTS
(16384 slots split evenly over the masters), REPLICATE, then a wait until every node reports
`cluster_state:ok` and every replica's link is up. A short `cluster-node-timeout` keeps
failover (a replica promoted after its master dies) to a couple of seconds.

    cluster = LocalRedisCluster.start(tmp / "cluster", masters=3, replicas=1)
    cluster.url                  # redis+cluster://127.0.0.1:P1,127.0.0.1:P2,...
    cluster.master_for(key)      # the node serving the key's slot now
    cluster.kill(node); cluster.wait_ok()
    cluster.stop()               # SIGTERM then SIGKILL, by pid, every node it started
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis
import structlog
from redis.cluster import key_slot

from orchestrator.dev.process import LOOPBACK, port_is_free, wait_until
from orchestrator.dev.redis_server import RedisBinary, RedisServer, find_redis_server
from orchestrator.errors import LauncherError

log = structlog.get_logger(__name__)

SLOTS = 16384
CLUSTER_BUS_OFFSET = 10000  # Redis < 7 has no `cluster-port`: the bus listens on port + 10000


class ClusterNodeServer(RedisServer):
    """A redis-server started with cluster mode on; its cluster config lives in its data dir.

    Not `secured`: nodes, replicas and `redis-cli --cluster` would all need the password (see
    the security page); this lab cluster is for tests and benchmarks on a single-user machine.
    """

    secured = False
    node_timeout_ms = 1500

    def _argv(self) -> list[str]:
        return [
            *super()._argv(),
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(self.node_timeout_ms),
            # A replica may take over however long its link was down: tests kill masters on purpose.
            "--cluster-replica-validity-factor", "0",
        ]  # fmt: skip

    def client(self) -> redis.Redis:
        return redis.Redis(host=LOOPBACK, port=self.port, socket_timeout=5, socket_connect_timeout=2)

    def info(self, section: str) -> dict[str, str]:
        with self.client() as c:
            text = c.execute_command("CLUSTER", section.upper())
        raw = text.decode() if isinstance(text, bytes) else str(text)
        return dict(line.split(":", 1) for line in raw.splitlines() if ":" in line)

    def node_id(self) -> str:
        with self.client() as c:
            return str(c.execute_command("CLUSTER", "MYID").decode())

    def role(self) -> str:
        with self.client() as c:
            return str(c.info("replication").get("role", "?"))


def cluster_port_pair() -> int:
    """A free port whose cluster-bus twin (port + 10000) is free too; both below 65536."""
    for _ in range(200):
        port = random.randint(20000, 45000)
        if port_is_free(port) and port_is_free(port + CLUSTER_BUS_OFFSET):
            return port
    raise LauncherError("no free port pair (port, port + 10000) on loopback for a Redis Cluster node")


def _start_node(data_dir: Path, binary: RedisBinary, *, timeout: float) -> ClusterNodeServer:
    # Another process may take the port pair between the check and the bind: try a few pairs.
    for attempt in range(3):
        try:
            node = ClusterNodeServer.start(data_dir, binary=binary, port=cluster_port_pair(), timeout=timeout)
        except LauncherError:
            if attempt == 2:
                raise
            continue
        assert isinstance(node, ClusterNodeServer)
        return node
    raise AssertionError("unreachable")


def slot_ranges(masters: int) -> list[tuple[int, int]]:
    """16384 slots split into `masters` contiguous, inclusive ranges."""
    bounds = [round(i * SLOTS / masters) for i in range(masters + 1)]
    return [(bounds[i], bounds[i + 1] - 1) for i in range(masters)]


@dataclass
class LocalRedisCluster:
    """A Redis Cluster whose every process this object started (and stops, by pid)."""

    nodes: list[ClusterNodeServer]
    masters: int
    replicas: int
    killed: list[ClusterNodeServer] = field(default_factory=list)
    replicas_before: dict[int, list[ClusterNodeServer]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """The URL Steppe takes (`STEPPE_REDIS_URL`): every node is a seed."""
        return "redis+cluster://" + ",".join(f"{LOOPBACK}:{n.port}" for n in self.nodes)

    @classmethod
    def start(
        cls,
        base_dir: str | Path,
        *,
        masters: int = 3,
        replicas: int = 1,
        binary: str | Path | RedisBinary | None = None,
        timeout: float = 30.0,
    ) -> LocalRedisCluster:
        """Start `masters * (1 + replicas)` nodes, assemble them, wait for `cluster_state:ok`."""
        if masters < 1:
            raise LauncherError("a Redis Cluster needs at least one master")
        found = binary if isinstance(binary, RedisBinary) else find_redis_server(binary)
        base = Path(base_dir)
        nodes: list[ClusterNodeServer] = []
        cluster = cls(nodes=nodes, masters=masters, replicas=replicas)
        try:
            for i in range(masters * (1 + replicas)):
                nodes.append(_start_node(base / f"node{i}", found, timeout=timeout))
            cluster._assemble(timeout=timeout)
        except BaseException:
            cluster.stop()
            raise
        log.info("redis_cluster_started", url=cluster.url, masters=masters, replicas=replicas)
        return cluster

    def _assemble(self, *, timeout: float) -> None:
        primary = self.nodes[: self.masters]
        for node, (low, high) in zip(primary, slot_ranges(self.masters), strict=True):
            with node.client() as c:
                c.execute_command("CLUSTER", "ADDSLOTS", *range(low, high + 1))
        with self.nodes[0].client() as c:
            for node in self.nodes[1:]:
                c.execute_command("CLUSTER", "MEET", LOOPBACK, node.port)
        ids = [n.node_id() for n in primary]

        def everyone_known() -> bool:
            return all(int(n.info("info").get("cluster_known_nodes", 0)) == len(self.nodes) for n in self.nodes)

        if not wait_until(everyone_known, timeout=timeout, interval=0.1):
            raise LauncherError("Redis Cluster nodes did not all meet; see the node logs")
        for i, node in enumerate(self.nodes[self.masters :]):
            with node.client() as c:
                c.execute_command("CLUSTER", "REPLICATE", ids[i % self.masters])
        self.wait_ok(timeout=timeout)

    def live_nodes(self) -> list[ClusterNodeServer]:
        return [n for n in self.nodes if n not in self.killed and n.is_running()]

    def wait_ok(self, *, timeout: float = 30.0) -> None:
        """Wait until every live node reports `cluster_state:ok`, each slot has a reachable master,
        and every replica's replication link is up."""

        def healthy() -> bool:
            try:
                live = self.live_nodes()
                if any(n.info("info").get("cluster_state") != "ok" for n in live):
                    return False
                masters = [n for n in live if n.role() == "master"]
                if len(masters) < self.masters:
                    return False
                for n in live:
                    if n.role() == "slave":
                        with n.client() as c:
                            if c.info("replication").get("master_link_status") != "up":
                                return False
                return True
            except (redis.RedisError, OSError):
                return False

        if not wait_until(healthy, timeout=timeout, interval=0.1):
            raise LauncherError(f"Redis Cluster not healthy within {timeout:.0f}s; see the node logs")

    def master_for(self, key: str) -> ClusterNodeServer:
        """The live master serving `key`'s slot now (from CLUSTER NODES of a live node)."""
        slot = key_slot(key.encode())
        live = {n.port: n for n in self.live_nodes()}
        for node in live.values():
            with node.client() as c:
                raw = c.execute_command("CLUSTER", "NODES")
            text = raw.decode() if isinstance(raw, bytes) else str(raw)
            for line in text.splitlines():
                parts = line.split()
                if len(parts) < 9 or "master" not in parts[2] or "fail" in parts[2]:
                    continue
                port = int(parts[1].split("@")[0].rsplit(":", 1)[1])
                for span in parts[8:]:
                    low, _, high = span.partition("-")
                    if low.isdigit() and int(low) <= slot <= int(high or low) and port in live:
                        return live[port]
        raise LauncherError(f"no live master serves slot {slot}")

    def replicas_of(self, master: ClusterNodeServer) -> list[ClusterNodeServer]:
        master_id = master.node_id()
        out = []
        for node in self.live_nodes():
            with node.client() as c:
                info = c.info("replication")
            if info.get("role") == "slave" and int(info.get("master_port", 0)) == master.port:
                out.append(node)
        return [n for n in out if n.node_id() != master_id]

    def kill(self, node: ClusterNodeServer) -> None:
        """SIGKILL one node (by pid); a replica takes over its slots after the node timeout."""
        self.replicas_before[node.port] = self.replicas_of(node) if node.role() == "master" else []
        node.kill()
        self.killed.append(node)

    def wait_failover(self, old_master: ClusterNodeServer, *, timeout: float = 30.0) -> ClusterNodeServer:
        """After `old_master` died: wait until one of its former replicas is a master and healthy."""
        started = time.monotonic()
        candidates = self.replicas_before.get(old_master.port) or []
        if not candidates:
            raise LauncherError(f"the node on port {old_master.port} had no replica to take over")

        def promoted() -> bool:
            try:
                return self._cluster_ok_without(old_master) and any(n.role() == "master" for n in candidates)
            except (redis.RedisError, OSError):
                return False

        if not wait_until(promoted, timeout=timeout, interval=0.1):
            raise LauncherError(f"no replica took over from port {old_master.port} within {timeout:.0f}s")
        log.info("redis_cluster_failed_over", old_master=old_master.port, seconds=round(time.monotonic() - started, 2))
        return next(n for n in candidates if n.role() == "master")

    def _cluster_ok_without(self, dead: ClusterNodeServer) -> bool:
        masters = 0
        for n in self.live_nodes():
            if n is dead:
                continue
            if n.info("info").get("cluster_state") != "ok":
                return False
            masters += n.role() == "master"
        return masters >= self.masters

    def stop(self) -> None:
        """Stop every node this object started: SIGTERM, then SIGKILL whatever is left."""
        for node in self.nodes:
            try:
                node.stop(timeout=10)
            except LauncherError:
                node.kill()
