"""What `client.submit(source)` was given → one YAML document with a name for error positions.

    a mapping                    rendered as block YAML (as `POST /v1/runs` renders a JSON
                                 `workflow` object), so positions refer to that rendering
    a `pathlib.Path`             the file; its directory is where child workflows are looked for
    a str with a line break      YAML text
    a str naming a file, or      the file (a missing `.yaml`/`.yml`/`.json` path is an error
      ending .yaml/.yml/.json    saying so, not YAML text)
    a str like `name` / `name@3` a deployed workflow (`steppe workflows deploy`, docs/spec.md
                                 §12.3): its newest version, or version 3 (`Document.ref`)
    any other str                YAML text (a one-line flow mapping, `{name: x, steps: [...]}`)

Both transports send the same text under the same name, so a SpecValidationError has the
same positions whichever transport raised it. Nothing here evaluates the document.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from orchestrator.errors import SubmitError

WorkflowSource = str | os.PathLike[str] | Mapping[str, Any]

TEXT_NAME = "<workflow>"  # the name `POST /v1/runs` gives a body without ?filename=
FILE_SUFFIXES = (".yaml", ".yml", ".json")
# A deployed workflow's reference, `name` or `name@VERSION` (docs/spec.md §12.3).
WORKFLOW_REF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(@[A-Za-z0-9_.-]+)?$")
_Dumper: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


@dataclass(frozen=True, slots=True)
class Document:
    """A workflow document to submit: its text, the name errors cite, where children are looked for."""

    text: str
    filename: str = TEXT_NAME
    base_dir: Path | None = None
    ref: str | None = None  # `name` or `name@VERSION` of a deployed workflow (then `text` is empty)


def render_yaml(document: Mapping[str, Any]) -> str:
    """Block YAML of a mapping, as the HTTP API renders a JSON `workflow` object (the safe dumper
    quotes every string the loader would read as something else: "on", "1e3", dates)."""
    try:
        return str(yaml.dump(dict(document), Dumper=_Dumper, sort_keys=False, allow_unicode=True))
    except yaml.YAMLError as e:
        raise SubmitError(f"the workflow mapping cannot be written as YAML ({e}); use plain data only") from e


def resolve(source: WorkflowSource) -> Document:
    """The document `source` stands for (see the module docstring); reads files, nothing else."""
    if isinstance(source, Mapping):
        return Document(render_yaml(source))
    if isinstance(source, os.PathLike):
        return read_file(Path(source))
    if not isinstance(source, str):
        raise SubmitError(
            f"cannot submit a {type(source).__name__}: pass a path, YAML text or a mapping of the workflow"
        )
    if "\n" in source:
        return Document(source)
    stripped = source.strip()
    if stripped and (Path(stripped).is_file() or stripped.lower().endswith(FILE_SUFFIXES)):
        return read_file(Path(stripped))
    if WORKFLOW_REF.match(stripped):
        return Document("", filename=stripped, ref=stripped)
    return Document(source)


def read_file(path: Path) -> Document:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SubmitError(f"no workflow file {str(path)!r}; check the path (relative to {Path.cwd()})") from None
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) else "it is not UTF-8 text"
        raise SubmitError(f"cannot read {str(path)!r}: {reason}; check the path") from e
    return Document(text, filename=str(path), base_dir=path.parent)
