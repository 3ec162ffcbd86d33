"""The removal walk against mounts and renames made *while* it walks (issue 18, items 1 and 12).

The walk runs in a child in a private mount namespace (walk_race_child.py, started under
`unshare --mount --propagation private`): its bind mounts never reach the host, and this process
judges the real files from the host's namespace, where none of them exist. A racer in the child
fires on the walk's n-th removal call: inside that call, deterministically (as the reported
attack did on nodemedic's first unlink), and/or from a thread racing the walk.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

CHILD = Path(__file__).with_name("walk_race_child.py")
DAEMON = Path(__file__).resolve().parents[2] / "daemon"
INGEST = ("var", "lib", "containerd", "io.containerd.content.v1.content", "ingest")
DAY = 24 * 3600


class MountNamespace:
    """One child in its own private mount namespace, serving plans one JSON line at a time."""

    def __init__(self) -> None:
        if os.geteuid() != 0:
            pytest.fail("the race tests make bind mounts in a private mount namespace: they need root "
                        "(CI runs as root)")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(DAEMON), os.environ.get("PYTHONPATH")])))
        self.proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", sys.executable, str(CHILD)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)

    def run(self, plan: dict) -> dict:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(plan) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"the walk's child died (exit {self.proc.wait()})"
        return json.loads(line)

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        assert self.proc.wait(timeout=60) == 0


@pytest.fixture(scope="module")
def mountns() -> Iterator[MountNamespace]:
    child = MountNamespace()
    yield child
    child.close()


def files_under(path: Path) -> dict[str, bytes]:
    """Every regular file under `path` (links not followed), by relative path, with its bytes."""
    found = {}
    for dirpath, _dirs, names in os.walk(path):
        for name in names:
            full = Path(dirpath, name)
            if full.is_file() and not full.is_symlink():
                found[str(full.relative_to(path))] = full.read_bytes()
    return found


def make_protected(base: Path) -> Path:
    protected = base / "srv" / "media"
    (protected / "album").mkdir(parents=True)
    (protected / "movie.bin").write_bytes(hashlib.sha256(b"movie").digest() * 8192)  # 256 KiB
    (protected / "album" / "song.flac").write_bytes(b"\x00music" * 100)
    (protected / "notes.txt").write_text("keep me")
    return protected


def old_ingest_entry(ingest: Path, name: str, fanout: int) -> Path:
    """An ingest entry as containerd leaves one (ref, data, …), with a large subdirectory tree
    under it, every file a day old: stale by any stale_age."""
    entry = ingest / name
    entry.mkdir(parents=True)
    for meta in ("ref", "data", "startedat", "updatedat", "total"):
        (entry / meta).write_text(meta)
    for i in range(fanout):
        for j in range(3):
            for k in range(3):
                leaf = entry / f"sub{i}" / f"d{j}" / f"e{k}"
                leaf.mkdir(parents=True)
                for level in (leaf.parent.parent, leaf.parent, leaf):
                    (level / f"f{k}").write_bytes(b"layer" * 64)
    old = time.time() - DAY
    for dirpath, dirs, names in os.walk(entry):
        for name in dirs + names:
            os.utime(Path(dirpath, name), (old, old))
    os.utime(entry, (old, old))
    return entry


# ---- the reported attack ------------------------------------------------------------------------

def test_a_bind_mount_made_during_the_walk_never_empties_the_protected_dir(tmp_path, mountns):
    """An old-looking ingest entry with a large subdirectory tree; on nodemedic's first unlink the
    protected dir is bind-mounted onto one of the entry's subdirectories not yet walked."""
    base = Path(os.path.realpath(tmp_path))
    protected = make_protected(base)
    before = files_under(protected)
    entry = old_ingest_entry(base.joinpath(*INGEST), "0" * 64, fanout=4)
    result = mountns.run({"scenario": "walk", "top": str(entry), "guard": [str(protected)], "trigger": 1,
                          "sync": [["mount-unvisited", str(protected), [str(entry / f"sub{i}") for i in range(4)]]]})
    assert [a[0] for a in result["done"]] == ["mount"], result  # the attack really happened
    assert files_under(protected) == before, f"a protected file was removed: {result}"
    assert result["outcome"] == "refused" and "mount point" in result["error"], result


def test_the_ingest_step_refuses_an_entry_mounted_into_during_its_removal_and_cleans_the_rest(tmp_path, mountns):
    """The same attack through nodemedic's own step: the attacked entry is refused and reported,
    the other stale entry is removed, the protected dir is byte-identical."""
    base = Path(os.path.realpath(tmp_path))
    protected = make_protected(base)
    before = files_under(protected)
    ingest = base.joinpath(*INGEST)
    attacked = old_ingest_entry(ingest, "a" * 64, fanout=3)
    other = old_ingest_entry(ingest, "b" * 64, fanout=1)
    result = mountns.run({"scenario": "ingest", "root": str(base), "guard": [str(protected)], "trigger": 1,
                          "sync": [["mount-unvisited", str(protected), [str(attacked / f"sub{i}") for i in range(3)]]]})
    assert [a[0] for a in result["done"]] == ["mount"], result
    assert files_under(protected) == before, f"a protected file was removed: {result}"
    assert result["outcome"] == "completed", result
    (message,) = result["returned"]
    assert message.startswith(f"removed 1 stale ingest entry: {other.name}; refused 1: {attacked.name} ("), message
    assert "mount point" in message
    assert not other.exists() and attacked.exists() and ingest.is_dir()


# ---- item 12: one entry with a mount in it ------------------------------------------------------

def test_an_ingest_entry_with_a_mount_in_it_is_refused_and_every_other_entry_cleaned(tmp_path, mountns):
    base = Path(os.path.realpath(tmp_path))
    protected = make_protected(base)
    ingest = base.joinpath(*INGEST)
    entries = [old_ingest_entry(ingest, c * 64, fanout=1) for c in "123"]
    mounted = entries[1]
    old = time.time() - DAY  # what is mounted looks as old as the rest: the entry counts as stale
    for path in [protected, *protected.rglob("*")]:
        os.utime(path, (old, old))
    before = files_under(protected)
    result = mountns.run({"scenario": "ingest", "root": str(base), "guard": [str(protected)],
                          "mounts": [[str(protected), str(mounted / "sub0" / "d1")]], "trigger": -1})
    assert result["outcome"] == "completed", result
    (message,) = result["returned"]
    removed = ", ".join(e.name for e in sorted({entries[0], entries[2]}))
    assert message.startswith("removed 2 stale ingest entries: "), message
    assert sorted(message.split("; ")[0].split(": ")[1].split(", ")) == sorted(removed.split(", ")), message
    assert f"refused 1: {mounted.name} (" in message and "mount point" in message, message
    assert not entries[0].exists() and not entries[2].exists()
    assert (mounted / "ref").exists(), "nothing of the refused entry is removed"
    assert files_under(protected) == before


# ---- the property: random trees, racing mounts and renames ---------------------------------------

NAMES = st.text(alphabet="abcxyz", min_size=1, max_size=3)
TREES = st.tuples(
    st.lists(st.lists(NAMES, min_size=1, max_size=3), min_size=1, max_size=8),  # directories
    st.lists(st.tuples(st.integers(0, 63), st.integers(1, 6)), max_size=8),  # files: (directory index, how many)
)
ACTIONS = st.lists(st.tuples(st.sampled_from(["mount", "mount-album", "mount-file", "move-out", "move-here",
                                              "swap-link"]),
                             st.integers(0, 63), st.booleans()),  # (what, on which entry, in the racing thread?)
                   min_size=1, max_size=4)


def build(top: Path, tree) -> tuple[list[Path], list[Path]]:
    """The tree's directories (top first) and its files."""
    dirs_spec, files_spec = tree
    top.mkdir(parents=True)
    dirs = [top]
    for parts in dirs_spec:
        rel = Path(*parts)
        try:
            (top / rel).mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            continue
        dirs += [top / p for p in [*reversed(rel.parents), rel] if str(p) != "." and top / p not in dirs]
    files = []
    for index, count in files_spec:
        for n in range(count):
            path = dirs[index % len(dirs)] / f"f{n}"  # never a directory's name (those are abcxyz)
            if not path.exists():
                path.write_bytes(str(path).encode())
                files.append(path)
    return dirs, files


def plan_actions(actions, dirs: list[Path], files: list[Path], protected: Path, outside: Path):
    sync, racer = [], []
    for n, (what, pick, threaded) in enumerate(actions):
        target = dirs[pick % len(dirs)]
        if what == "mount":
            action = ["mount", str(protected), str(target)]
        elif what == "mount-album":
            action = ["mount", str(protected / "album"), str(target)]
        elif what == "mount-file":
            if not files:
                continue
            action = ["mount", str(protected / "notes.txt"), str(files[pick % len(files)])]
        elif what == "move-here":
            action = ["move-here", str(protected / f"moved-{n}")]
        elif target == dirs[0]:
            continue  # the walk's root is for the mounts; renaming it is renaming the target itself
        elif what == "move-out":
            action = ["move", str(target), str(protected / f"moved-{n}")]
        else:
            action = ["swap-link", str(target), str(outside / f"away-{n}"), str(protected)]
        (racer if threaded else sync).append(action)
    return sync, racer


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(tree=TREES, actions=ACTIONS, trigger=st.integers(0, 12), pause=st.sampled_from([0, 0.0002, 0.002]))
def test_racing_mounts_and_renames_never_cost_a_protected_or_outside_file(tmp_path_factory, mountns,
                                                                        tree, actions, trigger, pause):
    base = Path(os.path.realpath(tmp_path_factory.mktemp("race")))
    protected = make_protected(base)
    outside = base / "var" / "lib" / "other"
    outside.mkdir(parents=True)
    (outside / "keep.txt").write_text("not the target")
    top = base / "var" / "lib" / "state"
    dirs, files = build(top, tree)
    sync, racer = plan_actions(actions, dirs, files, protected, outside)
    protected_before, outside_before = files_under(protected), files_under(outside)
    target_before = {str(p): p.read_bytes() for p in files}

    trigger %= len(dirs) + len(files) + 1  # one removal call per entry: the racer always fires
    result = mountns.run({"scenario": "walk", "top": str(top), "guard": [str(protected)], "trigger": trigger,
                          "sync": sync, "racer": racer, "pause": pause})

    # What the race did, for --hypothesis-show-statistics: the racer must often land.
    event(f"outcome: {result['outcome']}")
    for action in result["done"]:
        event(f"took effect: {action[0]}{' (thread)' if action in racer else ''}")
    # Completes, or refuses with UnsafeOperation; never anything else.
    assert result["outcome"] in ("completed", "refused"), result.get("traceback", result)
    # Nothing that was protected or outside the target when the walk began is removed.
    protected_after, outside_after = files_under(protected), files_under(outside)
    assert {k: protected_after.get(k) for k in protected_before} == protected_before, result
    assert {k: outside_after.get(k) for k in outside_before} == outside_before, result
    if result["outcome"] == "completed":
        assert not top.exists() and not top.is_symlink(), result
        assert all(p == str(top) or p.startswith(str(top) + "/") for p in result["returned"]), result
    # A subtree renamed out of the target inside the hook (no racing thread to blur the order)
    # loses at most the one entry whose removal was under way: the walk re-checks where each
    # directory hangs before every removal.
    if not racer:
        lost = []
        for path in target_before:
            if path in result["before"]:
                continue  # removed before anything moved: the walk's to remove
            now = path
            for action in result["done"]:
                if action[0] in ("move", "swap-link") and now.startswith(action[1] + "/"):
                    now = action[2] + now[len(action[1]):]
            if now != path and not os.path.exists(now):
                lost.append(path)
        event(f"entries lost to a rename in the hook: {len(lost)}")
        assert len(lost) <= 1, (lost, result)


# ---- single-path operations: a mount on the parent made between check and change ----------------

def everything_under(path: Path) -> dict[str, bytes | None]:
    """Every entry under `path`, links not followed: files with their bytes, the rest as None."""
    found: dict[str, bytes | None] = {}
    for dirpath, dirs, names in os.walk(path):
        for name in dirs + names:
            full = Path(dirpath, name)
            found[str(full.relative_to(path))] = full.read_bytes() if full.is_file() and not full.is_symlink() else None
    return found


def decoy_dir(base: Path) -> Path:
    """A directory nodemedic may change, holding a file named like one in the protected dir."""
    conf = base / "etc" / "cni" / "net.d"
    conf.mkdir(parents=True)
    (conf / "notes.txt").write_text("placeholder")
    return conf


def test_a_mount_on_the_parent_during_remove_file_never_unlinks_a_protected_file(tmp_path, mountns):
    """The protected dir is bind-mounted onto the file's directory inside the unlink call, after
    every check: the unlink is relative to the directory opened before, so it removes the file
    that was checked, not the protected file of the same name."""
    base = Path(os.path.realpath(tmp_path))
    protected = make_protected(base)
    before = everything_under(protected)
    conf = decoy_dir(base)
    result = mountns.run({"scenario": "file", "top": str(conf / "notes.txt"), "guard": [str(protected)],
                          "trigger": 1, "sync": [["mount", str(protected), str(conf)]]})
    assert [a[0] for a in result["done"]] == ["mount"], result  # the attack really happened
    assert everything_under(protected) == before, f"a protected file was removed: {result}"
    assert result["outcome"] == "completed" and result["returned"] == ["True"], result
    assert not (conf / "notes.txt").exists(), "the file that was checked is the one removed"


def test_a_mount_on_the_parent_during_atomic_write_never_replaces_a_protected_file(tmp_path, mountns):
    """The same mount, made when the temp file is created: the temp file and the rename stay in
    the directory that was checked and opened."""
    base = Path(os.path.realpath(tmp_path))
    protected = make_protected(base)
    before = everything_under(protected)
    conf = decoy_dir(base)
    result = mountns.run({"scenario": "write", "top": str(conf / "notes.txt"), "guard": [str(protected)],
                          "data": "overwritten", "on": "create", "trigger": 1,
                          "sync": [["mount", str(protected), str(conf)]]})
    assert [a[0] for a in result["done"]] == ["mount"], result
    assert everything_under(protected) == before, f"a protected file was changed: {result}"
    assert result["outcome"] == "completed", result
    assert (conf / "notes.txt").read_text() == "overwritten" and os.listdir(conf) == ["notes.txt"]


@pytest.mark.parametrize("scenario, target", [("file", "notes.txt"), ("write", "notes.txt"),
                                              ("mkdir", "new/sub"), ("walk", "entry")])
def test_a_mount_on_the_parent_made_after_the_check_and_before_the_open_is_refused(tmp_path, mountns,
                                                                                  scenario, target):
    """The mount is made inside the first directory open, after mountinfo was read and judged:
    the directory then opened is on another mount than the one checked, and nothing is changed."""
    base = Path(os.path.realpath(tmp_path))
    protected = make_protected(base)
    before = everything_under(protected)
    conf = decoy_dir(base)
    (conf / "entry" / "sub").mkdir(parents=True)
    (conf / "entry" / "sub" / "notes.txt").write_text("x")
    decoys = everything_under(conf)
    result = mountns.run({"scenario": scenario, "top": str(conf / target), "guard": [str(protected)],
                          "data": "overwritten", "on": "opendir", "trigger": 1,
                          "sync": [["mount", str(protected), str(conf)]]})
    assert [a[0] for a in result["done"]] == ["mount"], result
    assert everything_under(protected) == before, f"a protected path was changed: {result}"
    assert result["outcome"] == "refused" and "changed since it was checked" in result["error"], result
    assert everything_under(conf) == decoys, "nothing is changed once the mount is found"


# ---- a protected dir bind-mounted onto an ancestor before nodemedic looks -----------------------

@pytest.mark.parametrize("scenario, target", [("walk", "album"), ("file", "notes.txt"), ("write", "notes.txt"),
                                              ("mkdir", "new")])
def test_a_protected_dir_mounted_onto_an_ancestor_is_refused(tmp_path, mountns, scenario, target):
    """realpath() does not show mounts: <ingest>/entry/album names nothing protected, yet with
    the protected dir bind-mounted onto <ingest>/entry it is the protected album. The mount that
    holds the target exposes the protected dir (same filesystem, its root at the protected
    dir's place in it): refused, and the protected dir is byte-identical."""
    base = Path(os.path.realpath(tmp_path))
    protected = make_protected(base)
    before = everything_under(protected)
    entry = base.joinpath(*INGEST) / "entry"
    entry.mkdir(parents=True)
    result = mountns.run({"scenario": scenario, "top": str(entry / target), "guard": [str(protected)],
                          "data": "overwritten", "mounts": [[str(protected), str(entry)]], "trigger": -1})
    assert everything_under(protected) == before, f"a protected path was changed: {result}"
    assert result["outcome"] == "refused" and "exposes protected path" in result["error"], result


@pytest.mark.parametrize("scenario", ["file", "write"])
def test_a_protected_file_mounted_onto_the_target_is_refused(tmp_path, mountns, scenario):
    base = Path(os.path.realpath(tmp_path))
    protected = make_protected(base)
    before = everything_under(protected)
    conf = decoy_dir(base)
    result = mountns.run({"scenario": scenario, "top": str(conf / "notes.txt"), "guard": [str(protected)],
                          "data": "overwritten", "mounts": [[str(protected / "notes.txt"), str(conf / "notes.txt")]],
                          "trigger": -1})
    assert everything_under(protected) == before, f"a protected file was changed: {result}"
    assert result["outcome"] == "refused" and "exposes protected path" in result["error"], result
    assert (conf / "notes.txt").read_text() == "placeholder"


def test_a_mount_of_a_protected_dirs_parent_exposes_only_the_protected_dir(tmp_path, mountns):
    """Bind-mount the protected dir's parent onto the entry: entry/media is the protected dir and
    is refused; entry/other/x.txt is a sibling's file, not protected (as /srv/other/x.txt is
    not), and is removed."""
    base = Path(os.path.realpath(tmp_path))
    protected = make_protected(base)
    before = everything_under(protected)
    (protected.parent / "other").mkdir()
    (protected.parent / "other" / "x.txt").write_text("not protected")
    entry = base.joinpath(*INGEST) / "entry"
    entry.mkdir(parents=True)
    mounts = [[str(protected.parent), str(entry)]]
    refused = mountns.run({"scenario": "file", "top": str(entry / "media" / "notes.txt"),
                           "guard": [str(protected)], "mounts": mounts, "trigger": -1})
    assert refused["outcome"] == "refused" and "exposes protected path" in refused["error"], refused
    allowed = mountns.run({"scenario": "file", "top": str(entry / "other" / "x.txt"), "guard": [str(protected)],
                           "mounts": mounts, "trigger": -1})
    assert allowed["outcome"] == "completed" and allowed["returned"] == ["True"], allowed
    assert not (protected.parent / "other" / "x.txt").exists()
    assert everything_under(protected) == before


# ---- a protected dir renamed into place between the check and the open --------------------------

@pytest.mark.parametrize("scenario, target", [("file", "notes.txt"), ("write", "notes.txt"), ("mkdir", "new/sub"),
                                              ("walk", "")])
def test_a_protected_dir_renamed_into_place_after_the_check_is_refused_by_identity(tmp_path, mountns,
                                                                                   scenario, target):
    """Inside the first directory open, after every name and mount check: the decoy dir is moved
    away and the protected dir renamed to its place (for the walk: to a directory the walk has
    listed but not yet entered). Same filesystem, same mount, an innocent name: only its
    identity tells, and nothing in it is changed."""
    base = Path(os.path.realpath(tmp_path))
    protected = make_protected(base)
    before = everything_under(protected)
    conf = decoy_dir(base)
    (conf / "entry" / "sub").mkdir(parents=True)
    if scenario == "walk":
        moves = [["move", str(conf / "entry" / "sub"), str(base / "away")], ["move", str(protected),
                                                                             str(conf / "entry" / "sub")]]
        now = conf / "entry" / "sub"
    else:
        moves = [["move", str(conf), str(base / "away")], ["move", str(protected), str(conf)]]
        now = conf
    result = mountns.run({"scenario": scenario, "top": str(conf / target) if target else str(conf),
                          "guard": [str(protected)], "data": "overwritten", "on": "opendir", "trigger": 1,
                          "sync": moves})
    assert [a[0] for a in result["done"]] == ["move", "move"], result  # the attack really happened
    assert everything_under(now) == before, f"a protected path was changed: {result}"
    assert result["outcome"] == "refused" and "protected" in result["error"], result
