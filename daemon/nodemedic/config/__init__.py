"""Configuration: TOML files → one validated, immutable settings object."""

from nodemedic.config.errors import ConfigError, Problem
from nodemedic.config.loader import LoadedConfig, load_config
from nodemedic.config.model import Settings

__all__ = ["ConfigError", "LoadedConfig", "Problem", "Settings", "load_config"]
