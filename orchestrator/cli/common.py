"""Helpers shared by the CLI command modules: settings, consoles, error handling."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, ParamSpec, TypeVar

import typer
from rich.console import Console

from orchestrator.errors import SpecValidationError, SteppeError

if TYPE_CHECKING:
    from orchestrator.settings import Settings

P = ParamSpec("P")
R = TypeVar("R")

console = Console()
err_console = Console(stderr=True)


def load_settings() -> Settings:
    """Settings from the environment, read at command time (never at import time)."""
    from orchestrator.settings import Settings

    return Settings()


def report_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Turn a SteppeError into its message on stderr and the documented exit code."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except SpecValidationError as e:
            for problem in e.problems:
                err_console.print(f"[red]error[/red] {problem}", highlight=False, soft_wrap=True)
            err_console.print(f"{len(e.problems)} problem(s) found", style="red")
            raise typer.Exit(e.exit_code) from None
        except SteppeError as e:
            err_console.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(e.exit_code) from None

    return wrapper
