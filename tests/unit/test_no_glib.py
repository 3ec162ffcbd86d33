"""nodemedic's processes run dbus-next on asyncio, and never load PyGObject's GLib (3.7 MiB of
resident heap) although Debian's python3-dbus-next depends on python3-gi and its package
__init__ tries to import it."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import REPO

PROBE = """
import importlib.util, sys
gi_installed = importlib.util.find_spec("gi") is not None
import nodemedic.daemon, nodemedic.kube.run, nodemedic.cli
from dbus_next.aio import MessageBus
print(gi_installed, any(name == "gi" or name.startswith("gi.") for name, mod in sys.modules.items() if mod))
"""


def test_the_daemon_kube_and_cli_modules_load_dbus_next_without_glib():
    env = dict(os.environ, PYTHONPATH=str(REPO / "daemon"))
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    installed, loaded = done.stdout.split()
    # Where gi is installed (CI's host has it: apt's python3-dbus-next pulls it in), it stays unloaded.
    assert installed == "True", "python3-gi is not installed here, so this test would prove nothing"
    assert loaded == "False"
