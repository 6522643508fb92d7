"""Steppe's coordinator side: workflow spec, planner, state store, coordinator loop and CLI."""

__version__ = "0.1.0"
