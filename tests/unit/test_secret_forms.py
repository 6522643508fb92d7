"""The redactor matches each form a handler is likely to produce of a secret value (workers.redaction)."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable
from urllib.parse import quote, quote_plus, urlencode

import orjson
import pytest

from workers.redaction import MIN_FORM, REDACTED, Redactor, secret_forms

# A multi-line value with both quotes, a backslash, a tab and non-ASCII characters: every escaper differs.
MULTI = "first-line-Zq81x 'single' \"double\"\n\tsecond\\line-é€-7Hk2\r\nthird-line-0c4T9w"
TOKEN = "tok-9f8e7d6c5b4a3210"

FORMS: dict[str, Callable[[str], str]] = {
    "value": lambda s: s,
    "repr": repr,
    "repr-in-a-list": lambda s: repr([s]),
    "repr-of-a-dict-value": lambda s: repr({"k": s}),
    "f-string !r": lambda s: f"got {s!r}",
    "ascii": ascii,
    "json ensure_ascii": json.dumps,
    "json utf-8": lambda s: orjson.dumps(s).decode(),
    "json of the repr (a JSON log line quoting a repr)": lambda s: json.dumps(repr(s)),
    "unicode_escape": lambda s: s.encode("unicode_escape").decode(),
    "repr of the utf-8 bytes": lambda s: repr(s.encode()),
    "base64": lambda s: base64.b64encode(s.encode()).decode(),
    "base64 unpadded": lambda s: base64.b64encode(s.encode()).decode().rstrip("="),
    "base64 urlsafe": lambda s: base64.urlsafe_b64encode(s.encode()).decode(),
    "base64 urlsafe unpadded": lambda s: base64.urlsafe_b64encode(s.encode()).decode().rstrip("="),
    "base64 inside basic auth (offset 1)": lambda s: base64.b64encode(f"u:{s}".encode()).decode(),
    "base64 inside basic auth (offset 2)": lambda s: base64.b64encode(f"us:{s}".encode()).decode(),
    "base64 inside basic auth (offset 0)": lambda s: base64.b64encode(f"usr:{s}".encode()).decode(),
    "urlsafe base64 inside a longer value": lambda s: base64.urlsafe_b64encode(f"id=7;{s};x".encode()).decode(),
    "url quote": quote,
    "url quote safe=''": lambda s: quote(s, safe=""),
    "url quote_plus": quote_plus,
    "urlencode (query string)": lambda s: urlencode({"token": s, "n": 1}),
    "hex": lambda s: s.encode().hex(),
    "HEX": lambda s: s.encode().hex().upper(),
}


@pytest.mark.parametrize("secret", [MULTI, TOKEN], ids=["multi-line", "token"])
@pytest.mark.parametrize("form", list(FORMS), ids=list(FORMS))
def test_each_form_of_a_secret_is_redacted(form: str, secret: str) -> None:
    r = Redactor()
    r.add({"S": secret})
    rendered = FORMS[form](secret)
    assert rendered != REDACTED
    text = f"before {rendered} after"
    redacted = r(text)
    assert REDACTED in redacted, f"{form}: {rendered!r} not matched"
    if form.startswith("base64 inside") or form.startswith("urlsafe base64 inside"):
        # Only the part made of the secret's own bits is replaced; what is left cannot be decoded to it.
        assert not any(len(part) >= MIN_FORM and part in secret for part in _decoded_parts(redacted))
    else:
        assert rendered not in redacted
    assert r.redact_value({"k": [text]}) == {"k": [redacted]}


def _decoded_parts(text: str) -> list[str]:
    parts = []
    for chunk in text.replace(REDACTED, " ").split():
        for decode in (base64.b64decode, base64.urlsafe_b64decode):
            try:
                parts.append(decode(chunk + "=" * (-len(chunk) % 4)).decode("utf-8", "replace"))
            except ValueError:
                continue
    return parts


@pytest.mark.parametrize("line", list(MULTI.splitlines()), ids=["line1", "line2", "line3"])
def test_each_line_of_a_multi_line_secret_is_redacted_alone(line: str) -> None:
    r = Redactor()
    r.add({"KEY": MULTI})
    assert line.strip() not in r(f"error near: {line.strip()} (line 2)")
    assert repr(line)[1:-1] not in r(f"error near {line!r}")


def test_short_lines_and_short_encodings_are_not_redacted() -> None:
    r = Redactor()
    r.add({"PEM": "-----BEGIN-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\nEND\n", "PIN": "abc"})
    assert r("the END of it") == "the END of it"  # a 3-character line of a longer value is a fragment
    assert r("abc") == REDACTED  # a whole value of 3 characters is still redacted
    assert r("YWJj 616263") == "YWJj 616263"  # its encodings (4 and 6 characters) would hit random text
    assert r("MIIEvQIBADANBgkqhkiG9w0BAQEFAASC") == REDACTED
    assert r("ab") == "ab"
    assert Redactor()("nothing to hide") == "nothing to hide"
    assert secret_forms("ab") == set()


def test_an_embedded_base64_form_loses_its_edge_characters_too() -> None:
    r = Redactor()
    r.add({"TOKEN": TOKEN})
    for prefix in ("u:", "us:", "usr:"):
        encoded = base64.b64encode(f"{prefix}{TOKEN}".encode()).decode()
        pure = 8 * len(prefix) // 6  # characters made only of the prefix's bits
        assert r(f"Basic {encoded}") == f"Basic {encoded[:pure]}{REDACTED}", prefix


def test_redact_counting_names_the_secrets_found_never_values() -> None:
    r = Redactor()
    r.add({"API_TOKEN": TOKEN, "DB_PASSWORD": MULTI})
    value, found = r.redact_counting({"echo": [TOKEN, base64.b64encode(TOKEN.encode()).decode()], "n": 1})
    assert value == {"echo": [REDACTED, REDACTED], "n": 1}
    assert found == ["API_TOKEN"]
    assert r.redact_counting({"ok": "nothing"}) == ({"ok": "nothing"}, [])


def test_a_secret_containing_another_is_replaced_whole() -> None:
    r = Redactor()
    r.add({"A": TOKEN, "B": TOKEN[:9]})
    assert r(f"x{TOKEN}y {TOKEN[:9]}") == f"x{REDACTED}y {REDACTED}"


def test_stdlib_logging_records_are_redacted_whatever_handler_emits_them() -> None:
    from workers import capture

    saved = logging.getLogRecordFactory()
    stream: list[str] = []

    class ListHandler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            stream.append(self.format(record))

    logger = logging.getLogger("test.secret_forms")
    handler = ListHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger.addHandler(handler)
    logger.propagate = False
    r = Redactor()
    r.add({"S": MULTI})
    try:
        capture.install_record_factory(r)
        capture.install_record_factory(r)  # idempotent
        logger.warning("calling with %r and %s", MULTI, base64.b64encode(MULTI.encode()).decode())
        try:
            raise RuntimeError(f"refused {MULTI}")
        except RuntimeError:
            logger.exception("upstream failed for %s", quote_plus(MULTI))
        logger.info("%s", "ok")
    finally:
        logging.setLogRecordFactory(saved)
        logger.removeHandler(handler)
    text = "\n".join(stream)
    assert "calling with" in text
    assert "Traceback" in text
    assert "RuntimeError: refused" in text
    for line in MULTI.splitlines():
        assert line.strip() not in text
    assert text.count(REDACTED) >= 4
