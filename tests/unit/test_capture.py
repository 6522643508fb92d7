"""What a step writes to stdout/stderr is logged line by line, redacted, even when cut or late (workers.capture)."""

from __future__ import annotations

from typing import Any

from workers.capture import MAX_PENDING, StepOutput, capture_step
from workers.redaction import REDACTED, Redactor

SECRET = "cap-" + "7q2w" * 5


class Log:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def info(self, event: str, *, stream: str, text: str, **_: Any) -> None:
        assert event == "handler_output"
        self.lines.append((stream, text))


def output() -> tuple[StepOutput, Log]:
    r = Redactor()
    r.add({"S": SECRET})
    log = Log()
    return StepOutput(r, log), log


def test_lines_are_logged_whole_even_when_a_secret_is_written_in_pieces() -> None:
    out, log = output()
    for piece in ("token=", SECRET[:5], SECRET[5:], "\nnext", " line\n", "tail"):
        out.write("stdout", piece)
    out.write("stderr", f"err {SECRET}\n")
    assert log.lines == [("stdout", f"token={REDACTED}"), ("stdout", "next line"), ("stderr", f"err {REDACTED}")]
    out.close()
    assert log.lines[-1] == ("stdout", "tail")


def test_a_huge_line_without_newline_is_logged_in_chunks_without_cutting_a_secret() -> None:
    out, log = output()
    filler = "x" * (MAX_PENDING - 3)
    out.write("stdout", filler + SECRET[:10])  # over the limit, the secret's first half at the end
    out.write("stdout", SECRET[10:] + " end\n")
    text = "".join(t for _, t in log.lines)
    assert SECRET not in text
    assert SECRET[:10] not in text[-(len(SECRET) + 10) :], "half a secret was logged"
    assert text.endswith(f"{REDACTED} end")
    assert len(log.lines) == 2


def test_writes_after_the_step_ended_are_still_logged_redacted() -> None:
    """A sync handler that ignored its timeout keeps its thread (and its context) after the step."""
    r = Redactor()
    r.add({"S": SECRET})
    log = Log()
    with capture_step(r, log) as out:
        out.write("stdout", "during ")
    out.write("stdout", f"late {SECRET}")  # no newline: not held back, the step is over
    assert log.lines == [("stdout", "during "), ("stdout", f"late {REDACTED}")]
