"""UI sessions and CSRF checks (orchestrator/api/ui/session.py): what a cookie proves, what a POST needs."""

from __future__ import annotations

import pytest

from orchestrator.api.ui import session as s

KEY = s.session_key("the-token")
HOST = "127.0.0.1:8080"


def test_a_signed_session_is_read_back_and_its_token_is_not_in_the_cookie() -> None:
    made, cookie = s.signed(KEY, now=1_000_000)
    assert "the-token" not in cookie
    read = s.read(cookie, KEY, now=1_000_100)
    assert read == made
    assert read is not None
    assert read.signed_in


@pytest.mark.parametrize(
    "tamper",
    [
        lambda c: c[:-1] + ("0" if c[-1] != "0" else "1"),  # the MAC
        lambda c: c.replace("s.1000000.", "s.1000001."),  # the issue time
        lambda c: "s.1000000." + "A" * 32 + "." + c.rsplit(".", 1)[1],  # the nonce
    ],
)
def test_a_tampered_cookie_is_no_session(tamper: object) -> None:
    _, cookie = s.signed(KEY, now=1_000_000)
    assert callable(tamper)
    assert s.read(tamper(cookie), KEY, now=1_000_100) is None


def test_sessions_expire_and_a_new_token_signs_everyone_out() -> None:
    _, cookie = s.signed(KEY, now=1_000_000)
    assert s.read(cookie, KEY, now=1_000_000 + s.SESSION_TTL) is None
    assert s.read(cookie, KEY, now=1_000_000 - 3600) is None  # issued in the future
    assert s.read(cookie, s.session_key("another-token"), now=1_000_100) is None


def test_anonymous_sessions_sign_in_only_when_there_is_no_token() -> None:
    _, cookie = s.anonymous()
    with_token = s.read(cookie, KEY)
    assert with_token is not None
    assert not with_token.signed_in
    without = s.read(cookie, None)
    assert without is not None
    assert without.signed_in


@pytest.mark.parametrize("cookie", [None, "", "a.", "a.short", "x.abc", "s.1.2", "a." + "é" * 20, "a." + "x" * 300])
def test_malformed_cookies_are_no_session(cookie: str | None) -> None:
    assert s.read(cookie, KEY) is None


def test_a_post_needs_the_sessions_token_from_this_site() -> None:
    session, _ = s.anonymous()
    ok = {"origin": f"http://{HOST}", "referer": None, "host": HOST}
    assert s.csrf_problem(session, session.csrf, **ok) is None
    assert s.csrf_problem(session, session.csrf, origin=None, referer=f"http://{HOST}/ui/runs", host=HOST) is None
    assert s.csrf_problem(session, session.csrf, origin=None, referer=None, host=HOST) is None
    assert "missing or stale" in str(s.csrf_problem(session, None, **ok))
    assert "missing or stale" in str(s.csrf_problem(session, session.csrf + "x", **ok))
    assert "session has expired" in str(s.csrf_problem(None, session.csrf, **ok))
    assert "another site" in str(
        s.csrf_problem(session, session.csrf, origin="http://evil.example", referer=None, host=HOST)
    )
    assert "another site" in str(
        s.csrf_problem(session, session.csrf, origin=None, referer="http://evil.example/x", host=HOST)
    )
    assert "opaque origin" in str(s.csrf_problem(session, session.csrf, origin="null", referer=None, host=HOST))


def test_token_comparison() -> None:
    assert s.token_matches("abc", "abc")
    assert not s.token_matches("abd", "abc")
    assert not s.token_matches("", "abc")


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/ui/runs/r-1?x=1", "/ui/runs/r-1?x=1"),
        ("/ui", "/ui"),
        (None, "/ui/runs"),
        ("https://evil.example/ui/runs", "/ui/runs"),
        ("//evil.example/ui/runs", "/ui/runs"),
        ("/\\evil.example", "/ui/runs"),
        ("/v1/runs", "/ui/runs"),
        ("/uix", "/ui/runs"),
        ("/ui/login?next=/ui", "/ui/runs"),
        ("/ui/runs\r\nSet-Cookie: x", "/ui/runs"),
    ],
)
def test_after_login_only_pages_of_the_ui_are_targets(target: str | None, expected: str) -> None:
    assert s.safe_next(target) == expected
