"""A bare `doit` whose last full check found nothing to do stops early, and never when
anything that check read has changed: every test here changes one thing behind doit's back
and asserts that the next bare `doit` rebuilds what the full check rebuilds."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from support.bundles import stand_in_vendor
from support.project import DOIT_HOOKS, REPO, Run

from kthw import inventory, lastcheck
from kthw.layout import Layout
from kthw.secrets import tokens
from kthw.secrets.state import state_of

pytestmark = pytest.mark.slow

INVENTORY = """\
name: quick
kubernetes_version: "{version}"
api_endpoint: {{dns: k8s.quick.lan, ip: 10.0.0.10, port: 6443}}
service_cidr: 10.96.0.0/12
pod_cidr: 10.244.0.0/16
nodes:
  - {{name: cp1, roles: [control-plane, etcd], arch: amd64, zone: az1, ip: 10.0.0.11}}
  - {{name: w1, roles: [worker], arch: amd64, zone: az1, ip: 10.0.1.1, pod_cidr: 10.244.1.0/24}}
"""
RECORD = Path("build/.last-check.json")


class Workdir:
    """An operator's project directory: cluster.yaml, and dodo.py, run as plain `doit` there.
    doit's clock (kthw.clock.system_now) is read from a file the test moves."""

    def __init__(self, root: Path):
        self.root = root
        self.clock_file = root.parent / "clock"
        self.clock_file.write_text(datetime.now(timezone.utc).replace(microsecond=0).isoformat())

    def doit(self, *args: str, env: dict | None = None) -> Run:
        """`doit ARGS` in the project; stderr carries, after the progress, the modules imported."""
        path = os.pathsep.join(p for p in (str(DOIT_HOOKS), os.environ.get("PYTHONPATH", "")) if p)
        full_env = {name: value for name, value in os.environ.items() if not name.startswith("KTHW_")}
        full_env.update(PYTHONPATH=path, KTHW_TEST_SYSTEM_CLOCK_FILE=str(self.clock_file), **(env or {}))
        full_env.pop("PYTHONDONTWRITEBYTECODE", None)
        proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "doit", *args], cwd=self.root,
                              capture_output=True, text=True, env=full_env, timeout=600)
        return Run(proc.returncode, proc.stdout, proc.stderr)

    def settle(self) -> None:
        """Bare `doit` until it has nothing to do and stops early: the state each test starts from.
        A full check records nothing while a file it read changed under 2 s ago."""
        for _ in range(10):
            run = self.doit()
            assert run.returncode == 0, run.stderr
            if stopped_early(run):
                return
            if not run.executed:
                time.sleep(0.5)
        raise AssertionError(f"bare doit never stopped early:\n{progress(run)}")

    def set_clock(self, moment: datetime) -> None:
        self.clock_file.write_text(moment.isoformat())

    def record(self) -> lastcheck.Record:
        record = lastcheck.read(self.root / RECORD)
        assert record is not None, "no record of the last full check"
        return record


def progress(run: Run) -> str:
    return "\n".join(line for line in run.stderr.splitlines() if not line.startswith("import time:"))


def stopped_early(run: Run) -> bool:
    """The run made no task: it never loaded the inventory's modules."""
    loaded = re.search(r"\|\s+kthw\.inventory$", run.stderr, re.MULTILINE)
    return run.returncode == 0 and not loaded and not run.executed


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Workdir:
    root = tmp_path_factory.mktemp("lastcheck") / "project"
    root.mkdir()
    from support.project import default_kubernetes_version
    (root / "cluster.yaml").write_text(INVENTORY.format(version=default_kubernetes_version()))
    (root / "dodo.py").symlink_to(REPO / "dodo.py")
    stand_in_vendor(root, root / "cluster.yaml")
    workdir = Workdir(root)
    first = workdir.doit()
    assert first.returncode == 0 and first.executed, progress(first)
    return workdir


@pytest.fixture
def settled(project: Workdir) -> Workdir:
    project.settle()
    return project


def test_a_bare_doit_after_a_full_check_that_found_nothing_stops_early_and_prints_nothing(settled):
    run = settled.doit()
    assert stopped_early(run)
    assert run.stdout == "" and progress(run) == ""
    record = settled.record()
    root = str(settled.root)
    assert {f"{root}/build", f"{root}/bundles", f"{root}/vendor", str(REPO / "kthw"), str(REPO / "tasks")} \
        <= set(record.watched.trees)
    assert "cluster.yaml" in record.watched.files


def test_a_deleted_node_file_is_rendered_again(settled):
    unit = settled.root / "build/nodes/cp1/etc/systemd/system/kube-scheduler.service"
    unit.unlink()
    run = settled.doit()
    assert "render:cp1/kube-scheduler.service" in run.executed, progress(run)
    assert unit.is_file()


def test_a_cert_edited_and_given_its_old_mtime_back_is_issued_again(settled):
    cert = settled.root / "build/pki/nodes/cp1/apiserver.crt"
    before = cert.stat()
    text = cert.read_bytes()
    other = settled.root / "build/pki/nodes/cp1/apiserver-kubelet-client.crt"
    # Another cert of the same issuer, cut to the same length: same size, same mtime.
    cert.write_bytes(other.read_bytes()[:len(text)].ljust(len(text), b"\n"))
    os.utime(cert, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert cert.stat().st_size == before.st_size and cert.stat().st_mtime_ns == before.st_mtime_ns
    run = settled.doit()
    assert "pki:cp1/apiserver" in run.executed, progress(run)
    assert x509.load_pem_x509_certificate(cert.read_bytes()).subject != \
        x509.load_pem_x509_certificate(other.read_bytes()).subject


def test_a_stray_file_in_a_node_tree_stops_its_bundle(settled):
    stray = settled.root / "build/nodes/w1/etc/k8s/kubelet/stray.conf"
    stray.write_text("not ours\n")
    run = settled.doit()
    stray.unlink()
    assert run.returncode != 0 and "bundle:w1" in run.executed, progress(run)
    assert "no stage produces this file" in run.stderr
    assert not (settled.root / RECORD).exists()  # a failed run leaves none


def test_an_edited_inventory_is_read(settled):
    inventory_file = settled.root / "cluster.yaml"
    text = inventory_file.read_text()
    inventory_file.write_text(text.replace("ip: 10.0.0.11}", "ip: 10.0.0.11, extra_sans: [cp1.quick.lan]}"))
    try:
        run = settled.doit()
        assert "pki:cp1/apiserver" in run.executed, progress(run)
    finally:
        inventory_file.write_text(text)
    assert "pki:cp1/apiserver" in settled.doit().executed


def test_a_site_pins_file_appearing_beside_the_inventory_is_read(settled):
    """The inventory directory's entries are watched: a pins file that was not there is seen."""
    pins = settled.root / "pins.yaml"
    pins.write_text("not: [a pins table\n")
    try:
        run = settled.doit()
        assert not stopped_early(run), progress(run)
    finally:
        pins.unlink()


def test_doits_state_changed_behind_its_back_is_seen(settled):
    """A task forgotten in doit's database (here by editing it directly) runs again."""
    with sqlite3.connect(settled.root / "build/.doit.db") as db:
        db.execute("DELETE FROM doit WHERE task_id = ?", ("render:w1/kubelet-config.yaml",))
    run = settled.doit()
    assert "render:w1/kubelet-config.yaml" in run.executed, progress(run)


def test_a_changed_setting_makes_the_full_check(settled):
    assert not stopped_early(settled.doit(env={"SOURCE_DATE_EPOCH": "1700000000"}))
    settled.settle()
    assert not stopped_early(settled.doit(env={"KTHW_FULL_CHECK": "1"}))


def test_any_argument_makes_the_full_check_and_drops_the_record(settled):
    assert not stopped_early(settled.doit("pki"))
    assert not (settled.root / RECORD).exists()
    assert not stopped_early(settled.doit("run", "pki", "secrets", "render", "bundle"))
    assert not stopped_early(settled.doit())  # the full check that records again
    assert stopped_early(settled.doit())


def test_a_preview_date_is_never_recorded_nor_stopped_early_for(settled):
    run = settled.doit(env={"KTHW_NOW": "2031-01-01"})
    assert not stopped_early(run)
    assert not (settled.root / RECORD).exists()


def test_the_record_holds_until_the_first_renewal_and_then_the_renewal_is_made(settled):
    record = settled.record()
    inv = inventory.load(settled.root / "cluster.yaml")
    # Every cert's renewal moment (the root's too: conservative), and every token's.
    moments = []
    for path in (settled.root / "build/pki").rglob("*.crt"):
        moments += [cert.not_valid_after_utc - inv.renew_before
                    for cert in x509.load_pem_x509_certificates(path.read_bytes())]
    window = tokens.renewal_window(inv)
    token = tokens.read(state_of(Layout(settled.root)).token("w1"), "w1")
    assert token is not None
    moments.append(token.expiration - window)
    assert record.holds_until == min(moments)

    settled.set_clock(record.holds_until - timedelta(seconds=1))
    assert stopped_early(settled.doit())
    settled.set_clock(record.holds_until)
    run = settled.doit()
    assert "secrets:bootstrap-token-w1" in run.executed, progress(run)
    settled.set_clock(record.holds_until + timedelta(seconds=5))
    settled.settle()


def test_a_clock_set_back_before_the_check_makes_the_full_check(settled):
    record = settled.record()
    settled.set_clock(record.checked_at - timedelta(seconds=1))
    try:
        assert not stopped_early(settled.doit())
    finally:
        settled.set_clock(record.checked_at + timedelta(seconds=1))


def test_nothing_is_recorded_while_a_file_read_changed_within_the_last_two_seconds(settled):
    """A file may change twice within one timestamp tick and look unchanged: the full check
    that follows a change records only once the change is older than the coarsest tick."""
    unit = settled.root / "build/nodes/cp1/etc/systemd/system/kube-scheduler.service"
    os.utime(unit)  # same bytes: nothing to do, but the file changed
    changed_at = time.time()
    for _ in range(2):
        run = settled.doit()
        assert not run.executed and not stopped_early(run), progress(run)
        if time.time() - changed_at < 1.9:
            assert not (settled.root / RECORD).exists()
    time.sleep(max(0.0, changed_at + 2.1 - time.time()))
    settled.doit()
    assert (settled.root / RECORD).exists()
    assert stopped_early(settled.doit())


def test_a_torn_record_is_not_trusted(settled):
    path = settled.root / RECORD
    path.write_text(path.read_text()[:40])
    assert not stopped_early(settled.doit())
    data = json.loads(path.read_text())
    assert data["format"] == lastcheck.FORMAT


# The fingerprint itself, on a tree of its own.

def _fingerprint(root: Path) -> str:
    watched = lastcheck.Watched(trees=(str(root / "tree"),), listings=(str(root),), files=(str(root / "file"),))
    return lastcheck.snapshot(watched, ["setting"], frozenset({"skipped"})).fingerprint


def _rewrite_keeping_size_and_mtime(tree: Path) -> None:
    target = tree / "sub/a.crt"
    old = target.stat()
    target.write_bytes(b"ZZZZ")
    os.utime(target, ns=(old.st_atime_ns, old.st_mtime_ns))


def _retarget(tree: Path) -> None:
    (tree / "link").unlink()
    (tree / "link").symlink_to("sub/a.crt")


def _replace_with_copy(tree: Path) -> None:
    shutil.copy2(tree / "sub/a.crt", tree.parent / "copy")
    os.replace(tree.parent / "copy", tree / "sub/a.crt")


CHANGES = {
    "rewrite-same-size-and-mtime": _rewrite_keeping_size_and_mtime,
    "chmod": lambda tree: (tree / "sub/a.crt").chmod(0o600),
    "add": lambda tree: (tree / "sub/new").write_bytes(b""),
    "remove": lambda tree: (tree / "sub/a.crt").unlink(),
    "rename": lambda tree: (tree / "sub/a.crt").rename(tree / "sub/c.crt"),
    "retarget-link": _retarget,
    "replace-with-copy": _replace_with_copy,
    "watched-file-appears": lambda tree: (tree.parent / "file").write_bytes(b""),
    "listing-entry-added": lambda tree: (tree.parent / "notes.txt").write_text("x"),
    "empty-dir-added": lambda tree: (tree / "sub/empty").mkdir(),
}


@pytest.mark.parametrize("change", CHANGES)
def test_the_fingerprint_sees_every_kind_of_change(tmp_path, change):
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub/a.crt").write_bytes(b"AAAA")
    (tree / "b").write_bytes(b"BBBB")
    (tree / "link").symlink_to("b")
    before = _fingerprint(tmp_path)
    assert _fingerprint(tmp_path) == before
    CHANGES[change](tree)
    assert _fingerprint(tmp_path) != before


def test_the_fingerprint_leaves_out_the_skipped_names_and_bytecode_caches(tmp_path):
    (tmp_path / "tree").mkdir()
    before = _fingerprint(tmp_path)
    (tmp_path / "tree/skipped").write_text("the record itself")
    (tmp_path / "tree/__pycache__").mkdir()
    assert _fingerprint(tmp_path) == before


def test_a_record_holds_only_inside_its_span(tmp_path):
    (tmp_path / "tree").mkdir()
    watched = lastcheck.Watched(trees=(str(tmp_path / "tree"),), listings=(), files=())
    at = datetime(2027, 1, 1, tzinfo=timezone.utc)
    record = lastcheck.Record(watched, lastcheck.snapshot(watched, ["s"]).fingerprint, at, at + timedelta(days=1))
    path = tmp_path / "record.json"
    path.write_bytes(lastcheck.to_json(record))
    assert lastcheck.read(path) == record
    holds = [lastcheck.holds(path, ["s"], at + offset, frozenset(), frozenset())
             for offset in (timedelta(seconds=-1), timedelta(0), timedelta(hours=23), timedelta(days=1))]
    assert holds == [False, True, True, False]
    assert not lastcheck.holds(path, ["another setting"], at, frozenset(), frozenset())


def test_the_fingerprint_follows_a_linked_directory_once(tmp_path):
    """What a link leads to is read through it: a change there counts; a link loop ends."""
    (tmp_path / "tree").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere/ca.crt").write_bytes(b"CA")
    (tmp_path / "tree/linked").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "tree/loop").symlink_to(tmp_path / "tree")
    before = _fingerprint(tmp_path)
    (tmp_path / "elsewhere/ca.crt").write_bytes(b"C2")
    assert _fingerprint(tmp_path) != before


def test_a_volatile_file_counts_in_the_fingerprint_only(tmp_path):
    """doit's database, rewritten by every run: a run is compared with its start without it
    (and it is not a recent change), but the record holds it as the run left it."""
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree/.doit.db").write_bytes(b"state")
    watched = lastcheck.Watched(trees=(str(tmp_path / "tree"),), listings=(), files=())
    before = lastcheck.snapshot(watched, [], volatile=frozenset({".doit.db"}))
    os.utime(tmp_path / "tree/.doit.db", ns=(1, 1))
    after = lastcheck.snapshot(watched, [], volatile=frozenset({".doit.db"}))
    assert after.steady == before.steady and after.fingerprint != before.fingerprint
    assert after.newest_change_ns == 0


@pytest.fixture
def recording_run(tmp_path, monkeypatch):
    """tasks.lastcheck in this process as in a bare `doit` run in an empty project."""
    import tasks.lastcheck as run_record
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["/usr/bin/doit"])
    for name in [name for name in os.environ if name.startswith("KTHW_")]:
        monkeypatch.delenv(name)
    (tmp_path / "cluster.yaml").write_text("name: x\n")
    (tmp_path / "build").mkdir()
    monkeypatch.setattr(run_record, "_watched", None)
    monkeypatch.setattr(run_record, "_before", None)
    return run_record


def test_a_run_records_only_when_nothing_changed_since_its_start(recording_run, tmp_path):
    trees = [tmp_path / "build"]
    (tmp_path / "build/old.crt").write_text("cert")
    os.utime(tmp_path / "build/old.crt", (1, 1))  # long ago, as far as mtime goes; its ctime is now
    past = time.time_ns()
    recording_run.begin(Path("cluster.yaml"), None, False, trees)
    assert not recording_run.finish(True)  # a file changed less than 2 s ago
    time.sleep(max(0.0, (past + 2_100_000_000 - time.time_ns()) / 1e9))
    recording_run.begin(Path("cluster.yaml"), None, False, trees)
    (tmp_path / "build/new.crt").write_text("written while the run was checking")
    time.sleep(2.1)
    assert not recording_run.finish(True)  # changed during the run
    assert not (tmp_path / RECORD).exists()
    recording_run.begin(Path("cluster.yaml"), None, False, trees)
    assert not recording_run.finish(False)  # a task ran, failed or was not checked
    assert recording_run.finish(True)
    assert (tmp_path / RECORD).exists()


def test_nothing_is_recorded_with_the_vault_backend(recording_run, tmp_path):
    (tmp_path / "build/ca.crt").write_text("cert")
    time.sleep(2.1)
    recording_run.begin(Path("cluster.yaml"), None, True, [tmp_path / "build"])
    assert not recording_run.finish(True)
    assert not (tmp_path / RECORD).exists()
    recording_run.begin(Path("cluster.yaml"), None, False, [tmp_path / "build"])
    assert recording_run.finish(True)  # the same run with the local CA records
