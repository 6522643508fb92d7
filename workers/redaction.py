"""Remove a worker's secret values, in the forms a handler is likely to produce, from what leaves it.

For each secret value the redactor matches (`secret_forms`):

- the value, and its escaped renderings: `repr()` (either quote), `ascii()`, JSON (with and
  without `ensure_ascii`), `unicode_escape`, the `repr()` of its UTF-8 bytes, and the JSON
  escaping of each of those (a log line rendered as JSON);
- each line of a multi-line value (lines of at least `MIN_FORM` characters), and the value
  without surrounding whitespace, with the same escapes;
- encodings of the value's UTF-8 bytes: base64 (standard and URL-safe, with and without
  padding, and the part that stays the same wherever the value sits in a longer encoded text,
  e.g. `base64("user:" + secret)`, with the one character at each end that mixes its bits with
  its neighbours' and any padding), URL encoding (`quote`, `quote(safe="")`, `quote_plus`)
  and hex (lower and upper case). Encoded forms shorter than `MIN_FORM` are not matched.

Values shorter than `MIN_SECRET` characters are not redacted: they would cut up every text.
One compiled pattern (longest form first) replaces every form by `REDACTED` in one pass; it is
swapped atomically when secrets are added, so handler threads never see it half-built.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, quote_plus

import orjson
import structlog
from structlog.types import EventDict

REDACTED = "***"
MIN_SECRET = 3  # characters of a value, below which it is not redacted
MIN_FORM = 8  # characters of a line or an encoded form, below which it is not matched


def escaped_forms(text: str) -> set[str]:
    """`text` as the usual escapers write it inside a string literal (quotes not included)."""
    forms = {
        text,
        repr(text)[1:-1],
        repr(text + "'\"")[1:-4],  # repr with a single quote escaped (a value holding both quotes)
        ascii(text)[1:-1],
        json.dumps(text)[1:-1],
        orjson.dumps(text).decode()[1:-1],
        text.encode("unicode_escape").decode("ascii"),
        repr(text.encode("utf-8", "surrogatepass"))[2:-1],
    }
    return forms | {orjson.dumps(f).decode()[1:-1] for f in forms}  # and as a JSON log line renders them


def encoded_forms(text: str) -> set[str]:
    """Base64, URL and hex encodings of `text`'s UTF-8 bytes."""
    data = text.encode("utf-8", "surrogatepass")
    forms = {quote(text), quote(text, safe=""), quote_plus(text), data.hex(), data.hex().upper()}
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        padded = encode(data).decode()
        forms |= {padded, padded.rstrip("=")}
    return {f for f in forms if len(f) >= MIN_FORM}


def base64_cores(text: str) -> set[str]:
    """The base64 characters made only of `text`'s bits, whatever precedes or follows it.

    Inside a longer encoded text the value starts at byte offset 0, 1 or 2 of a 3-byte group;
    the redactor also takes the character on each side (`BASE64_EDGE`), which holds its first
    and last bits mixed with the neighbours'.
    """
    data = text.encode("utf-8", "surrogatepass")
    cores = set()
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        for offset in range(3):
            shifted = encode(b"\0" * offset + data + b"\0\0").decode()
            first, end = -(-8 * offset // 6), 8 * (offset + len(data)) // 6
            cores.add(shifted[first:end])
    return {c for c in cores if len(c) >= MIN_FORM}


BASE64_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/_-")
BASE64_EDGE = "[A-Za-z0-9+/_-]?={0,2}"  # after a core; the character before it is taken in `_sub`


def secret_forms(value: str) -> set[str]:
    """Every form of `value` the redactor matches (empty for a value too short to redact)."""
    if len(value) < MIN_SECRET:
        return set()
    forms = escaped_forms(value) | encoded_forms(value)
    stripped = value.strip()
    if stripped != value and len(stripped) >= MIN_FORM:
        forms |= escaped_forms(stripped) | encoded_forms(stripped)
    for line in value.splitlines():
        if len(line.strip()) >= MIN_FORM:
            forms |= escaped_forms(line) | escaped_forms(line.strip())
    return {f for f in forms if f}


class Redactor:
    """Replaces this worker's secret values, in every form of `secret_forms`, by `REDACTED`.

    Text (error messages, tracebacks), JSON-like values (step outputs) and log output:
    structlog events before and after rendering, stdlib logging records, and what handlers
    write to stdout/stderr (`install_log_processors`, `workers.capture`).
    """

    def __init__(self) -> None:
        self._values: dict[str, str] = {}  # value -> secret name
        self._names: dict[str, str] = {}  # form -> secret name
        self._cores: dict[str, str] = {}  # base64 core -> secret name
        self._pattern: re.Pattern[str] | None = None
        self.longest = 0  # characters of the longest form (what a split write may hide)

    def add(self, values: Mapping[str, str]) -> None:
        """Redact these secret values (name -> value) from now on."""
        new = {v: n for n, v in values.items() if len(v) >= MIN_SECRET and v not in self._values}
        if not new:
            return
        names, cores = dict(self._names), dict(self._cores)
        for value, name in new.items():
            for form in secret_forms(value):
                names.setdefault(form, name)
            if len(value) >= MIN_SECRET:
                for core in base64_cores(value):
                    cores.setdefault(core, name)
        # Longest first, so that a form containing another one is replaced whole. One flat
        # alternation whose every branch starts with a literal: the regex engine then skips
        # positions by their first character (a group or a leading class would defeat that).
        branches = [(f, re.escape(f)) for f in names] + [(c, re.escape(c) + BASE64_EDGE) for c in cores]
        branches.sort(key=lambda branch: len(branch[0]), reverse=True)
        pattern = re.compile("|".join(regex for _, regex in branches))
        self._values = {**self._values, **new}
        self._names, self._cores, self._pattern = names, cores, pattern
        self.longest = max(len(f) for f in [*names, *cores]) + 4

    def __call__(self, text: str) -> str:
        return self._sub(text, None)

    def _sub(self, text: str, found: set[str] | None) -> str:
        pattern = self._pattern
        if pattern is None:
            return text
        out: list[str] = []
        last = 0
        for match in pattern.finditer(text):
            start = match.start()
            if start > last and text[start - 1] in BASE64_CHARS and match.group() not in self._names:
                start -= 1  # the character holding the value's first bits mixed with its neighbour's
            out += (text[last:start], REDACTED)
            last = match.end()
            if found is not None:
                found.add(self._name_of(match.group()))
        if not out:
            return text
        out.append(text[last:])
        return "".join(out)

    def _name_of(self, form: str) -> str:
        return self._names.get(form) or next((n for c, n in self._cores.items() if c in form), "?")

    def redact_value(self, value: Any) -> Any:
        """`value` with every string in it (dict keys included) redacted; containers are copied."""
        return self.redact_counting(value)[0]

    def redact_counting(self, value: Any) -> tuple[Any, list[str]]:
        """`value` redacted, and the names of the secrets found in it (sorted, no values)."""
        pattern = self._pattern
        if pattern is None:
            return value, []
        found: set[str] = set()

        def walk(item: Any) -> Any:
            if isinstance(item, str):
                return self._sub(item, found)
            if isinstance(item, dict):
                return {walk(k): walk(v) for k, v in item.items()}
            if isinstance(item, list | tuple):
                return type(item)(walk(v) for v in item)
            return item

        return walk(value), sorted(found)

    def processor(self, _logger: Any, _name: str, event: EventDict) -> EventDict:
        """structlog processor (before the renderer): redact every value of a log event, nested ones too."""
        if self._pattern is None:
            return event
        return {key: self.redact_value(value) for key, value in event.items()}

    def rendered(self, _logger: Any, _name: str, line: Any) -> Any:
        """structlog processor (after the renderer): redact the rendered line, whatever it formatted."""
        if isinstance(line, str):
            return self(line)
        if isinstance(line, bytes):
            return self(line.decode("utf-8", "surrogateescape")).encode("utf-8", "surrogateescape")
        return line

    def install_log_processors(self) -> None:
        """Redact this process's log output from now on (call once logging is configured).

        structlog: the configured processor list is changed in place, so that loggers cached
        before this call (`cache_logger_on_first_use`) redact too. stdlib logging records and
        sys.stdout/sys.stderr: see `workers.capture.install`.
        """
        from workers import capture

        processors = structlog.get_config()["processors"]
        if self.processor not in processors:
            if isinstance(processors, list) and processors:
                processors.insert(len(processors) - 1, self.processor)
                processors.append(self.rendered)
            else:
                *head, renderer = list(processors) or [structlog.processors.KeyValueRenderer()]
                structlog.configure(processors=[*head, self.processor, renderer, self.rendered])
        capture.install(self)
