"""The secrets a worker exposes to `${{ secrets.NAME }}`: only those it was told to.

Two sources, both opt-in (nothing else of the worker's environment is reachable):

- `STEPPE_SECRETS=API_TOKEN,DB_PASSWORD`: names read from the worker's environment. Names
  starting with `STEPPE_` are refused at start: they are the worker's own settings (Redis
  URL, credentials), never a handler's.
- `STEPPE_SECRETS_DIR=/run/secrets`: one file per secret, named after it (Docker and
  Kubernetes secrets). A file is read when a step needs it, so a rotated secret is picked up
  without a restart; one trailing newline is dropped (`echo value > file`). Files whose names
  are not secret names (`..data`, `db-password`) are not reachable.

A step that references a secret the worker does not expose fails without retries, with a
message naming the secret and what to set (never a value).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.errors import ConfigError, NonRetryableStepError

if TYPE_CHECKING:
    from orchestrator.settings import Settings

SECRET_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # as `orchestrator.templates` parses references
RESERVED_PREFIX = "STEPPE_"
MAX_SECRET_FILE_BYTES = 1 << 20


class SecretNotExposedError(NonRetryableStepError):
    """A step references a secret this worker does not expose (or cannot read)."""


@dataclass(frozen=True)
class SecretStore:
    """Looks up the secrets a worker exposes; `lookup` is the only way a handler gets one."""

    names: frozenset[str] = frozenset()
    directory: Path | None = None
    env: Mapping[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings, env: Mapping[str, str] | None = None) -> SecretStore:
        """The store `STEPPE_SECRETS` / `STEPPE_SECRETS_DIR` describe; ConfigError for a bad setting."""
        for name in settings.secrets:
            if not SECRET_NAME.fullmatch(name):
                raise ConfigError(
                    f"STEPPE_SECRETS lists {name!r}, which is not a secret name: use letters, digits and _ "
                    "(not starting with a digit), separated by commas"
                )
            if name.startswith(RESERVED_PREFIX):
                raise ConfigError(
                    f"STEPPE_SECRETS lists {name}: variables starting with {RESERVED_PREFIX} are Steppe's own "
                    "settings and are never exposed to handlers; pass the value under another name"
                )
        directory = settings.secrets_dir
        if directory is not None and not directory.is_dir():
            raise ConfigError(
                f"STEPPE_SECRETS_DIR={directory} is not a directory: create it (one file per secret) or unset it"
            )
        return cls(frozenset(settings.secrets), directory, os.environ if env is None else env)

    def exposed(self) -> list[str]:
        """The names a step may reference on this worker (values are never listed)."""
        return sorted({*self.names, *self._files()})

    def values(self) -> dict[str, str]:
        """Every value readable now (to redact them before any step asks); unreadable ones skipped."""
        found: dict[str, str] = {}
        for name in self.exposed():
            try:
                found[name] = self._get(name)
            except SecretNotExposedError:
                continue
        return found

    def lookup(self, names: Iterable[str], *, worker: str = "this worker") -> dict[str, str]:
        """The value of each name; SecretNotExposedError naming every missing one and what to set."""
        found: dict[str, str] = {}
        problems: list[str] = []
        for name in sorted(set(names)):
            try:
                found[name] = self._get(name)
            except SecretNotExposedError as e:
                problems.append(str(e))
        if problems:
            raise SecretNotExposedError(f"on worker {worker}: " + "; ".join(problems))
        return found

    def _get(self, name: str) -> str:
        if name in self.names and name in self.env:
            return self.env[name]
        path = self._file(name)
        if path is not None:
            return _read(path, name)
        if name in self.names:
            raise SecretNotExposedError(
                f"secret {name!r} is listed in STEPPE_SECRETS but the environment variable {name} is not set; "
                "set it for the worker"
            )
        raise SecretNotExposedError(self._not_exposed(name))

    def _not_exposed(self, name: str) -> str:
        head = f"secret {name!r} is not exposed to handlers (a worker exposes only the secrets it is told to)"
        if name.startswith(RESERVED_PREFIX):
            return (
                f"{head}: environment variables starting with {RESERVED_PREFIX} are Steppe's own settings and are "
                "never exposed; give the value another name in STEPPE_SECRETS or STEPPE_SECRETS_DIR"
            )
        where = f"a file {self.directory / name}" if self.directory else f"a file {name} in STEPPE_SECRETS_DIR"
        return (
            f"{head}: add {name} to STEPPE_SECRETS (comma-separated names read from the environment) or create {where}"
        )

    def _file(self, name: str) -> Path | None:
        if self.directory is None or not SECRET_NAME.fullmatch(name):
            return None
        path = self.directory / name
        return path if path.is_file() else None

    def _files(self) -> list[str]:
        if self.directory is None:
            return []
        try:
            entries = list(self.directory.iterdir())
        except OSError:
            return []
        return [p.name for p in entries if SECRET_NAME.fullmatch(p.name) and p.is_file()]


def _read(path: Path, name: str) -> str:
    try:
        size = path.stat().st_size
        if size > MAX_SECRET_FILE_BYTES:
            raise SecretNotExposedError(
                f"secret {name!r}: {path} is {size} bytes, over the {MAX_SECRET_FILE_BYTES}-byte limit for a secret"
            )
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise SecretNotExposedError(
            f"secret {name!r}: {path} is not UTF-8 text; store binary secrets base64-encoded"
        ) from None
    except OSError as e:
        raise SecretNotExposedError(
            f"secret {name!r}: cannot read {path} ({e.strerror}); make it readable by the worker's user"
        ) from None
    if text.endswith("\r\n"):
        return text[:-2]
    return text[:-1] if text.endswith("\n") else text
