"""The nodemedic node test bed: a real systemd + journald + D-Bus + containerd node in a box.

See tests/node/README.md. Main entry points: `boot_node()` -> `Node`, `install_nodemedic()`,
the injectors in `testbed.faults`, and the pytest fixtures in tests/node/conftest.py.
"""

from .image import ensure_image
from .node import CommandFailed, Node, NodeError, UnitState, boot_node, install_nodemedic, wait_for

__all__ = [
    "CommandFailed",
    "Node",
    "NodeError",
    "UnitState",
    "boot_node",
    "ensure_image",
    "install_nodemedic",
    "wait_for",
]
