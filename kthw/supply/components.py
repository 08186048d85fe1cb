"""What an offline node needs from upstream: release files, what is taken out of them, images.

This is the one table of per-component facts that do not change with the pinned version
(URLs, checksums and digests live in the pins table, ``kthw/supply/data/pins.yaml``):

- which role needs the component,
- which files a release archive holds and where each goes on the node,
- where upstream publishes the checksum of a release file (for ``doit pin``),
- which registry tag an image version has.
"""

from __future__ import annotations

from dataclasses import dataclass

from kthw.roles import CONTROL_PLANE, ETCD, WORKER, Role

# The architectures a node may have (release files and images are fetched per arch), and
# what `uname -m` or an inventory may call each.
ARCHES = ("amd64", "arm64")
ARCH_ALIASES = {"amd64": "amd64", "x86_64": "amd64", "arm64": "arm64", "aarch64": "arm64"}

BIN_DIR = "/usr/local/bin"
CNI_BIN_DIR = "/opt/cni/bin"
IMAGE_DIR = "/var/lib/kthw/images"  # the node imports these with `ctr -n k8s.io images import`


@dataclass(frozen=True)
class Binary:
    """One executable taken out of a release file."""

    name: str          # file name, under vendor/bin/... and on the node
    member: str        # path inside the archive ({version} {arch} placeholders); "" = the release file itself
    install_dir: str = BIN_DIR


@dataclass(frozen=True)
class FileComponent:
    """A release file fetched by URL and verified against a pinned checksum."""

    name: str
    roles: frozenset[Role]
    binaries: tuple[Binary, ...]
    checksum_file: str  # where upstream publishes the checksum: {url} = the file's URL, {dir} = its folder
    algorithm: str      # the algorithm of that published checksum

    @property
    def is_archive(self) -> bool:
        return any(binary.member for binary in self.binaries)


@dataclass(frozen=True)
class ImageComponent:
    """A container image pulled by its multi-arch index digest."""

    name: str
    roles: frozenset[Role]
    tag: str  # the registry tag of a pinned version ({version})


def _bins(pattern: str, names: tuple[str, ...], install_dir: str = BIN_DIR) -> tuple[Binary, ...]:
    return tuple(Binary(name, pattern.format(name=name, version="{version}", arch="{arch}"), install_dir)
                 for name in names)


_CP, _ETCD, _WORKER = frozenset({CONTROL_PLANE}), frozenset({ETCD}), frozenset({WORKER})

# The two Kubernetes tarballs take the cluster's kubernetes_version; every other component
# takes the version the pins table pairs with it. Their sha512 is in the CHANGELOG and at
# the same URL + ".sha512".
FILE_COMPONENTS: tuple[FileComponent, ...] = (
    FileComponent("kubernetes-server", _CP,
                  _bins("kubernetes/server/bin/{name}",
                        ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")),
                  "{url}.sha512", "sha512"),
    FileComponent("kubernetes-node", _WORKER,
                  _bins("kubernetes/node/bin/{name}", ("kubelet", "kube-proxy", "kubectl")),
                  "{url}.sha512", "sha512"),
    FileComponent("etcd", _ETCD, _bins("etcd-v{version}-linux-{arch}/{name}", ("etcd", "etcdctl", "etcdutl")),
                  "{dir}/SHA256SUMS", "sha256"),
    FileComponent("containerd", _WORKER, _bins("bin/{name}", ("containerd", "containerd-shim-runc-v2", "ctr")),
                  "{url}.sha256sum", "sha256"),
    FileComponent("runc", _WORKER, (Binary("runc", ""),), "{dir}/runc.sha256sum", "sha256"),
    # The plugins a bridge-based pod network and the kubelet's hostPort/bandwidth features use.
    FileComponent("cni-plugins", _WORKER,
                  _bins("./{name}", ("bridge", "host-local", "loopback", "portmap", "bandwidth", "firewall"),
                        CNI_BIN_DIR),
                  "{url}.sha256", "sha256"),
    FileComponent("crictl", _WORKER, _bins("{name}", ("crictl",)), "{url}.sha256", "sha256"),
)

# CoreDNS runs as pods on the workers, so both images go to workers only.
IMAGE_COMPONENTS: tuple[ImageComponent, ...] = (
    ImageComponent("pause", _WORKER, "{version}"),
    ImageComponent("coredns", _WORKER, "v{version}"),
)

KUBERNETES_FILES = ("kubernetes-server", "kubernetes-node")
FILES = {component.name: component for component in FILE_COMPONENTS}
IMAGES = {component.name: component for component in IMAGE_COMPONENTS}
ALL_NAMES = tuple(FILES) + tuple(IMAGES)
# What a `releases` entry of the pins table names for each Kubernetes version.
RELEASE_KEYS = tuple(name for name in ALL_NAMES if name not in KUBERNETES_FILES)
