"""nodemedic: notices, confirms and repairs Kubernetes node failures, unattended."""

__version__ = "0.2.0"
