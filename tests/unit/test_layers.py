"""The packages import downward only: import-linter's `layers` contract in pyproject.toml."""

from __future__ import annotations

import contextlib
import io

from importlinter.cli import lint_imports

from tests.conftest import REPO


def test_no_import_runs_back_up_a_layer():
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = lint_imports(config_filename=str(REPO / "pyproject.toml"), no_cache=True)
    assert rc == 0, out.getvalue()
