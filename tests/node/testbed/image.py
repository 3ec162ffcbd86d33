"""Build and cache the node images: per stack (testbed/stacks.py) a debootstrapped Debian root with
systemd, D-Bus, containerd and nodemedic's Python runtime, stored as one zstd tarball.

The tarball's name is the stack plus a hash of everything that goes into it (suite, package list,
pinned wheels, the build recipe), so a change to any of them builds a new image of that stack and
an unchanged tree reuses the cached one. The cache lives outside the repository (`$NODEMEDIC_TESTBED_CACHE`, default
/var/cache/nodemedic-testbed) so every clone and every CI run on the machine share it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path

from . import stacks
from .stacks import Stack

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[2]
REQUIREMENTS = HERE.parent / "node-requirements.txt"

MIRROR = os.environ.get("NODEMEDIC_TESTBED_MIRROR", "http://deb.debian.org/debian")

# What a kubelet node of ours runs, plus what nodemedic needs at run time. Recommends are not
# installed (debootstrap never does): the node stays small and every dependency is explicit.
PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "containerd",
    "runc",
    "containernetworking-plugins",
    "python3",
    "python3-venv",
    "python3-systemd",
    "python3-dbus-next",
    "python3-tenacity",
    "python3-watchdog",
    "iproute2",
    "iptables",
    "procps",
    "util-linux",
    "kmod",
    "e2fsprogs",
    "psmisc",
    # /bin/busybox for the local stand-in of the pause image (testbed/images.py): CRI RunPodSandbox
    # needs a sandbox image and the node is offline.
    "busybox-static",
)

# Bump when the build steps below change in a way the package list does not show.
RECIPE = 3

NODE_VENV = "/opt/venvs/nodemedic"
NODE_WHEELHOUSE = "/opt/venvs/wheelhouse"
NODE_USER = "nmuser"  # the unprivileged account fault injectors forge log lines from

# Units that would only add noise (or try the network) in a throw-away test node.
MASKED_UNITS = (
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
    "console-getty.service",
)

Log = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(f"testbed: {msg}", file=sys.stderr, flush=True)


def cache_dir() -> Path:
    return Path(os.environ.get("NODEMEDIC_TESTBED_CACHE", "/var/cache/nodemedic-testbed"))


def _requirements_text() -> str:
    return REQUIREMENTS.read_text()


def _pins() -> list[str]:
    lines = (ln.split("#", 1)[0].strip() for ln in _requirements_text().splitlines())
    return [ln for ln in lines if ln]


def project_dependencies(repo: Path = REPO_ROOT) -> list[str]:
    """nodemedic's run-time requirements as the working tree's pyproject.toml declares them."""
    with open(repo / "pyproject.toml", "rb") as f:
        return list(tomllib.load(f).get("project", {}).get("dependencies", []))


def wheelhouse_key(extra: Sequence[str] = (), python: str = "3.11") -> str:
    return hashlib.sha256("\n".join([f"python {python}", *_pins(), *sorted(extra)]).encode()).hexdigest()[:16]


def image_key(stack: Stack | str | None = None) -> str:
    st = stacks.get(stack)
    spec = {
        "stack": [st.name, st.suite, st.script, st.python, list(st.backports), st.backport_suite],
        "packages": sorted(PACKAGES),
        "pins": _pins(),
        "recipe": RECIPE,
        "masked": sorted(MASKED_UNITS),
        "media": [MEDIA_SPEC, MEDIA_LINKS],
    }
    if st.base:
        spec["base"] = image_key(st.base)
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def image_path(stack: Stack | str | None = None) -> Path:
    st = stacks.get(stack)
    return cache_dir() / f"node-{st.name}-{image_key(st)}.tar.zst"


class _Lock:
    """An flock on a file in the cache: parallel builders (two CI runs, xdist workers) wait
    for the first one instead of racing on the same temp dirs."""

    def __init__(self, path: Path, timeout: float = 1800.0) -> None:
        self.path, self.timeout = path, timeout
        self.fd = -1

    def __enter__(self) -> _Lock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(self.fd)
                    raise TimeoutError(f"another test bed build holds {self.path}") from None
                time.sleep(1.0)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def _run(argv: list[str], log_file: Path | None = None, **kw: object) -> None:
    """Run a build step; on failure, raise with the tail of its output (CI must show why)."""
    if log_file is not None:
        with open(log_file, "ab") as out:
            out.write(f"\n$ {' '.join(argv)}\n".encode())
            out.flush()
            proc = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, check=False, **kw)  # type: ignore[call-overload]
        if proc.returncode != 0:
            tail = log_file.read_text(errors="replace")[-4000:]
            raise RuntimeError(
                f"build step failed ({proc.returncode}): {argv}\n--- {log_file} (tail) ---\n{tail}"
            )
    else:
        subprocess.run(argv, check=True, **kw)  # type: ignore[call-overload]


def ensure_wheelhouse(extra: Sequence[str] = (), log: Log = _stderr, python: str = "3.11") -> Path:
    """Wheels for the pins in node-requirements.txt plus `extra` requirements (the working tree's
    pyproject dependencies, which may have grown since the image was built), downloaded once
    into the cache, one wheelhouse per node python (`python`, e.g. "3.13"). `pip download` with
    explicit --python-version/--abi/--platform picks the node's manylinux wheels whichever
    Python runs this; --only-binary compiles nothing here, so a pin without a wheel for one of
    the stacks' pythons fails here, loudly."""
    dest = cache_dir() / f"wheelhouse-{wheelhouse_key(extra, python)}"
    if dest.is_dir():
        os.utime(dest)  # "recently used", for prune_cache
        return dest
    with _Lock(cache_dir() / ".wheelhouse.lock"):
        if dest.is_dir():
            return dest
        tmp = Path(f"{dest}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        log(f"downloading wheels into {dest}")
        argv = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--disable-pip-version-check",
            "--only-binary=:all:",
            "--python-version",
            python,
            "--implementation",
            "cp",
            "--abi",
            "cp" + python.replace(".", ""),
            "--platform",
            "manylinux_2_17_x86_64",
            "--platform",
            "manylinux2014_x86_64",
            # google-re2 ships manylinux_2_28 wheels only (Debian 12 has glibc 2.36)
            "--platform",
            "manylinux_2_28_x86_64",
            "--dest",
            str(tmp),
            *_pins(),
            *extra,
        ]
        try:
            subprocess.run(argv, check=True, capture_output=True, text=True)
        except subprocess.CalledProcessError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise RuntimeError(f"pip download for the node's python {python} failed:\n{e.stdout}\n{e.stderr}") from None
        (tmp / "requirements.txt").write_text("\n".join(_pins()) + "\n")
        os.rename(tmp, dest)
        return dest


# Files the image puts in the protected media directories: path -> (mode, content seed, size).
# Content is generated deterministically so every node holds the same bytes.
MEDIA_SPEC: dict[str, tuple[int, str, int]] = {
    "/srv/media/films/holiday-2019.mkv": (0o644, "holiday", 256 * 1024),
    "/srv/media/films/README.txt": (0o444, "readme", 300),
    "/srv/media/music/album/01-track.flac": (0o640, "track1", 64 * 1024),
    "/srv/media/.hidden-index": (0o600, "index", 1000),
    "/mnt/media/backups/etc-2024.tar": (0o600, "etc", 128 * 1024),
    "/mnt/media/photos/IMG_0001.jpg": (0o644, "img1", 48 * 1024),
}
MEDIA_LINKS = {
    "/srv/media/latest.mkv": "films/holiday-2019.mkv",
    "/mnt/media/photos/current": "IMG_0001.jpg",
    "/mnt/media/dangling": "/nonexistent/target",
}


def _media_bytes(seed: str, size: int) -> bytes:
    out, block = bytearray(), hashlib.sha256(seed.encode()).digest()
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[:size])


def _write_media(root: Path) -> None:
    for path, (mode, seed, size) in MEDIA_SPEC.items():
        p = root / path.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(_media_bytes(seed, size))
        os.chmod(p, mode)
    for link, target in MEDIA_LINKS.items():
        p = root / link.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, p)


def _chroot(root: Path, argv: list[str], log_file: Path, offline: bool = True) -> None:
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
        "HOME": "/root",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }
    if offline:
        env["PIP_NO_INDEX"] = "1"
    _run(["chroot", str(root), *argv], log_file=log_file, env=env)


# Mirrors of testing/unstable can carry a Release file whose Valid-Until has passed between two
# archive pushes; apt would then refuse the suite. The image is built once and then frozen, so a
# few hours' staleness does not matter here.
APT_OPTS = ["-o", "Acquire::Check-Valid-Until=false", "-o", "Dpkg::Use-Pty=0"]


def _install_backports(root: Path, stack: Stack, log_file: Path) -> None:
    """The stack's `backports` from `backport_suite`, pinned so that only they come from there
    (everything else stays on the stack's own suite: priority -1 forbids the rest). The source
    and the pin are removed again: the node is offline, and `apt-cache policy` in it should show
    the packages as they are, locally installed."""
    if not stack.backports:
        return
    resolv = root / "etc/resolv.conf"
    saved = resolv.read_bytes() if resolv.is_file() and not resolv.is_symlink() else None
    resolv.unlink(missing_ok=True)
    shutil.copyfile("/etc/resolv.conf", resolv)  # apt in the chroot resolves through the host's
    listfile = root / "etc/apt/sources.list.d/nodemedic-testbed-backports.list"
    prefs = root / "etc/apt/preferences.d/nodemedic-testbed-backports"
    listfile.write_text(f"deb {MIRROR} {stack.backport_suite} main\n")
    prefs.write_text(
        f"Package: {' '.join(stack.backports)}\nPin: release n={stack.backport_suite}\nPin-Priority: 990\n\n"
        f"Package: *\nPin: release n={stack.backport_suite}\nPin-Priority: -1\n"
    )
    env_apt = ["env", "DEBIAN_FRONTEND=noninteractive", "apt-get", *APT_OPTS]
    _chroot(root, [*env_apt, "update", "-q"], log_file, offline=False)
    _chroot(
        root,
        [*env_apt, "install", "-y", "-q", "--no-install-recommends", *stack.backports],
        log_file,
        offline=False,
    )
    listfile.unlink()
    prefs.unlink()
    resolv.unlink()
    if saved is not None:
        resolv.write_bytes(saved)


def _customize(root: Path, wheels: Path, log_file: Path, stack: Stack) -> None:
    _install_backports(root, stack, log_file)
    etc = root / "etc"
    (etc / "hostname").write_text("nmnode\n")
    (etc / "hosts").write_text(
        "127.0.0.1\tlocalhost\n127.0.1.1\tnmnode\n::1\tlocalhost ip6-localhost ip6-loopback\n"
    )
    # An empty machine-id makes systemd use the per-boot id nspawn hands it (--uuid): every
    # node gets its own journal directory and boot id.
    (etc / "machine-id").write_text("")
    for unit in MASKED_UNITS:
        link = etc / "systemd/system" / unit
        link.unlink(missing_ok=True)
        os.symlink("/dev/null", link)
    # Keep a node's journal bounded even when a test floods it; everything else is journald's
    # default (persistent storage, default rate limits), as on a real node.
    jd = etc / "systemd/journald.conf.d"
    jd.mkdir(parents=True, exist_ok=True)
    (jd / "50-nodemedic-testbed.conf").write_text("[Journal]\nSystemMaxUse=128M\n")
    # containerd keeps Debian's stock /etc/containerd/config.toml: it already points the CRI
    # plugin at Debian's CNI binaries (/usr/lib/cni) and /etc/cni/net.d, and its default
    # overlayfs snapshotter works on the node's ext4 root. No tweak is needed.
    _chroot(root, ["useradd", "--create-home", "--shell", "/bin/bash", NODE_USER], log_file)
    _write_media(root)
    # nodemedic's runtime: a venv on the node's own Debian python3, seeing Debian's
    # python3-systemd and python3-dbus-next, plus the pinned wheels installed offline.
    wh = root / NODE_WHEELHOUSE.lstrip("/")
    shutil.copytree(wheels, wh)
    _chroot(root, ["python3", "-m", "venv", "--system-site-packages", NODE_VENV], log_file)
    _chroot(
        root,
        [
            f"{NODE_VENV}/bin/pip",
            "install",
            "--no-index",
            "--find-links",
            NODE_WHEELHOUSE,
            "-r",
            f"{NODE_WHEELHOUSE}/requirements.txt",
        ],
        log_file,
    )
    _chroot(
        root,
        [f"{NODE_VENV}/bin/python", "-c", "import grpc, cri_api.v1.api_pb2, systemd.journal, dbus_next"],
        log_file,
    )
    _drop_caches(root)


def _drop_caches(root: Path) -> None:
    # Nothing of the build's download caches, and no docs: every node unpacks the whole image,
    # so each megabyte left out is boot time saved.
    for d in ("var/cache/apt", "var/cache/apt/archives", "var/lib/apt/lists"):
        for p in (root / d).glob("*"):
            if p.is_file():
                p.unlink()
    for d in ("usr/share/doc", "usr/share/man", "usr/share/locale", "usr/share/info"):
        for p in (root / d).glob("*"):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
    shutil.rmtree(root / "root/.cache", ignore_errors=True)


def _manifest(root: Path, stack: Stack) -> dict[str, object]:
    out = subprocess.run(
        ["chroot", str(root), "dpkg-query", "-W", "-f", "${Package} ${Version}\n", *PACKAGES, "libc6"],
        capture_output=True,
        text=True,
        check=False,
    )
    return {
        "key": image_key(stack),
        "stack": stack.name,
        "suite": stack.suite,
        "backports": {p: stack.backport_suite for p in stack.backports},
        "packages": dict(ln.split(" ", 1) for ln in out.stdout.splitlines()),
        "pins": _pins(),
        "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _debootstrap(root: Path, st: Stack, debs: Path, log_file: Path) -> None:
    with _Lock(cache_dir() / f".debs-{st.suite}.lock"):
        _run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(PACKAGES)}",
                f"--cache-dir={debs}",
                st.suite,
                str(root),
                MIRROR,
                # bookworm's debootstrap knows no codename after trixie: forky is built with
                # sid's script.
                *([st.script] if st.script else []),
            ],
            log_file=log_file,
        )


def ensure_image(stack: Stack | str | None = None, log: Log = _stderr) -> Path:
    """Return the stack's cached node tarball, building it first if this key has none."""
    st = stacks.get(stack)
    target = image_path(st)
    if target.is_file():
        os.utime(target)  # "recently used", for prune_cache
        return target
    cache = cache_dir()
    # One lock per stack: two stacks build side by side (CI warms all of them at once), two
    # builders of one stack wait for the first.
    with _Lock(cache / f".image-{st.name}.lock"):
        if target.is_file():  # another builder finished while we waited
            return target
        for tool in ("debootstrap", "zstd", "tar", "chroot"):
            if shutil.which(tool) is None:
                raise RuntimeError(
                    f"test bed image build needs `{tool}` on PATH (apt-get install debootstrap zstd)"
                )
        key = f"{st.name}-{image_key(st)}"
        work = cache / f"build-{key}-{os.getpid()}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        log_file = cache / f"build-{key}.log"
        log_file.write_text("")
        root = work / "root"
        # debootstrap's .deb cache, one per suite (file names carry versions, but two debootstraps
        # must not write one file at once: stacks of one suite take turns here).
        debs = cache / f"debs-{st.suite}"
        debs.mkdir(exist_ok=True)
        started = time.monotonic()
        log(f"building node image {target.name} (log: {log_file}); takes a few minutes the first time")
        try:
            if st.base:
                # A stack on top of another: its image plus the backports (see Stack.base).
                extract_image(ensure_image(st.base, log), root)
                _install_backports(root, st, log_file)
                _drop_caches(root)
            else:
                wheels = ensure_wheelhouse(log=log, python=st.python)
                _debootstrap(root, st, debs, log_file)
                _customize(root, wheels, log_file, st)
            manifest = _manifest(root, st)
            (root / "etc/nodemedic-testbed.json").write_text(json.dumps(manifest, indent=1) + "\n")
            tmp_tar = work / "node.tar.zst"
            with open(tmp_tar, "wb") as out:
                tar = subprocess.Popen(
                    [
                        "tar",
                        "--numeric-owner",
                        "--xattrs",
                        "--xattrs-include=*",
                        "--acls",
                        "-C",
                        str(root),
                        "-cf",
                        "-",
                        ".",
                    ],
                    stdout=subprocess.PIPE,
                )
                zst = subprocess.run(["zstd", "-q", "-T0", "-3"], stdin=tar.stdout, stdout=out, check=False)
                assert tar.stdout is not None
                tar.stdout.close()
                if tar.wait() != 0 or zst.returncode != 0:
                    raise RuntimeError("packing the node image failed")
            os.rename(tmp_tar, target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        log(f"node image {st.name} built in {time.monotonic() - started:.0f}s: {target}")
        prune_cache(log=log)
        return target


def extract_image(tarball: Path, dest: Path) -> None:
    """Unpack a node root. Ownership, modes, ACLs (journal dir) and file capabilities kept."""
    dest.mkdir(parents=True, exist_ok=False)
    zst = subprocess.Popen(["zstd", "-q", "-dc", str(tarball)], stdout=subprocess.PIPE)
    tar = subprocess.run(
        ["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "--acls", "-xpf", "-", "-C", str(dest)],
        stdin=zst.stdout,
        check=False,
    )
    assert zst.stdout is not None
    zst.stdout.close()
    if zst.wait() != 0 or tar.returncode != 0:
        raise RuntimeError(f"unpacking {tarball} into {dest} failed")


def _image_stack(path: Path) -> str:
    """`node-<stack>-<key>.tar.zst` -> stack; images from before stacks (`node-<key>.tar.zst`)
    were all bookworm's."""
    name = path.name.removeprefix("node-").removesuffix(".tar.zst")
    return name.rsplit("-", 1)[0] if "-" in name else "bookworm"


def prune_cache(keep: int = 2, max_age_days: float = 7.0, log: Log = _stderr) -> None:
    """Old keys pile up as the package list and pins change: keep the newest `keep` images of each
    stack (other checkouts on this machine may still use an older key) and wheelhouses used within
    `max_age_days`. "Newest" is by mtime, which ensure_image refreshes on every use."""
    cache = cache_dir()
    current = {image_path(st) for st in stacks.STACKS.values()}
    images = sorted(cache.glob("node-*.tar.zst"), key=lambda p: p.stat().st_mtime, reverse=True)
    per_stack: dict[str, int] = {}
    for img in images:
        n = per_stack[_image_stack(img)] = per_stack.get(_image_stack(img), 0) + 1
        if n > keep and img not in current:
            log(f"removing old node image {img}")
            img.unlink(missing_ok=True)
            log_name = img.name.replace("node-", "build-", 1).replace(".tar.zst", ".log")
            (cache / log_name).unlink(missing_ok=True)
    cutoff = time.time() - max_age_days * 86400
    for wh in cache.glob("wheelhouse-*"):
        if wh.is_dir() and wh.stat().st_mtime < cutoff:
            log(f"removing unused wheelhouse {wh}")
            shutil.rmtree(wh, ignore_errors=True)
