"""What a reload can apply to the running daemon, and what only a restart can.

Everything `nodemedic config show` prints is what the daemon acts on. Most settings are read
where they are used, so a reload applies them at once (policy.protected_paths by a new safety
guard). The keys below are bound at start to something that stays: the journal's matches and
the D-Bus unit subscriptions (daemon.units), the inotify watches (the CNI dir, containerd's
root), the open state files, the CRI client, the metrics file. A reload that changes one of
them is refused as a whole, with the reason, and the old configuration stays in force.
"""

from __future__ import annotations

from typing import Any

from nodemedic.config.loader import LoadedConfig
from nodemedic.config.model import Settings
from nodemedic.config.tomlfile import KeyPath

RESTART_ONLY: dict[KeyPath, str] = {
    ("daemon", "units"): "the journal matches and the D-Bus subscriptions are made at start",
    ("daemon", "state_dir"): "the state and journal cursor files are opened at start",
    ("daemon", "runtime_dir"): "the runtime directory is the unit's, made at start",
    ("journal", "replay_grace"): "the journal is replayed only at start",
    ("journal", "replay_window"): "the journal is replayed only at start",
    ("paths", "cni_conf_dir"): "its inotify watch is set at start",
    ("paths", "containerd_root"): "its inotify watches (root and ingest) are set at start",
    ("paths", "containerd_socket"): "the CRI client is connected at start",
    ("metrics", "textfile"): "the metrics file is chosen at start",
}


def _value(settings: Settings, key: KeyPath) -> Any:
    value: Any = settings
    for part in key:
        value = getattr(value, part)
    return value


def restart_only_changes(old: LoadedConfig, new: LoadedConfig) -> list[tuple[str, str, str]]:
    """(dotted key, where the new value is set, why it needs a restart) for each changed key."""
    changes = []
    for key, why in RESTART_ONLY.items():
        if _value(old.settings, key) != _value(new.settings, key):
            origin = new.origins.get(key) or old.origins.get(key)
            changes.append((".".join(key), str(origin), why))
    return changes
