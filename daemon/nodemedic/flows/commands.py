"""CLI sub-commands of the one-shot flows; cli.py calls add_parsers()."""

from __future__ import annotations

import argparse


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `repoint` and `join` (filled in by the flows' own modules)."""
