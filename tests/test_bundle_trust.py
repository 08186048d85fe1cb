"""Bundle trust, attacked as someone with write access to the USB stick, or with an
unprivileged account on the node, would: every forged, swapped, replayed or redirected
bundle is refused with nothing written outside the target root, and the workstation's
`doit verify_bundle` agrees with the node on every bundle.

Real bash runs the real installer, real GNU tar packs and unpacks, real OpenSSL checks the
signatures, real `kill -9` interrupts an installation.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import subprocess
import textwrap
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from support.bundles import bundle_path, example_project, fingerprint, install, tree_state, two_versions, unpack
from support.project import Project

from kthw.bundle import build as bundle
from kthw.inventory import load

pytestmark = pytest.mark.slow  # end to end (see pyproject's markers)

NODE = "worker-az1-a"
UNIT = "files/etc/systemd/system/kubelet.service"
BACKDOOR = "ExecStartPre=/bin/sh -c 'echo owned >/tmp/kthw-owned'\n"


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Project:
    project = example_project(tmp_path_factory.mktemp("trust"))
    project.doit(f"bundle:{NODE}")
    return project


def node_args(root: Path, *extra: str) -> list[str]:
    return ["--root", str(root), "--no-start", "--any-hostname", *extra]


def kthw_install(root: Path, source: Path, *extra: str) -> subprocess.CompletedProcess:
    """The installer the first installation left on the node, given a later bundle."""
    return subprocess.run(["bash", str(root / bundle.INSTALLER.lstrip("/")), *node_args(root, *extra), str(source)],
                          capture_output=True, text=True)


def pack(directory: Path, output: Path) -> Path:
    subprocess.run(["tar", "-czf", str(output), "-C", str(directory.parent), directory.name], check=True)
    return output


def verify_bundle(project: Project, path: Path) -> subprocess.CompletedProcess:
    return project.doit("verify_bundle", f"path={path}", check=False)


def fresh_root(where: Path) -> Path:
    where.mkdir(parents=True)
    return where


def _rewrite_manifest_entry(directory: Path, member: str) -> None:
    """Put the new sha256 of ``member`` into the MANIFEST, as a forger would."""
    path = "/" + member.removeprefix("files/") if member.startswith("files/") else member
    digest = hashlib.sha256((directory / member).read_bytes()).hexdigest()
    manifest = directory / "MANIFEST"
    lines = [re.sub(rf"^(\d{{4}}) [0-9a-f]{{64}} {re.escape(path)}$", rf"\g<1> {digest} {path}", line)
             for line in manifest.read_text().splitlines()]
    manifest.write_text("\n".join(lines) + "\n")


def _pem(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


# --- forgeries: each one refused by the node and by the workstation ---------------------------


def forge_key_file(directory: Path, genuine: str) -> None:
    """A backdoored unit, its new sha256 in the MANIFEST, the MANIFEST signed by the attacker,
    and a key file that starts with the genuine key's base64 line, then '!', then the
    attacker's PEM: one parser reads the genuine key, the other the attacker's."""
    unit = directory / UNIT
    unit.write_text(unit.read_text().replace("[Service]\n", "[Service]\n" + BACKDOOR))
    _rewrite_manifest_entry(directory, UNIT)
    attacker = Ed25519PrivateKey.generate()
    (directory / "MANIFEST.sig").write_bytes(attacker.sign((directory / "MANIFEST").read_bytes()))
    spki = bytes.fromhex(bundle_signing_spki(genuine))
    (directory / "signing-key.pub").write_bytes(base64.b64encode(spki) + b"\n!\n" + _pem(attacker))


def bundle_signing_spki(fp: str) -> str:
    from kthw.bundle import signing as bundle_signing
    return bundle_signing.SPKI_PREFIX + fp.removeprefix("ed25519:")


def forge_unlisted_file(directory: Path, genuine: str) -> None:
    (directory / "files/etc/systemd/system/kubelet.service.d").mkdir()
    (directory / "files/etc/systemd/system/kubelet.service.d/10-owned.conf").write_text("[Service]\n" + BACKDOOR)


def forge_link(directory: Path, genuine: str) -> None:
    target = directory / "files/etc/k8s/kubelet/kubelet-config.yaml"
    target.unlink()
    target.symlink_to("/etc/hostname")


def forge_endorsement(directory: Path, genuine: str) -> None:
    """The attacker endorses their own key with their own key, and signs with it."""
    attacker = Ed25519PrivateKey.generate()
    from kthw.bundle import signing as bundle_signing
    line = bundle_signing.endorse(attacker, attacker.public_key())
    fake = f"{genuine} {line.split()[1]} {line.split()[2]}"
    (directory / "KEY-ENDORSEMENTS").write_text(fake + "\n")
    unit = directory / UNIT
    unit.write_text(unit.read_text() + BACKDOOR)
    _rewrite_manifest_entry(directory, UNIT)
    (directory / "MANIFEST.sig").write_bytes(attacker.sign((directory / "MANIFEST").read_bytes()))


def forge_installer(directory: Path, genuine: str) -> None:
    script = directory / "install.sh"
    script.write_text("#!/usr/bin/env bash\necho owned >/tmp/kthw-owned\n" + script.read_text())


@pytest.mark.parametrize("forge", [forge_key_file, forge_unlisted_file, forge_link, forge_endorsement,
                                   forge_installer])
def test_a_forged_bundle_is_refused_by_the_node_and_by_the_workstation(built, tmp_path, forge):
    genuine = fingerprint(built)
    directory = unpack(built, NODE, tmp_path / "stick")
    forge(directory, genuine)
    forged = pack(directory, tmp_path / f"{NODE}.tar.gz")
    root = fresh_root(tmp_path / "root")

    # The node installer from an earlier, genuine installation, and the bundle's own
    # install.sh on a new node, given the bundle file or the unpacked directory.
    outcomes = []
    if forge is not forge_installer:  # a replaced install.sh on a new node is the forger's own code
        outcomes.append(install(directory, *node_args(root, "--fingerprint", genuine)))
    installed = fresh_root(tmp_path / "installed")
    install(unpack(built, NODE, tmp_path / "genuine"), *node_args(installed, "--fingerprint", genuine), check=True)
    before = tree_state(installed)
    outcomes += [kthw_install(installed, forged), kthw_install(installed, directory)]
    for result in outcomes:
        assert result.returncode != 0, result.stdout
        assert "nothing was installed" in result.stderr, result.stderr
    assert list(root.iterdir()) == []
    assert tree_state(installed) == before
    assert not Path("/tmp/kthw-owned").exists()
    refused = verify_bundle(built, forged)
    assert refused.returncode != 0 and "OK, bundle of" not in refused.stdout


def test_the_genuine_bundle_is_accepted_by_both_and_the_installer_is_the_one_on_the_node(built, tmp_path):
    genuine = fingerprint(built)
    copy = tmp_path / f"{NODE}.tar.gz"
    copy.write_bytes(bundle_path(built, NODE).read_bytes())
    assert "OK, bundle of worker-az1-a" in verify_bundle(built, copy).stdout
    root = fresh_root(tmp_path / "root")
    install(unpack(built, NODE, tmp_path / "b"), *node_args(root, "--fingerprint", genuine), check=True)
    assert (root / "var/lib/kthw/signing-key").read_text() == genuine + "\n"
    assert (root / "usr/local/sbin/kthw-install").stat().st_mode & 0o777 == 0o755
    # Later bundles need no fingerprint: the node checks them with its pinned key.
    again = kthw_install(root, copy)
    assert again.returncode == 0 and f"signed by {genuine}" in again.stdout and "nothing changed" in again.stdout
    # A --fingerprint other than the pinned key is refused on an installed node.
    other = "ed25519:" + "ab" * 32
    refused = kthw_install(root, copy, "--fingerprint", other)
    assert refused.returncode != 0 and "is not the key this node pinned" in refused.stderr


# --- the check-then-copy race ---------------------------------------------------------------------


def test_a_file_swapped_in_the_unpacked_directory_during_the_install_is_never_installed(built, tmp_path):
    """A process of the user who unpacked the bundle keeps swapping a unit file between its
    genuine and a backdoored version while root runs install.sh from that directory."""
    genuine = fingerprint(built)
    directory = unpack(built, NODE, tmp_path / "user")
    unit = directory / UNIT
    good = unit.read_bytes()
    evil = good.replace(b"[Service]\n", b"[Service]\n" + BACKDOOR.encode())
    stop = threading.Event()

    def swap():
        flip = False
        while not stop.is_set():
            tmp = tmp_path / "swap"  # beside the bundle, not in it
            tmp.write_bytes(evil if flip else good)
            os.replace(tmp, unit)
            flip = not flip

    swapper = threading.Thread(target=swap)
    swapper.start()
    try:
        results = []
        for attempt in range(5):
            root = fresh_root(tmp_path / f"root{attempt}")
            results.append((root, install(directory, *node_args(root, "--fingerprint", genuine))))
    finally:
        stop.set()
        swapper.join()
    for root, result in results:
        installed = root / UNIT.removeprefix("files/")
        if result.returncode == 0:
            assert installed.read_bytes() == good, result.stdout
        else:  # the staged copy caught a swapped file, or cp saw it change while copying
            assert re.search(r"sha256 differs from the MANIFEST|replaced while being copied", result.stderr), \
                result.stderr
            assert "nothing was installed" in result.stderr and list(root.iterdir()) == []


# --- downgrade ------------------------------------------------------------------------------------


def test_an_older_bundle_is_refused_unless_the_downgrade_is_explicit(tmp_path):
    project = example_project(tmp_path / "project")
    v1, v2 = two_versions(project, NODE, "kubelet-serving", tmp_path)
    serials = [bundle.parse_manifest((v / "MANIFEST").read_text())[0]["serial"] for v in (v1, v2)]
    assert serials == ["1", "2"]
    # Building again from the same inputs keeps the serial: bundles stay reproducible.
    project.doit("forget", f"bundle:{NODE}")
    project.doit(f"bundle:{NODE}")
    again = unpack(project, NODE, tmp_path / "again")
    assert bundle.parse_manifest((again / "MANIFEST").read_text())[0]["serial"] == "2"

    root = fresh_root(tmp_path / "root")
    install(v2, *node_args(root, "--fingerprint", fingerprint(project)), check=True)
    before = tree_state(root)
    old = pack(v1, tmp_path / "old.tar.gz")
    refused = kthw_install(root, old)
    assert refused.returncode != 0
    assert "serial 1, but serial 2 is installed" in refused.stderr and "--allow-downgrade" in refused.stderr
    assert tree_state(root) == before
    # The same serial with other content (a workstation whose serial record was lost and set back).
    record = project.root / "build/state/bundle-serials" / NODE
    record.write_text("serial 1 manifest-sha256 -\n")
    project.doit(f"rekey:{NODE}/kubelet-serving")
    project.doit(f"bundle:{NODE}")
    twin = unpack(project, NODE, tmp_path / "twin")
    assert bundle.parse_manifest((twin / "MANIFEST").read_text())[0]["serial"] == "2"
    refused = kthw_install(root, twin)
    assert refused.returncode != 0 and "serial 2, but serial 2 is installed" in refused.stderr
    assert tree_state(root) == before
    # On purpose: installed, and said so.
    back = kthw_install(root, old, "--allow-downgrade")
    assert back.returncode == 0, back.stderr
    assert "installing serial 1 over the installed serial 2 (--allow-downgrade)" in back.stdout
    assert (root / "var/lib/kthw/installed.MANIFEST").read_bytes() == (v1 / "MANIFEST").read_bytes()


# --- a hostile target tree ------------------------------------------------------------------------


@pytest.mark.parametrize("link", ["etc/k8s", "etc", "usr/local/bin", "var/backups/kthw", "var/lib/kthw"])
def test_a_directory_linked_outside_the_root_is_refused_and_nothing_is_written_outside(built, tmp_path, link):
    outside = fresh_root(tmp_path / "outside")
    (outside / "precious").write_text("keep\n")
    root = fresh_root(tmp_path / "root")
    (root / link).parent.mkdir(parents=True, exist_ok=True)
    (root / link).symlink_to(outside)
    result = install(unpack(built, NODE, tmp_path / "b"), *node_args(root, "--fingerprint", fingerprint(built)))
    assert result.returncode != 0
    assert f"{root / link} is a symbolic link" in result.stderr and "nothing was installed" in result.stderr
    assert [p.name for p in outside.iterdir()] == ["precious"]
    assert (outside / "precious").read_text() == "keep\n"


def _installed(built: Project, tmp_path: Path) -> tuple[Path, Path]:
    root = fresh_root(tmp_path / "root")
    directory = unpack(built, NODE, tmp_path / "b")
    install(directory, *node_args(root, "--fingerprint", fingerprint(built)), check=True)
    return root, directory


def test_linked_record_files_are_never_written_through(built, tmp_path):
    root, directory = _installed(built, tmp_path)
    outside = fresh_root(tmp_path / "outside")
    victim = outside / "victim"
    victim.write_text("keep\n")
    state = root / "var/lib/kthw"
    # installed.MANIFEST as a link: refused before anything is written.
    manifest = (state / "installed.MANIFEST").read_bytes()
    (state / "installed.MANIFEST").unlink()
    (state / "installed.MANIFEST").symlink_to(victim)
    result = kthw_install(root, directory)
    assert result.returncode != 0 and "installed.MANIFEST is not a regular file" in result.stderr
    assert victim.read_text() == "keep\n"
    (state / "installed.MANIFEST").unlink()
    (state / "installed.MANIFEST").write_bytes(manifest)
    # last-install as a link: replaced by a file of its own, the link's target untouched.
    (state / "last-install").unlink()
    (state / "last-install").symlink_to(victim)
    (root / "etc/k8s/kubelet/kubelet-config.yaml").write_text("edited\n")  # something to install
    result = kthw_install(root, directory)
    assert result.returncode == 0, result.stderr
    assert victim.read_text() == "keep\n"
    assert not (state / "last-install").is_symlink() and "changed /etc/k8s/kubelet/kubelet-config.yaml" in \
        (state / "last-install").read_text()


def _hostile_record(record: Path, path: str) -> None:
    """The installation record with one more file, and its serial set back, so that the
    bundle is not refused as older than the record."""
    text = re.sub(r"^# serial \d+$", "# serial 0", record.read_text(), flags=re.M)
    record.write_text(text + f"0644 {'0' * 64} {path}\n")


def test_a_hostile_install_record_never_moves_a_file_outside_the_root(built, tmp_path):
    root, directory = _installed(built, tmp_path)
    outside = fresh_root(tmp_path / "outside")
    (outside / "victim").write_text("keep\n")
    (root / "evil").symlink_to(outside)
    record = root / "var/lib/kthw/installed.MANIFEST"
    _hostile_record(record, "/evil/victim")
    result = kthw_install(root, directory)
    assert result.returncode == 0, result.stderr
    assert "names /evil/victim, which no bundle installs there; it is left alone" in result.stdout
    assert (outside / "victim").read_text() == "keep\n"
    # A managed path whose directory is a link out of the root: refused.
    (root / "etc/k8s/evil").symlink_to(outside)
    _hostile_record(record, "/etc/k8s/evil/victim")
    result = kthw_install(root, directory)
    assert result.returncode != 0 and f"{root}/etc/k8s/evil is a symbolic link" in result.stderr
    assert (outside / "victim").read_text() == "keep\n"


def test_a_key_directory_owned_by_another_user_is_refused(built, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("ownership is checked when the installer runs as root")
    root = fresh_root(tmp_path / "root")
    (root / "etc/k8s/kubelet").mkdir(parents=True)
    os.chown(root / "etc/k8s/kubelet", 1000, 1000)
    before = tree_state(root)
    result = install(unpack(built, NODE, tmp_path / "b"), *node_args(root, "--fingerprint", fingerprint(built)))
    assert result.returncode != 0
    assert f"{root}/etc/k8s/kubelet belongs to uid 1000, not root" in result.stderr
    assert tree_state(root) == before
    os.chown(root / "etc/k8s/kubelet", 0, 0)
    (root / "etc/k8s").chmod(0o777)
    result = install(unpack(built, NODE, tmp_path / "c"), *node_args(root, "--fingerprint", fingerprint(built)))
    assert result.returncode != 0 and f"{root}/etc/k8s is writable by others" in result.stderr


# --- kill -9 in the middle of an installation -----------------------------------------------------

# A stand-in `mv` on PATH that runs the real one, except that its Nth call kills the
# installer (its parent) with SIGKILL first.
KILLING_MV = textwrap.dedent("""\
    #!/bin/bash
    count=$(( $(cat "$KILL_COUNTER" 2>/dev/null || echo 0) + 1 ))
    echo "$count" >"$KILL_COUNTER"
    if [[ $count == "$KILL_AT" ]]; then kill -9 "$PPID"; exit 1; fi
    exec /bin/mv "$@"
    """)


def managed_state(root: Path) -> dict[str, tuple]:
    """Every path under root but the installer's own state and backups."""
    return {path: value for path, value in tree_state(root).items()
            if not path.startswith(("var/lib/kthw/last-install", "var/backups"))}


# The update renames 4 files into place: the two files of the new cert, installed.MANIFEST
# and last-install. Killed before the first, in the middle, and before the last.
@pytest.fixture(scope="module")
def update(tmp_path_factory) -> tuple[Path, Path, str]:
    """The node's bundle before and after a new kubelet serving key, unpacked, and the fingerprint."""
    where = tmp_path_factory.mktemp("update")
    project = example_project(where / "project")
    v1, v2 = two_versions(project, NODE, "kubelet-serving", where)
    return v1, v2, fingerprint(project)


@pytest.mark.parametrize("kill_at", [1, 2, 4])
def test_a_kill_mid_update_is_undone_by_the_next_run_and_leaves_no_temp_files(update, tmp_path, kill_at):
    v1, v2, fp = update
    clean = fresh_root(tmp_path / "clean")
    install(v1, *node_args(clean, "--fingerprint", fp), check=True)
    install(v2, *node_args(clean, "--fingerprint", fp), check=True)
    expected = {path for path, value in managed_state(clean).items() if value[4] is not None}

    root = fresh_root(tmp_path / "root")
    install(v1, *node_args(root, "--fingerprint", fp), check=True)
    stubs = fresh_root(tmp_path / "stubs")
    (stubs / "mv").write_text(KILLING_MV)
    (stubs / "mv").chmod(0o755)
    env = {**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}", "KILL_AT": str(kill_at),
           "KILL_COUNTER": str(tmp_path / "counter")}
    killed = subprocess.run(["bash", str(root / "usr/local/sbin/kthw-install"), *node_args(root), str(v2)],
                            capture_output=True, text=True, env=env)
    assert killed.returncode == -9 or killed.returncode == 137, killed.stdout + killed.stderr
    assert (root / "var/lib/kthw/journal").exists()
    leftovers = [p for p in root.rglob("*") if ".kthw-" in p.name]
    assert leftovers, "the kill left the staged copies"

    check = kthw_install(root, v2, "--check")
    assert "an earlier installation was interrupted" in check.stdout
    if kill_at == 4:
        # Everything but last-install was in place: the undo still brings back v1, so v1 is
        # no downgrade and finds nothing to do.
        back = kthw_install(root, v1)
        assert back.returncode == 0, back.stderr
        assert "undoing what it had done" in back.stdout and "nothing changed" in back.stdout
        # Killed again at the same point, for the rerun below.
        killed = subprocess.run(["bash", str(root / "usr/local/sbin/kthw-install"), *node_args(root), str(v2)],
                                capture_output=True, text=True, env={**env, "KILL_COUNTER": str(tmp_path / "c2")})
        assert killed.returncode in (-9, 137), killed.stdout + killed.stderr
    rerun = kthw_install(root, v2)
    assert rerun.returncode == 0, rerun.stderr
    assert "an earlier installation was interrupted; undoing what it had done" in rerun.stdout
    assert [p for p in root.rglob("*") if ".kthw-" in p.name] == []
    assert not (root / "var/lib/kthw/journal").exists()
    files = {path: value[4] for path, value in managed_state(root).items() if value[4] is not None}
    assert set(files) == expected
    assert files == {path: value[4] for path, value in managed_state(clean).items() if value[4] is not None}
    assert (root / "var/lib/kthw/installed.MANIFEST").read_bytes() == (v2 / "MANIFEST").read_bytes()


def test_stale_temp_copies_of_earlier_runs_are_removed(built, tmp_path):
    root, directory = _installed(built, tmp_path)
    stale = root / "etc/k8s/kube-proxy/.kubeconfig.kthw-Ab12Cd"
    stale.write_text("a copy of a kubeconfig left by a killed run\n")
    stale.chmod(0o600)
    (root / "etc/k8s/kubelet/kubelet-config.yaml").write_text("edited\n")
    result = kthw_install(root, directory)
    assert result.returncode == 0, result.stderr
    assert not stale.exists()


# --- key replacement ------------------------------------------------------------------------------


def test_a_replaced_signing_key_is_followed_through_its_endorsement_and_pinned(tmp_path):
    project = example_project(tmp_path / "project")
    project.doit(f"bundle:{NODE}")
    old = fingerprint(project)
    root = fresh_root(tmp_path / "root")
    install(unpack(project, NODE, tmp_path / "v1"), *node_args(root, "--fingerprint", old), check=True)
    project.doit("rotate_bundle_signing_key")
    new = fingerprint(project)
    assert new != old
    project.doit(f"bundle:{NODE}")
    copy = tmp_path / "v2.tar.gz"
    copy.write_bytes(bundle_path(project, NODE).read_bytes())
    # The workstation checks it from either key; the node follows the old key's endorsement.
    assert "OK, bundle of" in project.doit("verify_bundle", f"path={copy}", f"fingerprint={old}").stdout
    result = kthw_install(root, copy)
    assert result.returncode == 0, result.stderr
    assert f"signed by {new}" in result.stdout
    assert (root / "var/lib/kthw/signing-key").read_text() == new + "\n"
    # A new node given the old fingerprint follows it too.
    fresh = fresh_root(tmp_path / "fresh")
    assert install(unpack(project, NODE, tmp_path / "v2"), *node_args(fresh, "--fingerprint", old)).returncode == 0
    assert (fresh / "var/lib/kthw/signing-key").read_text() == new + "\n"


def test_a_second_installation_is_refused_while_one_runs(built, tmp_path):
    """Two runs at once under one root: the second is refused before it could undo the first's
    journal."""
    import fcntl

    root, directory = _installed(built, tmp_path)
    (root / "etc/k8s/kubelet/kubelet-config.yaml").write_text("edited\n")
    before = tree_state(root)
    handle = os.open(root, os.O_RDONLY)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what a running installer holds
        result = kthw_install(root, directory)
    finally:
        os.close(handle)
    assert result.returncode != 0 and "another installation is running under" in result.stderr
    assert tree_state(root) == before
    assert kthw_install(root, directory).returncode == 0


def test_modes_in_the_archive_do_not_matter_to_either_side_the_manifest_decides(built, tmp_path):
    directory = unpack(built, NODE, tmp_path / "stick")
    key = directory / "files/etc/k8s/kubelet/kubelet-serving.key"
    key.chmod(0o666)
    repacked = pack(directory, tmp_path / f"{NODE}.tar.gz")
    assert "OK, bundle of" in verify_bundle(built, repacked).stdout
    root, _ = _installed(built, tmp_path / "node")
    (root / "etc/k8s/kubelet/kubelet-serving.key").chmod(0o644)
    result = kthw_install(root, repacked)
    assert result.returncode == 0, result.stderr
    assert (root / "etc/k8s/kubelet/kubelet-serving.key").stat().st_mode & 0o777 == 0o600


def test_another_nodes_bundle_is_not_an_update_even_with_any_hostname(built, tmp_path):
    root, _ = _installed(built, tmp_path)
    other = next(n.name for n in load(built.inventory).nodes if n.name != NODE and n.arch == load(
        built.inventory).node(NODE).arch)
    built.doit(f"bundle:{other}")
    before = tree_state(root)
    result = kthw_install(root, bundle_path(built, other))
    assert result.returncode != 0
    assert f"this machine runs the bundle of {NODE}, and this is the bundle of {other}" in result.stderr
    assert tree_state(root) == before


def test_a_staging_parent_that_others_may_write_is_refused(built, tmp_path):
    root, directory = _installed(built, tmp_path)
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # no sticky bit: anyone could rename the staging directory away
    result = subprocess.run(["bash", str(root / "usr/local/sbin/kthw-install"), *node_args(root), str(directory)],
                            capture_output=True, text=True, env={**os.environ, "TMPDIR": str(shared)})
    assert result.returncode != 0 and "may be changed by other users" in result.stderr
    assert list(shared.iterdir()) == []
