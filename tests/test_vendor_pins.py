"""The pins table, the inventory's vendor: section, and what each node gets from vendor/."""

from __future__ import annotations

import io
import re
import urllib.parse
from pathlib import Path

import pytest
import yaml
from support.project import REPO, loopback_inventory
from support.vendor import K8S, RELEASE, release, site_pins

from kthw import inventory
from kthw.errors import InventoryError
from kthw.layout import Layout
from kthw.supply import components, download, pins
from kthw.vendor import fetch as vendor
from kthw.vendor import pinning

SHIPPED = REPO / "kthw" / "supply" / "data" / "pins.yaml"
LENGTHS = {"sha256": 64, "sha512": 128}


# --- the shipped table ------------------------------------------------------------------------


def test_every_shipped_entry_is_well_formed_and_covers_both_arches_of_each_pinned_version():
    raw = yaml.safe_load(SHIPPED.read_text())
    table = pins.load()  # every entry passes the same checks a site pins file gets
    assert raw["schema"] == 1 and table.releases, "the shipped table pins no release"
    for kubernetes_version in table.releases:
        release_ = table.release(kubernetes_version)
        assert set(release_) == set(components.ALL_NAMES)
        for name in components.FILES:
            version = release_[name]
            urls = set()
            for arch in ("amd64", "arm64"):
                url = table.url(name, version, arch)
                parts = urllib.parse.urlsplit(url)
                assert parts.scheme == "https" and parts.netloc and version in url and arch in url, url
                urls.add(url)
                value = raw["checksums"][name][version][arch]
                algorithm, hex_digest = value.split(":")
                assert re.fullmatch(f"[0-9a-f]{{{LENGTHS[algorithm]}}}", hex_digest), (name, version, arch)
                # Kubernetes publishes sha512 for its tarballs, the other projects sha256.
                assert algorithm == components.FILES[name].algorithm, (name, version, arch)
            assert len(urls) == 2, f"{name} {version}: both arches have the same URL"
        for name in components.IMAGES:
            image = table.image(name, release_[name], kubernetes_version)
            assert re.fullmatch(r"sha256:[0-9a-f]{64}", raw["images"][name][release_[name]]["digest"])
            assert image.repository.startswith("registry.k8s.io/")
    assert table.gaps() == []
    # No two entries share a checksum: a copy-paste slip would show up here.
    values = [value for versions in raw["checksums"].values() for arches in versions.values()
              for value in arches.values()]
    assert len(values) == len(set(values))


def test_the_example_inventory_version_is_pinned():
    inv = inventory.load(REPO / "cluster.yaml")
    table = vendor.load_pins(inv)
    assert vendor.plan(inv, table, Layout(Path("/x")))


# --- site pins ------------------------------------------------------------------------------------


def _site(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "site-pins.yaml"
    path.write_text(text)
    return path


def test_site_pins_extend_and_override_the_shipped_table(tmp_path):
    rel = release()
    shipped = pins.load()
    some_version, some_release = next(iter(shipped.releases.items()))
    etcd = some_release["etcd"]
    override = "sha256:" + "1" * 64
    text = site_pins([rel], {("pause", RELEASE["pause"]): "sha256:" + "ab" * 32,
                             ("coredns", RELEASE["coredns"]): "sha256:" + "cd" * 32})
    data = yaml.safe_load(text)
    data["checksums"].setdefault("etcd", {})[etcd] = {"arm64": override}
    merged = pins.load(_site(tmp_path, yaml.safe_dump(data)))
    assert K8S in merged.releases and some_version in merged.releases
    assert merged.checksum("etcd", etcd, "arm64", some_version) == override
    # The other arch of the same version still comes from the shipped table.
    assert merged.checksum("etcd", etcd, "amd64", some_version) == shipped.checksum("etcd", etcd, "amd64", some_version)
    assert merged.gaps() == []


GOOD = """schema: 1
checksums:
  etcd:
    "9.5.1":
      amd64: "sha256:{hex64}"
releases:
  "1.99.0": {{etcd: "9.5.1", containerd: "2.2.1", runc: "1.3.4", cni-plugins: "1.8.0",
             crictl: "1.35.0", pause: "3.10.1", coredns: "1.14.2"}}
images:
  pause:
    "3.10.1": {{repository: registry.k8s.io/pause, digest: "sha256:{hex64}"}}
url_templates:
  runc: "https://github.com/opencontainers/runc/releases/download/v{{version}}/runc.{{arch}}"
""".format(hex64="a" * 64)


@pytest.mark.parametrize("old, new, field, words", [
    ('amd64: "sha256:' + "a" * 64, 'amd64: "sha256:' + "a" * 63, "checksums.etcd.9.5.1.amd64",
     ["not a checksum", "64 hex digits"]),
    ('amd64: "sha256:' + "a" * 64, 'amd64: "sha512:' + "a" * 64, "checksums.etcd.9.5.1.amd64", ["128 hex digits"]),
    ('amd64: "sha256:', 'x86: "sha256:', "checksums.etcd.9.5.1.x86", ["unknown key 'x86'"]),
    ("  etcd:\n", "  etc:\n", "checksums.etc", ["did you mean 'etcd'"]),
    ('"9.5.1":\n', "9.5:\n", "checksums.etcd.9.5", ["quote versions"]),
    ('pause: "3.10.1", ', 'pause: 3.10, ', 'releases.1.99.0.pause', ["quote versions"]),
    ('crictl: "1.35.0", ', "", "releases.1.99.0.crictl", ["required key is missing"]),
    ("runc.{arch}", "runc.amd64", "url_templates.runc", ["{version} and {arch}"]),
    ("https://github.com/opencontainers", "http://github.com/opencontainers", "url_templates.runc",
     ["not an https URL template"]),
    ('digest: "sha256:' + "a" * 64, 'digest: "sha256:' + "a" * 10, "images.pause.3.10.1.digest",
     ["not an image digest"]),
    ("repository: registry.k8s.io/pause", "repository: registry.k8s.io/pause:3.10", "images.pause.3.10.1.repository",
     ["not an image repository"]),
    ("schema: 1", "schema: 2", "schema", ["not supported"]),
    ('digest: "sha256:' + "a" * 64 + '"', 'digest: "sha256:' + "a" * 64 + '", tag: "v1.12/0"',
     "images.pause.3.10.1.tag", ["not an image tag"]),
])
def test_a_bad_pins_file_names_line_entry_and_fix(tmp_path, old, new, field, words):
    assert old in GOOD, old
    text = GOOD.replace(old, new, 1)
    path = _site(tmp_path, text)
    with pytest.raises(InventoryError) as caught:
        pins.load(path)
    err = caught.value
    assert err.source == str(path) and err.field == field, str(err)
    anchor = new or '"1.99.0":'  # a missing key is reported at its mapping
    assert err.line == text[:text.index(anchor)].count("\n") + 1, str(err)
    message = str(err)
    assert message.startswith(f"{path}:{err.line}: {field}: ") and "fix:" in message
    for word in words:
        assert word in message


def test_the_good_sample_is_accepted(tmp_path):
    table = pins.load(_site(tmp_path, GOOD))
    assert table.checksums["etcd"]["9.5.1"]["amd64"] == "sha256:" + "a" * 64
    assert table.image("pause", "3.10.1", "1.99.0").reference == "registry.k8s.io/pause:3.10.1"


def test_a_site_pins_file_may_give_an_image_its_own_tag(tmp_path):
    text = GOOD.replace('digest: "sha256:' + "a" * 64 + '"', 'digest: "sha256:' + "a" * 64 + '", tag: v3.10.1-site')
    image = pins.load(_site(tmp_path, text)).image("pause", "3.10.1", "1.99.0")
    assert image.tag == "v3.10.1-site" and image.reference == "registry.k8s.io/pause:v3.10.1-site"


def test_coredns_images_are_tagged_with_a_v():
    table = pins.load()
    for version, image in table.images.get("coredns", {}).items():
        assert image.tag == f"v{version}" and image.reference.endswith(f":v{version}")


# --- the inventory's vendor: section ----------------------------------------------------------------


def _inventory(vendor_yaml: str, source: str = "/site/cluster.yaml") -> inventory.Inventory:
    return inventory.loads(loopback_inventory(extra=vendor_yaml), source=source)


def test_vendor_section_paths_are_relative_to_the_inventory():
    inv = _inventory("vendor:\n  mirror: usb/mirror\n  site_pins: site-pins.yaml\n"
                     "  registry_mirror: http://127.0.0.1:5000/cache/\n  overrides:\n"
                     "    etcd: https://artifacts.lan/etcd/v{version}\n    pause: http://127.0.0.1:5000/k8s/pause\n")
    assert inv.vendor.mirror == "/site/usb/mirror"
    assert inv.vendor.site_pins == Path("/site/site-pins.yaml")
    assert inv.vendor.registry_mirror == "http://127.0.0.1:5000/cache"
    assert inv.vendor.override("etcd") == "https://artifacts.lan/etcd/v{version}"
    assert inv.vendor.override("pause") == "http://127.0.0.1:5000/k8s/pause"
    assert inv.vendor.override("runc") is None
    assert _inventory("").vendor == inventory.VendorSettings()


@pytest.mark.parametrize("vendor_yaml, field, words", [
    ("vendor:\n  mirorr: /srv\n", "vendor.mirorr", ["unknown key", "did you mean 'mirror'"]),
    ("vendor:\n  mirror: ftp://mirror.lan/kthw\n", "vendor.mirror", ["neither an http(s) URL nor a directory"]),
    ("vendor:\n  overrides:\n    etc: /srv/etcd\n", "vendor.overrides.etc", ["did you mean 'etcd'"]),
    ("vendor:\n  overrides:\n    etcd: /srv/etcd/{ver}\n", "vendor.overrides.etcd", ["unknown placeholder {ver}"]),
    ("vendor:\n  overrides:\n    pause: registry.lan/pause:3.10\n", "vendor.overrides.pause",
     ["not an image repository"]),
    ("vendor:\n  registry_mirror: /srv/registry\n", "vendor.registry_mirror", ["not an http(s) URL"]),
    ("vendor:\n  site_pins: https://example.lan/pins.yaml\n", "vendor.site_pins", ["is a URL"]),
])
def test_bad_vendor_settings_are_located_errors(vendor_yaml, field, words):
    with pytest.raises(InventoryError) as caught:
        _inventory(vendor_yaml, source="site.yaml")
    err = caught.value
    assert err.field == field, str(err)
    text = loopback_inventory(extra=vendor_yaml)
    key = field.rsplit(".", 1)[1]
    assert err.line == text[:text.index(f"{key}:")].count("\n") + 1, str(err)
    assert "fix:" in str(err)
    for word in words:
        assert word in str(err)


def test_sources_follow_overrides_then_mirror_then_upstream():
    inv = _inventory("vendor:\n  mirror: https://mirror.lan/kthw\n  overrides:\n"
                     "    etcd: https://artifacts.lan/etcd/v{version}/{arch}\n")
    upstream = "https://github.com/etcd-io/etcd/releases/download/v3.5.27/etcd-v3.5.27-linux-arm64.tar.gz"
    assert vendor.file_source(inv, "etcd", "3.5.27", "arm64", upstream)[0] == \
        "https://artifacts.lan/etcd/v3.5.27/arm64/etcd-v3.5.27-linux-arm64.tar.gz"
    assert vendor.file_source(inv, "runc", "1.3.4", "arm64", "https://github.com/x/v1.3.4/runc.arm64")[0] == \
        "https://mirror.lan/kthw/runc/1.3.4/runc.arm64"
    assert vendor.file_source(_inventory(""), "runc", "1.3.4", "arm64", "https://github.com/x/runc.arm64")[0] == \
        "https://github.com/x/runc.arm64"


# --- what a node gets ---------------------------------------------------------------------------------


def test_needs_gives_each_node_its_arch_and_roles_only(tmp_path):
    rel = release(padding=0)
    digests = {("pause", RELEASE["pause"]): "sha256:" + "ab" * 32,
               ("coredns", RELEASE["coredns"]): "sha256:" + "cd" * 32}
    (tmp_path / "site-pins.yaml").write_text(site_pins([rel], digests))
    (tmp_path / "cluster.yaml").write_text(loopback_inventory(kubernetes_version=K8S,
                                                              extra="vendor:\n  site_pins: site-pins.yaml"))
    inv = inventory.load(tmp_path / "cluster.yaml")
    layout = Layout(tmp_path)
    vendored = layout.vendor

    control_plane = {f.install_as: f for f in vendor.needs(inv.node("cp1"), inv, layout)}
    assert set(control_plane) == {f"/usr/local/bin/{name}" for name in (
        "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "etcd", "etcdctl", "etcdutl")}
    assert control_plane["/usr/local/bin/kubectl"].source == \
        vendored / f"bin/amd64/kubernetes-server-{K8S}/kubectl"
    assert control_plane["/usr/local/bin/etcd"].task == f"vendor:etcd-{RELEASE['etcd']}-amd64"

    worker = {f.install_as: f for f in vendor.needs(inv.node("worker2"), inv, layout)}  # arm64
    assert set(worker) == {
        *(f"/usr/local/bin/{name}" for name in ("kubelet", "kube-proxy", "kubectl", "containerd",
                                                "containerd-shim-runc-v2", "ctr", "runc", "crictl")),
        *(f"/opt/cni/bin/{name}" for name in ("bridge", "host-local", "loopback", "portmap", "bandwidth", "firewall")),
        f"/var/lib/kthw/images/pause-{RELEASE['pause']}.tar", f"/var/lib/kthw/images/coredns-{RELEASE['coredns']}.tar"}
    assert all("/arm64/" in str(f.source) for f in worker.values())
    assert worker["/usr/local/bin/kubectl"].source == vendored / f"bin/arm64/kubernetes-node-{K8S}/kubectl"
    assert worker["/usr/local/bin/kubelet"].mode == 0o755
    assert worker[f"/var/lib/kthw/images/pause-{RELEASE['pause']}.tar"].mode == 0o644
    # Every file a node needs is a target of the vendor task named for it.
    items = {f"vendor:{item.name}": item for item in vendor.plan(inv, vendor.load_pins(inv), layout)}
    for needed in list(control_plane.values()) + list(worker.values()):
        assert needed.source in items[needed.task].targets
    assert vendor.images(inv)["pause"].reference == f"registry.k8s.io/pause:{RELEASE['pause']}"


# --- small pieces -------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, name, algorithm, expected", [
    ("a" * 128 + "\n", "kubernetes-server-linux-amd64.tar.gz", "sha512", "a" * 128),
    ("b" * 64 + "  runc.amd64\n" + "c" * 64 + "  runc.arm64\n", "runc.arm64", "sha256", "c" * 64),
    ("b" * 64 + " *./cni-plugins-linux-arm64-v1.8.0.tgz\n", "cni-plugins-linux-arm64-v1.8.0.tgz", "sha256", "b" * 64),
    ("b" * 64 + "  runc.amd64\n", "runc.arm64", "sha256", None),
    ("b" * 64 + "\n" + "c" * 64 + "\n", "x", "sha256", None),
    ("<html>not found</html>", "x", "sha256", None),
])
def test_published_checksum_files_are_read_in_every_format(text, name, algorithm, expected):
    assert pinning.parse_checksum_file(text, name, algorithm) == expected


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_is_a_bar_on_a_terminal_and_one_line_otherwise():
    terminal, log = _Terminal(), io.StringIO()
    for stream in (terminal, log):
        meter = download.Meter("etcd-3.5.27-amd64", stream)
        meter.update(512 * 1024, 1024 * 1024)
        meter.finish()
    assert "\retcd-3.5.27-amd64:  50% 512.0 KiB of 1.0 MiB" in terminal.getvalue()
    assert "ETA" in terminal.getvalue()
    lines = log.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("etcd-3.5.27-amd64: 512.0 KiB in ") and "verified" in lines[0]
