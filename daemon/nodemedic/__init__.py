"""nodemedic: notices, confirms and repairs Kubernetes node failures, unattended."""

import sys

__version__ = "0.2.0"

# dbus-next's package __init__ imports its GLib backend, which imports PyGObject's GLib when it is
# installed, and Debian's python3-dbus-next depends on python3-gi: 3.7 MiB of resident heap in
# every nodemedic process for a main loop it never runs (it uses dbus_next.aio). A None entry
# makes that import fail as "not installed", which dbus-next handles by design. setdefault: a
# process that already loaded gi keeps it.
sys.modules.setdefault("gi", None)  # type: ignore[arg-type]
