"""bench/noop: `doit` with nothing stale vs `doit list`, on a 100-node inventory.

    python bench/noop.py [--rounds N] [--nodes N]

The whole default graph is built once (vendor/ filled with stamped stand-ins, as after
a real `doit vendor`), then `doit` (nothing to do) and `doit list` alternate.
Targets: median ratio doit/list at most 3, and doit under 1.5 s median.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent / "tests"))
from common import Scratch, alternate, inventory, report  # noqa: E402
from test_bundle_support import stand_in_vendor  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--nodes", type=int, default=100)
    args = parser.parse_args()
    scratch = Scratch(inventory(workers=args.nodes - 3))
    stand_in_vendor(scratch.root, scratch.root / "cluster.yaml")
    scratch.doit()
    assert scratch.doit().stderr.strip() == "", "the second run must have nothing to do"
    times = alternate({"doit (nothing stale)": lambda: scratch.doit(), "doit list": lambda: scratch.doit("list")},
                      args.rounds)
    report(f"noop, {args.nodes} nodes", times, "doit list",
           {"doit (nothing stale)": "<= 3, and under 1.5 s median"})
    print(f"  doit (nothing stale) median: {statistics.median(times['doit (nothing stale)']):.3f} s")
    scratch.remove()


if __name__ == "__main__":
    main()
