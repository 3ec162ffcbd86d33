"""nodemedic: notices, confirms and repairs Kubernetes node failures, unattended."""

__version__ = "0.1.0"
