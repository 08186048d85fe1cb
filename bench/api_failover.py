"""bench/api_failover: how long a worker's kubectl takes with its first API server down.

    sudo python bench/api_failover.py [--rounds N] [--worker NODE]

Builds the example inventory (stand-in vendored binaries), installs one worker's bundle
into a directory with its install.sh, and runs real kubectl with the kubeconfigs and the
/etc/hosts it installed against three stand-in API servers (tests/support/failover.py),
in network namespaces of its own. Per round and kubeconfig, one `kubectl get --raw
/version` (a new process and connection each) for each case:
  up        every API server up
  refused   the first API server of the worker's /etc/hosts block stopped, its host up
  dead      no host at the first address (ARP goes unanswered)
  silent    a host at the first address that answers nothing (its MAC still cached)
Prints the median seconds of each case, and which server answered.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent / "tests"))
sys.path.insert(0, str(BENCH.parent))
from support.failover import failover, failover_config, installed_worker  # noqa: E402

CASES = ("up", "refused", "dead", "silent")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--worker", default="worker-az1-a")
    args = parser.parse_args()
    where = Path(tempfile.mkdtemp(prefix="kthw-bench-failover-"))
    try:
        project, root = installed_worker(where, args.worker)
        config = failover_config(project, root, args.worker)
        first = next(line.split()[0] for line in (root / "etc/hosts").read_text().splitlines()
                     if line.endswith(" kube-apiserver.kthw.internal"))
        cases = [[case, None if case == "up" else first] for case in CASES] * args.rounds
        rows = failover({**config, "cases": cases}, where / "run")
    finally:
        shutil.rmtree(where, ignore_errors=True)
    failed = [row for row in rows if not row["ok"]]
    if failed:
        raise SystemExit(f"kubectl failed: {failed[0]}")
    print(f"{args.worker}: first API server {first}; {args.rounds} rounds, medians of one kubectl each")
    for case in CASES:
        for kubeconfig in config["kubeconfigs"]:
            picked = [row for row in rows if row["case"] == case and row["kubeconfig"] == kubeconfig]
            servers = sorted({row["server"] for row in picked})
            print(f"  {case:8} {kubeconfig:18} median {statistics.median(r['seconds'] for r in picked):6.2f} s"
                  f"   answered by {', '.join(servers)}")


if __name__ == "__main__":
    main()
