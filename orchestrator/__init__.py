"""Steppe's coordinator side: workflow spec, planner, state store, coordinator loop and CLI."""

__version__ = "0.1.0"

__all__: list[str] = []  # the public API is in the submodules; this package exports no names yet
