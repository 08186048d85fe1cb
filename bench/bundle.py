"""bench/bundle: bundling 20 nodes of one arch vs copying the same bytes with cp.

    python bench/bundle.py [--rounds N] [--megabytes M] [--doit]

Twenty amd64 workers (and the one control plane an inventory needs), stand-in vendored
binaries and images of realistic size (--megabytes per arch, default ~300, 50 % of each
file random so it does not compress), real pki/secrets/render outputs from `doit`.

Contenders, alternated node by node, each after a sync and into a new file:
  ours   kthw.bundle.build.build for one node with the vendored part already cached (the 2nd
         to 20th node of an arch): copy of the cached deflate part + the node's own part
  cp     `cp` of that node's finished bundle to a new file: the cost of its bytes alone
Printed: the first node (which compresses the vendored part), the medians and the
median of the per-node ratios ours/cp (target: at most 1.3). --doit also times a full
`doit bundle` of all nodes from an empty bundles/ (doit hashes every file_dep once).
"""

from __future__ import annotations

import argparse
import functools
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent / "tests"))
sys.path.insert(0, str(BENCH.parent))
from common import Scratch, inventory, report, timed  # noqa: E402
from support.bundles import stand_in_vendor  # noqa: E402

from kthw.bundle import build as bundle  # noqa: E402
from kthw.inventory import load  # noqa: E402
from kthw.layout import Layout  # noqa: E402

WORKERS = 20
# Sizes in MB of a worker's vendored files, close to Kubernetes 1.3x / containerd 2.x releases.
SIZES_MB = {"kubelet": 70, "kubectl": 50, "kube-proxy": 40, "containerd": 38, "containerd-shim-runc-v2": 8,
            "ctr": 18, "runc": 10, "crictl": 35, "bridge": 4, "host-local": 3.5, "loopback": 3, "portmap": 3.5,
            "bandwidth": 3.5, "firewall": 3.5, "kube-apiserver": 90, "kube-controller-manager": 80,
            "kube-scheduler": 60, "etcd": 25, "etcdctl": 18, "etcdutl": 16}
IMAGE_MB = {"pause": 0.5, "coredns": 18}
WORKER_SET = ("kubelet", "kubectl", "kube-proxy", "containerd", "containerd-shim-runc-v2", "ctr", "runc", "crictl",
              "bridge", "host-local", "loopback", "portmap", "bandwidth", "firewall")


def sizer(scale: float):
    def size(name: str) -> int:
        for image, mb in IMAGE_MB.items():
            if name.startswith(f"{image}-"):
                return int(mb * scale * 1e6)
        return int(SIZES_MB.get(name, 1) * scale * 1e6)
    return size


def synced(action) -> float:
    """Time ``action`` after flushing dirty pages, so that neither contender pays for the
    other's writeback."""
    os.sync()
    return timed(action)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="passes over nodes 2..20 (default 3)")
    parser.add_argument("--megabytes", type=float, default=300, help="vendored MB per arch for a worker")
    parser.add_argument("--doit", action="store_true", help="also time a full `doit bundle`")
    args = parser.parse_args()
    worker_mb = sum(SIZES_MB[name] for name in WORKER_SET) + sum(IMAGE_MB.values())
    scale = args.megabytes / worker_mb

    scratch = Scratch(inventory(workers=WORKERS, control_planes=1, arch="amd64"))
    try:
        print(f"scratch: {scratch.root}")
        stand_in_vendor(scratch.root, scratch.root / "cluster.yaml", size=sizer(scale), scripts={})
        scratch.doit("pki", "secrets", "render", "bundle_signing_key")
        inv = load(scratch.root / "cluster.yaml")
        layout = Layout(scratch.root)
        workers = [node for node in inv.nodes if node.is_worker]
        specs = [bundle.spec_for(layout, node, bundle.vendored_files(node, inv, layout))
                 for node in workers]
        vendored_mb = sum(p.source.stat().st_size for p in specs[0].vendored.files) / 1e6
        copy = scratch.root / "copy.tar.gz"

        first = synced(lambda: bundle.build(specs[0]))
        size_mb = specs[0].output.stat().st_size / 1e6
        first_cp = synced(lambda: subprocess.run(["cp", str(specs[0].output), str(copy)], check=True))
        print(f"\n{len(workers)} amd64 workers, {vendored_mb:.0f} MB vendored per worker, bundle {size_mb:.0f} MB")
        print(f"  first node (compresses the vendored part): {first:.2f} s; cp of its bundle {first_cp:.2f} s")

        times: dict[str, list[float]] = {"ours": [], "cp": []}
        for _ in range(args.rounds):
            for spec in specs[1:]:
                # Both write a new file (replacing a 200 MB file would add the freeing of its blocks).
                spec.output.unlink(missing_ok=True)
                copy.unlink(missing_ok=True)
                times["ours"].append(synced(functools.partial(bundle.build, spec)))
                times["cp"].append(synced(functools.partial(subprocess.run, ["cp", str(spec.output), str(copy)],
                                                            check=True)))
        for spec in specs:
            spec.output.unlink(missing_ok=True)
        # report pairs each run of "ours" with the "cp" of the same node: ratio ours / cp.
        report(f"nodes 2..{len(workers)}, {args.rounds} rounds", times, "cp", {"ours": "at most 1.3"})

        if args.doit:
            layout.bundles.mkdir(exist_ok=True)
            elapsed = timed(lambda: scratch.doit("bundle"))
            print(f"  `doit bundle` of all {len(inv.nodes)} nodes from an empty bundles/: {elapsed:.1f} s")
    finally:
        scratch.remove()


if __name__ == "__main__":
    main()
