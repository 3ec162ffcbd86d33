"""Small helpers for unit tests that run nodemedic on a throw-away --root tree."""

from __future__ import annotations

from pathlib import Path

from nodemedic.cli import main


def write(root: Path, path: str, text: str) -> Path:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    return target


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err
