"""Generated passwords of the embedded servers, kept mode 0600 beside their data directories.

`$STEPPE_HOME/redis.credentials.json` and `$STEPPE_HOME/postgres.credentials.json` map each
user of that server to its password. They belong to whoever runs `steppe dev up` (root
included): the servers themselves run as an unprivileged user and receive hashes only (Redis)
or hold their own SCRAM verifiers (PostgreSQL). A file that other users could read is narrowed
back to 0600 with a warning, since anyone who read it may already have the passwords.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
from collections.abc import Iterable
from pathlib import Path

import structlog

from orchestrator.errors import LauncherError

log = structlog.get_logger(__name__)

FILE_MODE = 0o600


def credentials_path(data_dir: Path) -> Path:
    """`<parent>/<name>.credentials.json` for the data directory `<parent>/<name>`."""
    return data_dir.parent / f"{data_dir.name}.credentials.json"


def new_password() -> str:
    """32 URL-safe characters (192 bits): usable in a URL without quoting."""
    return secrets.token_urlsafe(24)


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path` atomically, never readable by anyone but the owner."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)  # O_CREAT's mode does not apply to a leftover file
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _narrow(path: Path) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        path.chmod(FILE_MODE)
        log.warning("credentials_file_narrowed", path=str(path), mode=oct(mode), reason="readable_by_others")


def load_or_create(path: Path, users: Iterable[str]) -> tuple[dict[str, str], bool]:
    """The passwords in `path`, completed with new ones for missing `users`; whether any was new."""
    found: dict[str, str] = {}
    if path.exists():
        _narrow(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise LauncherError(
                f"{path} is unreadable ({e}); delete it together with the server's data directory "
                "(its passwords are lost) and run `steppe dev up` again"
            ) from e
        if isinstance(data, dict):
            found = {str(k): str(v) for k, v in data.items()}
    missing = [u for u in users if u not in found]
    if missing:
        found.update({u: new_password() for u in missing})
        write_private(path, json.dumps(found, indent=2) + "\n")
        log.info("credentials_created", path=str(path), users=missing)
    return found, bool(missing)
