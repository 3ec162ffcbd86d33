"""`python -m tests.node.testbed build|boot|clean|info` from the repo root (or tests/node/nodebed).

build  build (or find) the cached node images and wheelhouses — CI's warm-up step
       (--stack S, repeatable; default: every stack, two builds at a time)
boot   boot a node (--stack S, default trixie), print how to enter it, keep it up until
       Ctrl-C / SIGTERM, then remove it
clean  remove leftover nodes of dead test runs and old cached images
capture  boot a node (--stack S), inject every fault, print its containerd/kubelet lines as JSON
       lines with the signatures matching them (for tests/corpus, see capture.py)
info   print the cache paths and each stack's image key
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from . import image, node, stacks


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="nodebed", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("command", choices=["build", "boot", "clean", "info", "capture"])
    p.add_argument(
        "--no-install", action="store_true", help="boot: do not install the working tree's nodemedic"
    )
    p.add_argument(
        "--stack",
        action="append",
        choices=list(stacks.STACKS),
        help="build: the stacks to build (repeatable; default all); boot: the node's stack",
    )
    args = p.parse_args(argv)
    if args.command == "build":
        names = args.stack or list(stacks.STACKS)

        def build(name: str) -> str:
            started = time.monotonic()
            path = image.ensure_image(name)
            return f"{name}: {path} ({time.monotonic() - started:.0f}s)"

        # Two at a time: a build is half downloads, half dpkg; the machine has two cores.
        with ThreadPoolExecutor(max_workers=2) as pool:
            for line in pool.map(build, names):
                print(line, flush=True)
    elif args.command == "info":
        print(f"cache:  {image.cache_dir()}")
        for st in stacks.STACKS.values():
            img = image.image_path(st)
            print(f"{st.name + ':':20} {img} (exists: {img.is_file()})")
        print(f"nodes:  {node.NODES_DIR}")
    elif args.command == "capture":
        from . import capture

        return capture.main((args.stack or [stacks.DEFAULT])[-1])
    elif args.command == "clean":
        node.reap_stale_nodes()
        image.prune_cache()
    else:
        n = node.boot_node("nmshell", install=not args.no_install, stack=(args.stack or [None])[-1])
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        print(
            f"node {n.name} is up. Enter it with:\n  nsenter -t {n.pid} -a /bin/bash\nCtrl-C to stop.",
            flush=True,
        )
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass
        finally:
            n.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
