"""The bundle stage end to end: real doit, real bash, real GNU tar, real shellcheck, real openssl.

Vendored binaries are stand-ins (tests/support/bundles.py): the vendor stage is tested
against real servers elsewhere; here only their bytes and places matter.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import os
import platform
import re
import shutil
import subprocess
import tarfile
import zlib
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from support.bundles import bundle_path, example_project, fingerprint, install, tree_state, unpack
from support.project import REPO, Project
from support.tools import require

from kthw.bundle import build as bundle
from kthw.inventory import load
from kthw.layout import Layout
from kthw.vendor import fetch as vendor

CONTROL_PLANES = ("node-az1", "node-az2", "node-az3")
WORKERS = ("worker-az1-a", "worker-az2-a", "worker-az3-a")
NODES = CONTROL_PLANES + WORKERS
HOST_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine())


@pytest.fixture(scope="module")
def example(tmp_path_factory) -> Project:
    """The example inventory, every bundle built once by `doit bundle`."""
    project = example_project(tmp_path_factory.mktemp("example"))
    run = project.doit("bundle")
    project.first_run = run
    return project


def manifest_of(directory: Path) -> list[bundle.ManifestLine]:
    return bundle.parse_manifest((directory / bundle.MANIFEST).read_text())[1]


# --- content ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_bundle_holds_the_nodes_tree_and_the_vendored_files_of_its_arch_and_roles(example, tmp_path):
    inv = load(example.inventory)
    layout = Layout(example.root)
    for node in inv.nodes:
        directory = unpack(example, node.name, tmp_path / node.name)
        lines = manifest_of(directory)
        installed = {line.path for line in lines if line.path.startswith("/") and line.sha256 != "dir"}
        tree = {"/" + p.relative_to(layout.node_root(node.name)).as_posix()
                for p in layout.node_root(node.name).rglob("*") if p.is_file()}
        needs = {f.install_as: f.source for f in vendor.needs(node, inv, layout)}
        assert installed == tree | set(needs) | {bundle.INSTALLER}, node.name
        # The node keeps the bundle's installer, to check the bundles that come after.
        assert (directory / "files" / bundle.INSTALLER.lstrip("/")).read_bytes() == \
            (directory / "install.sh").read_bytes()
        for path, source in needs.items():  # the vendored file of the node's own arch
            assert (directory / "files" / path.lstrip("/")).read_bytes() == source.read_bytes()
            assert f"/{node.arch}/" in str(source)
        # Every file in the bundle is listed, and the bundle files carry their listed bytes.
        on_disk = {"/" + p.relative_to(directory / "files").as_posix()
                   for p in (directory / "files").rglob("*") if p.is_file()}
        assert on_disk == installed
        for line in lines:
            if line.sha256 != "dir":
                assert hashlib.sha256((directory / line.member).read_bytes()).hexdigest() == line.sha256
        binaries = {path.rsplit("/", 1)[1] for path in installed if path.startswith("/usr/local/bin/")}
        if node.is_worker:
            assert {"kubelet", "kube-proxy", "containerd", "runc"} <= binaries
            assert any(path.startswith("/var/lib/kthw/images/pause-") for path in installed)
        else:
            assert not {"kubelet", "containerd"} & binaries
        if node.is_control_plane:
            assert {"kube-apiserver", "kube-scheduler", "etcd", "etcdctl"} <= binaries
        else:
            assert not {"kube-apiserver", "etcd"} & binaries


@pytest.mark.slow
def test_modes_follow_the_files_keys_0600_and_their_directories_0700(example, tmp_path):
    directory = unpack(example, "node-az1", tmp_path)
    lines = {line.path: line for line in manifest_of(directory)}
    for path in ("/etc/k8s/etcd/peer.key", "/etc/k8s/shared/sa.key", "/etc/k8s/kube-apiserver/encryption-config.yaml",
                 "/etc/k8s/kube-controller-manager/cluster-signing-ca.key", "/etc/k8s/shared/admin.kubeconfig"):
        assert lines[path].mode == 0o600, path
    for path in ("/etc/k8s/etcd/peer.crt", "/etc/systemd/system/etcd.service", "/etc/k8s/shared/sa.pub"):
        assert lines[path].mode == 0o644, path
    assert lines["/usr/local/bin/kube-apiserver"].mode == 0o755
    assert lines["/etc/k8s/bootstrap/apply.sh"].mode == 0o755
    dirs = {path for path, line in lines.items() if line.sha256 == "dir"}
    assert {"/etc/k8s/etcd", "/etc/k8s/shared", "/etc/k8s/kube-apiserver"} <= dirs
    assert all(lines[path].mode == 0o700 for path in dirs)
    assert "/usr/local/bin" not in dirs and "/etc/systemd/system" not in dirs


# --- install.sh -------------------------------------------------------------------------------


@pytest.mark.slow
def test_install_into_a_root_sets_every_mode_and_a_second_run_changes_nothing(example, tmp_path):
    directory = unpack(example, "node-az1", tmp_path / "bundle")
    root = tmp_path / "root"
    root.mkdir()
    args = ["--root", str(root), "--no-start", "--any-hostname", "--fingerprint", fingerprint(example)]
    first = install(directory, *args, check=True)
    lines = manifest_of(directory)
    for line in lines:
        if not line.path.startswith("/"):
            continue
        installed = root / line.path.lstrip("/")
        assert installed.stat().st_mode & 0o7777 == line.mode, line.path
        assert (installed.stat().st_uid, installed.stat().st_gid) == (0, 0) or os.geteuid() != 0
        if line.sha256 != "dir":
            assert hashlib.sha256(installed.read_bytes()).hexdigest() == line.sha256, line.path
    assert "services whose files changed: etcd kthw-pod-routes kube-apiserver kube-controller-manager " \
        "kube-scheduler" in first.stdout
    assert (root / "var/lib/kthw/installed.MANIFEST").read_bytes() == (directory / "MANIFEST").read_bytes()

    before = tree_state(root)
    second = install(directory, *args, check=True)
    assert "nothing changed" in second.stdout
    assert tree_state(root) == before  # not one mtime moved
    # --check after an installation finds nothing to do either.
    assert "nothing to install" in install(directory, *args, "--check", check=True).stdout


@pytest.mark.slow
def test_check_lists_what_would_change_and_writes_nothing(example, tmp_path):
    directory = unpack(example, "worker-az1-a", tmp_path / "bundle")
    root = tmp_path / "root"
    root.mkdir()
    result = install(directory, "--check", "--root", str(root), "--any-hostname",
                     "--fingerprint", fingerprint(example), check=True)
    assert "new: /usr/local/bin/kubelet (0755)" in result.stdout
    assert "nothing was written" in result.stdout
    assert list(root.iterdir()) == []


def _tamper_file(directory: Path) -> str:
    target = directory / "files/etc/k8s/kubelet/kubelet-config.yaml"
    target.write_text(target.read_text().replace("cgroupDriver", "cgroupdriver"))
    return "files/etc/k8s/kubelet/kubelet-config.yaml"


def _tamper_binary(directory: Path) -> str:
    target = directory / "files/usr/local/bin/kubelet"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 1
    target.write_bytes(bytes(data))
    return "files/usr/local/bin/kubelet"


def _tamper_manifest(directory: Path) -> str:
    # Consistent with a changed file: only the signature can tell.
    _tamper_file(directory)
    manifest = directory / "MANIFEST"
    new = hashlib.sha256((directory / "files/etc/k8s/kubelet/kubelet-config.yaml").read_bytes()).hexdigest()
    lines = [re.sub(r"^(\d{4}) [0-9a-f]{64} (/etc/k8s/kubelet/kubelet-config.yaml)$", rf"\1 {new} \2", line)
             for line in manifest.read_text().splitlines()]
    manifest.write_text("\n".join(lines) + "\n")
    return "MANIFEST"


def _tamper_signature(directory: Path) -> str:
    signature = directory / "MANIFEST.sig"
    data = bytearray(signature.read_bytes())
    data[0] ^= 0x80
    signature.write_bytes(bytes(data))
    return "MANIFEST"


def _swap_key(directory: Path) -> str:
    # Someone re-signs a changed MANIFEST with their own key: it is not the key the node trusts.
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    _tamper_manifest(directory)
    key = Ed25519PrivateKey.generate()
    (directory / "MANIFEST.sig").write_bytes(key.sign((directory / "MANIFEST").read_bytes()))
    return "does not verify with the key"


@pytest.mark.slow
@pytest.mark.parametrize("tamper", [_tamper_file, _tamper_binary, _tamper_manifest, _tamper_signature, _swap_key])
def test_a_tampered_bundle_is_refused_naming_the_file_and_the_root_is_untouched(example, tmp_path, tamper):
    directory = unpack(example, "worker-az1-a", tmp_path / "bundle")
    root = tmp_path / "root"
    args = ["--root", str(root), "--no-start", "--any-hostname", "--fingerprint", fingerprint(example)]
    # A node that already runs an older installation, with one file changed by hand.
    root.mkdir()
    install(directory, *args, check=True)
    (root / "etc/k8s/kubelet/kubelet-config.yaml").write_text("edited by hand\n")
    before = tree_state(root)

    named = tamper(directory)
    result = install(directory, *args)
    assert result.returncode != 0
    assert named in result.stderr and "nothing was installed" in result.stderr, result.stderr
    assert tree_state(root) == before


@pytest.mark.slow
def test_a_missing_fingerprint_is_refused_and_the_manifest_hash_replaces_it_only_explicitly(example, tmp_path):
    directory = unpack(example, "worker-az1-a", tmp_path / "bundle")
    root = tmp_path / "root"
    root.mkdir()
    args = ["--root", str(root), "--no-start", "--any-hostname"]
    refused = install(directory, *args)
    assert refused.returncode != 0 and "--fingerprint" in refused.stderr and "doit fingerprint" in refused.stderr
    wrong = install(directory, *args, "--fingerprint", "ed25519:abc")
    assert wrong.returncode != 0 and "64 hex digits" in wrong.stderr
    old_form = install(directory, *args, "--fingerprint", "SHA256:" + "0" * 64)
    assert old_form.returncode != 0 and "old SHA256 form" in old_form.stderr
    assert list(root.iterdir()) == []
    # Without OpenSSL 3 on the node: the MANIFEST's sha256 from `doit verify_bundle`, and
    # every file is still checked against that MANIFEST.
    printed = example.doit("verify_bundle", f"path={bundle_path(example, 'worker-az1-a')}").stdout
    manifest_sha256 = re.search(r"MANIFEST sha256 ([0-9a-f]{64})", printed).group(1)
    assert manifest_sha256 == hashlib.sha256((directory / "MANIFEST").read_bytes()).hexdigest()
    checked = install(directory, *args, "--check", "--manifest-sha256", manifest_sha256, check=True)
    assert "signature: not checked; the MANIFEST has the sha256 given" in checked.stdout
    other = install(directory, *args, "--manifest-sha256", "0" * 64)
    assert other.returncode != 0 and "its sha256 is not the --manifest-sha256 given" in other.stderr
    _tamper_binary(directory)
    unchecked = install(directory, *args, "--manifest-sha256", manifest_sha256)
    assert unchecked.returncode != 0 and "files/usr/local/bin/kubelet" in unchecked.stderr
    assert list(root.iterdir()) == []


@pytest.mark.slow
def test_a_bundle_of_another_arch_is_refused(example, tmp_path):
    if HOST_ARCH is None:
        pytest.skip(f"unknown machine {platform.machine()}")
    other = next(node for node in load(example.inventory).nodes if node.arch != HOST_ARCH)
    directory = unpack(example, other.name, tmp_path / "bundle")
    root = tmp_path / "root"
    root.mkdir()
    result = install(directory, "--root", str(root), "--no-start", "--any-hostname",
                     "--fingerprint", fingerprint(example))
    assert result.returncode != 0
    assert f"this bundle is for {other.arch} machines" in result.stderr
    assert f"this machine is {platform.machine()}" in result.stderr
    assert list(root.iterdir()) == []


@pytest.mark.slow
def test_another_hostname_is_refused_unless_allowed(example, tmp_path):
    directory = unpack(example, "node-az1", tmp_path / "bundle")
    root = tmp_path / "root"
    root.mkdir()
    if platform.uname().node.split(".")[0] == "node-az1":
        pytest.skip("this machine is called node-az1")
    result = install(directory, "--root", str(root), "--no-start", "--fingerprint", fingerprint(example))
    assert result.returncode != 0
    assert "this bundle is for node node-az1 but this machine is called" in result.stderr
    assert "--any-hostname" in result.stderr and list(root.iterdir()) == []


@pytest.mark.slow
def test_install_sh_run_by_sh_says_to_use_bash(example, tmp_path):
    directory = unpack(example, "worker-az1-a", tmp_path / "bundle")
    for shell in ("sh", "dash"):
        if shutil.which(shell) and Path(shutil.which(shell)).resolve().name != "bash":
            result = subprocess.run([shell, str(directory / "install.sh"), "--check"], capture_output=True, text=True)
            assert result.returncode != 0 and "run it with bash" in result.stderr
            return
    pytest.skip("no POSIX shell other than bash here")


@pytest.mark.slow
def test_another_bundles_signed_manifest_does_not_vouch_for_these_files(example, tmp_path):
    nodes = load(example.inventory).nodes
    mine = unpack(example, "worker-az1-a", tmp_path / "a")
    arch = next(node.arch for node in nodes if node.name == "worker-az1-a")
    other_name = next(node.name for node in nodes if node.arch == arch and node.name != "worker-az1-a")
    other = unpack(example, other_name, tmp_path / "b")
    for name in ("MANIFEST", "MANIFEST.sig"):
        shutil.copy(other / name, mine / name)
    root = tmp_path / "root"
    root.mkdir()
    result = install(mine, "--root", str(root), "--no-start", "--any-hostname", "--fingerprint", fingerprint(example))
    assert result.returncode != 0 and re.search(r"sha256 differs from the MANIFEST|listed in the MANIFEST but missing",
                                                result.stderr)
    assert "nothing was installed" in result.stderr and list(root.iterdir()) == []


@pytest.mark.slow
def test_the_installer_is_one_script_for_every_node_and_shellcheck_clean(example, tmp_path):
    shellcheck = require("shellcheck")
    scripts = {node: (unpack(example, node, tmp_path / node) / "install.sh").read_text() for node in NODES}
    assert len(set(scripts.values())) == 1  # what differs between nodes is in the signed MANIFEST
    script = tmp_path / NODES[0] / bundle.TOP / "install.sh"
    assert scripts[NODES[0]].startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in scripts[NODES[0]]
    result = subprocess.run([shellcheck, "--severity=style", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


# --- the tarball ------------------------------------------------------------------------------


@pytest.mark.slow
def test_building_again_from_the_same_inputs_gives_the_same_bytes(example, tmp_path):
    before = {node: bundle_path(example, node).read_bytes() for node in NODES}
    # Elsewhere on disk, from a copy of the inputs, with a cold cache.
    copy = Project(tmp_path / "copy")
    shutil.copytree(example.root, copy.root, symlinks=True)
    shutil.rmtree(copy.root / "bundles")
    shutil.rmtree(copy.root / "build" / "bundle-cache")
    (copy.root / "build" / ".doit.db").unlink()
    copy.doit("bundle")
    assert {node: bundle_path(copy, node).read_bytes() for node in NODES} == before
    # SOURCE_DATE_EPOCH sets every entry's mtime, and nothing else.
    copy.doit("bundle", env={"SOURCE_DATE_EPOCH": "1700000000"})
    with tarfile.open(bundle_path(copy, "node-az2")) as archive:
        assert {member.mtime for member in archive.getmembers()} == {1700000000}
        assert {(member.uid, member.gid, member.uname, member.gname) for member in archive.getmembers()} == \
            {(0, 0, "", "")}
    bad = copy.doit("bundle", env={"SOURCE_DATE_EPOCH": "yesterday"}, check=False)
    assert bad.returncode != 0 and "SOURCE_DATE_EPOCH='yesterday' is not a number" in bad.stdout + bad.stderr


def _gzip_members(data: bytes) -> list[int]:
    """Offsets where the gzip members of a multi-member file start."""
    offsets, position = [], 0
    while position < len(data):
        offsets.append(position)
        decompressor = zlib.decompressobj(31)
        decompressor.decompress(data[position:])
        position = len(data) - len(decompressor.unused_data)
    return offsets


@pytest.mark.slow
def test_the_concatenated_bundle_is_one_tar_stream_for_gnu_tar_and_python(example):
    data = bundle_path(example, "worker-az1-a").read_bytes()
    assert _gzip_members(data) == [0]  # one gzip member: every reader sees every entry
    # The two arm64 workers start with the same precompressed part, copied from the cache.
    cached = (example.root / "build/bundle-cache/arm64-worker.deflate").read_bytes()
    for node in ("worker-az2-a", "worker-az3-a"):
        assert bundle_path(example, node).read_bytes().startswith(cached)
    assert not data.startswith(cached)
    gnu = subprocess.run(["tar", "-tvzf", str(bundle_path(example, "worker-az1-a"))], capture_output=True,
                         text=True, check=True)
    assert gnu.stderr == ""  # no "lone zero block", no "implausibly old time stamp"
    gnu_names = [line.split()[-1] for line in gnu.stdout.splitlines()]
    with tarfile.open(bundle_path(example, "worker-az1-a")) as archive:
        python_names = archive.getnames()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r|gz") as stream:  # streaming reader too
        streamed = [member.name for member in stream]
    assert gnu_names == python_names == streamed
    assert f"{bundle.TOP}/files/usr/local/bin/kubelet" in gnu_names and f"{bundle.TOP}/install.sh" in gnu_names
    assert len(gnu_names) == len(set(gnu_names))
    assert subprocess.run(["gzip", "-t", str(bundle_path(example, "worker-az1-a"))]).returncode == 0
    assert gzip.decompress(data).endswith(bytes(1024))


@pytest.mark.slow
def test_bundles_are_private_files(example):
    for node in NODES:
        assert bundle_path(example, node).stat().st_mode & 0o777 == 0o600


# --- keys: each bundle holds exactly what its roles need ---------------------------------------


_PEM_KEY = re.compile(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----.+?-----END [A-Z ]*PRIVATE KEY-----", re.S)
_KUBECONFIG_KEY = re.compile(rb"client-key-data:\s*([A-Za-z0-9+/=]+)")


def _spki(key) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _known_keys(project: Project) -> dict[bytes, str]:
    """The public key (SPKI) of every private key the build made -> its name; and the secret
    part of every kubelet bootstrap token (build/state/tokens/<node>.yaml) -> token/<node>."""
    known = {}
    for path in (project.root / "build" / "pki").rglob("*.key"):
        key = serialization.load_pem_private_key(path.read_bytes(), None)
        name = f"ca/{path.stem}" if path.parent.name == "ca" else f"{path.parent.name}/{path.stem}"
        known[_spki(key)] = name
    for path, name in ((project.root / "build/state/sa.key", "sa"),
                       (project.root / "build/state/bundle-signing.key", "bundle-signing")):
        known[_spki(serialization.load_pem_private_key(path.read_bytes(), None))] = name
    for path in (project.root / "build/state/tokens").glob("*.yaml"):
        recorded = yaml.safe_load(path.read_text())
        assert recorded["node"] == path.stem, path
        known[recorded["token"].split(".")[1].encode()] = f"token/{path.stem}"
    return known


def _secrets_in(project: Project, node: str, known: dict[bytes, str]) -> set[str]:
    found = set()
    with tarfile.open(bundle_path(project, node)) as archive:
        for member in archive.getmembers():
            data = archive.extractfile(member).read()
            pems = _PEM_KEY.findall(data) + [base64.b64decode(b) for b in _KUBECONFIG_KEY.findall(data)]
            for pem in pems:
                spki = _spki(serialization.load_pem_private_key(pem, None))
                found.add(known.get(spki, f"unknown key in {member.name}"))
            if b"kind: EncryptionConfiguration" in data:
                found.add("encryption-config")
            # A token's secret part, in a bootstrap kubeconfig (id.secret) or a Secret (token-secret).
            found |= {name for secret, name in known.items() if name.startswith("token/") and secret in data}
    return found


def _needed(node, inv, static_kubelet: bool) -> set[str]:
    name = node.name
    needed = set()
    if node.is_control_plane:
        needed |= {f"{name}/{cert}" for cert in ("apiserver", "apiserver-kubelet-client", "apiserver-etcd-client",
                                                 "front-proxy-client", "admin", "controller-manager", "scheduler")}
        needed |= {"ca/kubernetes", "sa", "encryption-config"}  # the cluster signer: the intermediate
        if not static_kubelet:
            # The bootstrap-token Secrets of every kubelet, for apply.sh to create in the cluster.
            needed |= {f"token/{worker.name}" for worker in inv.nodes if worker.is_worker}
    if node.is_etcd:
        needed |= {f"{name}/etcd-server", f"{name}/etcd-peer", f"{name}/etcd-healthcheck-client"}
    if node.is_worker:
        needed |= {f"{name}/kubelet-serving", f"{name}/kube-proxy"}
        # Its own bootstrap token (bootstrap-kubeconfig), or its own client cert.
        needed.add(f"{name}/kubelet-client" if static_kubelet else f"token/{name}")
    return needed


@pytest.mark.slow
def test_each_bundle_holds_exactly_the_private_keys_and_tokens_its_roles_need(example):
    known = _known_keys(example)
    inv = load(example.inventory)
    # One token per kubelet node, each found by its own secret.
    assert {name for name in known.values() if name.startswith("token/")} == {f"token/{n}" for n in WORKERS}
    for node in inv.nodes:
        found = _secrets_in(example, node.name, known)
        assert found == _needed(node, inv, static_kubelet=False), node.name
        assert "ca/root" not in found and "bundle-signing" not in found


@pytest.mark.slow
def test_with_static_kubelet_certs_a_worker_also_holds_its_kubelet_client_key(tmp_path):
    project = example_project(tmp_path, lambda text: text.replace("kubelet_credentials: tls-bootstrap",
                                                                  "kubelet_credentials: static"))
    project.doit("bundle:worker-az1-a", "bundle:node-az3")
    known = _known_keys(project)
    inv = load(project.inventory)
    for name in ("worker-az1-a", "node-az3"):
        assert _secrets_in(project, name, known) == _needed(inv.node(name), inv, static_kubelet=True), name


# --- the task graph ----------------------------------------------------------------------------


@pytest.mark.slow
def test_doit_bundle_prints_the_fingerprint_which_is_the_public_key_and_no_bundle_carries_a_key(example):
    printed = set(re.findall(r"ed25519:[0-9a-f]{64}", example.first_run.stdout))
    assert printed == {fingerprint(example)}
    assert all(f"bundles/{node}.tar.gz" in example.first_run.stdout for node in NODES)
    key = serialization.load_pem_private_key((example.root / "build/state/bundle-signing.key").read_bytes(), None)
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert printed == {"ed25519:" + raw.hex()}
    with tarfile.open(bundle_path(example, "node-az1")) as archive:
        names = archive.getnames()
        readme = archive.extractfile(f"{bundle.TOP}/README").read().decode()
    # No public key travels with the bundle; the README never carries the fingerprint either.
    assert not [name for name in names if not name.startswith(f"{bundle.TOP}/files/")
                and name.endswith((".pub", ".pem", ".der"))]
    assert fingerprint(example) not in readme and raw.hex() not in readme and "--fingerprint" in readme
    assert (example.root / "build/state/bundle-signing.key").stat().st_mode & 0o777 == 0o600


@pytest.mark.slow
def test_the_readmes_commands_check_a_bundle_by_hand(example, tmp_path):
    directory = unpack(example, "node-az2", tmp_path)
    readme = (directory / "README").read_text()
    by_hand = readme.split("coreutils only (put the 64 hex digits in place of <hex>):")[1].split("\n\n")[1]
    signature_line, files_line = [line.strip() for line in by_hand.splitlines()]
    hex_key = fingerprint(example).removeprefix("ed25519:")
    # `doit fingerprint` prints the same command with the key filled in.
    assert signature_line.replace("<hex>", hex_key) in example.doit("fingerprint").stdout

    def run(command: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "-c", f"set -o pipefail; {command}"], cwd=directory, capture_output=True,
                              text=True)

    assert run(signature_line.replace("<hex>", hex_key)).returncode == 0
    other_key = hex_key[:-1] + ("0" if hex_key[-1] != "0" else "1")
    assert run(signature_line.replace("<hex>", other_key)).returncode != 0
    assert run(files_line).returncode == 0
    _tamper_signature(directory)
    assert run(signature_line.replace("<hex>", hex_key)).returncode != 0
    binary = directory / "files/usr/local/bin/kube-apiserver"
    binary.write_bytes(binary.read_bytes()[:-1] + b"?")
    failed = run(files_line)
    assert failed.returncode != 0 and "files/usr/local/bin/kube-apiserver: FAILED" in failed.stdout


@pytest.mark.slow
def test_a_rerun_does_nothing_and_editing_one_worker_rebuilds_only_what_changed(tmp_path):
    project = example_project(tmp_path)
    project.doit("bundle")
    assert [t for t in project.doit("bundle").executed if t.startswith("bundle")] == []
    before = {node: (bundle_path(project, node).read_bytes(), bundle_path(project, node).stat().st_mtime_ns)
              for node in NODES}
    # A name only worker-az3-a's serving cert carries (an address would move every node's pod routes).
    project.write_inventory(project.inventory.read_text().replace("[worker-az3-a.homelab.lan]",
                                                                  "[worker-az3-a.lab.example]"))
    run = project.doit("bundle")
    rebuilt = {t.split(":", 1)[1] for t in run.executed if t.startswith("bundle:")}
    after = {node: (bundle_path(project, node).read_bytes(), bundle_path(project, node).stat().st_mtime_ns)
             for node in NODES}
    assert rebuilt == {"worker-az3-a"}
    assert before["worker-az3-a"][0] != after["worker-az3-a"][0]
    for node in NODES:
        if node in rebuilt:  # rebuilt only because its content changed
            assert before[node][0] != after[node][0], node
        else:
            assert before[node] == after[node], node
    assert not rebuilt & set(WORKERS[:2])


@pytest.mark.slow
def test_missing_vendored_files_fail_naming_doit_vendor_and_nothing_is_fetched(tmp_path):
    project = Project(tmp_path)
    project.write_inventory((REPO / "cluster.yaml").read_text())
    run = project.doit("bundle:worker-az1-a", check=False)
    assert run.returncode != 0
    assert "run `doit vendor`" in run.stdout + run.stderr
    assert not any(t.startswith("vendor:") for t in run.executed)
    assert "Traceback" not in run.stdout + run.stderr
    assert not (tmp_path / "bundles").exists()


@pytest.mark.slow
def test_a_stray_file_in_a_node_tree_is_not_packed_unseen(tmp_path):
    project = example_project(tmp_path)
    project.doit("bundle:worker-az1-a")
    stray = project.node_file("worker-az1-a", "/etc/k8s/kubelet/other-node.key")
    stray.write_text("not produced by any stage\n")
    run = project.doit("bundle:worker-az1-a", check=False)
    assert run.returncode != 0 and "other-node.key: no stage produces this file" in run.stdout + run.stderr


@pytest.mark.slow
def test_a_damaged_signing_key_stops_the_build_and_is_left_alone(tmp_path):
    project = example_project(tmp_path)
    project.doit("bundle_signing_key")
    key = project.root / "build/state/bundle-signing.key"
    key.write_text("garbage\n")
    run = project.doit("bundle:worker-az1-a", check=False)
    assert run.returncode != 0 and "not a readable Ed25519 private key" in run.stdout + run.stderr
    assert "Traceback" not in run.stdout + run.stderr
    assert key.read_text() == "garbage\n"
    assert not bundle_path(project, "worker-az1-a").exists()


@pytest.mark.slow
def test_clean_keeps_the_signing_key_and_rotation_is_explicit(tmp_path):
    project = example_project(tmp_path)
    project.doit("bundle:worker-az1-a")
    old = fingerprint(project)
    project.doit("clean", "bundle")
    assert not bundle_path(project, "worker-az1-a").exists()
    assert fingerprint(project) == old
    rotated = project.doit("rotate_bundle_signing_key")
    new = re.search(r"fingerprint: (ed25519:[0-9a-f]{64})", rotated.stdout).group(1)
    assert new != old and fingerprint(project) == new
    assert (project.root / "build/state/bundle-signing.key.old").exists()
    run = project.doit("bundle:worker-az1-a")
    assert "bundle:worker-az1-a" in run.executed and new in run.stdout


@pytest.mark.slow
def test_the_workstation_checks_a_bundle_copy(example, tmp_path):
    ok = example.doit("verify_bundle")
    assert all(f"{node}.tar.gz: OK, bundle of {node}" in ok.stdout for node in NODES)
    # A copy on the stick whose kubelet binary was altered and re-packed.
    copy = tmp_path / "stick" / "worker-az1-a.tar.gz"
    directory = unpack(example, "worker-az1-a", tmp_path / "unpacked")
    _tamper_binary(directory)
    copy.parent.mkdir()
    subprocess.run(["tar", "-czf", str(copy), "-C", str(directory.parent), bundle.TOP], check=True)
    bad = example.doit("verify_bundle", f"path={copy}", check=False)
    assert bad.returncode != 0 and "files/usr/local/bin/kubelet: sha256 differs" in bad.stdout + bad.stderr


# --- services ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_services_start_after_what_their_units_name(example, tmp_path):
    for node, order in (("node-az1", ["etcd", "kthw-pod-routes", "kube-apiserver", "kube-controller-manager",
                                      "kube-scheduler"]),
                        ("worker-az1-a", ["containerd", "kthw-pod-routes", "kube-proxy", "kubelet"])):
        lines = (unpack(example, node, tmp_path / node) / "MANIFEST").read_text().splitlines()
        assert [line.split()[2] for line in lines if line.startswith("# service ")] == order, node


def test_service_order_follows_after_and_wants_and_refuses_a_cycle():
    units = {"b": "[Unit]\nAfter=network.target a.service\n", "a": "[Unit]\nWants=c.service\n",
             "c": "[Unit]\n", "d": "[Unit]\nBefore=c.service\n"}
    assert bundle.service_order(units) == ["d", "c", "a", "b"]
    with pytest.raises(Exception, match="cycle"):
        bundle.service_order({"x": "After=y.service\n", "y": "Wants=x.service\n"})


@pytest.mark.slow
def test_a_node_removed_from_the_inventory_loses_its_bundle_and_the_others_their_route_to_it(tmp_path):
    project = example_project(tmp_path / "project")
    project.doit("bundle")
    old = unpack(project, "worker-az1-a", tmp_path / "v1")
    from support.project import LAST_WORKER as removed
    assert removed in project.inventory.read_text()
    project.write_inventory(project.inventory.read_text().replace(removed, ""))
    run = project.doit("bundle")
    assert "bundle:.removed" in run.executed
    assert f"removed {bundle_path(project, 'worker-az3-a')} (worker-az3-a is no longer in the inventory)" in run.stdout
    assert sorted(p.name for p in (project.root / "bundles").glob("*.tar.gz")) == \
        sorted(f"{node}.tar.gz" for node in NODES if node != "worker-az3-a")
    new = unpack(project, "worker-az1-a", tmp_path / "v2")
    routes = "files/etc/systemd/system/kthw-pod-routes.service"
    assert "10.244.3.0/24" in (old / routes).read_text() and "10.244.3.0/24" not in (new / routes).read_text()
    # Installed twice: the first run replaces the routes unit, the second changes nothing.
    root = tmp_path / "root"
    root.mkdir()
    args = ["--root", str(root), "--no-start", "--any-hostname", "--fingerprint", fingerprint(project)]
    install(old, *args, check=True)
    first = install(new, *args, check=True)
    assert "update: /etc/systemd/system/kthw-pod-routes.service" in first.stdout
    assert "services whose files changed: kthw-pod-routes\n" in first.stdout
    assert "nothing changed" in install(new, *args, check=True).stdout
    assert "bundle:.removed" not in project.doit("bundle").executed


@pytest.mark.slow
def test_a_node_that_loses_a_role_loses_its_files_and_its_services_are_named_on_the_node(tmp_path):
    project = example_project(tmp_path / "project")
    project.doit("bundle:node-az1")
    old = unpack(project, "node-az1", tmp_path / "v1")
    project.write_inventory(project.inventory.read_text().replace(
        "{name: node-az1, roles: [control-plane, etcd]", "{name: node-az1, roles: [etcd]"))
    run = project.doit("bundle:node-az1")
    assert "pki:node-az1/stale" in run.executed
    tree = project.node_files("node-az1")
    assert not [path for path in tree if "kube-apiserver" in path or "kube-scheduler" in path
                or "kube-controller-manager" in path or path.endswith(("sa.key", "admin.kubeconfig"))], tree
    new = unpack(project, "node-az1", tmp_path / "v2")
    root = tmp_path / "root"
    root.mkdir()
    args = ["--root", str(root), "--no-start", "--any-hostname", "--fingerprint", fingerprint(project)]
    install(old, *args, check=True)
    first = install(new, *args, check=True)
    lost = ["kube-apiserver", "kube-controller-manager", "kube-scheduler"]
    assert f"no longer carried, stop and disable them: {' '.join(lost)}" in first.stdout
    for service in lost:
        assert f"  remove: /etc/systemd/system/{service}.service\n" in first.stdout
        assert not (root / f"etc/systemd/system/{service}.service").exists()
    assert not (root / "etc/k8s/kube-apiserver/apiserver.key").exists()
    assert not (root / "etc/k8s/kube-controller-manager/cluster-signing-ca.key").exists()
    assert (root / "etc/k8s/etcd/peer.key").exists()
    second = install(new, *args, check=True)
    assert "nothing changed" in second.stdout and "no longer carried" not in second.stdout
    assert project.doit("bundle:node-az1").executed == []


@pytest.mark.slow
def test_the_readme_lists_every_installer_option_and_tells_an_etcd_member_of_snapshots_and_membership(
        example, tmp_path):
    directory = unpack(example, "node-az1", tmp_path)
    readme = (directory / "README").read_text()
    usage = subprocess.run(["bash", str(directory / "install.sh"), "--help"], capture_output=True, text=True)
    assert usage.returncode == 0, usage.stderr

    def options(text: str) -> set[str]:
        return set(re.findall(r"^ +(--[a-z0-9-]+)", text, re.MULTILINE))

    assert options(readme.split("Options\n")[1]) == options(usage.stdout) - {"--help"}
    assert "/etc/k8s/etcd/etcd-member.sh --apply" in readme and "etcd-snapshot-<time>.db" in readme
    worker = (unpack(example, "worker-az1-a", tmp_path / "worker") / "README").read_text()
    assert "etcd-member.sh" not in worker and "--no-snapshot" in worker
