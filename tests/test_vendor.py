"""The vendor stage end to end: `doit vendor` against real servers on 127.0.0.1.

Release files come from a real HTTP server playing upstream (tests/support/vendor.py),
images from Debian's real docker-registry with bearer-token auth. The inventory points at
them with vendor.mirror / vendor.registry_mirror and names a site pins file holding the
stand-ins' checksums and digests.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from support.project import REPO, Project, loopback_inventory
from support.tools import require
from support.vendor import (
    K8S,
    NO_PROXY_ENV,
    RELEASE,
    Registry,
    Upstream,
    binary_text,
    release,
    site_pins,
    vendor_section,
)

from kthw.supply import download

pytestmark = pytest.mark.slow  # end to end (see pyproject's markers)

FAKE_IMAGES = {("pause", RELEASE["pause"]): "sha256:" + "ab" * 32,
               ("coredns", RELEASE["coredns"]): "sha256:" + "cd" * 32}
SERVER_AMD64 = f"vendor:kubernetes-server-{K8S}-amd64"


def prepare(project: Project, upstream: Upstream, rel=None, images=None, mirror: str | None = None,
            registry: str | None = None, version: str = K8S, **inventory) -> None:
    rel = rel or release()
    upstream.files.update(rel.files)
    (project.root / "site-pins.yaml").write_text(site_pins([rel], images or FAKE_IMAGES))
    project.write_inventory(loopback_inventory(kubernetes_version=version, **inventory,
                                               extra=vendor_section(mirror or upstream.url + "/mirror", registry)))


def vendored_files(root: Path) -> dict[str, bytes]:
    """Every file under vendor/ except the verification stamps."""
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted((root / "vendor").rglob("*"))
            if path.is_file() and not path.name.endswith(".verified")}


def assert_only_verified(root: Path) -> None:
    """Nothing partial: every file in vendor/ is a stamp or a file its stamp still vouches for."""
    for path in (root / "vendor").rglob("*"):
        if path.is_file():
            assert not path.name.endswith(".part"), path
            if not path.name.endswith(".verified"):
                stamp = json.loads((path.parent / f".{path.name}.verified").read_text())
                assert download.verified(path, stamp["origin"]), path
                algorithm, hex_digest = stamp["checksum"].split(":")
                assert hashlib.new(algorithm, path.read_bytes()).hexdigest() == hex_digest


@pytest.fixture
def upstream():
    with Upstream() as server:
        yield server


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    server = Registry(tmp_path_factory.mktemp("registry"))
    try:
        server.digests = {("pause", RELEASE["pause"]): server.push_image("pause", RELEASE["pause"]),
                          ("coredns", RELEASE["coredns"]): server.push_image("coredns/coredns", RELEASE["coredns"])}
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def vendored(tmp_path_factory, registry):
    """One full `doit -n 3 vendor` of a two-arch inventory; the servers stay up for the module."""
    project = Project(tmp_path_factory.mktemp("vendored"))
    with Upstream() as server:
        rel = release()
        prepare(project, server, rel, images=registry.digests, registry=registry.url)
        run = project.doit("-n", "3", "vendor", env=NO_PROXY_ENV)
        yield project, server, rel, run


# --- a full run and a rerun -------------------------------------------------------------------


def test_full_run_fetches_every_file_each_node_needs_for_both_arches(vendored):
    project, server, rel, _ = vendored
    files = vendored_files(project.root)
    both, amd64 = ("amd64", "arm64"), ("amd64",)
    # Control planes and etcd members are amd64 in this inventory, workers amd64 and arm64.
    wanted = {"kubernetes-server": amd64, "etcd": amd64, "kubernetes-node": both, "containerd": both,
              "runc": both, "cni-plugins": both, "crictl": both}
    for component, arches in wanted.items():
        for arch in ("amd64", "arm64"):
            version = rel.versions[component]
            name = rel.path(component, arch).rsplit("/", 1)[1]
            key = f"vendor/files/{component}/{version}/{name}"
            if arch in arches:
                assert files[key] == rel.files[rel.path(component, arch)], key
            else:
                assert key not in files, f"{key} was fetched, but no {arch} node needs it"
    # The binaries are taken out for their arch.
    assert files[f"vendor/bin/arm64/kubernetes-node-{K8S}/kubelet"] == binary_text("kubelet", K8S, "arm64")
    assert files[f"vendor/bin/amd64/kubernetes-server-{K8S}/kube-apiserver"] == \
        binary_text("kube-apiserver", K8S, "amd64")
    assert files[f"vendor/bin/arm64/runc-{RELEASE['runc']}/runc"] == binary_text("runc", RELEASE["runc"], "arm64")
    assert files[f"vendor/bin/amd64/cni-plugins-{RELEASE['cni-plugins']}/bridge"] == \
        binary_text("bridge", RELEASE["cni-plugins"], "amd64")
    assert os.access(project.root / f"vendor/bin/arm64/etcd-{RELEASE['etcd']}", os.F_OK) is False
    assert (project.root / f"vendor/bin/amd64/etcd-{RELEASE['etcd']}/etcdctl").stat().st_mode & 0o111
    for arch in both:
        for image in (f"pause-{RELEASE['pause']}", f"coredns-{RELEASE['coredns']}"):
            assert f"vendor/images/{arch}/{image}.tar" in files
    assert_only_verified(project.root)
    # Each release file was fetched exactly once.
    fetched = [seen.path for seen in server.requests()]
    assert sorted(fetched) == sorted(set(fetched))


def test_rerun_makes_no_request_at_all(vendored, registry):
    project, server, _, _ = vendored
    before = (len(server.requests()), registry.requests(), len(registry.tokens.scopes))
    snapshot = project.snapshot("vendor")
    run = project.doit("vendor", env=NO_PROXY_ENV)
    assert run.executed == []
    assert (len(server.requests()), registry.requests(), len(registry.tokens.scopes)) == before
    assert project.snapshot("vendor") == snapshot


def test_image_archives_are_oci_layouts_that_keep_their_name(vendored, registry):
    project, _, _, _ = vendored
    from kthw.supply import oci
    client = oci.Client(oci.Repository.parse("registry.k8s.io/pause").mirrored(registry.url))
    index, _ = client.manifest(registry.digests[("pause", RELEASE["pause"])], "the index")
    pinned_index_entries = {e["platform"]["architecture"]: e["digest"] for e in json.loads(index)["manifests"]}
    for arch in ("amd64", "arm64"):
        with tarfile.open(project.root / f"vendor/images/{arch}/pause-{RELEASE['pause']}.tar") as archive:
            names = archive.getnames()
            assert json.loads(archive.extractfile("oci-layout").read()) == {"imageLayoutVersion": "1.0.0"}
            index = json.loads(archive.extractfile("index.json").read())
            blobs = {}
            for name in names:
                if name.startswith("blobs/sha256/") and archive.getmember(name).isfile():
                    data = archive.extractfile(name).read()
                    assert hashlib.sha256(data).hexdigest() == name.rsplit("/", 1)[1]
                    blobs["sha256:" + name.rsplit("/", 1)[1]] = data
        assert index["schemaVersion"] == 2 and len(index["manifests"]) == 1
        entry = index["manifests"][0]
        assert entry["annotations"]["io.containerd.image.name"] == f"registry.k8s.io/pause:{RELEASE['pause']}"
        assert entry["annotations"]["org.opencontainers.image.ref.name"] == RELEASE["pause"]
        assert entry["platform"] == {"architecture": arch, "os": "linux"}
        manifest = json.loads(blobs[entry["digest"]])
        assert len(blobs[entry["digest"]]) == entry["size"]
        config = json.loads(blobs[manifest["config"]["digest"]])
        assert config["architecture"] == arch
        for layer in manifest["layers"]:
            assert layer["digest"] in blobs
        # The arch's manifest is the one the pinned multi-arch index names.
        assert entry["digest"] == pinned_index_entries[arch]
    # The pull used the anonymous bearer-token flow for each repository.
    assert "repository:pause:pull" in registry.tokens.scopes
    assert "repository:coredns/coredns:pull" in registry.tokens.scopes


def test_a_corrupted_cache_file_is_fetched_again(vendored):
    project, server, rel, _ = vendored
    target = project.root / f"vendor/files/etcd/{RELEASE['etcd']}/etcd-v{RELEASE['etcd']}-linux-amd64.tar.gz"
    data = bytearray(target.read_bytes())
    data[100] ^= 0xFF  # same size, other bytes, newer mtime
    target.write_bytes(bytes(data))
    binary = project.root / f"vendor/bin/amd64/crictl-{RELEASE['crictl']}/crictl"
    binary.write_bytes(b"tampered")
    before = len(server.requests())
    run = project.doit("vendor", env=NO_PROXY_ENV)
    assert sorted(run.executed) == sorted([f"vendor:etcd-{RELEASE['etcd']}-amd64",
                                           f"vendor:crictl-{RELEASE['crictl']}-amd64"])
    assert target.read_bytes() == rel.files[rel.path("etcd", "amd64")]
    # The binary is taken out of the cached (still verified) archive again: no download.
    assert binary.read_bytes() == binary_text("crictl", RELEASE["crictl"], "amd64")
    assert [seen.path for seen in server.requests()[before:]] == [rel.path("etcd", "amd64")]
    assert_only_verified(project.root)


# --- faults injected by the server ---------------------------------------------------------------


def test_two_server_errors_then_success(project, upstream):
    rel = release()
    prepare(project, upstream, rel)
    path = rel.path("kubernetes-server", "amd64")
    upstream.faults[path] = ["500", "500"]
    run = project.doit(SERVER_AMD64, env=NO_PROXY_ENV)
    assert len(upstream.requests(path)) == 3
    assert "500" in run.stderr
    assert vendored_files(project.root)[f"vendor/files/kubernetes-server/{K8S}/kubernetes-server-linux-amd64.tar.gz"] \
        == rel.files[path]
    assert_only_verified(project.root)


def test_a_cut_connection_is_resumed_with_range(project, upstream):
    rel = release(padding=3_000_000)
    prepare(project, upstream, rel)
    path = rel.path("kubernetes-server", "amd64")
    upstream.faults[path] = ["cut"]
    project.doit(SERVER_AMD64, env=NO_PROXY_ENV)
    first, second = upstream.requests(path)
    assert "Range" not in first.headers
    offset = int(second.headers["Range"].removeprefix("bytes=").rstrip("-"))
    assert 0 < offset < len(rel.files[path])
    target = project.root / f"vendor/files/kubernetes-server/{K8S}/kubernetes-server-linux-amd64.tar.gz"
    assert hashlib.sha512(target.read_bytes()).hexdigest() == hashlib.sha512(rel.files[path]).hexdigest()
    assert_only_verified(project.root)


def test_wrong_bytes_fail_and_leave_only_verified_files(project, upstream):
    rel = release()
    prepare(project, upstream, rel)
    project.doit(f"vendor:runc-{RELEASE['runc']}-amd64", env=NO_PROXY_ENV)
    path = rel.path("kubernetes-server", "amd64")
    upstream.faults[path] = ["wrong"]
    run = project.doit(SERVER_AMD64, env=NO_PROXY_ENV, check=False)
    assert run.returncode != 0
    output = run.stdout + run.stderr
    assert "checksum mismatch" in output and upstream.url + path in output
    expected = rel.checksums[("kubernetes-server", K8S, "amd64")]
    assert f"expected {expected}" in output
    wrong = bytes(b ^ 0x5A for b in rel.files[path])
    assert f"got      sha512:{hashlib.sha512(wrong).hexdigest()}" in output
    assert "Traceback" not in output
    assert set(vendored_files(project.root)) == {f"vendor/files/runc/{RELEASE['runc']}/runc.amd64",
                                                 f"vendor/bin/amd64/runc-{RELEASE['runc']}/runc"}
    assert_only_verified(project.root)


def test_a_body_cut_short_without_length_fails_cleanly(project, upstream):
    rel = release()
    prepare(project, upstream, rel)
    upstream.faults[rel.path("kubernetes-server", "amd64")] = ["nolength"]
    run = project.doit(SERVER_AMD64, env=NO_PROXY_ENV, check=False)
    assert run.returncode != 0 and "checksum mismatch" in run.stdout + run.stderr
    assert vendored_files(project.root) == {}


def test_not_found_is_a_clear_error(project, upstream):
    rel = release()
    prepare(project, upstream, rel)
    path = rel.path("kubernetes-server", "amd64")
    upstream.faults[path] = ["404"]
    run = project.doit(SERVER_AMD64, env=NO_PROXY_ENV, check=False)
    output = run.stdout + run.stderr
    assert run.returncode != 0
    assert f"{upstream.url + path}: the server answered 404" in output
    assert f"put a copy of https://dl.k8s.io/v{K8S}/kubernetes-server-linux-amd64.tar.gz in the mirror" in output
    assert len(upstream.requests(path)) == 1  # a 404 is not retried
    assert vendored_files(project.root) == {}


def test_server_errors_that_persist_give_up_after_bounded_tries(project, upstream):
    rel = release()
    prepare(project, upstream, rel)
    path = rel.path("runc", "amd64")
    upstream.faults[path] = ["500"] * 10
    run = project.doit(f"vendor:runc-{RELEASE['runc']}-amd64", env=NO_PROXY_ENV, check=False)
    assert run.returncode != 0
    assert f"answered 500 Internal Server Error, {download.ATTEMPTS} tries" in run.stdout + run.stderr
    assert len(upstream.requests(path)) == download.ATTEMPTS
    assert vendored_files(project.root) == {}


def test_a_mirror_directory_that_lacks_a_file(project, upstream, tmp_path):
    rel = release()
    mirror = tmp_path / "usb-mirror"
    for path, data in rel.files.items():
        if "/runc/" not in path or "arm64" in path:
            (mirror / path.removeprefix("/mirror/")).parent.mkdir(parents=True, exist_ok=True)
            (mirror / path.removeprefix("/mirror/")).write_bytes(data)
    prepare(project, upstream, rel, mirror=str(mirror))
    project.doit(f"vendor:runc-{RELEASE['runc']}-arm64", env=NO_PROXY_ENV)
    run = project.doit(f"vendor:runc-{RELEASE['runc']}-amd64", env=NO_PROXY_ENV, check=False)
    output = run.stdout + run.stderr
    assert run.returncode != 0
    assert f"{mirror}/runc/{RELEASE['runc']}/runc.amd64: no such file in the mirror directory" in output
    assert "<mirror>/<component>/<version>/<file name>" in output
    assert upstream.requests() == []
    assert set(vendored_files(project.root)) == {f"vendor/files/runc/{RELEASE['runc']}/runc.arm64",
                                                 f"vendor/bin/arm64/runc-{RELEASE['runc']}/runc"}


def test_a_component_override_wins_over_the_mirror(project, upstream):
    rel = release()
    upstream.files.update(rel.files)
    etcd = RELEASE["etcd"]
    upstream.files[f"/custom/etcd-v{etcd}/arm64/etcd-v{etcd}-linux-arm64.tar.gz"] = rel.files[rel.path("etcd", "arm64")]
    (project.root / "site-pins.yaml").write_text(site_pins([rel], FAKE_IMAGES))
    project.write_inventory(loopback_inventory(kubernetes_version=K8S, extra=vendor_section(
        "http://mirror.invalid/unused", overrides={"etcd": upstream.url + "/custom/etcd-v{version}/{arch}"}))
        .replace("arch: amd64, zone: az3", "arch: arm64, zone: az3"))
    project.doit(f"vendor:etcd-{etcd}-arm64", env=NO_PROXY_ENV)
    assert [seen.path for seen in upstream.requests()] == [
        f"/custom/etcd-v{etcd}/arm64/etcd-v{etcd}-linux-arm64.tar.gz"]
    assert (project.root / f"vendor/bin/arm64/etcd-{etcd}/etcd").read_bytes() == binary_text("etcd", etcd, "arm64")


def test_proxy_variables_are_honoured(project, upstream):
    rel = release()
    prepare(project, upstream, rel, mirror="http://mirror.invalid/mirror")
    run = project.doit(f"vendor:crictl-{RELEASE['crictl']}-arm64",
                       env={**NO_PROXY_ENV, "http_proxy": upstream.url, "no_proxy": ""})
    assert run.returncode == 0
    (seen,) = upstream.requests()
    assert seen.proxied and seen.path == rel.path("crictl", "arm64")


def test_a_full_disk_is_a_clear_error_and_leaves_nothing(project, upstream):
    rel = release(padding=3_000_000)
    prepare(project, upstream, rel)
    limit = 1_000_000  # stands in for a full disk: writes past it fail with EFBIG (Python ignores SIGXFSZ)

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    project.doit("list", env=NO_PROXY_ENV)  # doit's own state database exists before the limit
    proc = subprocess.run([sys.executable, "-m", "doit", "-f", str(REPO / "dodo.py"), "-d", str(project.root),
                           SERVER_AMD64, f"inventory={project.inventory}"], capture_output=True, text=True,
                          env={**os.environ, **NO_PROXY_ENV}, preexec_fn=limit_file_size, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "cannot write kubernetes-server-linux-amd64.tar.gz (File too large); nothing was kept" in output
    assert "free some disk space" in output and "Traceback" not in output
    assert vendored_files(project.root) == {}


# --- pins ------------------------------------------------------------------------------------------


def test_an_unpinned_version_names_the_pinned_ones_and_the_pin_command(project, upstream):
    prepare(project, upstream, version="1.37.98")
    run = project.doit("vendor", env=NO_PROXY_ENV, check=False)
    output = run.stdout + run.stderr
    assert run.returncode != 0
    assert "Kubernetes 1.37.98 is not pinned" in output
    assert K8S in output and "1.36.0" in output  # the site pins and the shipped ones
    assert "doit pin version=1.37.98" in output and "Traceback" not in output
    assert upstream.requests() == []
    assert project.doit("list", check=False).returncode == 2  # refused when the inventory is read


def _publish_checksum_files(upstream: Upstream, rel) -> None:
    """The checksum files each project publishes, in their own formats, beside the files."""
    def put(path: str, text: str):
        upstream.files[path] = text.encode()

    def hex_of(component, arch):
        return rel.checksums[(component, rel.versions[component], arch)].split(":")[1]

    for arch in ("amd64", "arm64"):
        for component in ("kubernetes-server", "kubernetes-node", "crictl"):
            put(rel.path(component, arch) + (".sha512" if component.startswith("kube") else ".sha256"),
                hex_of(component, arch) + "\n")
        put(rel.path("containerd", arch) + ".sha256sum",
            f"{hex_of('containerd', arch)}  {rel.path('containerd', arch).rsplit('/', 1)[1]}\n")
        put(rel.path("cni-plugins", arch) + ".sha256",
            f"{hex_of('cni-plugins', arch)}  {rel.path('cni-plugins', arch).rsplit('/', 1)[1]}\n")
    folder = rel.path("etcd", "amd64").rsplit("/", 1)[0]
    put(folder + "/SHA256SUMS", "".join(f"{hex_of('etcd', arch)}  {rel.path('etcd', arch).rsplit('/', 1)[1]}\n"
                                        for arch in ("arm64", "amd64")) + "0" * 64 + "  etcd-windows.zip\n")
    folder = rel.path("runc", "amd64").rsplit("/", 1)[0]
    put(folder + "/runc.sha256sum", "".join(f"{hex_of('runc', arch)}  runc.{arch}\n" for arch in ("amd64", "arm64")))


def test_pin_adds_a_version_from_the_published_checksum_files(project, upstream):
    old, new = release(), release(k8s="1.37.91", etcd="9.5.2")
    prepare(project, upstream, old)
    upstream.files.update(new.files)
    _publish_checksum_files(upstream, new)
    site = project.root / "site-pins.yaml"
    run = project.doit("pin", "version=1.37.91", "etcd=9.5.2", env=NO_PROXY_ENV)
    assert "pinned into" in run.stdout
    import yaml
    pinned = yaml.safe_load(site.read_text())
    assert site.read_text().startswith("# test site pins\n")  # the file's comments are kept
    assert pinned["releases"]["1.37.91"] == {**pinned["releases"][K8S], "etcd": "9.5.2"}
    for component, version in (("kubernetes-server", "1.37.91"), ("kubernetes-node", "1.37.91"), ("etcd", "9.5.2")):
        for arch in ("amd64", "arm64"):
            assert pinned["checksums"][component][version][arch] == new.checksums[(component, version, arch)]
    # Only checksum files were read, and only for what was not pinned yet.
    assert all(seen.path.endswith((".sha512", "SHA256SUMS")) for seen in upstream.requests())
    # The new pins are right: the new version vendors and verifies.
    project.write_inventory(project.inventory.read_text().replace(f'"{K8S}"', '"1.37.91"'))
    project.doit("vendor:kubernetes-node-1.37.91-arm64", "vendor:etcd-9.5.2-amd64", env=NO_PROXY_ENV)
    # Pinning it again fetches nothing.
    before = len(upstream.requests())
    assert "already pinned" in project.doit("pin", "version=1.37.91", "etcd=9.5.2", env=NO_PROXY_ENV).stdout
    assert len(upstream.requests()) == before


def test_pin_into_a_commented_table_keeps_every_comment(project, upstream):
    shipped = (REPO / "kthw" / "supply" / "data" / "pins.yaml")
    table = project.root / "pins.yaml"
    table.write_text(shipped.read_text())
    from kthw.supply import pins
    base = pins.load(shipped=table)
    newest = sorted(base.releases, key=lambda v: tuple(map(int, v.split("."))))[-1]
    rel = release(k8s="1.99.3", **base.releases[newest])
    upstream.files.update(rel.files)
    _publish_checksum_files(upstream, rel)
    project.write_inventory(loopback_inventory(kubernetes_version=newest,
                                               extra=f"vendor:\n  mirror: {upstream.url}/mirror"))
    project.doit("pin", "version=1.99.3", f"pins={table}", env=NO_PROXY_ENV)
    text = table.read_text()
    for line in shipped.read_text().splitlines():
        assert line in text.splitlines(), f"lost: {line}"
    updated = pins.load(shipped=table)
    assert updated.releases["1.99.3"] == base.releases[newest]
    assert updated.checksum("kubernetes-node", "1.99.3", "arm64", "1.99.3") == \
        rel.checksums[("kubernetes-node", "1.99.3", "arm64")]
    assert updated.gaps() == []


def test_pin_of_a_version_upstream_does_not_have(project, upstream):
    prepare(project, upstream)
    site = project.root / "site-pins.yaml"
    before = site.read_text()
    run = project.doit("pin", "version=1.99.7", env=NO_PROXY_ENV, check=False)
    output = run.stdout + run.stderr
    assert run.returncode != 0
    assert "kubernetes-server-linux-amd64.tar.gz.sha512: the server answered 404" in output
    assert site.read_text() == before


# --- images: faults ----------------------------------------------------------------------------------


def test_an_image_digest_that_is_not_in_the_registry(project, upstream, registry):
    images = {**registry.digests, ("pause", RELEASE["pause"]): "sha256:" + "0" * 64}
    prepare(project, upstream, images=images, registry=registry.url)
    run = project.doit(f"vendor:pause-{RELEASE['pause']}-amd64", env=NO_PROXY_ENV, check=False)
    output = run.stdout + run.stderr
    assert run.returncode != 0
    assert "the registry does not hold the image index of registry.k8s.io/pause" in output
    assert vendored_files(project.root) == {}


def test_a_registry_mirror_that_serves_other_bytes(project, upstream, registry):
    # The registry mirror here is the loopback HTTP server, serving a tampered copy of the
    # real registry's index: a real registry never serves bytes that miss their digest.
    from kthw.supply import oci
    digest = registry.digests[("pause", RELEASE["pause"])]
    client = oci.Client(oci.Repository.parse("registry.k8s.io/pause").mirrored(registry.url))
    body, _ = client.manifest(digest, "the index")
    upstream.files[f"/v2/pause/manifests/{digest}"] = body.replace(b'"schemaVersion": 2', b'"schemaVersion":2')
    prepare(project, upstream, images=registry.digests, registry=upstream.url)
    run = project.doit(f"vendor:pause-{RELEASE['pause']}-arm64", env=NO_PROXY_ENV, check=False)
    output = run.stdout + run.stderr
    assert run.returncode != 0
    assert "image digest mismatch" in output and f"expected {digest}" in output
    assert vendored_files(project.root) == {}


def test_pin_resolves_an_image_tag_to_its_index_digest(project, upstream, registry):
    digest = registry.push_image("pause", "3.100")
    prepare(project, upstream, images=registry.digests, registry=registry.url)
    project.doit("pin", f"version={K8S}", "pause=3.100", env=NO_PROXY_ENV)
    from kthw.supply import pins
    table = pins.load(project.root / "site-pins.yaml")
    assert table.releases[K8S]["pause"] == "3.100"
    assert table.image("pause", "3.100", K8S).digest == digest
    project.doit("vendor:pause-3.100-arm64", env=NO_PROXY_ENV)


def test_real_containerd_imports_the_archives_under_their_names(vendored, registry, tmp_path):
    """`ctr -n k8s.io images import` (Debian's containerd, run here on a private socket) takes
    every vendored archive, unpacks it and lists it under the name the kubelet asks for."""
    project, _, _, _ = vendored
    containerd, ctr = require("containerd"), require("ctr")
    socket_path = tmp_path / "containerd.sock"
    (tmp_path / "config.toml").write_text(
        f'version = 2\nroot = "{tmp_path}/root"\nstate = "{tmp_path}/state"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        f'[grpc]\n  address = "{socket_path}"\n[ttrpc]\n  address = "{socket_path}.ttrpc"\n')
    with open(tmp_path / "containerd.log", "wb") as log:
        daemon = subprocess.Popen([containerd, "--config", str(tmp_path / "config.toml")], stdout=log,
                                  stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while subprocess.run([ctr, "-a", str(socket_path), "version"], capture_output=True).returncode != 0:
            assert daemon.poll() is None and time.monotonic() < deadline, (tmp_path / "containerd.log").read_text()
            time.sleep(0.2)
        native = {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine)
        expected = {}
        for arch in ("amd64", "arm64"):
            for name, version in (("pause", RELEASE["pause"]), ("coredns", RELEASE["coredns"])):
                archive = project.root / f"vendor/images/{arch}/{name}-{version}.tar"
                namespace = f"kthw-{arch}"  # one image store per arch, as on a node of that arch
                platform = [] if arch == native else ["--platform", f"linux/{arch}"]
                done = subprocess.run([ctr, "-a", str(socket_path), "-n", namespace, "images", "import", *platform,
                                       str(archive)], capture_output=True, text=True, timeout=120)
                assert done.returncode == 0, done.stderr
                with tarfile.open(archive) as tar:
                    digest = json.loads(tar.extractfile("index.json").read())["manifests"][0]["digest"]
                reference = ("registry.k8s.io/pause:" + version if name == "pause"
                             else "registry.k8s.io/coredns/coredns:v" + version)
                expected.setdefault(namespace, set()).add((reference, digest))
                # install.sh names it by its pinned index digest too, as the CoreDNS Deployment does.
                by_digest = reference.rsplit(":", 1)[0] + "@" + registry.digests[(name, version)]
                done = subprocess.run([ctr, "-a", str(socket_path), "-n", namespace, "images", "tag", "--force",
                                       reference, by_digest], capture_output=True, text=True, timeout=60)
                assert done.returncode == 0, done.stderr
                expected[namespace].add((by_digest, digest))
        for namespace, images in expected.items():
            listed = subprocess.run([ctr, "-a", str(socket_path), "-n", namespace, "images", "ls"],
                                    capture_output=True, text=True, check=True).stdout.splitlines()[1:]
            assert {(line.split()[0], line.split()[2]) for line in listed} == images
    finally:
        daemon.kill()
        daemon.wait(10)
        subprocess.run(["umount", "-R", str(tmp_path / "root")], capture_output=True)
