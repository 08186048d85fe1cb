"""Every version-dependent choice of the rendered configs, in one table.

Three keys decide what a node's files may say:

* the Kubernetes minor of the inventory (``KUBERNETES``): config apiVersions, where a
  setting lives (flag or KubeletConfiguration field), and which command-line flags
  each binary of that minor accepts (``FLAGS``);
* the pinned etcd minor (``ETCD``): etcd renamed its experimental flags in 3.6 and
  removed the old names in 3.7;
* the pinned containerd line (``CONTAINERD``): containerd 2.x reads config version 3
  with new plugin IDs; 1.7 reads version 2.

A binary stops at the first flag it does not know, so every flag a unit passes is
checked against ``FLAGS`` for the node's minor before the unit is written
(:func:`check_flags`). A minor, etcd or containerd version outside these tables is an
error naming the supported ones.

Sources are named next to each entry: ``CHANGELOG-1.NN`` is kubernetes/kubernetes
CHANGELOG/CHANGELOG-1.NN.md ("Urgent Upgrade Notes", "Deprecation" and "Other
(Cleanup)" sections, where removals are announced), ``ref/<binary>`` is the generated
flag reference kubernetes/website content/en/docs/reference/command-line-tools-reference/
<binary>.md, ``config-api/<file>`` is content/en/docs/reference/config-api/<file>.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from kthw.errors import KthwError

Minor = tuple[int, int]

_VERSION = re.compile(r"^(v?)(\d+)\.(\d+)(?:\.(\d+))?$")


class VersionError(KthwError):
    """Text that is not a version: ``problem`` says so, ``fix`` what to write instead."""

    def __init__(self, text: object, patch: bool, leading_v: bool, example: str):
        self.problem = f"'{text}' is not a version"
        form = "MAJOR.MINOR.PATCH" if patch else "MAJOR.MINOR or MAJOR.MINOR.PATCH"
        self.fix = f"write {form}{'' if leading_v else ' (no leading v)'}, e.g. {example}"
        super().__init__(f"{self.problem}; {self.fix}")


@dataclass(frozen=True, order=True)
class Version:
    """A release version, compared by its numbers: 1.9.0 sorts before 1.10.0."""

    numbers: tuple[int, ...]
    text: str = field(compare=False)  # as written, less a leading "v"

    @classmethod
    def parse(cls, text: str, *, patch: bool = False, leading_v: bool = True, example: str = "1.34.2") -> Version:
        """``patch``: the patch number is required; ``leading_v``: "v1.34.2" is accepted."""
        match = _VERSION.match(text) if isinstance(text, str) else None
        if not match or (patch and match.group(4) is None) or (match.group(1) and not leading_v):
            raise VersionError(text, patch, leading_v, example)
        digits = [part for part in match.groups()[1:] if part is not None]
        return cls(tuple(int(part) for part in digits), ".".join(digits))

    def __str__(self) -> str:
        return self.text

    @property
    def minor(self) -> Minor:
        return self.numbers[0], self.numbers[1]


def minor_of(version: str) -> Minor:
    """(1, 34) from "1.34.2", "v1.34" or "1.34"; a VersionError for anything else."""
    return Version.parse(str(version).strip()).minor


def version_key(version: str) -> Version:
    """Sorts version strings numerically: 1.9.0 before 1.10.0."""
    return Version.parse(version)


def _text(minor: Minor) -> str:
    return f"{minor[0]}.{minor[1]}"


# --- Kubernetes ---------------------------------------------------------------


@dataclass(frozen=True)
class KubernetesRelease:
    """What one Kubernetes minor expects in the files the render stage writes."""

    minor: Minor
    # config-api/kubelet-config.v1beta1: the only served version of KubeletConfiguration.
    kubelet_config_api: str
    # config-api/kube-scheduler-config.v1: v1 since 1.25, v1beta3 removed in 1.29 (CHANGELOG-1.29).
    scheduler_config_api: str
    # config-api/kube-proxy-config.v1alpha1: still the only version; the v1alpha2 proposal
    # (kubernetes PR #121830) closed unmerged, KEP-784 postponed.
    proxy_config_api: str
    # config-api/apiserver-audit.v1: audit.k8s.io/v1 since 1.12.
    audit_policy_api: str
    # KubeletConfiguration.containerRuntimeEndpoint since 1.27 (CHANGELOG-1.27); the flag
    # --container-runtime-endpoint is deprecated in its favour (ref/kubelet).
    runtime_endpoint_in_config: bool
    # KubeletConfiguration.failCgroupV1 exists since 1.31 (KEP-4569). Written explicitly
    # with the upstream default of the minor: false until 1.34, true from 1.35
    # (CHANGELOG-1.35, #134298: "failCgroupV1 will be set to true from 1.35").
    fail_cgroup_v1: bool
    # containerd lines the kubelet works with. containerd 1.7 lacks the RuntimeConfig CRI
    # call; the kubelet falls back to its cgroupDriver setting, and removing that fallback
    # was deferred to 1.38 "to align with containerd v1.7 support" (CHANGELOG-1.37,
    # #139121). containerd's RELEASES.md "Kubernetes Support": 1.32-1.33 with 1.7.24+, 2.0+.
    containerd_lines: tuple[str, ...]

    @property
    def name(self) -> str:
        return _text(self.minor)


def _k8s(minor: int, *, fail_cgroup_v1: bool) -> KubernetesRelease:
    return KubernetesRelease(
        minor=(1, minor),
        kubelet_config_api="kubelet.config.k8s.io/v1beta1",
        scheduler_config_api="kubescheduler.config.k8s.io/v1",
        proxy_config_api="kubeproxy.config.k8s.io/v1alpha1",
        audit_policy_api="audit.k8s.io/v1",
        runtime_endpoint_in_config=True,
        fail_cgroup_v1=fail_cgroup_v1,
        containerd_lines=("1.7", "2"),
    )


# One row per supported minor: 1.32 (air-gapped sites lag behind) to the newest stable.
KUBERNETES: dict[Minor, KubernetesRelease] = {
    (1, 32): _k8s(32, fail_cgroup_v1=False),
    (1, 33): _k8s(33, fail_cgroup_v1=False),
    (1, 34): _k8s(34, fail_cgroup_v1=False),
    (1, 35): _k8s(35, fail_cgroup_v1=True),
    (1, 36): _k8s(36, fail_cgroup_v1=True),
    (1, 37): _k8s(37, fail_cgroup_v1=True),
}


def supported_minors() -> str:
    return ", ".join(_text(m) for m in sorted(KUBERNETES))


def kubernetes_release(version: str) -> KubernetesRelease:
    minor = minor_of(version)
    try:
        return KUBERNETES[minor]
    except KeyError:
        raise KthwError(f"kubernetes_version {version}: Kubernetes {_text(minor)} is not supported by the "
                        f"render stage; supported minors: {supported_minors()}. Set kubernetes_version in the "
                        "inventory to a release of one of them") from None


# --- command-line flags ---------------------------------------------------------

OPEN = (99, 99)


@dataclass(frozen=True)
class Span:
    """The minors (inclusive) in which a binary accepts a flag."""

    first: Minor
    last: Minor = OPEN

    def __contains__(self, minor: Minor) -> bool:
        return self.first <= minor <= self.last


# There long before 1.32 (ref/<binary>) and not removed since: no removal of these in the
# urgent-upgrade, deprecation and cleanup notes of CHANGELOG-1.32 to CHANGELOG-1.36 and of
# the 1.37 pre-release notes (the stored CHANGELOG-1.37 stops there).
_OLD = Span((1, 0))

# Every flag the templates pass, per binary, with the minors that accept it. Flags known
# to be gone are listed too, so that a template that brings one back fails its render.
FLAGS: dict[str, dict[str, Span]] = {
    "kube-apiserver": {
        **{flag: _OLD for flag in (
            "--advertise-address", "--allow-privileged", "--audit-log-maxage", "--audit-log-maxbackup",
            "--audit-log-maxsize", "--audit-log-path", "--audit-policy-file", "--authorization-mode",
            "--client-ca-file", "--enable-admission-plugins", "--enable-bootstrap-token-auth",
            "--encryption-provider-config", "--etcd-cafile", "--etcd-certfile", "--etcd-keyfile",
            "--etcd-servers", "--kubelet-certificate-authority", "--kubelet-client-certificate",
            "--kubelet-client-key", "--kubelet-preferred-address-types", "--proxy-client-cert-file",
            "--proxy-client-key-file", "--requestheader-allowed-names", "--requestheader-client-ca-file",
            "--requestheader-extra-headers-prefix", "--requestheader-group-headers",
            "--requestheader-username-headers", "--secure-port", "--service-account-issuer",
            "--service-account-key-file", "--service-account-signing-key-file", "--service-cluster-ip-range",
            "--tls-cert-file", "--tls-private-key-file", "--v")},
        # New in 1.32: the front proxy may pass the user's UID (CHANGELOG-1.32, #115834,
        # suggested value X-Remote-Uid).
        "--requestheader-uid-headers": Span((1, 32)),
        # Removed in 1.24 (insecure serving).
        "--insecure-port": Span((1, 0), (1, 23)),
    },
    "kube-controller-manager": {
        **{flag: _OLD for flag in (
            "--allocate-node-cidrs", "--authentication-kubeconfig", "--authorization-kubeconfig",
            "--bind-address", "--client-ca-file", "--cluster-cidr", "--cluster-name", "--cluster-signing-cert-file",
            "--cluster-signing-key-file", "--controllers", "--kubeconfig", "--leader-elect",
            "--requestheader-client-ca-file", "--root-ca-file", "--service-account-private-key-file",
            "--service-cluster-ip-range", "--use-service-account-credentials", "--v")},
        # --cluster-signing-duration since 1.19; the experimental name is gone in 1.25 (CHANGELOG-1.25).
        "--cluster-signing-duration": Span((1, 19)),
        "--experimental-cluster-signing-duration": Span((1, 0), (1, 24)),
        # No-op since 1.31, removed in 1.37 (CHANGELOG-1.37, #138002).
        "--concurrent-service-syncs": Span((1, 0), (1, 36)),
    },
    "kube-scheduler": {
        # With --config, the scheduler's own settings come from the file; only serving and
        # delegated-auth flags stay on the command line (ref/kube-scheduler).
        **{flag: _OLD for flag in (
            "--authentication-kubeconfig", "--authorization-kubeconfig", "--bind-address", "--config", "--v")},
    },
    "kubelet": {
        **{flag: _OLD for flag in (
            "--bootstrap-kubeconfig", "--cert-dir", "--config", "--hostname-override", "--kubeconfig",
            "--node-ip", "--v")},
        # Deprecated in favour of KubeletConfiguration.containerRuntimeEndpoint (1.27+), still
        # accepted (ref/kubelet); passed only where the table says the field is missing.
        "--container-runtime-endpoint": _OLD,
        # Removed in 1.35: "users must manually remove this flag ... to prevent startup
        # failures" (CHANGELOG-1.35, #133779). containerd names the sandbox image instead.
        "--pod-infra-container-image": Span((1, 0), (1, 34)),
        # Removed in 1.34 (CHANGELOG-1.34, #130161).
        "--cloud-config": Span((1, 0), (1, 33)),
        # Gone with dockershim: 1.24 and 1.27 (CHANGELOG-1.24, CHANGELOG-1.27).
        "--network-plugin": Span((1, 0), (1, 23)),
        "--container-runtime": Span((1, 0), (1, 26)),
    },
    "kube-proxy": {
        **{flag: _OLD for flag in ("--config", "--v")},
    },
}


def check_flags(binary: str, flags: list[str], release: KubernetesRelease) -> None:
    """Refuse to write a unit whose command line the binary of this minor would reject."""
    known = FLAGS[binary]
    for flag in flags:
        span = known.get(flag)
        if span is None or release.minor not in span:
            raise KthwError(f"{binary} {release.name} does not accept {flag} (see kthw/versions.py FLAGS); "
                            "the template that passes it must not be used with this version")


# --- etcd ------------------------------------------------------------------------


@dataclass(frozen=True)
class EtcdLine:
    """Flags whose spelling depends on the etcd minor."""

    minor: Minor
    # Check member data for corruption before serving (kubeadm passes it since 1.24, #109074)
    # and send watch progress notifications every 5s (the API server's watch cache needs
    # them; kubeadm #111383). Their names changed in 3.6 (kubernetes PR #132838: the
    # experimental flags were deprecated in etcd 3.6.0 and removed in 3.7.0, etcd PR #19959;
    # the corrupt check became feature gate InitialCorruptCheck, etcd PR #18478).
    extra_flags: tuple[tuple[str, str], ...]


_ETCD_35 = (("--experimental-initial-corrupt-check", "true"),
            ("--experimental-watch-progress-notify-interval", "5s"))
_ETCD_36 = (("--feature-gates", "InitialCorruptCheck=true"),
            ("--watch-progress-notify-interval", "5s"))

ETCD: dict[Minor, EtcdLine] = {
    (3, 5): EtcdLine((3, 5), _ETCD_35),
    (3, 6): EtcdLine((3, 6), _ETCD_36),
    (3, 7): EtcdLine((3, 7), _ETCD_36),
}


def etcd_line(version: str) -> EtcdLine:
    minor = minor_of(version)
    try:
        return ETCD[minor]
    except KeyError:
        raise KthwError(f"etcd {version} is not supported by the render stage; supported: "
                        f"{', '.join(_text(m) for m in sorted(ETCD))}. Pin one of them in the pins table") from None


# --- containerd ------------------------------------------------------------------


@dataclass(frozen=True)
class ContainerdLine:
    """The config.toml dialect of one containerd line (containerd docs/cri/config.md)."""

    line: str
    config_version: int
    # Plugin table holding the runc runtime (and its options).
    runtime_plugin: str
    # Where the sandbox (pause) image is named: 1.x `sandbox_image` in the CRI plugin,
    # 2.x `pinned_images.sandbox` in the images plugin.
    sandbox_table: str
    sandbox_key: str


CONTAINERD: dict[str, ContainerdLine] = {
    "1.7": ContainerdLine("1.7", 2, '"io.containerd.grpc.v1.cri".containerd',
                          '"io.containerd.grpc.v1.cri"', "sandbox_image"),
    "2": ContainerdLine("2", 3, "'io.containerd.cri.v1.runtime'.containerd",
                        "'io.containerd.cri.v1.images'.pinned_images", "sandbox"),
}


def containerd_line(version: str, release: KubernetesRelease) -> ContainerdLine:
    major, minor = minor_of(version)
    line = "2" if major == 2 else _text((major, minor))
    if line not in CONTAINERD or line not in release.containerd_lines:
        raise KthwError(f"containerd {version} is not supported with Kubernetes {release.name}; supported: "
                        f"{', '.join(name + ('.x' if name == '2' else '') for name in release.containerd_lines)}. "
                        "Pin one of them in the pins table")
    return CONTAINERD[line]
