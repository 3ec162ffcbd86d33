"""`python -m tests.node.testbed build|boot|clean|info` from the repo root (or tests/node/nodebed).

build  build (or find) the cached node image and wheelhouse — CI's warm-up step
boot   boot a node, print how to enter it, keep it up until Ctrl-C / SIGTERM, then remove it
clean  remove leftover nodes of dead test runs and old cached images
info   print the cache paths and the image key
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from . import image, node


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="nodebed", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("command", choices=["build", "boot", "clean", "info"])
    p.add_argument(
        "--no-install", action="store_true", help="boot: do not install the working tree's nodemedic"
    )
    args = p.parse_args(argv)
    if args.command == "build":
        print(image.ensure_image())
    elif args.command == "info":
        img = image.image_path()
        print(f"cache:  {image.cache_dir()}\nimage:  {img} (exists: {img.is_file()})")
        print(f"nodes:  {node.NODES_DIR}")
    elif args.command == "clean":
        node.reap_stale_nodes()
        image.prune_cache()
    else:
        n = node.boot_node("nmshell", install=not args.no_install)
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
