"""Step keys: the stored string forms parse into a StepKey and back, for every role."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.spec.model import ID_PATTERN
from orchestrator.step_keys import StepKey, StepRole, role_of
from patterns.hooks import hook_id_of, hook_step_key

step_ids = st.from_regex(ID_PATTERN, fullmatch=True)
numbers = st.integers(min_value=0, max_value=10**9)

keys = st.one_of(
    step_ids.map(StepKey),
    st.builds(StepKey.item, step_ids, numbers),
    step_ids.map(StepKey.compensation),
    step_ids.map(StepKey.gate),
    st.builds(StepKey.pre_check, step_ids, numbers),
    st.builds(StepKey.hook, numbers, numbers),
)


@given(keys)
def test_every_key_round_trips_through_its_stored_string(key: StepKey) -> None:
    text = str(key)
    parsed = StepKey.parse(text)
    assert parsed == key
    assert hash(parsed) == hash(key)
    assert str(parsed) == text
    assert role_of(text) is key.role


@given(st.text(alphabet="ab_-:[]0123456789hookprecmsgt", max_size=24))
def test_a_string_that_parses_is_the_canonical_form_of_its_key(text: str) -> None:
    role = role_of(text)
    if role is None:
        with pytest.raises(ValueError, match="is not a step key"):
            StepKey.parse(text)
    else:
        assert str(StepKey.parse(text)) == text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("charge", StepKey("charge")),
        ("pack[3]", StepKey("pack", StepRole.ITEM, index=3)),
        ("charge:compensate", StepKey("charge", StepRole.COMPENSATE)),
        ("draft:gate", StepKey("draft", StepRole.GATE)),
        ("charge:pre-7", StepKey("charge", StepRole.PRE, hook_id=7)),
        ("hook:7:42", StepKey("hook", StepRole.HOOK, hook_id=7, seq=42)),
        # A step may be named `hook`: its compensation, gate and pre checks are not hook runs.
        ("hook", StepKey("hook")),
        ("hook:compensate", StepKey("hook", StepRole.COMPENSATE)),
        ("hook:pre-3", StepKey("hook", StepRole.PRE, hook_id=3)),
    ],
)
def test_the_stored_forms_of_each_role(text: str, expected: StepKey) -> None:
    assert StepKey.parse(text) == expected
    assert str(expected) == text
    assert StepKey.parse(text).base == StepKey(expected.step)


@pytest.mark.parametrize(
    "text", ["", "a[03]", "a[-1]", "a[x]", "a:foo", "a:pre-", "a:pre-01", "a[1]:compensate", "hook:1", ":gate", "[1]"]
)
def test_what_is_not_a_key_is_refused(text: str) -> None:
    assert role_of(text) is None
    with pytest.raises(ValueError, match="is not a step key"):
        StepKey.parse(text)


@pytest.mark.parametrize(
    "build",
    [
        lambda: StepKey("a", StepRole.ITEM),
        lambda: StepKey("a", index=1),
        lambda: StepKey.item("a", -1),
        lambda: StepKey("a[1]"),
        lambda: StepKey("", StepRole.GATE),
        lambda: StepKey("charge", StepRole.HOOK, hook_id=1, seq=2),
    ],
)
def test_a_key_without_a_stored_form_cannot_be_built(build: object) -> None:
    with pytest.raises(ValueError, match="step key takes"):
        build()  # type: ignore[operator]


def test_hook_keys_are_built_and_read_through_step_keys() -> None:
    assert hook_step_key(7, 42) == "hook:7:42"
    assert hook_id_of("hook:7:42") == 7
    assert role_of("hook:7:42") is StepRole.HOOK
    with pytest.raises(ValueError, match="runs no hook"):
        _ = StepKey("charge").hook_number


def test_a_parsed_key_is_shared_and_the_cache_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator import step_keys

    monkeypatch.setattr(step_keys, "PARSE_CACHE_SIZE", 3)
    monkeypatch.setattr(step_keys, "_PARSED", {})
    first = StepKey.parse("pack[3]")
    assert StepKey.parse("pack[3]") is first  # parsed once, for every run and result naming it
    assert first == StepKey.item("pack", 3)
    for _ in range(2):
        with pytest.raises(ValueError, match="not a step key"):
            StepKey.parse("a:b:c")  # refused every time, never cached
    for text in ("a", "b", "c", "d", "e"):
        assert str(StepKey.parse(text)) == text
    assert len(step_keys._PARSED) <= 3
