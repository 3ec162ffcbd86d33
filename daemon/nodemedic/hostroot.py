"""Every path the program touches, relative to an optional `--root` (like `systemctl --root`)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class HostRoot:
    """Maps absolute host paths onto a base directory; `/` for the real host."""

    base: Path = Path("/")

    def path(self, absolute: str | Path) -> Path:
        p = Path(absolute)
        if not p.is_absolute():
            raise ValueError(f"not an absolute path: {p}")
        if self.base == Path("/"):
            return p
        return self.base / p.relative_to("/")

    def vendor_dir(self) -> Path:
        """Where the shipped defaults and signatures live.

        The Debian package installs them to /usr/share/nodemedic; a wheel install puts them
        under the interpreter prefix; a source checkout has them in etc/nodemedic. The first
        that exists wins, so `nodemedic` works the same from a fresh clone and from the .deb.
        """
        candidates = [
            self.path("/usr/share/nodemedic"),
            Path(sys.prefix) / "share" / "nodemedic",
            Path(__file__).resolve().parents[2] / "etc" / "nodemedic",
        ]
        for candidate in candidates:
            if (candidate / "nodemedic.toml").is_file() or (candidate / "defaults.toml").is_file():
                return candidate
        return candidates[-1]

    def vendor_defaults(self) -> Path:
        vendor = self.vendor_dir()
        installed = vendor / "nodemedic.toml"
        # In the source tree etc/nodemedic/nodemedic.toml is the operator's commented template,
        # and the vendor defaults are etc/nodemedic/defaults.toml.
        source = vendor / "defaults.toml"
        return source if source.is_file() else installed


HOST = HostRoot()
