"""bench/noop: `doit` with nothing stale, on the example inventory and on 100 nodes.

    python bench/noop.py [--rounds N] [--nodes N] [--baseline DIR]

Each inventory's whole default graph is built once (vendor/ filled with stamped
stand-ins, as after a real `doit vendor`), then these alternate:
  doit (bare)            `doit` typed in the project directory after a full check that
                         found nothing: it stops on that check's record
  doit (full check)      `doit -f dodo.py -d DIR inventory=...` on a second copy of the
                         build: every task made and checked (any argument skips the record)
  doit list              loading the same tasks without checking them
  baseline (bare)        with --baseline DIR: `doit` typed in that checkout's project
                         (an earlier commit), on its own copy of the same build
  doit, empty dodo       doit starting on a dodo file with no tasks: the floor any
                         doit-based tool pays (interpreter, doit's imports and plugin
                         look-ups, its database)
  python -c pass         the interpreter alone
Targets: example inventory under 0.25 s median; 100 nodes: doit/list at most 3 and
under 1.5 s median.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent / "tests"))
from common import REPO, Scratch, alternate, baseline_checkout, empty_dodo, inventory, python_alone, report  # noqa: E402
from support.bundles import stand_in_vendor  # noqa: E402

from tasks.lastcheck import RACY_NS  # noqa: E402

OURS = "doit (bare)"
FULL = "doit (full check)"
# The full check records nothing while a file it read changed less than this ago.
_RACY_S = RACY_NS / 1e9 + 0.1


def built(text: str, checkout: Path = REPO) -> Scratch:
    scratch = Scratch(text, checkout)
    stand_in_vendor(scratch.root, scratch.root / "cluster.yaml")
    scratch.doit()
    time.sleep(_RACY_S)
    for _ in range(2):  # the full check that records, then one that stops on the record
        assert scratch.bare_doit().stderr.strip() == "", "a run after the build must have nothing to do"
    return scratch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--baseline", help="a checkout of an earlier commit, timed beside this one")
    args = parser.parse_args()
    baseline = baseline_checkout(args.baseline)
    floor = empty_dodo()

    for title, text, target in (
            ("example inventory (cluster.yaml)", (REPO / "cluster.yaml").read_text(), "under 0.25 s median"),
            (f"{args.nodes} nodes", inventory(workers=args.nodes - 3), "doit/list <= 3, and under 1.5 s median")):
        one_inventory(title, text, target, args.rounds, baseline, floor)


def one_inventory(title: str, text: str, target: str, rounds: int, baseline: Path | None,
                  floor: Callable[[], object]) -> None:
    # Any other run drops the record, so the bare doit has a build of its own.
    scratch, checked = built(text), built(text)
    contenders: dict[str, Callable[[], object]] = {OURS: scratch.bare_doit, FULL: lambda: checked.doit(),
                                                   "doit list": lambda: checked.doit("list")}
    before = built(text, baseline) if baseline else None
    if before:
        contenders["baseline (bare)"] = before.bare_doit
    contenders.update({"doit, empty dodo": floor, "python -c pass": python_alone})
    times = alternate(contenders, rounds)
    report(f"noop, {title}" + (f"; baseline: {baseline}" if baseline else ""), times, OURS, {})
    print(f"  {OURS} median: {statistics.median(times[OURS]):.3f} s   target: {target}")
    print(f"  {OURS} above the empty-dodo floor: "
          f"{statistics.median(times[OURS]) - statistics.median(times['doit, empty dodo']):.3f} s")
    for each in (scratch, checked, before):
        if each:
            each.remove()


if __name__ == "__main__":
    main()
