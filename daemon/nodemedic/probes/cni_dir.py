"""The CNI config dir as containerd sees it: which configs are real (not nodemedic's placeholder).

Read by the detector's condition and by the repairs alike, so it lives beneath both.
"""

from __future__ import annotations

from pathlib import Path

CNI_SUFFIXES = (".conf", ".conflist", ".json")  # what libcni's ConfFiles lists, as go-cni loads them


def real_configs(conf_dir: Path, placeholder_file: str) -> list[Path]:
    try:
        entries = sorted(conf_dir.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [e for e in entries if e.suffix in CNI_SUFFIXES and e.name != placeholder_file and e.is_file()]


def placeholder_present(conf_dir: Path, placeholder_file: str) -> bool:
    """A file at the placeholder's name that containerd would load."""
    placeholder = conf_dir / placeholder_file
    return placeholder.suffix in CNI_SUFFIXES and placeholder.is_file()
