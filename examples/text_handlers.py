"""Text handlers for the pattern examples (`steppe run examples/map_reduce.yaml --import examples.text_handlers`)."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from workers import StepContext, handler

_WORD = re.compile(r"[a-z0-9']+")


@handler("text.count_words")
def count_words(ctx: StepContext, text: str) -> dict[str, Any]:
    """Map: the number of words of one document and how often each occurs."""
    words = _WORD.findall(text.lower())
    return {"words": len(words), "counts": dict(Counter(words))}


@handler("text.sum_counts")
def sum_counts(ctx: StepContext, results: list[dict[str, Any]], top: int = 3) -> dict[str, Any]:
    """Reduce: totals over every document's counts, and the `top` most frequent words."""
    total: Counter[str] = Counter()
    for result in results:
        total.update(result["counts"])
    return {"documents": len(results), "words": sum(r["words"] for r in results), "top": _ranked(total)[:top]}


@handler("text.normalize")
def normalize(ctx: StepContext, input: str) -> str:
    """Pipeline stage: lower-case words separated by single spaces."""
    return " ".join(_WORD.findall(input.lower()))


@handler("text.word_frequencies")
def word_frequencies(ctx: StepContext, input: str, min_length: int = 1) -> list[list[Any]]:
    """Pipeline stage: [word, count] for each word of at least `min_length` letters, most frequent first."""
    return _ranked(Counter(word for word in input.split() if len(word) >= min_length))


@handler("text.format_report")
def format_report(ctx: StepContext, input: list[list[Any]], title: str, top: int = 3) -> dict[str, Any]:
    """Pipeline stage: a one-line report of the `top` words."""
    line = ", ".join(f"{word} ({count})" for word, count in input[:top])
    return {"report": f"{title}: {line}", "distinct_words": len(input)}


def _ranked(counts: Counter[str]) -> list[list[Any]]:
    # A list of pairs, not a mapping: JSONB does not keep the order of an object's keys.
    return [[word, count] for word, count in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
