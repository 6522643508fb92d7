"""The many-hosts scenario (`make multihost-demo`, tests/multihost): a wide run spread over namespace hosts.

    python -m orchestrator.dev.multihost_demo [--hosts 3] [--steps 240] [--seconds 0.5] [--no-cut]

Starts a MultihostCluster, submits `steps` independent `multihost.whoami` steps from host1,
optionally pulls the last host's cable while it has steps in flight, waits for the run and
prints the applied results per host. Needs root (network namespaces); everything is torn down.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from orchestrator.dev.multihost import MultihostCluster
from orchestrator.dev.netns import unavailable_reason
from orchestrator.errors import LauncherError

HANDLER = "multihost.whoami"


def wide_workflow(steps: int, seconds: float) -> str:
    """YAML of `steps` independent `multihost.whoami` steps: all ready at once, spread over the workers."""
    lines = [
        "name: multihost-wide",
        "description: Independent steps that report the host that ran them.",
        "defaults: {queue: default, timeout: 30s, retry: {max_attempts: 3, initial_delay: 250ms}}",
        "steps:",
    ]
    for i in range(steps):
        lines += [f"  - id: s{i:04d}", f"    handler: {HANDLER}", f"    with: {{seconds: {seconds}}}"]
    return "\n".join(lines) + "\n"


def applied_hosts(doc: Mapping[str, Any]) -> dict[str, str]:
    """Step -> the host whose result was applied, from a `steppe status --json` document."""
    return {key: str((step.get("output") or {}).get("host")) for key, step in doc["steps"].items()}


def reclaimed_steps(log_text: str, run_id: str) -> list[str]:
    """Steps of `run_id` that a worker's JSON log says it reclaimed from another worker."""
    steps = []
    for line in log_text.splitlines():
        if '"step_reclaimed"' not in line:
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("event") == "step_reclaimed" and entry.get("run_id") == run_id:
            steps.append(str(entry.get("step")))
    return steps


@dataclass
class WideRunReport:
    """What a wide run showed: where its results came from, and what the cut host left behind."""

    run_id: str
    status: str
    elapsed: float
    applied_host: dict[str, str]  # step -> host whose result was applied
    succeeded_events: Counter[str]  # step -> number of step.succeeded events (1 = applied once)
    cut_host: str | None = None
    in_flight_at_cut: int = 0
    reclaimed: dict[str, list[str]] = field(default_factory=dict)  # surviving host -> reclaimed steps

    @property
    def applied_per_host(self) -> Counter[str]:
        return Counter(self.applied_host.values())


def _cut_when_busy(
    cluster: MultihostCluster, victim: str, waiter: subprocess.Popen[str], *, after: int, timeout: float
) -> int:
    """Pull `victim`'s cable once `steppe workers` shows it with `after` steps done and more in flight.

    Returns how many steps it had in flight at that moment."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if waiter.poll() is not None:
            raise LauncherError(f"the run ended before {victim} could be cut: use more or longer steps")
        mine = [w for w in cluster.workers() if w["host"] == victim]
        if mine and mine[0]["in_flight"] > 0 and mine[0]["processed"] >= after:
            cluster.cut(victim)
            return int(mine[0]["in_flight"])
        time.sleep(0.1)
    raise LauncherError(f"{victim} never had steps in flight within {timeout:.0f}s")


def run_wide(
    cluster: MultihostCluster, *, steps: int, seconds: float, cut: bool, timeout: float = 120
) -> WideRunReport:
    """Submit the wide workflow from the first host, optionally cut the last host, wait for the end."""
    cluster.wait_for_workers()
    workflow = cluster.work_dir / "wide.yaml"
    workflow.write_text(wide_workflow(steps, seconds))
    started = time.monotonic()
    run_id, waiter = cluster.submit_and_wait(workflow)
    victim = cluster.host_names[-1] if cut else None
    # Cut early (a sixth of the victim's fair share done) so that a slow `steppe workers` poll still
    # catches the run in progress.
    after = max(1, steps // (6 * len(cluster.host_names)))
    in_flight = _cut_when_busy(cluster, victim, waiter, after=after, timeout=timeout) if victim else 0
    try:
        waiter.communicate(timeout=timeout)  # also closes its pipes
    except BaseException:
        waiter.kill()
        waiter.communicate()
        raise
    elapsed = time.monotonic() - started
    doc = cluster.status(run_id)
    succeeded = Counter(e["step_key"] for e in cluster.history(run_id) if e["type"] == "step.succeeded")
    reclaimed = {host: reclaimed_steps(cluster.log_text(host), run_id) for host in cluster.host_names if host != victim}
    return WideRunReport(
        run_id=run_id,
        status=doc["status"],
        elapsed=elapsed,
        applied_host=applied_hosts(doc),
        succeeded_events=succeeded,
        cut_host=victim,
        in_flight_at_cut=in_flight,
        reclaimed=reclaimed,
    )


def print_report(cluster: MultihostCluster, report: WideRunReport) -> None:
    lab = cluster.lab
    print(f"lab {lab.label}: bridge in namespace {lab.switch}, nothing in the root namespace")
    for node in lab.hosts.values():
        print(f"  {node.name:<6} {node.address:<11} netns {node.netns}")
    print(f"redis {cluster.core['redis_url']}   postgres {cluster.core['database_url']}")
    total = sum(report.applied_per_host.values())
    print(f"run {report.run_id}: {report.status} in {report.elapsed:.1f}s, {total} steps")
    for host, count in sorted(report.applied_per_host.items()):
        print(f"  {host:<6} {count:>4} steps applied")
    twice = sorted(step for step, n in report.succeeded_events.items() if n > 1)
    print(f"steps with more than one applied success: {len(twice)}")
    if report.cut_host:
        print(f"cut {report.cut_host} with {report.in_flight_at_cut} steps in flight; reclaimed by the others:")
        for host, steps in sorted(report.reclaimed.items()):
            print(f"  {host:<6} {len(steps):>4} reclaimed {' '.join(steps[:8])}{' …' if len(steps) > 8 else ''}")


def demo(*, hosts: int, steps: int, seconds: float, cut: bool) -> int:
    reason = unavailable_reason()
    if reason:
        print(f"multihost demo not run: {reason}", file=sys.stderr)
        return 2
    with MultihostCluster(hosts=hosts) as cluster:
        print("live workers (`steppe workers --json`, run in host1's namespace):")
        for w in sorted(cluster.wait_for_workers(), key=lambda w: str(w["host"])):
            print(f"  {w['host']:<6} {w['id']:<24} pid {w['pid']:<7} queues {','.join(w['queues'])}", flush=True)
        report = run_wide(cluster, steps=steps, seconds=seconds, cut=cut)
        print_report(cluster, report)
    print("lab torn down: processes stopped, namespaces deleted")
    ok = report.status == "succeeded" and max(report.succeeded_events.values(), default=0) == 1
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.dev.multihost_demo", description=__doc__)
    parser.add_argument("--hosts", type=int, default=3, help="Worker hosts (host1 also runs the coordinator)")
    parser.add_argument("--steps", type=int, default=240)
    parser.add_argument("--seconds", type=float, default=0.5, help="Duration of each step")
    parser.add_argument("--no-cut", dest="cut", action="store_false", help="Do not cut the last host's link")
    args = parser.parse_args(argv)
    return demo(hosts=args.hosts, steps=args.steps, seconds=args.seconds, cut=args.cut)


if __name__ == "__main__":
    sys.exit(main())
