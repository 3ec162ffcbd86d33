"""Path source: inotify on the CNI config dir and the containerd root and its ingest dir.

A watched directory may not exist yet, or be deleted, moved or recreated: then its nearest
existing ancestor is watched until it comes back. Where inotify cannot be used (no instances
left, a filesystem without it), watchdog's polling observer stands in, bridged onto the loop.
"""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path

from inotify_simple import INotify
from inotify_simple import flags as F

from nodemedic.sources.events import Event, PathChanged, SourceTrouble

_DIR_EVENTS = (F.CREATE | F.DELETE | F.MOVED_FROM | F.MOVED_TO | F.CLOSE_WRITE | F.ATTRIB
               | F.DELETE_SELF | F.MOVE_SELF | F.ONLYDIR)
_GONE = F.DELETE_SELF | F.MOVE_SELF | F.IGNORED


def _existing_ancestor(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.is_dir():
            return candidate
    return Path("/")


class PathSource:
    def __init__(self, watches: dict[str, Path], queue: asyncio.Queue[Event]) -> None:
        self.watches = watches  # name -> directory
        self.queue = queue
        self._inotify: INotify | None = None
        self._wd: dict[int, Path] = {}  # watch descriptor -> directory actually watched
        self._observer = None

    def open(self) -> None:
        try:
            self._inotify = INotify()
        except OSError as err:
            self._fall_back(f"inotify unavailable ({os.strerror(err.errno)})")
            return
        asyncio.get_running_loop().add_reader(self._inotify.fileno(), self._on_readable)
        self._arm_all()

    def close(self) -> None:
        if self._inotify is not None:
            asyncio.get_running_loop().remove_reader(self._inotify.fileno())
            self._inotify.close()
            self._inotify = None
        if self._observer is not None:
            self._observer.stop()
            self._observer = None

    def _arm_all(self) -> None:
        """Watch each target, or its nearest existing ancestor while it does not exist."""
        assert self._inotify is not None
        wanted = {target for target in self.watches.values()}
        wanted |= {_existing_ancestor(t) for t in self.watches.values() if not t.is_dir()}
        for directory in wanted - set(self._wd.values()):
            if not directory.is_dir():
                continue
            try:
                wd = self._inotify.add_watch(directory, _DIR_EVENTS)
            except OSError as err:
                if err.errno in (errno.ENOENT, errno.ENOTDIR):
                    continue  # raced with a removal; the parent's event re-arms us
                if err.errno == errno.ENOSPC:
                    self._fall_back("no inotify watches left (fs.inotify.max_user_watches)")
                    return
                raise
            self._wd[wd] = directory

    def _on_readable(self) -> None:
        assert self._inotify is not None
        touched: set[Path] = set()
        for event in self._inotify.read(timeout=0):
            directory = self._wd.get(event.wd)
            if directory is None:
                continue
            if event.mask & _GONE:
                self._wd.pop(event.wd, None)
                touched.add(directory)
            else:
                touched.add(directory / event.name if event.name else directory)
        self._arm_all()
        for name, target in self.watches.items():
            if any(t == target or target in t.parents or t in target.parents for t in touched):
                self.queue.put_nowait(PathChanged(name, str(target)))

    def _fall_back(self, reason: str) -> None:
        """Poll with watchdog instead of inotify; events are bridged onto the loop."""
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers.polling import PollingObserver

        loop = asyncio.get_running_loop()
        queue = self.queue
        watches = self.watches

        class Bridge(FileSystemEventHandler):
            def on_any_event(self, event) -> None:  # called on watchdog's thread
                changed = Path(os.fsdecode(event.src_path))
                for name, target in watches.items():
                    if changed == target or target in changed.parents:
                        loop.call_soon_threadsafe(queue.put_nowait, PathChanged(name, str(target)))

        observer = PollingObserver(timeout=2)
        for target in self.watches.values():
            observer.schedule(Bridge(), str(_existing_ancestor(target)), recursive=True)
        observer.start()
        self._observer = observer
        queue.put_nowait(SourceTrouble("paths", f"{reason}; polling every 2 s instead"))
