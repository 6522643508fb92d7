"""Step keys: the name of each step instance of a run, parsed once into a typed `StepKey`.

A run's steps, events, step rows and Redis messages name a step instance by a string key.
The string forms are stored, so they never change:

    charge            the step `charge` itself (or its child run)            StepRole.STEP
    pack[3]           item 3 of for_each step `pack`, or swarm replica 3     StepRole.ITEM
    charge:compensate the compensation of `charge`                           StepRole.COMPENSATE
    draft:gate        the handoff gate checking `draft`'s proposed output    StepRole.GATE
    charge:pre-7      `pre` hook 7 checking `charge` before it starts        StepRole.PRE
    hook:7:42         hook 7 run for the run's event of seq 42               StepRole.HOOK

Step ids never contain `[`, `]` or `:` (the spec's id pattern), so the forms cannot be
confused: `hook:compensate` is the compensation of a step named `hook`, not a hook run.
`StepKey.parse(s)` and `str(key)` are inverse; anything else is refused with `ValueError`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum

__all__ = ["StepKey", "StepRole", "role_of"]


class StepRole(StrEnum):
    """What a step key stands for."""

    STEP = "step"
    ITEM = "item"  # for_each item or swarm replica
    COMPENSATE = "compensate"
    GATE = "gate"
    PRE = "pre"
    HOOK = "hook"


_NUMBER = r"(?:0|[1-9][0-9]*)"  # canonical, so that str(parse(s)) == s
_STEP_KEY = re.compile(
    rf"(?P<step>[^\[\]:]+)(?:\[(?P<index>{_NUMBER})\]|:(?P<suffix>compensate|gate|pre-(?P<hook>{_NUMBER})))?"
)
_HOOK_KEY = re.compile(rf"hook:(?P<hook>{_NUMBER}):(?P<seq>{_NUMBER})")
_SUFFIX_ROLES = {"compensate": StepRole.COMPENSATE, "gate": StepRole.GATE}


@dataclass(frozen=True, slots=True)
class StepKey:
    """One step instance of a run; build it with the class methods, or `parse` a stored key."""

    step: str  # the step id (`hook` for a hook run)
    role: StepRole = StepRole.STEP
    index: int | None = None  # ITEM: the item's or replica's index
    hook_id: int | None = None  # PRE, HOOK: the hook's id
    seq: int | None = None  # HOOK: the seq of the event that triggered it
    _text: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_text", self._format())

    def _format(self) -> str:
        role, wants = self.role, _FIELDS[self.role]
        numbers = {"index": self.index, "hook_id": self.hook_id, "seq": self.seq}
        given = tuple(name for name, n in numbers.items() if n is not None)
        if (
            given != wants
            or any(n is not None and n < 0 for n in numbers.values())
            or not self.step
            or any(c in self.step for c in "[]:")
            or (role is StepRole.HOOK and self.step != "hook")
        ):
            needs = " and ".join(wants) or "no numbers"
            raise ValueError(f"a {role} step key takes a step id without `[]:` and {needs} (>= 0), got {self!r}")
        if role is StepRole.STEP:
            return self.step
        if role is StepRole.ITEM:
            return f"{self.step}[{self.index}]"
        if role is StepRole.PRE:
            return f"{self.step}:pre-{self.hook_id}"
        if role is StepRole.HOOK:
            return f"hook:{self.hook_id}:{self.seq}"
        return f"{self.step}:{role}"

    def __str__(self) -> str:
        return self._text

    @classmethod
    def parse(cls, key: str) -> StepKey:
        """The key a stored string names; `ValueError` when it is not one of the forms above.

        Keys are immutable, so a parsed one is shared: the same few strings (`s0`, `charge`) are
        parsed for every run, result and load (a bounded cache, emptied when it fills)."""
        parsed = _PARSED.get(key)
        if parsed is None:
            if len(_PARSED) >= PARSE_CACHE_SIZE:
                _PARSED.clear()
            parsed = _PARSED[key] = _parse(key)
        return parsed

    @classmethod
    def item(cls, step: str, index: int) -> StepKey:
        return cls(step, StepRole.ITEM, index=index)

    @classmethod
    def compensation(cls, step: str) -> StepKey:
        return cls(step, StepRole.COMPENSATE)

    @classmethod
    def gate(cls, step: str) -> StepKey:
        return cls(step, StepRole.GATE)

    @classmethod
    def pre_check(cls, step: str, hook_id: int) -> StepKey:
        return cls(step, StepRole.PRE, hook_id=hook_id)

    @classmethod
    def hook(cls, hook_id: int, seq: int) -> StepKey:
        return cls("hook", StepRole.HOOK, hook_id=hook_id, seq=seq)

    @property
    def base(self) -> StepKey:
        """The step this instance belongs to (`pack[3]` → `pack`)."""
        return self if self.role is StepRole.STEP else StepKey(self.step)

    @property
    def hook_number(self) -> int:
        """The hook a PRE or HOOK key runs."""
        if self.hook_id is None:
            raise ValueError(f"step key {self._text!r} runs no hook")
        return self.hook_id


_FIELDS: dict[StepRole, tuple[str, ...]] = {
    StepRole.STEP: (),
    StepRole.ITEM: ("index",),
    StepRole.COMPENSATE: (),
    StepRole.GATE: (),
    StepRole.PRE: ("hook_id",),
    StepRole.HOOK: ("hook_id", "seq"),
}


PARSE_CACHE_SIZE = 65_536
_PARSED: dict[str, StepKey] = {}


def _parse(key: str) -> StepKey:
    # The patterns checked what __post_init__ would: build the key without checking again.
    if m := _STEP_KEY.fullmatch(key):
        step, index, suffix, hook = m.group("step", "index", "suffix", "hook")
        if index is not None:
            return _parsed(key, step, StepRole.ITEM, index=int(index))
        if suffix is None:
            return _parsed(key, step, StepRole.STEP)
        if hook is None:
            return _parsed(key, step, _SUFFIX_ROLES[suffix])
        return _parsed(key, step, StepRole.PRE, hook_id=int(hook))
    if m := _HOOK_KEY.fullmatch(key):
        return _parsed(key, "hook", StepRole.HOOK, hook_id=int(m.group("hook")), seq=int(m.group("seq")))
    raise ValueError(
        f"{key!r} is not a step key: expected `id`, `id[N]`, `id:compensate`, `id:gate`, `id:pre-N` or `hook:N:N`"
    )


def _parsed(
    text: str,
    step: str,
    role: StepRole,
    *,
    index: int | None = None,
    hook_id: int | None = None,
    seq: int | None = None,
) -> StepKey:
    key = object.__new__(StepKey)
    for name, value in (("step", step), ("role", role), ("index", index), ("hook_id", hook_id), ("seq", seq)):
        object.__setattr__(key, name, value)
    object.__setattr__(key, "_text", text)
    return key


def role_of(key: str) -> StepRole | None:
    """The role of a key read from outside (a worker's result), None when it is not a step key."""
    try:
        return StepKey.parse(key).role
    except ValueError:
        return None
