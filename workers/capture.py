"""What handlers print and log goes through the worker's redactor.

- stdlib `logging`: a record factory redacts each record's formatted message, exception text
  and stack when it is created, whichever handler (or none: the last-resort handler) emits it.
- `print()` / `sys.stdout` / `sys.stderr`: both streams are replaced by a proxy. Text written
  while a step runs (`capture_step`, a context variable: each asyncio task and each sync
  handler's thread call sees its own step) is collected line by line and logged redacted as
  `handler_output` events bound to the step. Anything else written to the streams (the
  worker itself, threads a handler started) passes through redacted.

Not covered: writes to file descriptors 1 and 2 below Python (C extensions, subprocesses).
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import threading
import traceback
from collections.abc import Iterator
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from workers.redaction import Redactor

MAX_PENDING = 64 * 1024  # characters of a line still without its newline before it is logged anyway
MAX_LINE = 16 * 1024  # characters of one logged line (cut after redaction)

_step: ContextVar[StepOutput | None] = ContextVar("steppe_step_output", default=None)
_emitting = threading.local()  # set while a captured line is logged: that write passes through


class StepOutput:
    """The stdout/stderr of one step attempt, logged redacted, one `handler_output` event a line."""

    def __init__(self, redactor: Redactor, log: Any) -> None:
        self.redactor = redactor
        self.log = log
        self.lines = 0
        self._pending: dict[str, str] = {}
        self._lock = threading.Lock()
        self._closed = False

    def write(self, stream: str, text: str) -> None:
        with self._lock:
            pending = self._pending.get(stream, "") + text
            *lines, rest = pending.split("\n")
            if len(rest) > MAX_PENDING:
                # Redact before cutting, and keep a tail as long as the longest secret form:
                # a value split across two writes is still whole in the next pass.
                redacted = self.redactor(rest)
                keep = min(len(redacted), self.redactor.longest)
                lines.append(redacted[: len(redacted) - keep])
                rest = redacted[len(redacted) - keep :]
            if self._closed and rest:
                lines, rest = [*lines, rest], ""
            self._pending[stream] = rest
        for line in lines:
            self._emit(stream, line)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            pending, self._pending = self._pending, {}
        for stream, rest in pending.items():
            if rest:
                self._emit(stream, rest)

    def _emit(self, stream: str, line: str) -> None:
        self.lines += 1
        _emitting.active = True
        try:
            self.log.info("handler_output", stream=stream, text=self.redactor(line)[:MAX_LINE])
        finally:
            _emitting.active = False


@contextlib.contextmanager
def capture_step(redactor: Redactor, log: Any) -> Iterator[StepOutput]:
    """Collect what the current step (this context and copies of it) writes to stdout/stderr."""
    output = StepOutput(redactor, log)
    token = _step.set(output)
    try:
        yield output
    finally:
        _step.reset(token)
        output.close()


class CapturingStream(io.TextIOBase):
    """Stands in for sys.stdout / sys.stderr: a running step's text is captured, the rest redacted."""

    def __init__(self, name: str, original: TextIO, redactor: Redactor) -> None:
        super().__init__()
        self.name_ = name
        self.original = original
        self.redactor = redactor

    def write(self, text: str) -> int:
        output = _step.get()
        if output is not None and not getattr(_emitting, "active", False):
            output.write(self.name_, text)
        else:
            self.original.write(self.redactor(text))
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        self.original.flush()

    def fileno(self) -> int:
        return self.original.fileno()

    def isatty(self) -> bool:
        return self.original.isatty()

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.original, "encoding", "utf-8")

    @property
    def errors(self) -> str | None:  # type: ignore[override]
        return getattr(self.original, "errors", None)

    @property
    def buffer(self) -> Any:
        # Bytes written here bypass redaction, as fd writes do; kept for code that needs it.
        return getattr(self.original, "buffer", None)


def install(redactor: Redactor) -> None:
    """Redact stdlib logging records and capture sys.stdout/sys.stderr for `redactor` (idempotent)."""
    install_record_factory(redactor)
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if isinstance(stream, CapturingStream):
            stream.redactor = redactor
        elif stream is not None:
            setattr(sys, name, CapturingStream(name, stream, redactor))


def install_record_factory(redactor: Redactor) -> None:
    previous = logging.getLogRecordFactory()
    if getattr(previous, "steppe_redactor", None) is redactor:
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        redact_record(redactor, record)
        return record

    factory.steppe_redactor = redactor  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


def redact_record(redactor: Redactor, record: logging.LogRecord) -> None:
    """Replace the record's message, exception text and stack by their redacted forms."""
    try:
        message = record.getMessage()
    except Exception:  # a bad format string: logging reports it when the record is emitted
        return
    redacted = redactor(message)
    if redacted != message:
        record.msg, record.args = redacted, None
    if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
        text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        if redactor(text) != text:
            record.exc_text = redactor(text)
    if record.stack_info:
        record.stack_info = redactor(record.stack_info)
