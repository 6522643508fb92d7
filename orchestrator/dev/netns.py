"""Linux network namespaces as stand-in hosts, joined by a private bridge (root only).

Layout of one lab (LABEL = "steppe-mh-<owner pid>-<random>", so that parallel labs never collide):

    LABEL-sw     the switch: bridge `br0` and the switch-side end of every host's veth pair
    LABEL-NAME   one namespace per host: `lo` and `eth0` with ADDRESS/24 on the bridge

Nothing is created in the root namespace: the bridge has no address there and no veth end
lives there, so servers bound to a lab address are unreachable from the host network.
`cut(name)` sets a host's switch port down (the host's cable is pulled); `restore(name)` plugs
it back. `destroy()` kills whatever still runs inside the namespaces and deletes them; a lab
whose owner pid is dead is abandoned and `clean_stale()` removes it.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from orchestrator.dev.process import pid_alive, signal_and_wait
from orchestrator.errors import LauncherError

log = structlog.get_logger(__name__)

PREFIX = "steppe-mh-"
SWITCH = "sw"
BRIDGE = "br0"
HOST_IFACE = "eth0"
PREFIX_LEN = 24
_LABEL_RE = re.compile(rf"^({re.escape(PREFIX)}(\d+)-[0-9a-f]+)-")
_NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,11}$")  # also the switch port's name: <= 15 bytes


def ip_binary() -> str:
    found = shutil.which("ip") or next((p for p in ("/usr/sbin/ip", "/sbin/ip") if Path(p).is_file()), None)
    if found is None:
        raise LauncherError("the `ip` command (iproute2) is missing; install iproute2")
    return found


def unavailable_reason() -> str | None:
    """Why this machine cannot build a lab (not root, no iproute2, no netns support), or None."""
    if os.geteuid() != 0:
        return "network namespaces need root (run as root or with CAP_NET_ADMIN + CAP_SYS_ADMIN)"
    try:
        ip = ip_binary()
    except LauncherError as e:
        return str(e)
    for command, package in (("unshare", "util-linux"), ("hostname", "hostname")):
        if shutil.which(command) is None:
            return f"the `{command}` command ({package}) is missing"
    probe = f"{PREFIX}{os.getpid()}-probe{secrets.token_hex(2)}-x"
    done = subprocess.run([ip, "netns", "add", probe], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return f"`ip netns add` does not work here: {done.stderr.strip()}"
    subprocess.run([ip, "netns", "delete", probe], capture_output=True, check=False)
    return None


@dataclass(frozen=True)
class Host:
    """One namespace on the lab's bridge."""

    name: str  # also the switch port's name and, for processes started with `hostname`, the host name
    netns: str
    address: str


class NetnsLab:
    """A switch namespace with a bridge, and host namespaces plugged into it (see module docstring)."""

    def __init__(self, *, subnet: str = "10.77.0") -> None:
        self.ip = ip_binary()
        self.label = f"{PREFIX}{os.getpid()}-{secrets.token_hex(3)}"
        self.subnet = subnet
        self.hosts: dict[str, Host] = {}
        self._namespaces: list[str] = []

    @property
    def switch(self) -> str:
        return f"{self.label}-{SWITCH}"

    def _run(self, *args: str) -> str:
        done = subprocess.run([self.ip, *args], capture_output=True, text=True, check=False, timeout=30)
        if done.returncode != 0:
            raise LauncherError(f"`ip {' '.join(args)}` failed (exit {done.returncode}): {done.stderr.strip()}")
        return done.stdout

    def _add_namespace(self, name: str) -> None:
        self._run("netns", "add", name)
        self._namespaces.append(name)
        self._run("-n", name, "link", "set", "lo", "up")

    def create(self) -> NetnsLab:
        """Create the switch namespace and its bridge (after removing abandoned labs)."""
        clean_stale(self.ip)
        self._add_namespace(self.switch)
        self._run("-n", self.switch, "link", "add", BRIDGE, "type", "bridge")
        self._run("-n", self.switch, "link", "set", BRIDGE, "up")
        log.info("netns_lab_created", label=self.label)
        return self

    def add_host(self, name: str, host_number: int) -> Host:
        """A namespace `LABEL-name` with address SUBNET.host_number, plugged into the bridge."""
        if not _NAME_RE.match(name) or name == SWITCH or name in self.hosts:
            raise LauncherError(f"host name {name!r} must be new, match {_NAME_RE.pattern} and not be {SWITCH!r}")
        host = Host(name=name, netns=f"{self.label}-{name}", address=f"{self.subnet}.{host_number}")
        self._add_namespace(host.netns)
        self._run(
            "-n", host.netns, "link", "add", HOST_IFACE, "type", "veth", "peer", "name", name, "netns", self.switch
        )
        self._run("-n", self.switch, "link", "set", name, "master", BRIDGE, "up")
        self._run("-n", host.netns, "addr", "add", f"{host.address}/{PREFIX_LEN}", "dev", HOST_IFACE)
        self._run("-n", host.netns, "link", "set", HOST_IFACE, "up")
        self.hosts[name] = host
        return host

    def exec_argv(self, name: str, argv: Sequence[str], *, hostname: str | None = None) -> list[str]:
        """`argv` run inside host `name`; with `hostname`, in its own UTS namespace under that name.

        Both `ip netns exec` and `unshare` exec in place, so the command keeps the pid Popen returns.
        """
        prefix = [self.ip, "netns", "exec", self.hosts[name].netns]
        if hostname is None:
            return [*prefix, *argv]
        set_name = 'hostname "$1" && shift && exec "$@"'
        return [*prefix, "unshare", "--uts", "--", "sh", "-c", set_name, "sh", hostname, *argv]

    def cut(self, name: str) -> None:
        """Pull host `name`'s cable: its switch port goes down and its packets are dropped."""
        self._run("-n", self.switch, "link", "set", name, "down")
        log.info("netns_host_cut", host=name)

    def restore(self, name: str) -> None:
        self._run("-n", self.switch, "link", "set", name, "up")
        log.info("netns_host_restored", host=name)

    def destroy(self) -> None:
        """Kill what still runs inside the lab's namespaces, then delete them (veth pairs go with them)."""
        for netns in reversed(self._namespaces):
            delete_namespace(self.ip, netns)
        self._namespaces.clear()
        self.hosts.clear()
        log.info("netns_lab_destroyed", label=self.label)


def namespace_pids(ip: str, netns: str) -> list[int]:
    done = subprocess.run([ip, "netns", "pids", netns], capture_output=True, text=True, check=False)
    return [int(p) for p in done.stdout.split()] if done.returncode == 0 else []


def delete_namespace(ip: str, netns: str) -> None:
    """SIGKILL the processes left in `netns` (ours: the lab started them) and delete it."""
    for pid in namespace_pids(ip, netns):
        try:
            signal_and_wait(pid, signal.SIGKILL, timeout=10, what=f"process in {netns}")
        except LauncherError as e:
            log.warning("netns_process_survived", netns=netns, pid=pid, error=str(e))
    done = subprocess.run([ip, "netns", "delete", netns], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        log.warning("netns_delete_failed", netns=netns, error=done.stderr.strip())


def stale_labels(names: Sequence[str]) -> set[str]:
    """Labels among namespace `names` whose owner pid is dead (pure: the caller lists them)."""
    labels = set()
    for name in names:
        match = _LABEL_RE.match(name)
        if match and not pid_alive(int(match.group(2))):
            labels.add(match.group(1))
    return labels


def clean_stale(ip: str | None = None) -> list[str]:
    """Delete the namespaces of labs whose owner process is gone; returns their names."""
    ip = ip or ip_binary()
    listed = subprocess.run([ip, "netns", "list"], capture_output=True, text=True, check=False).stdout
    names = [line.split()[0] for line in listed.splitlines() if line.strip()]
    labels = stale_labels(names)
    removed = [n for n in names if any(n.startswith(f"{label}-") for label in labels)]
    for netns in removed:
        delete_namespace(ip, netns)
    if removed:
        log.warning("netns_stale_removed", namespaces=removed)
    return removed
