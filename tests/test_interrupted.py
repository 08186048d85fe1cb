"""A `doit pki` killed at any point leaves a build that the next plain `doit pki` makes whole.

Each case SIGKILLs the real doit process at its N-th write: the rename that ends every
kthw.fsutil.atomic_write, just before it is made (tests/doit_hooks, loaded only by these
tests), so the target still holds what it held and the temp file stays behind, full for
even N and emptied for odd N (a kill right after its creation). Then a plain `doit pki`
runs, and the build must hold every invariant (support.pki.assert_build_is_true:
chains verify with real openssl, keys match certs, node copies are byte-identical to the
store, kubeconfigs embed the current cert, no temp files), no key present after the kill
may have been made again, and one more run must have nothing to do.

N is sampled to keep the suite fast, from T, the writes of one uninterrupted run (counted
by the same hook): the first 5 (the CA hierarchy and the first leaf), 7 spread evenly
over the middle, the last 5 (the last node's copies, kubeconfigs and trust bundles), and
T + 1, which completes. A fresh build and a renewal a year later (when old node copies
exist, so a stale copy would show) are each interrupted this way.
"""

from __future__ import annotations

import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from support.pki import assert_build_is_true
from support.project import Project, counting_writes, killed_at_write, loopback_inventory, system_clock_at

pytestmark = pytest.mark.slow  # end to end (see pyproject's markers)

EDGE, MIDDLE = 5, 7


def sampled(total: int) -> list[int]:
    step = max(1, (total - 2 * EDGE) // (MIDDLE + 1))
    middle = range(EDGE + step, total - EDGE + 1, step)
    return [*sorted({*range(1, EDGE + 1), *list(middle)[:MIDDLE], *range(total - EDGE + 1, total + 1)}), total + 1]


def _writes(project: Project, env: dict, counter: Path) -> int:
    project.doit("pki", env={**env, **counting_writes(counter)})
    return int(counter.read_text())


def _keys(project: Project) -> dict[str, bytes]:
    return {str(p.relative_to(project.root)): p.read_bytes() for p in (project.root / "build/pki").rglob("*.key")}


def _interrupt_and_resume(project: Project, n: int, total: int, env: dict, moment: datetime | None) -> None:
    killed = project.doit("pki", env={**env, **killed_at_write(n, empty_temp=n % 2 == 1)}, check=False)
    assert killed.returncode == (-9 if n <= total else 0), f"write {n}: {killed.stderr[-2000:]}"
    keys = _keys(project)
    project.doit("pki", env=env)
    try:
        assert_build_is_true(project, moment)
    except AssertionError as err:
        raise AssertionError(f"killed at write {n} of {total}: {err}") from None
    after = _keys(project)
    assert {path: after[path] for path in keys} == keys, f"write {n}: a key was made again"
    assert project.doit("pki", env=env).executed == [], f"write {n}: the build did not settle"


def test_a_fresh_build_killed_at_any_write_converges(tmp_path):
    inventory = loopback_inventory(workers=1)
    counted = Project(tmp_path / "counted")
    counted.root.mkdir()
    counted.write_inventory(inventory)
    total = _writes(counted, {}, tmp_path / "count")
    assert total > 100
    for n in sampled(total):
        project = Project(tmp_path / f"killed-at-{n}")
        project.root.mkdir()
        project.write_inventory(inventory)
        _interrupt_and_resume(project, n, total, {}, None)


def test_a_renewal_killed_at_any_write_converges(tmp_path):
    """Built a year ago (the hook sets doit's system clock), renewed now: every leaf is due."""
    start = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(days=700)
    later = start + timedelta(days=340)
    project = Project(tmp_path / "renewal")
    project.root.mkdir()
    project.write_inventory(loopback_inventory(workers=1))
    project.doit("pki", env=system_clock_at(start))
    built = tmp_path / "built"
    shutil.copytree(project.root / "build", built, symlinks=True)  # mtimes kept: doit sees an unchanged build

    def restore() -> None:
        shutil.rmtree(project.root / "build")
        shutil.copytree(built, project.root / "build", symlinks=True)

    env = system_clock_at(later)
    total = _writes(project, env, tmp_path / "count")
    assert total > 50
    for n in sampled(total):
        restore()
        _interrupt_and_resume(project, n, total, env, later)
