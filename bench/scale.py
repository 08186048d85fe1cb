"""bench/scale: full build time per node at 50, 100 and 200 nodes, and peak memory.

    python bench/scale.py [--sizes 50,100,200] [--rounds N]

Each round builds the whole default graph plus bundles from an empty build directory
(vendor/ filled with small stamped stand-ins), sizes alternated. Peak memory is the
largest resident set of the doit process (ru_maxrss of the child).
Targets: per-node time at 200 within 1.2x of that at 50; peak memory at 200 under 300 MB.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent / "tests"))
from common import REPO, Scratch, inventory  # noqa: E402
from support.bundles import stand_in_vendor  # noqa: E402


def build(scratch: Scratch) -> tuple[float, float]:
    """Seconds and peak MB of one full `doit` (every default stage) from an empty build."""
    scratch.reset(keep=("cluster.yaml", "vendor"))
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # a fresh child, so that ru_maxrss is this build's own
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        os.execv(sys.executable, [sys.executable, "-m", "doit", "-f", str(REPO / "dodo.py"),
                                  "-d", str(scratch.root), f"inventory={scratch.root / 'cluster.yaml'}"])
    _, status, usage = os.wait4(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"doit failed in {scratch.root}")
    return time.perf_counter() - start, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="50,100,200")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    scratches = {n: Scratch(inventory(workers=n - 3)) for n in sizes}
    for scratch in scratches.values():
        stand_in_vendor(scratch.root, scratch.root / "cluster.yaml")
    per_node: dict[int, list[float]] = {n: [] for n in sizes}
    peaks: dict[int, float] = {n: 0.0 for n in sizes}
    for _ in range(args.rounds):
        for n, scratch in scratches.items():
            seconds, peak = build(scratch)
            per_node[n].append(seconds / n)
            peaks[n] = max(peaks[n], peak)
    print("\nscale: full build (pki, secrets, render, bundle) from an empty build directory")
    for n in sizes:
        print(f"  {n:4d} nodes: {statistics.median(per_node[n]) * 1000:7.1f} ms per node (median of "
              f"{args.rounds}), peak memory {peaks[n]:6.1f} MB")
    # Each round builds every size back to back: the ratio is taken within a round (the
    # disk's speed here drifts by 2x within minutes), then the median over rounds.
    for n in sizes[1:]:
        ratios = [big / small for big, small in zip(per_node[n], per_node[sizes[0]], strict=True)]
        print(f"  per-node time {n} / {sizes[0]}: median ratio {statistics.median(ratios):.2f}"
              + ("   target: <= 1.2" if n == max(sizes) else ""))
    print(f"  peak memory at {max(sizes)} nodes: {peaks[max(sizes)]:.1f} MB   target: < 300 MB")
    for scratch in scratches.values():
        scratch.remove()


if __name__ == "__main__":
    main()
