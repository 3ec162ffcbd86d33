"""The ingest-stale ladder triggered by a real failed image pull, and the next pull proceeding
(issue 5: "remove stale subdirectories of io.containerd.content.v1.content/ingest ... then verify
the next pull can proceed").

containerd 1.6.20 pulls over CRI `PullImage` from the registry stand-in (testbed/registry.py) on
localhost:5000, plain HTTP. What it does with partial downloads was found by experiment in the
node, and decides the scenario:

- A pull that *fails* cleans up after itself. A bad hop that sends wrong bytes and drops the
  connection: containerd resumes at once with `Range: bytes=<offset>-`, the commit fails with
  "unexpected commit digest", and within seconds the pull's lease is deleted and containerd's GC
  removes the ingest; the next pull succeeds. A pull cancelled by its client, or by a graceful
  `systemctl restart containerd`, likewise leaves nothing.
- A pull that *dies with containerd* (SIGKILL, the OOM killer, a crash) never deletes its lease
  (containerd.io/gc.expire = 24 h), so GC keeps the partial download, and every later pull of the
  layer resumes it. Resuming good bytes is harmless. Resuming bytes that are not the blob's fails
  every time, for up to a day: the first resume fetches the rest with a Range request and commits
  a wrong digest; later ones fetch nothing at all (the ingest already has the full length) and
  fail the same way. Removing that ingest is exactly what lets the next pull through.

So here: the stand-in's bad hop sends 1.5 MiB that are not the layer and stalls (containerd 1.6.20
writes the ingest in 1 MiB chunks: observed, 512 KiB left an empty data file); containerd is
SIGKILLed mid-pull and restarted by systemd; then, with the stand-in healthy again, a CRI pull
fails for real with
    level=error msg="PullImage \\"localhost:5000/...\\" failed" error="rpc error: code =
    FailedPrecondition desc = failed to pull and unpack image ...: failed commit on ref
    \\"layer-sha256:...\\": unexpected commit digest sha256:..., expected sha256:...: failed precondition"
which is signature containerd-pull-failed-commit-on-ref. ("failed size validation" needs an
ingest longer than the descriptor, which no real pull here produced.)

Order matters: the path condition (path:ingest_dir) also sees stale ingests, at start and when the
ingest dir changes. nodemedic is started only after containerd is back, while the partial download
is still younger than `stale_age`, and resuming it writes no new entry into the ingest dir: the
journal line is what makes nodemedic suspect. The confirm probe then waits (verify_attempts) until
the entry is older than `stale_age` with no writer.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from nodemedic.journal import Kind
from tests.node.medic import media_checksums, nodemedic_entries, start_nodemedic, steps_started, wait_healed
from tests.node.testbed import faults, images
from tests.node.testbed.node import NODE_PYTHON, Node
from tests.node.testbed.registry import Registry

pytestmark = [pytest.mark.node, pytest.mark.stacks("trixie", "bookworm", "trixie-containerd2")]

SIGNATURE = "containerd-pull-failed-commit-on-ref"
PULL_UNIT = "nmtest-pull-interrupted.service"
CHUNK = 1 << 20  # containerd 1.6.20 writes an ingest 1 MiB at a time
BAD_HOP = b"\0" * (CHUNK + CHUNK // 2)  # more than one chunk, fewer bytes than the layer, not its bytes
# stale_age must outlast containerd's restart after the kill (RestartSec=5) and nodemedic's start,
# so the start-up look at the ingest dir finds nothing stale yet; the confirm probe's retries
# (verify_attempts x verify_interval, 45 s) must outlast stale_age after the failing pull wrote.
MEDIC_CONFIG = """\
[ingest]
stale_age = "30s"

[policy]
verify_attempts = 45
verify_interval = "1s"
"""

# CRI ImageService from inside the node, with the cri_api stubs of nodemedic's venv (as pods.py).
_CRI_IMAGES = r"""
import json, sys
import grpc
from cri_api.v1 import api_pb2, api_pb2_grpc

images = api_pb2_grpc.ImageServiceStub(grpc.insecure_channel(
    "unix:///run/containerd/containerd.sock", options=[("grpc.enable_http_proxy", 0)]))
cmd, ref = sys.argv[1], sys.argv[2]
spec = api_pb2.ImageSpec(image=ref)
try:
    if cmd == "pull":
        reply = images.PullImage(api_pb2.PullImageRequest(image=spec), timeout=float(sys.argv[3]))
        out = {"image_ref": reply.image_ref}
    elif cmd == "list":
        listed = images.ListImages(api_pb2.ListImagesRequest(), timeout=30).images
        out = {"tags": [tag for image in listed for tag in image.repo_tags]}
    elif cmd == "remove":
        images.RemoveImage(api_pb2.RemoveImageRequest(image=spec), timeout=60)
        out = {}
    else:
        raise SystemExit(f"unknown command {cmd}")
except grpc.RpcError as e:
    out = {"error": e.details(), "code": e.code().name}
json.dump(out, sys.stdout)
"""


def cri_images(node: Node, *args: str) -> dict:
    return json.loads(node.run([NODE_PYTHON, "-c", _CRI_IMAGES, *args], timeout=180).stdout)


def pull(node: Node, ref: str) -> dict:
    return cri_images(node, "pull", ref, "120")


def active_refs(node: Node) -> str:
    """containerd's own list of ingests (`ctr content active`)."""
    return node.run(["ctr", "-n", "k8s.io", "content", "active"]).stdout


def ingest_of(node: Node, layer_ref: str) -> str:
    """The ingest dir whose `ref` names the layer (containerd's key: k8s.io/<n>/layer-sha256:…)."""
    found = node.run(["grep", "-rlF", "--include=ref", "--", layer_ref, faults.INGEST_DIR], check=False).stdout.split()
    return found[0].rsplit("/", 1)[0] if found else ""


def leases(node: Node) -> set[str]:
    return set(node.run(["ctr", "-n", "k8s.io", "leases", "ls", "-q"]).stdout.split())


def layer_requests(registry: Registry, published: Published, since: str) -> list[str]:
    """The stand-in's log lines for GETs of the layer since `since`."""
    return [m for m in registry.requests(since=since) if m.startswith("GET ") and published.image.layer.digest in m]


@dataclass(frozen=True)
class Published:
    registry: Registry
    image: images.OciImage
    ref: str  # localhost:5000/nmtest/pull-standin:1

    @property
    def layer_ref(self) -> str:
        return "layer-sha256:" + self.image.layer.digest.removeprefix("sha256:")


@pytest.fixture
def published(node: Node) -> Iterator[Published]:
    """The stand-in serving a one-layer busybox image; everything the test leaves is undone after."""
    image = images.oci_image({"bin/busybox": (node.read_file(images.BUSYBOX), 0o755)}, ["/bin/busybox", "true"])
    assert len(image.layer.data) > len(BAD_HOP), "the bad hop must stall before the layer's end"
    registry = Registry(node)
    ref = registry.publish("nmtest/pull-standin", "1", image)
    published = Published(registry, image, ref)
    before = leases(node)
    registry.start()
    try:
        yield published
    finally:
        node.systemctl("stop", PULL_UNIT, check=False)
        node.systemctl("reset-failed", PULL_UNIT, check=False)
        cri_images(node, "remove", ref)
        # The killed pull's lease would hold its content for a day; it is the test's, not the node's.
        for lease in leases(node) - before:
            node.run(["ctr", "-n", "k8s.io", "leases", "rm", lease], check=False)
        if left := ingest_of(node, published.layer_ref):
            node.run(["rm", "-rf", "--", left])
        registry.stop()


def test_pull_failing_on_a_stale_ingest_is_healed_and_the_next_pull_proceeds(node: Node, published: Published, inject):
    before = media_checksums(node)
    reg, ref, layer_ref = published.registry, published.ref, published.layer_ref

    # 1. A pull behind a bad hop, killed with containerd: the partial download stays, held by the
    #    dead pull's lease. (nodemedic is not running yet: the kill and the restart are not the subject.)
    reg.stall_once(published.image.layer, BAD_HOP)
    node.run(["systemd-run", "--quiet", f"--unit={PULL_UNIT}", NODE_PYTHON, "-c", _CRI_IMAGES, "pull", ref, "300"])
    ingest = node.wait_for(lambda: ingest_of(node, layer_ref), what="containerd's ingest for the layer")
    node.wait_for(lambda: int(node.run(["stat", "-c", "%s", f"{ingest}/data"]).stdout) >= CHUNK,
                  what="the bad hop's first bytes in the ingest")
    node.wait_for(lambda: [m for m in reg.requests() if m.startswith("stalled ")], what="the stand-in's bad hop")
    inject(faults.kill_containerd).restore()  # SIGKILL; systemd restarts it (Restart=always)
    node.wait_for(lambda: node.cri_status().runtime_ready, timeout=60, what="containerd back over CRI")
    node.wait_for(lambda: '"code": "UNAVAILABLE"' in "".join(node.messages(unit=PULL_UNIT)),
                  what="the interrupted pull's client losing containerd")
    assert node.exists(f"{ingest}/data") and layer_ref in active_refs(node), "containerd kept the partial download"

    # 2. nodemedic starts while that partial download is younger than stale_age: nothing to suspect.
    cursor = node.cursor()
    node.write_file("/etc/nodemedic/conf.d/60-ingest-pull.toml", MEDIC_CONFIG)
    start_nodemedic(node)

    # 3. The registry is healthy again; the pull fails on the partial download alone.
    served = node.cursor()
    failed = pull(node, ref)
    assert failed.get("code") == "FAILED_PRECONDITION", failed
    assert f'failed commit on ref "{layer_ref}": unexpected commit digest' in failed["error"], failed
    line = node.wait_for_journal(r'level=error msg="PullImage .* failed" .*unexpected commit digest',
                                 unit="containerd.service", since=served)
    assert SIGNATURE in node.run(["nodemedic", "match", "--unit", "containerd.service"],
                                 input=line["MESSAGE"]).stdout
    # containerd resumed the kept download: it asked only for the layer's rest, and the stand-in
    # answered with the right bytes (206).
    resumed = node.wait_for(lambda: layer_requests(reg, published, served), what="the layer's request")
    assert len(resumed) == 1 and f"range=bytes={CHUNK}-" in resumed[0] and '" 206 ' in resumed[0], resumed

    # 4. The journal line was the suspicion; the ladder's one step healed it.
    wait_healed(node, "ingest-stale", since=cursor, timeout=120)
    suspected = nodemedic_entries(node, Kind.SUSPECTED, cursor, problem="ingest-stale")
    assert [e["NODEMEDIC_SIGNATURE"] for e in suspected] == [SIGNATURE], suspected
    assert steps_started(node, "ingest-stale", cursor) == ["remove-stale-ingests"]
    finished = nodemedic_entries(node, Kind.STEP_FINISHED, cursor, problem="ingest-stale")
    assert f"removed 1 stale ingest entry: {ingest.rsplit('/', 1)[1]}" in finished[-1]["NODEMEDIC_DETAIL"], finished
    assert not node.exists(ingest) and layer_ref not in active_refs(node)
    assert node.exists(faults.INGEST_DIR), "the ingest dir itself stays"

    # 5. The next pull proceeds: the whole layer fetched afresh, and CRI lists the image.
    again = node.cursor()
    pulled = pull(node, ref)
    assert pulled == {"image_ref": published.image.config.digest}, pulled
    assert ref in cri_images(node, "list", ref)["tags"]
    fetched = node.wait_for(lambda: layer_requests(reg, published, again), what="the layer's request")
    assert len(fetched) == 1 and "range=-" in fetched[0] and '" 200 ' in fetched[0], fetched
    assert media_checksums(node) == before
