"""UI sessions and CSRF tokens (pure: no I/O): what the `steppe_ui` cookie holds and how it is checked.

Every browser gets a session cookie (HttpOnly, SameSite=Strict, Path=/ui) on its first page:

- `a.<nonce>`: anonymous. Enough to read and act when the server has no STEPPE_API_TOKEN, and to
  post the login form when it has one.
- `s.<issued>.<nonce>.<mac>`: signed in. `mac` is an HMAC-SHA256 of `issued.nonce` under a key
  derived from the token, so any process of `steppe api --workers N` accepts it, a changed token
  signs everyone out, and sessions end after SESSION_TTL.

Forms carry the cookie's nonce in a hidden `csrf` field (a double-submit token bound to the
session); a POST whose field is missing or different is refused, and so is one whose Origin (or
Referer) names another site. A page on another site can neither read the cookie nor make the
browser send it (SameSite=Strict), so it cannot produce a matching field.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

COOKIE = "steppe_ui"
SESSION_TTL = 12 * 3600  # seconds a login lasts
NONCE_BYTES = 24
_KEY_LABEL = b"steppe-ui-session\x00"
_NONCE_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")  # token_urlsafe


@dataclass(frozen=True, slots=True)
class Session:
    """A browser session as read from its cookie."""

    nonce: str
    signed_in: bool
    issued: int = 0

    @property
    def csrf(self) -> str:
        """The value every form of this session must post back in its `csrf` field."""
        return self.nonce


def session_key(token: str) -> bytes:
    """The HMAC key of signed sessions, derived from the API token (never the token itself)."""
    return hashlib.sha256(_KEY_LABEL + token.encode()).digest()


def new_nonce() -> str:
    return secrets.token_urlsafe(NONCE_BYTES)


def anonymous(nonce: str | None = None) -> tuple[Session, str]:
    """A fresh anonymous session and its cookie value."""
    nonce = nonce or new_nonce()
    return Session(nonce=nonce, signed_in=False), f"a.{nonce}"


def signed(key: bytes, *, now: float | None = None) -> tuple[Session, str]:
    """A fresh signed-in session (a new nonce: a login never keeps a pre-login token) and its cookie."""
    issued = int(time.time() if now is None else now)
    nonce = new_nonce()
    return Session(nonce=nonce, signed_in=True, issued=issued), f"s.{issued}.{nonce}.{_mac(key, issued, nonce)}"


def read(cookie: str | None, key: bytes | None, *, now: float | None = None) -> Session | None:  # noqa: PLR0911 - one exit per reason to refuse
    """The session a cookie holds, or None when it is absent, malformed, forged or expired.

    With `key` None (no token configured) every well-formed session counts as signed in."""
    if not cookie or len(cookie) > 256:
        return None
    parts = cookie.split(".")
    if parts[0] == "a" and len(parts) == 2 and _plausible(parts[1]):
        return Session(nonce=parts[1], signed_in=key is None)
    if parts[0] != "s" or len(parts) != 4 or not parts[1].isdigit() or not _plausible(parts[2]):
        return None
    issued, nonce, mac = int(parts[1]), parts[2], parts[3]
    if key is None:
        return Session(nonce=nonce, signed_in=True, issued=issued)
    if not hmac.compare_digest(mac, _mac(key, issued, nonce)):
        return None
    current = time.time() if now is None else now
    if not issued - 60 <= current < issued + SESSION_TTL:
        return None
    return Session(nonce=nonce, signed_in=True, issued=issued)


def token_matches(given: str, expected: str) -> bool:
    """Constant time, and the token's length does not leak either (digests of equal length)."""
    return hmac.compare_digest(hashlib.sha256(given.encode()).digest(), hashlib.sha256(expected.encode()).digest())


def csrf_problem(
    session: Session | None, field: str | None, *, origin: str | None, referer: str | None, host: str
) -> str | None:
    """Why a POST must be refused (a message for the user), or None when it may proceed."""
    if origin == "null":
        return "this form was posted from an opaque origin (a sandboxed page or a file); use the Steppe UI itself"
    source = origin or referer
    if source and urlsplit(source).netloc != host:
        return "this form was posted from another site; use the Steppe UI itself"
    if session is None:
        return "your session has expired or its cookie is missing; reload the page and submit again"
    if not field or not hmac.compare_digest(field.encode(), session.csrf.encode()):
        return "the form's security token is missing or stale; reload the page and submit again"
    return None


def safe_next(target: str | None) -> str:
    """Where to go after logging in: a path inside the UI, never another site (no open redirect)."""
    default = "/ui/runs"
    if not target or len(target) > 2000 or "\\" in target or any(ord(c) < 0x20 for c in target):
        return default
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not (parts.path == "/ui" or parts.path.startswith("/ui/")):
        return default
    if parts.path.startswith("/ui/login"):
        return default
    return target


def _mac(key: bytes, issued: int, nonce: str) -> str:
    return hmac.new(key, f"{issued}.{nonce}".encode(), hashlib.sha256).hexdigest()


def _plausible(nonce: str) -> bool:
    return 16 <= len(nonce) <= 64 and all(c in _NONCE_CHARS for c in nonce)
