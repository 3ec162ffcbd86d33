"""Everything the daemon runs with, loaded and judged in one place: the settings and the
signature catalogue.

`nodemedic run` (at start and on every reload), `nodemedic check-config` and `nodemedic config
show` all call load(): what check-config accepts is exactly what the daemon accepts, and a
problem is reported the same way (PATH:LINE: message) by both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from nodemedic.config import ConfigError, LoadedConfig, Problem, Settings, load_config
from nodemedic.config.files import list_dropins
from nodemedic.detector.signatures import Catalogue, load_catalogue
from nodemedic.hostroot import HOST, HostRoot
from nodemedic.repairs.remedies import REMEDIES

OPERATOR_SIGNATURES = "/etc/nodemedic/signatures.d"


@dataclass(frozen=True)
class Loaded:
    settings: Settings
    catalogue: Catalogue
    config: LoadedConfig
    # The operator chose the metrics path (not the vendor default): create its directory.
    metrics_dir_configured: bool


def known_problems(catalogue: Catalogue) -> frozenset[str]:
    """Problem names `[problems.NAME]` may use: those of the signatures and of the remedies
    (load_config adds the crash loops of the watched units)."""
    return catalogue.problems | frozenset(REMEDIES)


def load(root: HostRoot = HOST, warn: Callable[[str], None] = lambda _msg: None) -> Loaded:
    """Load and check configuration and signatures; ConfigError lists every problem found."""
    problems: list[Problem] = []
    # The operator's signature files as the daemon reads them: a dangling link, a directory or
    # a file the daemon may not read is an error here, not only when the catalogue opens it.
    listing = list_dropins(root.path(OPERATOR_SIGNATURES), lambda _msg: None, base=root.base,
                           allow_masking=True, skip_hidden=False)
    problems.extend(listing.problems)
    catalogue: Catalogue | None = None
    if not listing.problems:  # never open what was found unreadable: a FIFO would block for ever
        try:
            catalogue = load_catalogue(root)
        except ConfigError as err:
            problems.extend(err.problems)
    config: LoadedConfig | None = None
    try:
        config = load_config(root, warn, known_problems=known_problems(catalogue) if catalogue else None)
    except ConfigError as err:
        problems.extend(err.problems)
    if problems or catalogue is None or config is None:
        raise ConfigError(problems)
    configured = config.origins[("metrics", "textfile")].path != config.files[0]
    return Loaded(config.settings, catalogue, config, configured)
