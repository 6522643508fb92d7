"""Process plumbing for the embedded servers: free ports, pid checks, signals, unprivileged users."""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import structlog

from orchestrator.errors import LauncherError

log = structlog.get_logger(__name__)

LOOPBACK = "127.0.0.1"
# PostgreSQL refuses to run as root, and Redis should not: when we are root both run as this user.
POSTGRES_OS_USER = "postgres"


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        port: int = s.getsockname()[1]
        return port


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((LOOPBACK, port))
        except OSError:
            return False
        return True


def launch_on_free_port(
    launch: Callable[[int], None], *, port: int | None, log_file: Path, busy_marker: str, what: str
) -> int:
    """Call `launch(port)` on `port`, or on a free one; another process may take a "free" port
    before the server binds it, so a busy port (`busy_marker` in the log) is retried twice."""
    attempts = 1 if port else 3
    for attempt in range(1, attempts + 1):
        chosen = port or free_port()
        try:
            launch(chosen)
        except LauncherError:
            if attempt == attempts or busy_marker not in log_tail(log_file, 10):
                raise
            log.info("port_taken", server=what, port=chosen, attempt=attempt)
        else:
            return chosen
    raise AssertionError("unreachable")


def pid_alive(pid: int | None) -> bool:
    """Whether `pid` is a live process; zombies (exited, not yet reaped) count as dead."""
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return True  # no procfs: trust kill(0)
    return fields[0] not in ("Z", "X")


def process_cmdline(pid: int) -> str:
    """The command line of `pid` joined by spaces, or "" when it cannot be read."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def wait_until(predicate: Callable[[], bool], *, timeout: float, interval: float = 0.05) -> bool:
    """Poll `predicate` until it is true or `timeout` seconds pass; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def reap(pid: int) -> None:
    """Collect the exit status of `pid` if it is our child, so that it does not stay a zombie."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def signal_and_wait(pid: int, sig: signal.Signals, *, timeout: float, what: str) -> None:
    """Send `sig` to `pid` and wait until it has exited; LauncherError if it outlives `timeout`."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return

    def gone() -> bool:
        reap(pid)
        return not pid_alive(pid)

    if not wait_until(gone, timeout=timeout):
        raise LauncherError(
            f"{what} (pid {pid}) is still running {timeout:.0f}s after {sig.name}; "
            f"stop it with `kill -9 {pid}` and run the command again"
        )


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def running_as_root() -> bool:
    return os.geteuid() == 0


def postgres_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(POSTGRES_OS_USER)
    except KeyError:
        raise LauncherError(
            "the embedded servers never run as root and there is no `postgres` OS user to run them as: "
            "create one (`useradd --system postgres`) or run `steppe dev up` as a normal user"
        ) from None


def as_server_user(argv: Sequence[str]) -> list[str]:
    """`argv` run as the unprivileged `postgres` user when we are root (PostgreSQL and Redis), unchanged otherwise."""
    if not running_as_root():
        return list(argv)
    postgres_user()
    return ["runuser", "-u", POSTGRES_OS_USER, "--", *argv]


def hand_over(path: Path) -> None:
    """Give `path` (a directory tree we created) to the server user when we are root."""
    if not running_as_root():
        return
    user = postgres_user()
    for root, dirs, files in os.walk(path):
        for name in [root, *(os.path.join(root, d) for d in dirs), *(os.path.join(root, f) for f in files)]:
            os.chown(name, user.pw_uid, user.pw_gid, follow_symlinks=False)


def ensure_traversable(path: Path) -> None:
    """Let the server user reach `path`: add search permission (o+x, not read) to closed parents.

    Only needed when we are root and the server runs as `postgres`; temporary directories
    such as pytest's are created with mode 700.
    """
    if not running_as_root():
        return
    for parent in reversed(path.resolve().parents):
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            os.chmod(parent, mode | stat.S_IXOTH)
            log.warning("directory_made_traversable", path=str(parent), reason="postgres_runs_unprivileged")


def run_command(
    argv: Sequence[str],
    *,
    what: str,
    env: Mapping[str, str] | None = None,
    timeout: float = 120.0,
    hint: str = "",
) -> str:
    """Run a short-lived command; LauncherError with its output when it fails."""
    try:
        done = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            env=dict(env) if env is not None else None,
            timeout=timeout,
            check=False,
            cwd="/",  # the server user may not be allowed into our working directory
        )
    except FileNotFoundError as e:
        raise LauncherError(f"{what} failed: {e.filename} not found. {hint}".strip()) from e
    except subprocess.TimeoutExpired as e:
        raise LauncherError(f"{what} did not finish within {timeout:.0f}s. {hint}".strip()) from e
    if done.returncode != 0:
        output = (done.stderr or done.stdout).strip()
        raise LauncherError(f"{what} failed (exit {done.returncode}): {output} {hint}".strip())
    return done.stdout
