"""A bare `doit` whose last full check found nothing to do stops early, and never when
anything that check read has changed: every test here changes one thing behind doit's back
and asserts that the next bare `doit` rebuilds what the full check rebuilds."""

from __future__ import annotations

import contextlib
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
    assert {f"{root}/build", f"{root}/bundles", f"{root}/vendor"} <= set(record.watched.trees)
    import doit
    import yaml
    # Ours, and the libraries the check loaded: one changed in place counts.
    assert {str(REPO / "kthw"), str(REPO / "tasks"), str(Path(yaml.__file__).parent),
            str(Path(x509.__file__).parent.parent), str(Path(doit.__file__).parent)} <= set(record.watched.code)
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


@pytest.mark.parametrize("name", ["stray.conf", ".last-check.json", "__pycache__/x.pyc", ".doit.db"])
def test_a_stray_file_in_a_node_tree_stops_its_bundle(settled, name):
    """Whatever its name: one like the record's, doit's database or a bytecode cache too."""
    stray = settled.root / "build/nodes/w1/etc/k8s/kubelet" / name
    stray.parent.mkdir(exist_ok=True)
    stray.write_text("not ours\n")
    run = settled.doit()
    shutil.rmtree(stray.parent) if stray.parent.name == "__pycache__" else stray.unlink()
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


def test_a_site_pins_link_pointed_elsewhere_is_read(settled):
    """The pins file is watched at the path the inventory names, wherever a link there leads."""
    inventory_file = settled.root / "cluster.yaml"
    text = inventory_file.read_text()
    site = settled.root / "site"
    site.mkdir()
    (site / "good.yaml").write_text("schema: 1\n")
    (site / "bad.yaml").write_text("schema: 99\n")
    (site / "pins.yaml").symlink_to("good.yaml")
    inventory_file.write_text(text + "vendor: {site_pins: site/pins.yaml}\n")
    try:
        settled.settle()
        (site / "pins.yaml").unlink()
        (site / "pins.yaml").symlink_to("bad.yaml")
        run = settled.doit()
        assert run.returncode == 2 and "schema" in run.stderr, progress(run)
    finally:
        inventory_file.write_text(text)
        shutil.rmtree(site)


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


def test_a_run_interrupted_by_ctrl_c_while_making_the_bundles_leaves_no_record(settled):
    """Every task made so far was current, but the bundles were never checked."""
    (settled.root / "bundles/w1.tar.gz").unlink()
    time.sleep(2.1)
    run = settled.doit(env={"KTHW_TEST_INTERRUPT_AT": "kthw.bundle.build:source_date_epoch"})
    assert run.returncode != 0 and "KeyboardInterrupt" in run.stderr, progress(run)
    assert not (settled.root / RECORD).exists()
    run = settled.doit()
    assert "bundle:w1" in run.executed, progress(run)


def test_a_torn_record_is_not_trusted(settled):
    path = settled.root / RECORD
    path.write_text(path.read_text()[:40])
    assert not stopped_early(settled.doit())
    data = json.loads(path.read_text())
    assert data["format"] == lastcheck.FORMAT


# The fingerprint itself, on a tree of its own.

def _fingerprint(root: Path) -> str:
    watched = lastcheck.Watched(trees=(str(root / "tree"),), code=(), listings=(str(root),),
                                files=(str(root / "file"),))
    return lastcheck.snapshot(watched, ["setting"], frozenset({str(root / "tree/skipped")})).fingerprint


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


def test_only_the_skipped_paths_and_the_codes_bytecode_caches_are_left_out(tmp_path):
    tree, code = tmp_path / "tree", tmp_path / "code"
    (tree / "sub").mkdir(parents=True)
    code.mkdir()
    watched = lastcheck.Watched(trees=(str(tree),), code=(str(code),), listings=(), files=())
    skipped = frozenset({str(tree / "record.json")})
    before = lastcheck.snapshot(watched, [], skipped).fingerprint
    (tree / "record.json").write_text("the record itself")
    (code / "__pycache__").mkdir()
    (code / "__pycache__/module.pyc").write_bytes(b"")
    assert lastcheck.snapshot(watched, [], skipped).fingerprint == before
    (tree / "sub/record.json").write_text("elsewhere, a file like any other")
    assert lastcheck.snapshot(watched, [], skipped).fingerprint != before
    (tree / "sub/record.json").unlink()
    (tree / "__pycache__").mkdir()
    assert lastcheck.snapshot(watched, [], skipped).fingerprint != before


def test_a_record_holds_only_inside_its_span_and_when_it_watches_enough(tmp_path):
    (tmp_path / "tree").mkdir()
    watched = lastcheck.Watched(trees=(str(tmp_path / "tree"),), code=(), listings=(), files=())
    at = datetime(2027, 1, 1, tzinfo=timezone.utc)
    record = lastcheck.Record(watched, lastcheck.snapshot(watched, ["s"]).fingerprint, at, at + timedelta(days=1),
                              ("two etcd members",))
    path = tmp_path / "record.json"
    path.write_bytes(lastcheck.to_json(record))
    assert lastcheck.read(path) == record
    nothing = lastcheck.Watched((), (), (), ())

    def holding(setting=("s",), now=at, at_least=nothing):
        return lastcheck.holding(path, setting, now, at_least, frozenset())

    assert [holding(now=at + offset) is not None for offset in (timedelta(seconds=-1), timedelta(0),
                                                                 timedelta(hours=23), timedelta(days=1))] \
        == [False, True, True, False]
    assert holding() == record
    assert holding(setting=["another setting"]) is None
    assert holding(at_least=lastcheck.Watched((), (), (), (str(tmp_path / "cluster.yaml"),))) is None


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
    watched = lastcheck.Watched(trees=(str(tmp_path / "tree"),), code=(), listings=(), files=())
    volatile = frozenset({str(tmp_path / "tree/.doit.db")})
    before = lastcheck.snapshot(watched, [], volatile=volatile)
    os.utime(tmp_path / "tree/.doit.db", ns=(1, 1))
    after = lastcheck.snapshot(watched, [], volatile=volatile)
    assert after.steady == before.steady and after.fingerprint != before.fingerprint
    assert after.newest_change_ns == 0
    # What a run that stops early compares, knowing nothing of volatile files: the same.
    assert lastcheck.snapshot(watched, []).fingerprint == after.fingerprint
    (tmp_path / "tree/ca.crt").write_bytes(b"CA")
    each_file, whole_tree = (lastcheck.snapshot(watched, [], volatile=frozenset({str(path)}))
                             for path in (tmp_path / "tree/.doit.db", tmp_path / "tree"))
    assert whole_tree.fingerprint == each_file.fingerprint and whole_tree.steady != each_file.steady


@pytest.fixture
def recording_run(tmp_path, monkeypatch):
    """tasks.lastcheck in this process as in a bare `doit` run, in a project whose files are
    all older than 2 s, with doit's database holding one row."""
    import tasks.lastcheck as run_record
    from kthw import clock
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["/usr/bin/doit"])
    for name in [name for name in os.environ if name.startswith("KTHW_")]:
        monkeypatch.delenv(name)
    for name, value in (("_watched", None), ("_before", None), ("_warnings", ())):
        monkeypatch.setattr(run_record, name, value)
    monkeypatch.setattr(clock, "_next_change", datetime.now(timezone.utc) + timedelta(days=7))
    (tmp_path / "cluster.yaml").write_text("name: x\n")
    (tmp_path / "build").mkdir()
    with contextlib.closing(sqlite3.connect(tmp_path / "build/.doit.db")) as db:
        db.execute("CREATE TABLE doit (task_id TEXT PRIMARY KEY, task_data TEXT)")
        db.execute("INSERT INTO doit VALUES ('pki:cp1/apiserver', '{}')")
        db.commit()
    time.sleep(2.1)
    return run_record


def _begin(run_record, warnings=(), vault=False, drop=True) -> None:
    """What gather does: drop the record (noting the inventory), read the inventory, begin."""
    if drop:
        run_record.drop()
    run_record.begin(Path("cluster.yaml"), None, warnings, vault)


def test_a_run_records_only_when_nothing_changed_since_its_start(recording_run, tmp_path):
    _begin(recording_run)
    (tmp_path / "build/new.crt").write_text("written while the run was checking")
    assert not recording_run.finish(True)  # changed during the run, and less than 2 s ago
    time.sleep(2.1)
    assert not recording_run.finish(True)  # changed during the run
    assert not (tmp_path / RECORD).exists()
    _begin(recording_run)
    assert not recording_run.finish(False)  # a task ran, failed or was not checked
    assert recording_run.finish(True)
    assert (tmp_path / RECORD).exists()


def test_a_change_to_doits_rows_during_the_run_is_seen_but_not_its_own_rewrite(recording_run, tmp_path):
    """Another doit (say `doit forget`) changing the database while this run checks: no record."""
    _begin(recording_run)
    with contextlib.closing(sqlite3.connect(tmp_path / "build/.doit.db")) as db:
        db.execute("UPDATE doit SET task_data = '{}'")  # what every run does: the same rows again
        db.commit()
    assert recording_run.finish(True)
    _begin(recording_run)
    with contextlib.closing(sqlite3.connect(tmp_path / "build/.doit.db")) as db:
        db.execute("DELETE FROM doit")
        db.commit()
    assert not recording_run.finish(True)


def test_nothing_is_recorded_with_the_vault_backend(recording_run, tmp_path):
    _begin(recording_run, vault=True)
    assert not recording_run.finish(True)
    assert not (tmp_path / RECORD).exists()
    _begin(recording_run)
    assert recording_run.finish(True)  # the same run with the local CA records


def test_a_run_that_stops_early_warns_as_the_full_check_did(recording_run, capsys):
    _begin(recording_run, warnings=("nodes: 2 etcd members cannot lose one",))
    assert recording_run.finish(True)
    capsys.readouterr()
    assert recording_run.nothing_changed()
    assert capsys.readouterr().err == "warning: nodes: 2 etcd members cannot lose one\n"


def test_a_record_that_watches_less_than_a_full_check_reads_is_not_trusted(recording_run, tmp_path):
    _begin(recording_run)
    assert recording_run.finish(True)
    assert recording_run.nothing_changed()
    record = lastcheck.read(tmp_path / RECORD)
    assert record is not None
    nothing = lastcheck.Watched((), (), (), ())
    forged = lastcheck.Record(nothing, lastcheck.snapshot(nothing, recording_run._setting()).fingerprint,
                              record.checked_at, record.holds_until)
    (tmp_path / RECORD).write_bytes(lastcheck.to_json(forged))
    assert not recording_run.nothing_changed()


def test_a_file_written_in_place_in_a_listed_directory_does_not_count(tmp_path):
    """A log or a shell history beside the inventory: only entries added or removed count."""
    watched = lastcheck.Watched(trees=(), code=(), listings=(str(tmp_path),), files=())
    (tmp_path / "doit.log").write_text("first run\n")
    before = lastcheck.snapshot(watched, []).fingerprint
    with (tmp_path / "doit.log").open("a") as log:
        log.write("second run\n")
    assert lastcheck.snapshot(watched, []).fingerprint == before
    (tmp_path / "doit.cfg").write_text("[GLOBAL]\n")
    assert lastcheck.snapshot(watched, []).fingerprint != before


def test_an_inventory_edited_while_it_was_read_leaves_no_record(recording_run, tmp_path):
    recording_run.drop()  # how the inventory stood before it was read
    (tmp_path / "cluster.yaml").write_text("name: y\n")  # edited before the first walk
    time.sleep(2.1)
    _begin(recording_run, drop=False)
    assert not recording_run.finish(True)
    _begin(recording_run)
    assert recording_run.finish(True)


def test_an_interrupted_run_or_a_creator_never_run_leaves_no_record(monkeypatch):
    """doit reports the end of a run from a `finally`: Ctrl-C there must not count as a check,
    nor may a stage whose tasks were never made (create_after) count as checked."""
    from doit.task import DelayedLoader, Task

    import tasks
    calls = []
    monkeypatch.setattr("tasks.lastcheck.finish", calls.append)

    def report(graph: dict[str, Task], current: set[str], interrupt: bool = False) -> None:
        reporter = tasks.RecordingProgress(sys.stderr, {})
        reporter.initialize(graph, tasks.DEFAULT_TASKS)
        for name in current:
            reporter.skip_uptodate(graph[name])
        try:
            if interrupt:
                raise KeyboardInterrupt
        except KeyboardInterrupt:
            reporter.complete_run()
        else:
            reporter.complete_run()

    checked = {"pki:cp1/apiserver"}
    graph = {"pki": Task("pki", None, task_dep=["pki:cp1/apiserver"]),
             "pki:cp1/apiserver": Task("pki:cp1/apiserver", ["true"]),
             "secrets": Task("secrets", None), "render": Task("render", None), "bundle": Task("bundle", None)}
    report(graph, checked)
    report(graph, checked, interrupt=True)
    graph["bundle"] = Task("bundle", None, loader=DelayedLoader(print))
    report(graph, checked)
    assert calls == [True, False, False]
