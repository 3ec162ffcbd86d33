"""pytest fixtures for the node test bed (see README.md in this directory).

Every test in tests/node that uses the `node` fixture is marked `node` automatically. A node test
never skips: without root or the tools it fails and says what is missing, so CI cannot pass by
running nothing.

Stacks (testbed/stacks.py): a module says which stacks its tests run on in one line,

    pytestmark = [pytest.mark.node, pytest.mark.stacks("trixie", "bookworm", "trixie-containerd2")]

and every test that uses `node` (or `stack`) runs once per stack, all of a module's tests on one
stack before the next (`test_x[bookworm]`). A module that declares nothing runs on
`stacks.DEFAULT` (trixie, Debian's stable release) only. NODEMEDIC_TESTBED_STACKS=a,b deselects
(never skips) the other stacks for a run.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
# One import name for the test bed everywhere: tests.node.testbed (from the repo root), and
# nodemedic's probes from the working tree.
for p in (str(HERE.parents[1]), str(HERE.parents[1] / "daemon")):
    if p not in sys.path:
        sys.path.insert(0, p)

from tests.node.testbed import faults, stacks  # noqa: E402
from tests.node.testbed.kube_fixtures import control_plane, kube_binaries, kubelet  # noqa: E402, F401
from tests.node.testbed.node import Node, boot_node  # noqa: E402
from tests.node.testbed.stacks import Stack  # noqa: E402

STACKS_ENV = "NODEMEDIC_TESTBED_STACKS"
HOST_KERNEL_ENV = "NODEMEDIC_TESTBED_HOST_KERNEL"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "stacks(*names): the test bed stacks (testbed/stacks.py) a node test runs on; "
        f"default: {stacks.DEFAULT} only",
    )

    # CI stops a run with SIGTERM: turn it into an interrupt so fixtures still halt and remove
    # their nodes (Python's default for SIGTERM would skip every finalizer).
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)


def declared_stacks(definition: pytest.Item) -> list[str]:
    """The stacks a test declared with the `stacks` marker (closest wins), else the default."""
    marker = definition.get_closest_marker("stacks")
    names = list(marker.args) if marker is not None else [stacks.default_stack().name]
    if not names:
        raise ValueError(f"{definition.nodeid}: @pytest.mark.stacks() names no stack")
    for name in names:
        stacks.get(name)  # an unknown name fails collection, loudly
    return names


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # `stack` is module-scoped and parametrized indirectly: pytest then runs a module's tests
    # stack by stack, and each stack's module fixtures (the node first) are set up once.
    if "stack" in metafunc.fixturenames:
        names = declared_stacks(metafunc.definition)
        metafunc.parametrize("stack", names, indirect=True, scope="module", ids=names)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "node" in getattr(item, "fixturenames", ()) and HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.node)
    # A test that must change the host kernel's own settings (nodes share its kernel, and some
    # sysctls are global) never runs on a shared machine: CI and developers' machines forbid it.
    # It is deselected, reported as such and never counted as passed; a dedicated VM opts in.
    if os.environ.get(HOST_KERNEL_ENV) != "1":
        host_kernel = [item for item in items if item.get_closest_marker("host_kernel")]
        if host_kernel:
            config.hook.pytest_deselected(items=host_kernel)
            items[:] = [item for item in items if not item.get_closest_marker("host_kernel")]
    wanted = {s.strip() for s in os.environ.get(STACKS_ENV, "").split(",") if s.strip()}
    for name in wanted:
        stacks.get(name)
    if wanted:
        keep, drop = [], []
        for item in items:
            callspec = getattr(item, "callspec", None)
            stack = callspec.params.get("stack") if callspec is not None else None
            (drop if stack is not None and stack not in wanted else keep).append(item)
        if drop:
            config.hook.pytest_deselected(items=drop)
            items[:] = keep


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.failed:
        # Remember per module, so the node fixture can dump the node's state before it goes.
        item.module.__dict__["_nodebed_failed"] = True  # type: ignore[attr-defined]
    return report


def _dump(node: Node) -> None:
    """What CI needs to debug a failed node test: failed units, nodemedic's own decisions (the
    journal's tail alone is mostly the module's teardown: containerd's 80 start-up lines per
    restart push them out), and the journal's tail."""
    try:
        print(f"\n===== node {node.name}: systemctl --failed =====", file=sys.stderr)
        print(node.systemctl("--failed", "--no-legend", check=False).stdout, file=sys.stderr)
        print(f"===== node {node.name}: nodemedic's journal (last 100) =====", file=sys.stderr)
        units = ("nodemedic.service", "nodemedic-step@*.service", "nodemedic-kube.service")
        argv = ["journalctl", "--no-pager", "-n", "100", *(f"--unit={u}" for u in units)]
        print(node.run(argv, check=False).stdout, file=sys.stderr)
        print(f"===== node {node.name}: journal (last 150) =====", file=sys.stderr)
        print(node.run(["journalctl", "--no-pager", "-n", "150"], check=False).stdout, file=sys.stderr)
    except Exception as e:  # noqa: BLE001 - diagnostics must not hide the real failure
        print(f"(could not collect node diagnostics: {e})", file=sys.stderr)


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest) -> Stack:
    """The stack this run of the module's tests is on (parametrized by pytest_generate_tests)."""
    return stacks.get(getattr(request, "param", None))


@pytest.fixture(scope="module")
def node(request: pytest.FixtureRequest, stack: Stack) -> Iterator[Node]:
    """One booted node per test module and stack, with the working tree's nodemedic installed (not
    started). Tests in a module share it, so every fault must be undone (use `inject`)."""
    prefix = "nm-" + request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_").replace("_", "-")[:20]
    n = boot_node(prefix, stack=stack)
    try:
        yield n
    finally:
        if request.module.__dict__.get("_nodebed_failed") or os.environ.get("NODEMEDIC_TESTBED_DUMP"):
            _dump(n)
        n.stop()


@pytest.fixture
def inject(node: Node) -> Iterator[Callable[..., faults.Fault]]:
    """`inject(faults.empty_cni_dir, restart_containerd=True)` -> Fault; every fault injected in
    the test is restored afterwards, newest first, even when the test fails."""
    active: list[faults.Fault] = []

    def _inject(fn: Callable[..., faults.Fault], *args: Any, **kw: Any) -> faults.Fault:
        fault = fn(node, *args, **kw)
        active.append(fault)
        return fault

    yield _inject
    errors = []
    for fault in reversed(active):
        try:
            fault.restore()
        except Exception as e:  # noqa: BLE001 - restore the rest, then report
            errors.append(f"{fault.name}: {e}")
    if errors:
        raise AssertionError("restoring injected faults failed: " + "; ".join(errors))


@pytest.fixture
def cursor(node: Node) -> str:
    """The node's journal cursor at the start of the test: pass as `since=` to see only what follows."""
    return node.cursor()


KUBELET_FAST = {"image_gc_period": 2, "runtime_sync_period": 2, "runtime_down_after": 6, "v": 4}


@pytest.fixture
def fast_kubelet(node: Node) -> Iterator[dict[str, float]]:
    """The kubelet stand-in with short periods (image GC every 2 s, runtime down after 6 s) and
    -v=4 (logs every successful image GC), restarted and seen healthy; back to its defaults
    afterwards. Needs a healthy node at the start."""
    since = node.cursor()
    node.configure_kubelet(**KUBELET_FAST)
    # Steady state first: one successful image GC means its CRI calls and statvfs work.
    node.wait_for_journal(
        '"Image garbage collection succeeded"', unit="kubelet.service", since=since, timeout=20
    )
    yield dict(KUBELET_FAST)
    node.configure_kubelet()


@pytest.fixture
def empty_cni(inject: Callable[..., faults.Fault]) -> faults.Fault:
    """/etc/cni/net.d emptied and containerd restarted with no CNI config."""
    return inject(faults.empty_cni_dir, restart_containerd=True)


@pytest.fixture
def stale_ingest(inject: Callable[..., faults.Fault]) -> faults.Fault:
    """A three-day-old half-written ingest in containerd's content store."""
    return inject(faults.stale_ingest)


@pytest.fixture
def crash_looping_kubelet(inject: Callable[..., faults.Fault]) -> faults.Fault:
    """kubelet.service failing on start (missing --config file) and restarted every second."""
    return inject(faults.crash_loop, "kubelet.service")


@pytest.fixture
def containerd_stopped(inject: Callable[..., faults.Fault]) -> faults.Fault:
    return inject(faults.stop_containerd)


# Which kubelet drives the ladder modules: the real one on bookworm/trixie, the stand-in on
# containerd 2.x (testbed/kubelet_bed.py). Imported, like the kube fixtures above.
from tests.node.testbed.kubelet_bed import ladder_kubelet, quick_kubelet  # noqa: E402, F401
