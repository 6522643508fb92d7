"""The custom-pattern plugin API: a pattern turns one YAML step into a sub-graph of ordinary steps.

A step names a pattern with `uses:` and configures it with `with:`:

    - id: count
      uses: map_reduce
      needs: [fetch]
      with: {items: "${{ steps.fetch.output.docs }}", map: {handler: text.count}, reduce: {handler: text.sum}}

A pattern is a `Pattern` subclass registered under the entry-point group `steppe.patterns`
(the entry point's name is what `uses:` names):

    [project.entry-points."steppe.patterns"]
    map_reduce = "patterns.map_reduce:MapReduce"

Patterns are expanded while the document is validated (`steppe validate`, `plan`, `submit`,
`run`), so the run definition stored in PostgreSQL is the expanded workflow: coordinators and
workers never import plugin code. `patterns.expansion` applies patterns to a document and
checks what they return; this module is the API plugin authors write against, and discovery.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import metadata
from types import UnionType
from typing import Annotated, Any, ClassVar, Generic, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.errors import PatternError
from orchestrator.spec.model import Arguments, Duration, HandlerName, Name, Priority, RetrySpec

ENTRY_POINT_GROUP = "steppe.patterns"

ConfigT = TypeVar("ConfigT", bound=BaseModel)

__all__ = [
    "ENTRY_POINT_GROUP",
    "ConfigField",
    "HandlerCall",
    "InstalledPattern",
    "Pattern",
    "PatternConfig",
    "PatternError",
    "PatternStep",
    "config_fields",
    "installed_patterns",
    "output_of",
    "pattern_names",
]


class PatternConfig(BaseModel):
    """Base for a pattern's `with:` model: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class HandlerCall(PatternConfig):
    """A handler with its arguments and optional step settings: the building block of most patterns."""

    handler: HandlerName = Field(description="registered handler name")
    with_: Arguments = Field(default_factory=dict, alias="with", description="its keyword arguments")
    queue: Name | None = Field(default=None, description="queue of this step (default: the step's)")
    timeout: Duration | None = Field(default=None, description="timeout of this step (default: the step's)")
    retry: RetrySpec | None = Field(default=None, description="retry policy of this step (default: the step's)")
    priority: Priority | None = Field(default=None, description="priority of this step (default: the step's)")

    def step(self, step_id: str, **extra: Any) -> dict[str, Any]:
        """A step mapping running this call, with `extra` keys (needs, for_each, …) added."""
        step: dict[str, Any] = {"id": step_id, "handler": self.handler, "with": dict(self.with_), **extra}
        settings = self.model_dump(include={"queue", "timeout", "retry", "priority"}, exclude_none=True)
        return {**step, **settings}


@dataclass(frozen=True, slots=True)
class PatternStep:
    """The step being expanded, as the pattern sees it.

    The expansion machinery, not the pattern, applies the step's `needs`, `when` and step
    settings (queue, timeout, retry, priority, circuit_breaker) to the generated steps.
    """

    id: str
    description: str | None = None

    def derive(self, suffix: str) -> str:
        """The id of an internal step: `<id>-<suffix>` (every id but the exit step's must be derived)."""
        return f"{self.id}-{suffix}"


def output_of(step_id: str) -> str:
    """A whole-string reference to a step's output, to pass it to another generated step."""
    return "${{ steps.%s.output }}" % step_id  # noqa: UP031 - braces would need doubling in an f-string


class Pattern(ABC, Generic[ConfigT]):
    """A plan-time pattern. Subclasses set the class attributes and implement `expand`.

    `expand` returns ordinary step mappings, exactly as they could be written in YAML:

    * exactly one step keeps `step.id`: the exit step, whose output is the pattern's output
      (other steps' `needs:` and `${{ steps.ID.output }}` keep working);
    * every other id is `step.derive(...)`, and every step must lead to the exit step;
    * `needs:` may name only steps of the same expansion; steps without `needs` are the
      entry steps and receive the original step's `needs` and `when`;
    * nothing may be evaluated: copy `${{ … }}` references from the configuration as text.

    Raise `PatternError("…what to change…")` for a configuration the model cannot reject
    by itself; it is shown at the step's position like any other validation error.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    config_model: ClassVar[type[BaseModel]]

    @abstractmethod
    def expand(self, step: PatternStep, config: ConfigT) -> list[dict[str, Any]]:
        """The steps that replace `step`, given its validated `with:` configuration."""


@dataclass(frozen=True, slots=True)
class InstalledPattern:
    """One `steppe.patterns` entry point; `pattern` is None and `error` says why when it cannot be used."""

    name: str
    target: str  # "module:attribute"
    distribution: str  # "name version", or "?" when the entry point has no distribution
    pattern: Pattern[Any] | None
    error: str | None = None

    @property
    def origin(self) -> str:
        return f"{self.target} from {self.distribution}"


def pattern_names() -> list[str]:
    """Names of the installed patterns, without importing any plugin."""
    return sorted({entry_point.name for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP)})


def installed_patterns(names: Iterable[str] | None = None) -> dict[str, InstalledPattern]:
    """Every installed pattern by name (only `names` when given: others are not imported).

    A plugin that cannot be imported, that is not a Pattern, or whose name is claimed by two
    distributions is returned with `error` set rather than raised, so one broken plugin does
    not stop workflows that do not use it.
    """
    wanted = None if names is None else set(names)
    found: dict[str, list[metadata.EntryPoint]] = {}
    for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if wanted is None or entry_point.name in wanted:
            found.setdefault(entry_point.name, []).append(entry_point)
    return {name: _load(name, entry_points) for name, entry_points in sorted(found.items())}


def _distribution(entry_point: metadata.EntryPoint) -> str:
    dist = entry_point.dist
    return f"{dist.name} {dist.version}" if dist is not None else "?"


def _load(name: str, entry_points: list[metadata.EntryPoint]) -> InstalledPattern:
    first = entry_points[0]
    target, dist = first.value, _distribution(first)
    if len(entry_points) > 1:
        claims = ", ".join(f"{ep.value} from {_distribution(ep)}" for ep in entry_points)
        error = f"the name {name!r} is registered more than once ({claims}): uninstall or rename one of them"
        return InstalledPattern(name, target, dist, None, error)
    try:
        loaded = first.load()
    except Exception as e:  # any import-time failure of third-party code is reported, not raised
        return InstalledPattern(name, target, dist, None, f"cannot be imported: {type(e).__name__}: {e}")
    problem = _check(name, loaded)
    if problem is not None:
        return InstalledPattern(name, target, dist, None, problem)
    try:
        pattern = loaded() if isinstance(loaded, type) else loaded
    except Exception as e:  # a constructor of third-party code
        return InstalledPattern(name, target, dist, None, f"cannot be created: {type(e).__name__}: {e}")
    return InstalledPattern(name, target, dist, pattern)


def _check(name: str, loaded: object) -> str | None:
    cls = loaded if isinstance(loaded, type) else type(loaded)
    if not issubclass(cls, Pattern):
        return f"loads {loaded!r}, which is not a subclass of patterns.plugins.Pattern"
    if getattr(cls, "name", None) != name:
        return (
            f"the entry point is named {name!r} but the class says name = {getattr(cls, 'name', None)!r}: "
            "make them equal"
        )
    model = getattr(cls, "config_model", None)
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return "config_model must be a pydantic model class (subclass patterns.plugins.PatternConfig)"
    if not isinstance(getattr(cls, "description", None), str):
        return "description must be a string saying what the pattern does"
    return None


@dataclass(frozen=True, slots=True)
class ConfigField:
    """One key of a pattern's `with:`, for `steppe patterns`."""

    name: str
    type: str
    required: bool
    default: Any
    description: str


def config_fields(model: type[BaseModel]) -> list[ConfigField]:
    """The keys of a `with:` model, as a user writes them (aliases, nested mappings shown by their keys)."""
    fields = []
    for name, info in model.model_fields.items():
        default = None if info.is_required() or info.default_factory is not None else info.default
        fields.append(
            ConfigField(
                name=info.alias or name,
                type=_type_text(info.annotation),
                required=info.is_required(),
                default=default,
                description=info.description or "",
            )
        )
    return fields


def _type_text(annotation: Any) -> str:  # noqa: PLR0911 - one return per kind of annotation
    args = get_args(annotation)
    origin = get_origin(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        keys = [f.alias or n for n, f in annotation.model_fields.items()]
        return "{" + ", ".join(keys) + "}"
    if origin is Annotated:
        return _type_text(args[0])
    if origin in (Union, UnionType):
        return " | ".join(_type_text(a) for a in args)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(_type_text(a) for a in args)}]"
    if annotation is Any:
        return "any"
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))
