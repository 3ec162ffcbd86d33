"""Build and cache kube-apiserver, kubelet and kubectl 1.20.2 from Debian bookworm's `kubernetes`
source package: the only Debian source package that still carries the whole upstream tree (with
vendor/, cmd/kube-apiserver and cmd/kubelet); later releases strip those out.

Everything comes from Debian's archive. `apt-get source` runs against a private deb-src list and
a private lists directory in the cache, so the host's own apt configuration is never touched;
the build dependencies that matter here (golang-go, rsync, dpkg-dev) are in `./dev setup`'s apt
list (the rest of `apt-get build-dep kubernetes` - debhelper, jq, bash-completion - only serves
the .deb packaging). The build is `debian/rules`' own: a GOPATH symlink k8s.io/kubernetes -> the
tree, then `make WHAT=cmd/...` with CGO_ENABLED=0, GOFLAGS=-mod=vendor and GOPROXY=off (the
network is never asked for a module), niced because the machine is shared.

One fix is needed: the vendored github.com/modern-go/reflect2 1.0.1 crashes under Go >= 1.18
(Debian's own kubectl 1.20.2 segfaults in reflect.mapiternext). Its vendor directory is replaced
by Debian's golang-github-modern-go-reflect2 1.0.2 source, without its go.mod.

The binaries land in `<cache>/kube-<key>/bin`, where the key hashes both source package versions,
the Go toolchain's version, the targets and RECIPE, and are reused by every later run; the build
takes the cache's flock so parallel runs wait for one builder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from .image import Log, _Lock, _run, _stderr, cache_dir

SOURCE = ("kubernetes", "1.20.5+really1.20.2-1.1+deb12u1")
REFLECT2 = ("golang-github-modern-go-reflect2", "1.0.2-2")
UPSTREAM = "v1.20.2"
TARGETS = ("kube-apiserver", "kubelet", "kubectl")
# Bump when the steps below change in a way the versions above do not show.
RECIPE = 1

DEB_SRC = (
    "deb-src http://deb.debian.org/debian bookworm main\n"
    "deb-src http://deb.debian.org/debian bookworm-updates main\n"
    "deb-src http://deb.debian.org/debian-security bookworm-security main\n"
)
REFLECT2_VENDOR = "vendor/github.com/modern-go/reflect2"
TOOLS = ("go", "make", "dpkg-source", "apt-get", "nice")


def go_version() -> str:
    try:
        out = subprocess.run(["go", "version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return ""
    return out.strip()


def kube_key() -> str:
    spec = {
        "source": list(SOURCE),
        "reflect2": list(REFLECT2),
        "go": go_version(),
        "targets": list(TARGETS),
        "recipe": RECIPE,
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def kube_dir() -> Path:
    return cache_dir() / f"kube-{kube_key()}"


def binary(name: str) -> Path:
    """Path of one cached binary (call ensure_kube() first)."""
    return kube_dir() / "bin" / name


def _apt_options(apt: Path) -> list[str]:
    return [
        "-q",
        "-o", f"Dir::Etc::SourceList={apt / 'sources.list'}",
        "-o", "Dir::Etc::SourceParts=/dev/null",
        "-o", f"Dir::State::Lists={apt / 'lists'}",
        "-o", f"Dir::Cache={apt / 'cache'}",
        # The downloads go to our own directory as root; no need for the _apt sandbox user.
        "-o", "APT::Sandbox::User=root",
    ]


def _fetch_sources(dest: Path, log_file: Path) -> tuple[Path, Path]:
    """`apt-get source` of both packages (exact versions) into dest; returns the two unpacked
    trees (Debian's patches applied by dpkg-source)."""
    apt = cache_dir() / "kube-apt"
    (apt / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (apt / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    (apt / "sources.list").write_text(DEB_SRC)
    opts = _apt_options(apt)
    _run(["apt-get", *opts, "update"], log_file=log_file)
    dest.mkdir(parents=True, exist_ok=True)
    _run(
        ["apt-get", *opts, "source", "--download-only", f"{SOURCE[0]}={SOURCE[1]}", f"{REFLECT2[0]}={REFLECT2[1]}"],
        log_file=log_file,
        cwd=dest,
    )
    trees = []
    for pkg, version in (SOURCE, REFLECT2):
        dsc = dest / f"{pkg}_{version.split(':')[-1]}.dsc"
        tree = dest / pkg
        _run(["dpkg-source", "-x", str(dsc), str(tree)], log_file=log_file)
        trees.append(tree)
    return trees[0], trees[1]


def _replace_reflect2(tree: Path, reflect2: Path) -> None:
    vendored = tree / REFLECT2_VENDOR
    shutil.rmtree(vendored)
    shutil.copytree(reflect2, vendored, symlinks=True, ignore=shutil.ignore_patterns("debian", ".pc"))
    # A go.mod inside vendor/ would make the directory its own module.
    (vendored / "go.mod").unlink(missing_ok=True)


def _build_env(tree: Path, home: Path) -> dict[str, str]:
    return {
        "PATH": "/usr/lib/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "GOPATH": str(tree / ".go"),
        "GOFLAGS": "-mod=vendor",
        "GOPROXY": "off",
        "GOTOOLCHAIN": "local",
        "CGO_ENABLED": "0",
    }


def ensure_kube(log: Log = _stderr) -> Path:
    """The directory holding bin/{kube-apiserver,kubelet,kubectl}, building them first when this
    key has none (minutes, see tests/node/README.md)."""
    target = kube_dir()
    if (target / "manifest.json").is_file():
        return target
    cache = cache_dir()
    with _Lock(cache / ".kube.lock", timeout=3600):
        if (target / "manifest.json").is_file():
            return target
        missing = [t for t in TOOLS if shutil.which(t) is None]
        if missing:
            raise RuntimeError(
                f"building kubernetes needs {missing} on PATH (./dev setup installs golang-go, dpkg-dev)"
            )
        key = kube_key()
        # One fixed build directory (under the lock) and a Go build cache kept beside it: the
        # compiler's cache keys include the source paths, so a rebuild after a recipe bump or a
        # pruned key reuses every unchanged package instead of starting cold.
        work = cache / "kube-build"
        shutil.rmtree(work, ignore_errors=True)
        log_file = cache / f"kube-build-{key}.log"
        log_file.write_text("")
        started = time.monotonic()
        log(f"building {', '.join(TARGETS)} {UPSTREAM} from Debian's {SOURCE[0]} {SOURCE[1]} (log: {log_file})")
        try:
            tree, reflect2 = _fetch_sources(work / "src", log_file)
            _replace_reflect2(tree, reflect2)
            gopath_link = tree / ".go/src/k8s.io/kubernetes"
            gopath_link.parent.mkdir(parents=True, exist_ok=True)
            os.symlink("../../..", gopath_link)
            # hack/lib/golang.sh pins GOCACHE to _output/local/go/cache.
            gocache = cache / "kube-gocache"
            gocache.mkdir(exist_ok=True)
            (tree / "_output/local/go").mkdir(parents=True)
            os.symlink(gocache, tree / "_output/local/go/cache")
            home = work / "home"
            home.mkdir()
            _run(
                ["nice", "-n", "10", "make", f"WHAT={' '.join('cmd/' + t for t in TARGETS)}"],
                log_file=log_file,
                cwd=tree,
                env=_build_env(tree, home),
            )
            tmp = Path(f"{target}.tmp-{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            (tmp / "bin").mkdir(parents=True)
            for t in TARGETS:
                shutil.copy2(tree / "_output/bin" / t, tmp / "bin" / t)
            took = time.monotonic() - started
            manifest = {
                "key": key,
                "source": list(SOURCE),
                "reflect2": list(REFLECT2),
                "go": go_version(),
                "targets": list(TARGETS),
                "recipe": RECIPE,
                "build_seconds": round(took),
                "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
            os.rename(tmp, target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        log(f"kubernetes binaries built in {took:.0f}s: {target}")
        prune(log=log)
        return target


def prune(keep: int = 2, log: Log = _stderr) -> None:
    """Old keys (another Go, a bumped recipe) are 250 MB each: keep the newest `keep`."""
    dirs = sorted(
        (p for p in cache_dir().glob("kube-*") if (p / "manifest.json").is_file()),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for old in dirs[keep:]:
        if old != kube_dir():
            log(f"removing old kubernetes binaries {old}")
            shutil.rmtree(old, ignore_errors=True)


def manifest() -> dict[str, object]:
    return json.loads((kube_dir() / "manifest.json").read_text())
