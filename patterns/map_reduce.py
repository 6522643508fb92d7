"""`uses: map_reduce`: run a handler on every item in parallel, then one handler on all their outputs.

    - id: count
      uses: map_reduce
      with:
        items: "${{ inputs.documents }}"          # a list, or a reference to one
        map: {handler: text.count_words, with: {text: "${{ item }}"}}
        reduce: {handler: text.sum_counts, with: {top: 3}}

becomes `count-map` (the map handler with `for_each: items`) and `count` (the reduce handler,
needing `count-map`, called with `results=` the list of map outputs in item order).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator, Field

from orchestrator.errors import PatternError
from orchestrator.spec.model import ID_PATTERN
from orchestrator.templates import whole_reference
from patterns.plugins import HandlerCall, Pattern, PatternConfig, PatternStep, output_of


def _check_items(value: object) -> object:
    if isinstance(value, list) or (isinstance(value, str) and whole_reference(value) is not None):
        return value
    raise ValueError(
        f'must be a list or one ${{{{ … }}}} reference to a list, such as "${{{{ inputs.documents }}}}", not {value!r}'
    )


class MapReduceConfig(PatternConfig):
    """`with:` of a map_reduce step."""

    items: Annotated[str | list[Any], BeforeValidator(_check_items)] = Field(
        description="the list to map over, or a ${{ … }} reference to one; `${{ item }}` in map.with is one item"
    )
    map: HandlerCall = Field(description="handler run once per item, in parallel")
    reduce: HandlerCall = Field(description="handler run once on the list of map outputs")
    results_as: str = Field(
        default="results", pattern=ID_PATTERN, description="argument of the reduce handler that receives the list"
    )


class MapReduce(Pattern[MapReduceConfig]):
    """Fan a handler out over a list, then fold the outputs with another handler."""

    name = "map_reduce"
    description = "Run `map` on every item in parallel (for_each), then `reduce` on the list of their outputs."
    config_model = MapReduceConfig

    def expand(self, step: PatternStep, config: MapReduceConfig) -> list[dict[str, Any]]:
        if config.results_as in config.reduce.with_:
            raise PatternError(
                f"reduce.with already has {config.results_as!r}, which receives the map outputs: "
                "rename that argument or set results_as"
            )
        map_id = step.derive("map")
        reduce = config.reduce.step(step.id, needs=[map_id])
        reduce["with"][config.results_as] = output_of(map_id)
        return [config.map.step(map_id, for_each=config.items), reduce]
