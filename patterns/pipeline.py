"""`uses: pipeline`: handlers run one after another, each receiving the previous one's output.

    - id: report
      uses: pipeline
      with:
        input: "${{ inputs.text }}"                # given to the first stage (optional)
        stages:
          - {name: clean, handler: text.normalize}
          - {name: count, handler: text.word_frequencies}
          - {handler: text.format_report, with: {title: Top words}}

becomes `report-clean` → `report-count` → `report`: each stage is called with `input=` (see
`input_as`) the previous stage's output, and the last stage keeps the step's id, so its
output is the pipeline's output.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from orchestrator.errors import PatternError
from orchestrator.spec.model import ID_PATTERN
from patterns.plugins import HandlerCall, Pattern, PatternConfig, PatternStep, output_of

STAGE_NAME_PATTERN = r"^[A-Za-z0-9_]{1,32}$"


class Stage(HandlerCall):
    """One stage of a pipeline."""

    name: str | None = Field(
        default=None,
        pattern=STAGE_NAME_PATTERN,
        description="names the stage's step `<id>-<name>` (default: its position, 1, 2, …)",
    )


class PipelineConfig(PatternConfig):
    """`with:` of a pipeline step."""

    stages: list[Stage] = Field(min_length=1, description="handlers run in order")
    input: Any = Field(default=None, description="value (or ${{ … }} reference) passed to the first stage")
    input_as: str = Field(default="input", pattern=ID_PATTERN, description="argument that receives the previous output")


class Pipeline(Pattern[PipelineConfig]):
    """A chain of handlers, each fed the previous one's output."""

    name = "pipeline"
    description = "Run `stages` in sequence; each stage receives the previous stage's output as `input`."
    config_model = PipelineConfig

    def expand(self, step: PatternStep, config: PipelineConfig) -> list[dict[str, Any]]:
        names = [stage.name or str(n) for n, stage in enumerate(config.stages, start=1)]
        if len(set(names)) != len(names):
            raise PatternError(f"stage names must be unique, got {names}: rename the repeated ones")
        ids = [step.derive(name) for name in names[:-1]] + [step.id]
        steps: list[dict[str, Any]] = []
        for n, (stage, step_id) in enumerate(zip(config.stages, ids, strict=True)):
            if config.input_as in stage.with_:
                raise PatternError(
                    f"stage {names[n]!r} sets {config.input_as!r} in its `with`, which receives the previous "
                    "output: rename that argument or set input_as"
                )
            extra: dict[str, Any] = {"needs": [ids[n - 1]]} if n else {}
            new = stage.step(step_id, **extra)
            if n:
                new["with"][config.input_as] = output_of(ids[n - 1])
            elif "input" in config.model_fields_set:
                new["with"][config.input_as] = config.input
            steps.append(new)
        return steps
