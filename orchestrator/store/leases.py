"""Partition leases: which coordinator may write which runs.

Runs are spread over `Settings.coordinator.partitions` partitions (hash of the run id).
A coordinator holds a partition through a row in `coordinator_leases` that it renews
every few seconds; a lease that is not renewed within its TTL may be taken over. Every
batch write re-checks the lease inside its transaction, and run rows carry an
optimistic `version`, so a coordinator that lost a lease can never apply a result.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from orchestrator.store.runs import RunStore


class LeaseManager:
    """Acquire, renew and release partition leases for one coordinator."""

    def __init__(self, store: RunStore, *, owner: str, partitions: int, ttl: float) -> None:
        self.store = store
        self.owner = owner
        self.partitions = partitions
        self.ttl = ttl

    def ensure_rows(self) -> None:
        with self.store.connection() as conn, conn.transaction():
            conn.execute(
                "INSERT INTO coordinator_leases (partition) SELECT generate_series(0, %s - 1) ON CONFLICT DO NOTHING",
                (self.partitions,),
            )

    def live_owners(self) -> int:
        with self.store.connection() as conn:
            row = conn.execute(
                "SELECT count(DISTINCT owner) AS n FROM coordinator_leases"
                " WHERE owner IS NOT NULL AND expires_at > now() AND partition < %s",
                (self.partitions,),
            ).fetchone()
        return int(row["n"]) if row else 0

    def rebalance(self, held: Sequence[int], *, peers_hint: int = 1) -> list[int]:
        """Renew what we hold, take free or expired partitions up to our fair share.

        Returns the partitions held afterwards. Surplus partitions are released so that
        a newly started coordinator gets its share within one lease TTL.
        """
        peers = max(peers_hint, self.live_owners() + (0 if held else 1), 1)
        share = math.ceil(self.partitions / peers)
        with self.store.connection() as conn, conn.transaction():
            renewed = conn.execute(
                "UPDATE coordinator_leases SET expires_at = now() + make_interval(secs => %s)"
                " WHERE owner = %s AND partition < %s RETURNING partition",
                (self.ttl, self.owner, self.partitions),
            ).fetchall()
            mine = sorted(r["partition"] for r in renewed)
            if len(mine) > share:
                surplus = mine[share:]
                conn.execute(
                    "UPDATE coordinator_leases SET owner = NULL, expires_at = NULL"
                    " WHERE owner = %s AND partition = ANY(%s)",
                    (self.owner, surplus),
                )
                mine = mine[:share]
            elif len(mine) < share:
                taken = conn.execute(
                    """
                    UPDATE coordinator_leases SET owner = %s, token = token + 1,
                        expires_at = now() + make_interval(secs => %s)
                    WHERE partition IN (
                        SELECT partition FROM coordinator_leases
                        WHERE partition < %s AND (owner IS NULL OR expires_at < now())
                        ORDER BY partition LIMIT %s FOR UPDATE SKIP LOCKED)
                    RETURNING partition
                    """,
                    (self.owner, self.ttl, self.partitions, share - len(mine)),
                ).fetchall()
                mine = sorted(mine + [r["partition"] for r in taken])
        return mine

    def release(self) -> None:
        with self.store.connection() as conn, conn.transaction():
            conn.execute(
                "UPDATE coordinator_leases SET owner = NULL, expires_at = NULL WHERE owner = %s",
                (self.owner,),
            )


def partition_of(run_id: str, partitions: int) -> int:
    """Stable partition of a run id (FNV-1a, independent of PYTHONHASHSEED)."""
    h = 0xCBF29CE484222325
    for byte in run_id.encode():
        h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h % partitions
