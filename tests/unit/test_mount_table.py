"""The kept mount table (nodemedic.mounts.MountTable) is re-read exactly when the kernel's table
changes. Run in a child in its own private mount namespace (`unshare --mount --propagation
private`): its tmpfs mounts never reach the host."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import REPO

CHILD = textwrap.dedent("""
    import json, os, subprocess, sys
    from nodemedic import mounts

    parsed = []
    real_parse = mounts.parse_mountinfo
    mounts.parse_mountinfo = lambda text: parsed.append(1) or real_parse(text)
    table = mounts.MountTable()
    base = sys.argv[1]
    seen = {}

    def look(name):
        points = [m.mount_point for m in table.read()]
        seen[name] = {"parses": len(parsed), "has_a": f"{base}/a" in points, "has_b": f"{base}/b" in points,
                      "count": len(points)}

    look("first")
    look("unchanged")
    for sub in ("a", "b"):
        os.mkdir(f"{base}/{sub}")
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", f"{base}/a"], check=True)
    look("after a mount")
    look("unchanged again")
    subprocess.run(["mount", "--bind", f"{base}/a", f"{base}/b"], check=True)
    subprocess.run(["umount", f"{base}/a"], check=True)
    look("after a bind and an unmount")
    # what the kept table says is what a fresh read says
    seen["fresh"] = sorted(m.mount_point for m in mounts.parse_mountinfo(open("/proc/self/mountinfo").read()))
    seen["kept"] = sorted(m.mount_point for m in table.read())
    print(json.dumps(seen))
""")


def test_the_kept_table_is_parsed_again_only_when_the_mounts_change(tmp_path):
    if os.geteuid() != 0:
        pytest.fail("the test mounts tmpfs in a private mount namespace: it needs root (CI runs as root)")
    base = os.path.realpath(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(REPO / "daemon"))
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable, "-c", CHILD, base],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["first"]["parses"] == 1 and seen["unchanged"]["parses"] == 1, seen
    assert seen["after a mount"] == {**seen["after a mount"], "parses": 2, "has_a": True}, seen
    assert seen["after a mount"]["count"] == seen["first"]["count"] + 1
    assert seen["unchanged again"]["parses"] == 2, seen
    assert seen["after a bind and an unmount"]["parses"] == 3, seen
    assert not seen["after a bind and an unmount"]["has_a"] and seen["after a bind and an unmount"]["has_b"], seen
    assert seen["kept"] == seen["fresh"]


PROPAGATION = textwrap.dedent("""
    # In a private namespace of its own: a shared tmpfs, and a reader in a slave namespace below it
    # (as nodemedic.service's ProtectSystem namespace is below the node's), which keeps a table
    # while this side mounts and unmounts under the shared directory.
    import subprocess, sys, time
    base, reader = sys.argv[1], sys.argv[2]
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", base], check=True)
    subprocess.run(["mount", "--make-shared", base], check=True)
    subprocess.run(["mkdir", f"{base}/x"], check=True)
    child = subprocess.Popen(["unshare", "--mount", "--propagation", "slave", sys.executable, "-c", reader, base],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    def step(line):
        child.stdin.write(line + "\\n"); child.stdin.flush()
        return child.stdout.readline().strip()
    out = [step("look")]
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", f"{base}/x"], check=True)
    out.append(step("look"))
    subprocess.run(["umount", f"{base}/x"], check=True)
    out.append(step("look"))
    child.stdin.close(); child.wait()
    print(" ".join(out))
""")

READER = textwrap.dedent("""
    import sys
    from nodemedic.mounts import MountTable
    table, base = MountTable(), sys.argv[1]
    for _ in sys.stdin:
        print(any(m.mount_point == f"{base}/x" for m in table.read()), flush=True)
""")


def test_mounts_propagated_into_a_slave_namespace_mark_its_kept_table_changed(tmp_path):
    if os.geteuid() != 0:
        pytest.fail("the test mounts tmpfs in a private mount namespace: it needs root (CI runs as root)")
    env = dict(os.environ, PYTHONPATH=str(REPO / "daemon"))
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable, "-c", PROPAGATION,
                           os.path.realpath(tmp_path), READER], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "True", "False"], done.stdout


def test_a_read_that_fails_is_raised_and_the_next_read_starts_again(monkeypatch):
    from nodemedic import mounts

    table = mounts.MountTable()
    real_read = os.read
    monkeypatch.setattr(mounts.os, "read", lambda fd, n: (_ for _ in ()).throw(OSError(5, "I/O error")))
    with pytest.raises(OSError):
        table.read()
    monkeypatch.setattr(mounts.os, "read", real_read)
    fresh = sorted(m.mount_point for m in mounts.parse_mountinfo(open(mounts.MOUNTINFO).read()))
    assert fresh and sorted(m.mount_point for m in table.read()) == fresh  # never an empty "current" table
