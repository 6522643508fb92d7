"""Many hosts (issue 9): workers in separate network namespaces share one run across a private bridge.

Needs root and `ip netns`; elsewhere the test is skipped (a skip is not a pass). The lab is
built and torn down by `MultihostCluster` (orchestrator/dev/multihost.py), the same code as
`make multihost-demo`.
"""

from __future__ import annotations

import subprocess

import pytest

from orchestrator.dev.multihost import MultihostCluster
from orchestrator.dev.multihost_demo import run_wide
from orchestrator.dev.netns import ip_binary, unavailable_reason

pytestmark = [pytest.mark.multihost, pytest.mark.slow]

STEPS = 120  # of 1 s each on 3 hosts x 4 slots: a 10 s run, long enough to cut a host mid-run


def root_links() -> set[str]:
    """Veth and bridge interfaces of the root namespace (where the lab must leave no trace)."""
    names = set()
    for kind in ("veth", "bridge"):
        out = subprocess.run(
            [ip_binary(), "-o", "link", "show", "type", kind], capture_output=True, text=True, check=False
        )
        names |= {line.split(":")[1].strip() for line in out.stdout.splitlines() if ":" in line}
    return names


def namespaces() -> set[str]:
    out = subprocess.run([ip_binary(), "netns", "list"], capture_output=True, text=True, check=False)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


@pytest.fixture
def cluster() -> MultihostCluster:
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"multihost lab unavailable: {reason}")
    return MultihostCluster(hosts=3, concurrency=4)


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.mark.timeout(180)
def test_a_wide_run_spreads_over_hosts_and_survives_a_host_losing_its_network(cluster: MultihostCluster) -> None:
    links_before = root_links()
    # A lab abandoned by a killed run (its owner pid is gone) is removed by the next one.
    abandoned = f"steppe-mh-{dead_pid()}-0a0a0a-core"
    subprocess.run([ip_binary(), "netns", "add", abandoned], check=True)
    with cluster:
        assert abandoned not in namespaces()
        assert root_links() == links_before, "the lab must create no interface in the root namespace"
        report = run_wide(cluster, steps=STEPS, seconds=1.0, cut=True, timeout=90)
        hosts = {h.name: h.netns for h in cluster.lab.hosts.values()}

    print(
        f"\nMULTIHOST applied={dict(sorted(report.applied_per_host.items()))} "
        f"in_flight_at_cut={report.in_flight_at_cut} reclaimed={report.reclaimed} elapsed={report.elapsed:.1f}s"
    )
    assert report.status == "succeeded"
    per_host = report.applied_per_host
    assert sum(per_host.values()) == STEPS
    assert set(per_host) == {"host1", "host2", "host3"}, per_host
    assert all(count > 0 for count in per_host.values()), per_host
    # Effectively once: one applied success per step, even for the steps the cut host had in flight.
    assert len(report.succeeded_events) == STEPS
    assert set(report.succeeded_events.values()) == {1}
    assert report.cut_host == "host3"
    assert report.in_flight_at_cut > 0
    reclaimed = [step for steps in report.reclaimed.values() for step in steps]
    assert reclaimed, "the cut host's in-flight steps must be reclaimed by the surviving hosts"
    assert all(report.succeeded_events[step] == 1 for step in reclaimed)

    # Torn down: no namespace, interface or work directory left behind.
    assert not set(hosts.values()) & namespaces()
    assert root_links() == links_before
    assert not cluster.work_dir.exists()
