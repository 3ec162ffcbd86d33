"""What containerd is on this node: its version, its config file's version, its deprecation
warnings and the cgroup driver it reports; shared by `nodemedic doctor` and `nodemedic status`.

Every part is asked separately and a failed part leaves its field empty with the reason in
`errors`: a containerd that does not answer still has a config file worth reporting.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from nodemedic.probes import containerd_config
from nodemedic.probes.cri import DEPRECATIONS_CONDITION, CriClient, CriError

__all__ = ["DEPRECATIONS_CONDITION", "ContainerdInfo", "gather", "release"]

_MAJOR = re.compile(r"^v?(\d+)\.(\d+)")


def release(version: str) -> tuple[int, int] | None:
    """(major, minor) of a runtime version string: "v2.1.9", "2.1.9+unknown", "1.6.20~ds1"."""
    match = _MAJOR.match(version)
    return (int(match.group(1)), int(match.group(2))) if match else None


@dataclass
class ContainerdInfo:
    version: str = ""  # as CRI Version reports it
    api_version: str = ""
    config_path: str = ""
    config_version: int | None = None  # None: the file could not be parsed
    config_exists: bool = False
    # Status' ContainerdHasNoDeprecationWarnings: id -> message; None when not reported (1.x).
    deprecations: dict[str, str] | None = None
    # RuntimeConfig's answer; None when containerd does not implement it (before 2.0).
    cgroup_driver: str | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def major(self) -> int | None:
        found = release(self.version)
        return found[0] if found else None

    def config_note(self) -> str:
        """How this containerd reads this file; "" when nothing is worth saying."""
        if self.config_version is None:
            return ""
        if self.major is not None and self.major >= 2 and self.config_version < 3:
            return (f"containerd {self.major}.x migrates this version {self.config_version} file in memory at every "
                    "start (\"Configuration migrated from version 2\"); `containerd config migrate` prints it as "
                    "version 3")
        if self.major is not None and self.major < 2 and self.config_version >= 3:
            return f"containerd {self.version} does not read config version 3: it needs containerd 2.x"
        return ""

    def cgroup_note(self, kubelet_driver: str) -> str:
        """Where a kubelet/containerd cgroup-driver mismatch can happen on this node, and where not."""
        if self.cgroup_driver is None:
            return ("containerd does not answer RuntimeConfig (before 2.0): kubelet uses its own cgroupDriver"
                    + (f" ({kubelet_driver})" if kubelet_driver else "") + ", so a mismatch with runc's "
                    "SystemdCgroup can happen")
        note = (f"containerd reports cgroup driver {self.cgroup_driver} (RuntimeConfig): kubelet >= 1.31 "
                "(KubeletCgroupDriverFromCRI) takes it from there, so no mismatch can happen with it; only an older "
                "kubelet, or one with that feature gate off, uses its own cgroupDriver")
        if kubelet_driver and kubelet_driver != self.cgroup_driver:
            note += f" ({kubelet_driver}, which differs: such a kubelet would mismatch)"
        return note

    def as_json(self) -> dict[str, object]:
        out = asdict(self)
        out["config_note"] = self.config_note()
        return out


async def gather(cri: CriClient, config_file: Path, config_path: str) -> ContainerdInfo:
    """`config_file` is where to read the file (under a --root); `config_path` is how to name it."""
    info = ContainerdInfo(config_path=config_path, config_exists=config_file.exists())
    try:
        info.config_version = containerd_config.load(config_file).version
    except containerd_config.ContainerdConfigError as err:
        info.errors.append(str(err))
    try:
        version = await cri.version()
        info.version, info.api_version = version.runtime_version, version.runtime_api_version
        info.deprecations = (await cri.status()).deprecations
        info.cgroup_driver = await cri.cgroup_driver()
    except CriError as err:
        info.errors.append(f"CRI: {err}")
    return info
