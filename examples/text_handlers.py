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
    ranked = sorted(total.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    return {"documents": len(results), "words": sum(r["words"] for r in results), "top": dict(ranked)}


@handler("text.normalize")
def normalize(ctx: StepContext, input: str) -> str:
    """Pipeline stage: lower-case words separated by single spaces."""
    return " ".join(_WORD.findall(input.lower()))


@handler("text.word_frequencies")
def word_frequencies(ctx: StepContext, input: str, min_length: int = 1) -> dict[str, int]:
    """Pipeline stage: how often each word of at least `min_length` letters occurs, most frequent first."""
    counts = Counter(word for word in input.split() if len(word) >= min_length)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


@handler("text.format_report")
def format_report(ctx: StepContext, input: dict[str, int], title: str, top: int = 3) -> dict[str, Any]:
    """Pipeline stage: a one-line report of the `top` words."""
    shown = list(input.items())[:top]
    line = ", ".join(f"{word} ({count})" for word, count in shown)
    return {"report": f"{title}: {line}", "distinct_words": len(input)}
