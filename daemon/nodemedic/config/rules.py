"""Rules that relate two settings, checked on the merged result.

A problem is reported where the operator set one of the keys (the later file wins the blame,
as it wins the value), and names where the other one was set.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath

from nodemedic.config.errors import Problem
from nodemedic.config.model import Settings
from nodemedic.config.tomlfile import KeyPath

Origins = Mapping[KeyPath, tuple[Path, int]]


def _where(origins: Origins, key: KeyPath) -> tuple[Path, int]:
    return origins.get(key, (Path("?"), 0))


class _Checker:
    def __init__(self, origins: Origins, files: Sequence[Path]) -> None:
        self.origins = origins
        self.order = {path: index for index, path in enumerate(files)}
        self.problems: list[Problem] = []

    def blame(self, first: KeyPath, second: KeyPath, message: str) -> None:
        """A problem at whichever key was set later (in reading order), naming the other."""
        a, b = _where(self.origins, first), _where(self.origins, second)
        here, there, other = (a, b, second) if self.order.get(a[0], -1) >= self.order.get(b[0], -1) else (b, a, first)
        self.problems.append(Problem(here[0], here[1],
                                     f"{message} ({'.'.join(other)} is set at {there[0]}:{there[1]})"))


def _overlaps(a: str, b: str) -> bool:
    pa, pb = PurePosixPath(a), PurePosixPath(b)
    return pa == pb or pa in pb.parents or pb in pa.parents


def cross_check(settings: Settings, origins: Origins, files: Sequence[Path]) -> list[Problem]:
    check = _Checker(origins, files)
    policy = settings.policy
    # nodemedic's own files: inside (or around) a protected path every write of them is refused,
    # and the daemon could neither persist a transition nor report one.
    own = [(("daemon", "state_dir"), settings.daemon.state_dir),
           (("daemon", "runtime_dir"), settings.daemon.runtime_dir)]
    if settings.metrics.textfile:
        own.append((("metrics", "textfile"), settings.metrics.textfile))
    for key, path in own:
        for protected in policy.protected_paths:
            if _overlaps(path, protected):
                check.blame(key, ("policy", "protected_paths"), f"{'.'.join(key)} {path} overlaps protected path "
                            f"{protected}: nodemedic could not write its own files there")
    return check.problems
