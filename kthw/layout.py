"""Where every output lives on the workstation.

    build/pki/ca/<ca>.crt|.key           the CA hierarchy (precious keys)
    build/pki/nodes/<node>/<cert>.crt|.key  every leaf, as issued (precious keys)
    build/nodes/<node>/...               the node's filesystem as it will be installed
                                         (derived: copies, kubeconfigs, configs, units)
    vendor/                              downloaded release files and images
    bundles/<node>.tar.gz                what goes on the USB stick

Only ``build/nodes`` and ``bundles`` are derived; ``doit clean`` never touches ``build/pki``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path, PurePosixPath


@dataclass(frozen=True)
class KeyPairPaths:
    """A cert file and its key file."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class Layout:
    """Where the build's files go, under ``root``."""

    root: Path

    # Cached: a 200-node graph asks for these paths tens of thousands of times while loading.
    @functools.cached_property
    def build(self) -> Path:
        return self.root / "build"

    @functools.cached_property
    def pki(self) -> Path:
        return self.build / "pki"

    @property
    def vendor(self) -> Path:
        return self.root / "vendor"

    @property
    def bundles(self) -> Path:
        return self.root / "bundles"

    @property
    def state(self) -> Path:
        """Precious non-cert state (secrets stage): never cleaned."""
        return self.build / "state"

    @functools.cached_property
    def _ca_dir(self) -> Path:
        return self.pki / "ca"

    @functools.cached_property
    def _nodes_dir(self) -> Path:
        return self.build / "nodes"

    # Paths asked for again and again while the tasks are made and checked (each CA once per
    # leaf, each node root once per node file): each is made once per run.
    @functools.cached_property
    def _cas(self) -> dict[str, KeyPairPaths]:
        return {}

    @functools.cached_property
    def _node_roots(self) -> dict[str, Path]:
        return {}

    def ca(self, name: str) -> KeyPairPaths:
        if name not in self._cas:
            self._cas[name] = KeyPairPaths(self._ca_dir / f"{name}.crt", self._ca_dir / f"{name}.key")
        return self._cas[name]

    def leaf(self, node: str, cert: str) -> KeyPairPaths:
        directory = self.pki / "nodes" / node
        return KeyPairPaths(directory / f"{cert}.crt", directory / f"{cert}.key")

    def node_root(self, node: str) -> Path:
        if node not in self._node_roots:
            self._node_roots[node] = self._nodes_dir / node
        return self._node_roots[node]

    def on_node(self, node: str, path: str | PurePosixPath) -> Path:
        """The workstation file that becomes ``path`` (absolute, as on the node) on ``node``."""
        return self.node_root(node) / str(path).lstrip("/")
