"""bench/noop: `doit` with nothing stale, on the example inventory and on 100 nodes.

    python bench/noop.py [--rounds N] [--nodes N]

Each inventory's whole default graph is built once (vendor/ filled with stamped
stand-ins, as after a real `doit vendor`), then these alternate:
  doit (nothing stale)   the no-op run an operator makes to check that all is built
  doit list              loading the same tasks without checking them
  doit, empty dodo       doit starting on a dodo file with no tasks: the floor any
                         doit-based tool pays (interpreter, doit's imports, its database)
Targets: example inventory under 0.25 s median; 100 nodes: doit/list at most 3 and
under 1.5 s median.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent / "tests"))
from common import REPO, Scratch, alternate, inventory, report, user_environment  # noqa: E402
from test_bundle_support import stand_in_vendor  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--nodes", type=int, default=100)
    args = parser.parse_args()
    empty = Path(tempfile.mkdtemp(prefix="kthw-bench-empty-"))
    (empty / "dodo.py").write_text("DOIT_CONFIG = {'dep_file': '.doit-empty.db', 'backend': 'sqlite3'}\n")

    def empty_doit() -> None:
        subprocess.run([sys.executable, "-m", "doit", "-f", str(empty / "dodo.py"), "-d", str(empty)],
                       check=True, capture_output=True, env=user_environment())

    for title, text, targets in (
            ("example inventory (cluster.yaml)", (REPO / "cluster.yaml").read_text(),
             {"doit (nothing stale)": "under 0.25 s median"}),
            (f"{args.nodes} nodes", inventory(workers=args.nodes - 3),
             {"doit (nothing stale)": "doit/list <= 3, and under 1.5 s median"})):
        scratch = Scratch(text)
        stand_in_vendor(scratch.root, scratch.root / "cluster.yaml")
        scratch.doit()
        assert scratch.doit().stderr.strip() == "", "the second run must have nothing to do"
        times = alternate({"doit list": lambda: scratch.doit("list"),
                           "doit (nothing stale)": lambda: scratch.doit(),
                           "doit, empty dodo": empty_doit}, args.rounds)
        report(f"noop, {title}", times, "doit list", {})
        for name, target in targets.items():
            print(f"  {name} median: {statistics.median(times[name]):.3f} s   target: {target}")
        scratch.remove()
    subprocess.run(["rm", "-rf", str(empty)], check=True)


if __name__ == "__main__":
    main()
