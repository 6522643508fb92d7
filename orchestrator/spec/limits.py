"""`concurrency:` and `rate_limit:` blocks as written (docs/spec.md §12.2), and their compiled form.

A step may set `concurrency: {key, limit}` (at most `limit` attempts in flight for the key, across
every run and workflow) and `rate_limit: {key, limit, per}` (at most `limit` starts in any window of
`per`); a workflow may set `concurrency: {key, limit, on_limit}` for its runs. Keys are templates
(`"${{ inputs.customer_id }}"`), resolved when the step (or run) becomes ready; nothing in them is
evaluated. `orchestrator.engine.limits` resolves them, `orchestrator.store.limits` admits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, field_validator

from orchestrator.durations import parse_duration
from orchestrator.errors import TemplateError
from orchestrator.templates import scan

MAX_KEY_LENGTH = 200  # a resolved key longer than this is cut (and a hash keeps it distinct)
OnLimit = Literal["queue", "cancel_new", "cancel_oldest"]


def _per(value: object, info: ValidationInfo) -> object:
    seconds = parse_duration(value, what="window")
    if seconds <= 0:
        raise ValueError(f"per must be a positive duration such as 1s, 1m or 1h, not {value!r}")
    return seconds


def _key(value: object) -> object:
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f'must be a non-empty key such as openai or "${{{{ inputs.customer_id }}}}", not {value!r}')
    if len(value) > MAX_KEY_LENGTH:
        raise ValueError(f"a key is at most {MAX_KEY_LENGTH} characters, this one has {len(value)}: shorten it")
    references, issues = scan(value)
    if issues:
        raise ValueError(f"the key {value!r} holds a malformed template: {issues[0].message}")
    if any(reference.root == "secrets" for reference in references):
        raise ValueError("a key is stored and shown by `steppe limits`: it cannot reference secrets")
    return value


LimitKey = Annotated[str, BeforeValidator(_key)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ConcurrencySpec(_Model):
    """Step level: at most `limit` attempts of steps with this key dispatched or running at once."""

    key: LimitKey
    limit: int = Field(ge=1, le=100_000)


class RateLimitSpec(_Model):
    """Step level: at most `limit` starts (admissions) of steps with this key in any window of `per`."""

    key: LimitKey
    limit: int = Field(ge=1, le=1_000_000)
    per: Annotated[float, BeforeValidator(_per)]


class RunConcurrencySpec(_Model):
    """Workflow level: at most `limit` runs of this workflow with this key running at once."""

    key: LimitKey
    limit: int = Field(ge=1, le=100_000)
    on_limit: OnLimit = "queue"

    @field_validator("key")
    @classmethod
    def _inputs_only(cls, value: str) -> str:
        references, _ = scan(value)
        for reference in references:
            if reference.root != "inputs":
                raise ValueError(
                    f"a run-level key is resolved when the run starts, so it may reference only inputs, "
                    f"not {reference.raw!r}"
                )
        return value


@dataclass(frozen=True, slots=True)
class LimitDef:
    """One compiled limit of a step: `kind` concurrency or rate; `per` seconds for a rate, else 0."""

    kind: Literal["concurrency", "rate"]
    key: str  # a template, resolved at readiness
    limit: int
    per: float = 0.0

    def describe(self, key: str) -> str:
        """`concurrency openai 8` / `rate openai 60/1m`, for status lines."""
        if self.kind == "rate":
            return f"rate {key} {self.limit}/{show_seconds(self.per)}"
        return f"concurrency {key} {self.limit}"


def step_limits(concurrency: ConcurrencySpec | None, rate_limit: RateLimitSpec | None) -> tuple[LimitDef, ...]:
    """A step's limits in admission order: its concurrency slot first, then its rate token."""
    limits: list[LimitDef] = []
    if concurrency is not None:
        limits.append(LimitDef("concurrency", concurrency.key, concurrency.limit))
    if rate_limit is not None:
        limits.append(LimitDef("rate", rate_limit.key, rate_limit.limit, rate_limit.per))
    return tuple(limits)


def show_seconds(seconds: float) -> str:
    """60 → `1m`, 2 → `2s`, 0.5 → `500ms`, 3600 → `1h`."""
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        if seconds >= size and (seconds / size).is_integer():
            return f"{int(seconds / size)}{unit}"
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    return f"{seconds:g}s"


def resolved_key(value: object) -> str:
    """A resolved key as stored: text, at most MAX_KEY_LENGTH characters; an empty one is refused."""
    text = value if isinstance(value, str) else str(value)
    if not text.strip():
        raise TemplateError("a concurrency or rate limit key resolved to an empty string: give the input a value")
    return text[:MAX_KEY_LENGTH]
