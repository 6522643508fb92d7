"""Generated passwords of the embedded servers: 0600 files, stable across starts, hashes for Redis."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from orchestrator.cli.dev import _hide_password
from orchestrator.dev.credentials import credentials_path, load_or_create
from orchestrator.dev.redis_server import ADMIN_USER, APP_DENIED, APP_USER, acl_lines, resp


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_passwords_are_created_once_in_a_0600_file(tmp_path: Path) -> None:
    path = credentials_path(tmp_path / "redis")
    assert path == tmp_path / "redis.credentials.json"
    first, created = load_or_create(path, ("a", "b"))
    assert created
    assert mode(path) == 0o600
    assert len(set(first.values())) == 2
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{32}", pw) for pw in first.values())  # no URL quoting needed
    again, created = load_or_create(path, ("a", "b"))
    assert (again, created) == (first, False)
    more, created = load_or_create(path, ("a", "b", "c"))
    assert created
    assert {k: more[k] for k in ("a", "b")} == first
    assert json.loads(path.read_text()) == more


def test_a_file_others_could_read_is_narrowed(tmp_path: Path) -> None:
    path = tmp_path / "x.credentials.json"
    path.write_text(json.dumps({"a": "secret"}))
    path.chmod(0o644)
    found, created = load_or_create(path, ("a",))
    assert (found, created) == ({"a": "secret"}, False)
    assert mode(path) == 0o600


def test_redis_users_carry_hashes_and_deny_the_dangerous_commands() -> None:
    passwords = {APP_USER: "app-pw", ADMIN_USER: "admin-pw"}
    app, admin = acl_lines(passwords)
    assert "app-pw" not in app
    assert "admin-pw" not in admin
    assert "#" + hashlib.sha256(b"app-pw").hexdigest() in app
    assert app.startswith("user default on ")
    rules = app.split()
    assert rules.index("+@all") < min(rules.index(f"-{c}") for c in APP_DENIED)  # denials win
    assert {"-config", "-module", "-debug", "-acl", "-shutdown", "-replicaof", "-save"} <= set(rules)
    assert rules[-1] == "+config|get"
    assert admin.split()[:3] == ["user", ADMIN_USER, "on"]


def test_resp_encoding() -> None:
    assert resp("AUTH", "default", "pw") == b"*3\r\n$4\r\nAUTH\r\n$7\r\ndefault\r\n$2\r\npw\r\n"


def test_terminal_output_hides_passwords() -> None:
    assert _hide_password("redis://default:s3cr-t_@127.0.0.1:6379/0") == "redis://default:***@127.0.0.1:6379/0"
    assert (
        _hide_password("postgresql://steppe_app:pw@127.0.0.1:5/steppe")
        == "postgresql://steppe_app:***@127.0.0.1:5/steppe"
    )
    assert _hide_password("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    assert _hide_password(None) == "-"
