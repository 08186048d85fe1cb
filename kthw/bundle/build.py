"""Bundle stage: one signed, reproducible tarball per node, with a verifying installer.

    bundles/<node>.tar.gz
      kthw-bundle/install.sh         the installer (kthw/templates/bundle/install.sh.j2): the same for
                                     every node, also installed as /usr/local/sbin/kthw-install
      kthw-bundle/README             what the operator does on the node
      kthw-bundle/MANIFEST           the node, its serial, services and images, and the mode,
                                     sha256 and path of every file (and key directory)
      kthw-bundle/MANIFEST.sig       Ed25519 signature of MANIFEST (kthw.bundle.signing)
      kthw-bundle/KEY-ENDORSEMENTS   only after a signing-key replacement: old keys vouching for new
      kthw-bundle/files/<node path>  every file, laid out as on the node

No public key travels in a bundle: the verifier builds the key from the fingerprint the
operator carries, or from the key an earlier installation pinned on the node.

A node's files are its tree ``build/nodes/<node>/`` (pki, secrets, render stages), the
installer, and the vendored binaries and image archives its arch and roles need
(:func:`vendored_files`).

Serial: every MANIFEST carries a per-node serial, raised whenever the MANIFEST's content
changes (kept in ``build/state/bundle-serials/<node>``), so a node refuses an older bundle.

Speed: the vendored files are the bulk of a bundle and the same for every node of one
arch and role set, so they are compressed once into a deflate part kept in
``build/bundle-cache/`` (with its CRC and the sha256 of each file). A node's bundle is a
gzip header, that part copied byte for byte, a small part with the node's own files and
the end-of-archive blocks, and the gzip trailer: one ordinary gzip member (kthw.bundle.tarball).
The cache entry is reused while every source file keeps its size and mtime.

Reproducible: entries sorted by name, uid/gid 0, no names, mtime = $SOURCE_DATE_EPOCH
or, when unset, 2000-01-01T00:00:00Z (:data:`DEFAULT_EPOCH`), gzip headers with mtime 0.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from kthw import templating
from kthw.bundle import signing as bundle_signing
from kthw.bundle import tarball
from kthw.errors import KthwError
from kthw.fsutil import SECRET_MODE, atomic_file, atomic_write
from kthw.inventory import Inventory, Node, url_host
from kthw.layout import Layout
from kthw.pki import catalogue
from kthw.pki.node_paths import ETCD_CLIENT_PORT, PATHS, UNIT_DIR, VERSIONS_FILE
from kthw.render import membership
from kthw.render.node_files import NodeFile
from kthw.secrets import files as secret_files
from kthw.secrets.state import state_of
from kthw.supply.components import ARCH_ALIASES
from kthw.vendor import fetch as vendor

if TYPE_CHECKING:
    import tarfile

TOP = "kthw-bundle"
FILES = "files"
MANIFEST = "MANIFEST"
SIGNATURE = "MANIFEST.sig"
ENDORSEMENTS = "KEY-ENDORSEMENTS"
INSTALL = "install.sh"
README = "README"
MANIFEST_FORMAT = "kthw-airgap bundle manifest 2"
DIRECTORY = "dir"  # the sha256 column of a directory line
# On the node: the installed installer, the installation record, the backups.
INSTALLER = "/usr/local/sbin/kthw-install"
STATE_DIR = "/var/lib/kthw"
BACKUP_DIR = "/var/backups/kthw"
# Everything a bundle installs lies in one of these directories (or is one of these files);
# install.sh never writes, moves or removes a managed file anywhere else.
MANAGED_DIRS = ("/etc/k8s", "/etc/systemd/system", "/etc/cni/net.d", "/etc/sysctl.d", "/etc/modules-load.d",
                "/usr/local/bin", "/usr/local/sbin", "/opt/cni/bin", f"{STATE_DIR}/images")
MANAGED_FILES = ("/etc/crictl.yaml",)

SOURCE_DATE_EPOCH = "SOURCE_DATE_EPOCH"
DEFAULT_EPOCH = 946684800  # 2000-01-01T00:00:00Z: any fixed date; 0 makes GNU tar warn on unpacking
INSTALL_TEMPLATE = "bundle/install.sh.j2"
README_TEMPLATE = "bundle/README.j2"
TEMPLATES = (INSTALL_TEMPLATE, README_TEMPLATE)

# Node paths install.sh handles: no spaces, quotes or globs, no "." or ".." components.
_SAFE_PATH = re.compile(r"^(/[A-Za-z0-9@+_-][A-Za-z0-9._@+-]*)+$")
_PATH_IN_TEXT = re.compile(r"/[A-Za-z0-9._@+/-]+")
_PRIVATE_KEY_MARKERS = (b"PRIVATE KEY-----", b"client-key-data:")
# How an operator checks an unpacked bundle without install.sh (MANIFEST header, README).
CHECK_FILES = (f"grep -v '^#' {MANIFEST} | awk '$2 != \"{DIRECTORY}\" {{print $2 \"  \" ($3 ~ /^\\// ? "
               f"\"{FILES}\" $3 : $3)}}' | sha256sum -c")


@dataclass(frozen=True)
class Placed:
    """A file of the bundle: ``path`` on the node, read from ``source`` on the workstation."""

    path: str
    source: Path
    mode: int


@dataclass(frozen=True)
class Vendored:
    """The vendored files of a node's bundle, and the image archives among them."""

    files: tuple[Placed, ...]
    # node path of an image archive, the image name it holds, and its name by digest
    images: tuple[tuple[str, str, str], ...]


@dataclass(frozen=True)
class BundleSpec:
    """Everything :func:`build` needs for one node; plain data, so doit can pickle it."""

    node: str
    arch: str
    roles: tuple[str, ...]
    node_ip: str
    tree: Path                       # build/nodes/<node>
    expected: frozenset[str] | None  # node paths some stage produces; None: take the tree as it is
    vendored: Vendored
    output: Path
    cache: Path
    signing_key: Path
    endorsements: Path               # build/state/bundle-signing.endorsements (may be missing)
    serial: Path                     # build/state/bundle-serials/<node>
    epoch: int
    templates: Path | None = None    # None: the package's templates


# --- inputs ---------------------------------------------------------------------------------


def vendored_files(node: Node, inv: Inventory, layout: Layout, items: tuple | None = None) -> Vendored:
    """The vendored files the node's arch and roles need (the vendor stage's :func:`vendor.needs`),
    and for each image archive the image name it holds. ``items``: the inventory's
    :func:`vendor.plan`, when the caller bundles many nodes."""
    if items is None:
        items = vendor.plan(inv, vendor.load_pins(inv), layout)
    needs = vendor.needs(node, inv, layout, items=items)
    image_names = {item.path: (item.reference, item.by_digest) for item in items if item.is_image}
    files = tuple(sorted((Placed(f.install_as, Path(f.source), f.mode) for f in needs), key=lambda p: p.path))
    images = tuple((p.path, *image_names[p.source]) for p in files if p.source in image_names)
    return Vendored(files, images)


def expected_files(inv: Inventory, layout: Layout, node: Node, rendered: tuple[NodeFile, ...] | None) -> frozenset[str]:
    """Every node path the stages write into ``node``'s tree: its certs, keys and kubeconfigs
    (pki), its secret files (secrets) and ``rendered``, its part of the render plan (None when
    the plan cannot be made: no rendered file is expected then)."""
    return frozenset(catalogue.node_files(inv, node) + secret_files.node_files(inv, node, state_of(layout))
                     + [nf.path for nf in rendered or ()])


def missing_vendored(vendored: Vendored) -> list[Path]:
    return [placed.source for placed in vendored.files if not placed.source.is_file()]


def source_date_epoch(environ: dict | None = None) -> int:
    """The mtime of every entry: $SOURCE_DATE_EPOCH (reproducible-builds.org), else a fixed date."""
    text = (os.environ if environ is None else environ).get(SOURCE_DATE_EPOCH, "").strip()
    if not text:
        return DEFAULT_EPOCH
    if not text.isdigit() or int(text) >= 8 ** 11:  # a tar header holds 11 octal digits
        raise KthwError(f"{SOURCE_DATE_EPOCH}={text!r} is not a number of seconds since 1970; set it to "
                        "e.g. the last commit's time (`git log -1 --format=%ct`) or unset it")
    return int(text)


def spec_for(layout: Layout, node: Node, vendored: Vendored, expected: frozenset[str] | None = None,
             epoch: int = DEFAULT_EPOCH, templates: Path | None = None) -> BundleSpec:
    return BundleSpec(node=node.name, arch=node.arch, roles=tuple(sorted(node.roles)), node_ip=str(node.ip),
                      tree=layout.node_root(node.name), expected=expected, vendored=vendored,
                      output=layout.bundles / f"{node.name}.tar.gz", cache=cache_dir(layout),
                      signing_key=bundle_signing.key_path(layout.state),
                      endorsements=bundle_signing.endorsements_path(layout.state),
                      serial=layout.state / "bundle-serials" / node.name, epoch=epoch, templates=templates)


def cache_dir(layout: Layout) -> Path:
    return layout.build / "bundle-cache"


def cache_files(spec: BundleSpec) -> tuple[Path, Path]:
    """The cached deflate part of the node's vendored files, and its index (JSON)."""
    name = f"{spec.arch}-{'+'.join(spec.roles)}"
    return spec.cache / f"{name}.deflate", spec.cache / f"{name}.json"


def bundle_mode(mode: int, data: bytes | None = None) -> int:
    """The mode a file gets on the node: private (0600, 0700 if executable) when the stage
    that wrote it made it unreadable to others or it holds a private key; else 0644/0755."""
    executable = bool(mode & 0o100)
    secret = not mode & 0o077 or (data is not None and any(m in data for m in _PRIVATE_KEY_MARKERS))
    if secret:
        return 0o700 if executable else SECRET_MODE
    return 0o755 if executable else 0o644


def _tree(tree: Path) -> dict[str, Path]:
    """Node path -> workstation file, for everything in a node's tree but directories and
    the temp files of a write in progress (fsutil.atomic_write: never a node file), in the
    order of their paths' parts. With os.scandir: Path.rglob was a tenth of a 100-node no-op."""
    found: list[tuple[str, ...]] = []

    def walk(directory: str, parts: tuple[str, ...]) -> None:
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    here = (*parts, entry.name)
                    if entry.is_dir() and not entry.is_symlink():
                        walk(entry.path, here)
                    elif not (entry.name.startswith(".") and entry.name.endswith(".tmp")):
                        found.append(here)
        except PermissionError:
            pass  # as rglob: an unreadable directory shows nothing

    if tree.is_dir():
        walk(str(tree), ())
    return {"/" + "/".join(parts): tree.joinpath(*parts) for parts in sorted(found)}


def tree_files(spec: BundleSpec) -> list[tuple[str, bytes, int]]:
    """Every file of the node's tree: (node path, bytes, mode on the node), sorted."""
    if not spec.tree.is_dir():
        raise KthwError(f"{spec.tree}: the node's files are missing; run `doit pki secrets render` (or plain "
                        "`doit`) first")
    found = []
    for node_path, path in _tree(spec.tree).items():
        if path.is_symlink() or not path.is_file():
            raise KthwError(f"{path}: not a regular file; the node tree holds only files written by the stages. "
                            "Remove it and run `doit` again")
        if spec.expected is not None and node_path not in spec.expected:
            raise KthwError(f"{path}: no stage produces this file (left from an earlier build?), so it is not "
                            "packed into the bundle unseen; delete it and run `doit bundle` again")
        _check_path(node_path, path)
        data = path.read_bytes()
        found.append((node_path, data, bundle_mode(path.stat().st_mode & 0o777, data)))
    if not found:
        raise KthwError(f"{spec.tree}: the node's tree is empty; run `doit` first")
    return found


def tree_is_as_planned(spec: BundleSpec) -> bool:
    """The node's tree holds exactly the files the stages produce (an uptodate check: a stray
    file makes the task run, and fail, rather than leave a bundle that ignores it)."""
    return spec.expected is None or set(_tree(spec.tree)) == spec.expected


def _check_path(node_path: str, where) -> None:
    if not _SAFE_PATH.match(node_path):
        raise KthwError(f"{where}: the node path {node_path} has characters install.sh does not handle "
                        "(only letters, digits and . _ - @ + are allowed)")


# --- services -------------------------------------------------------------------------------


def _unit_words(text: str, keys: tuple[str, ...]) -> list[str]:
    words = []
    for line in text.replace("\\\n", " ").splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() in keys:
            words += value.split()
    return words


def service_order(units: dict[str, str]) -> list[str]:
    """Unit names (without .service) in an order that starts each after what its After=,
    Wants=, Requires= and BindsTo= lines name (and before what Before= names); ties by name."""
    after: dict[str, set[str]] = {name: set() for name in units}
    for name, text in units.items():
        for word in _unit_words(text, ("After", "Wants", "Requires", "BindsTo")):
            other = word.removesuffix(".service")
            if word.endswith(".service") and other in units and other != name:
                after[name].add(other)
        for word in _unit_words(text, ("Before",)):
            other = word.removesuffix(".service")
            if word.endswith(".service") and other in units and other != name:
                after[other].add(name)
    order: list[str] = []
    while len(order) < len(units):
        ready = sorted(name for name in units if name not in order and after[name] <= set(order))
        if not ready:
            stuck = sorted(name for name in units if name not in order)
            raise KthwError(f"the units {', '.join(stuck)} order themselves after each other (After=/Wants= form "
                            "a cycle); fix their templates")
        order.append(ready[0])
    return order


def service_files(units: dict[str, str], texts: dict[str, bytes], installed: set[str]) -> dict[str, list[str]]:
    """For each unit: the installed files it reads, i.e. its unit file, every installed path its
    text names, and every installed path named by those files in turn (a config naming certs).
    A change to any of them means the service must be restarted."""
    result = {}
    for name, text in units.items():
        seen = {f"{UNIT_DIR}/{name}.service"}
        todo = [text]
        while todo:
            for found in _PATH_IN_TEXT.findall(todo.pop()):
                if found in installed and found not in seen:
                    seen.add(found)
                    if found in texts:
                        todo.append(texts[found].decode("utf-8", "replace"))
        result[name] = sorted(seen)
    return result


def units_of(files: list[tuple[str, bytes, int]]) -> dict[str, str]:
    units = {}
    for node_path, data, _ in files:
        parent, name = node_path.rsplit("/", 1)
        if parent == UNIT_DIR and name.endswith(".service"):
            units[name.removesuffix(".service")] = data.decode("utf-8", "replace")
    return units


# --- the MANIFEST ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ManifestLine:
    """One line of a bundle's MANIFEST."""

    mode: int
    sha256: str   # DIRECTORY for a directory
    path: str     # "/..." = installed there from files/...; otherwise a file of the bundle itself

    @property
    def member(self) -> str:
        """Where the file is in the unpacked bundle."""
        return f"{FILES}{self.path}" if self.path.startswith("/") else self.path

    def text(self) -> str:
        return f"{self.mode:04o} {self.sha256} {self.path}"


def key_directories(lines: list[ManifestLine]) -> list[str]:
    """Directories that hold a private file: install.sh makes them 0700."""
    return sorted({str(PurePosixPath(line.path).parent) for line in lines
                   if line.path.startswith("/") and not line.mode & 0o077})


@dataclass(frozen=True)
class NodePlan:
    """What the installer needs to know of the node besides its files; signed in the MANIFEST."""

    node: str
    arch: str
    roles: tuple[str, ...]
    machines: tuple[str, ...]                        # what `uname -m` may say
    services: tuple[tuple[str, tuple[str, ...]], ...]  # start order; each with the files it reads
    images: tuple[tuple[str, str, str], ...]          # image archive, the image it holds, its digest name
    etcd_endpoint: str | None                         # the local member's client URL


def manifest_text(plan: NodePlan, lines: list[ManifestLine], serial: int) -> bytes:
    head = [f"# {MANIFEST_FORMAT}",
            f"# node {plan.node} arch {plan.arch} roles {','.join(plan.roles)}",
            f"# serial {serial}",
            f"# machines {' '.join(plan.machines)}"]
    head += [f"# service {name} {' '.join(files)}" for name, files in plan.services]
    head += [f"# image {path} {name} {by_digest}" for path, name, by_digest in plan.images]
    if plan.etcd_endpoint:
        head.append(f"# etcd {plan.etcd_endpoint}")
    head += ["# <mode> <sha256> <path>: a path starting with / is installed there from files/<path>;",
             f"# '{DIRECTORY}' lines are directories install.sh creates (or sets) with that mode.",
             f"# Check by hand: {CHECK_FILES}"]
    dirs = [ManifestLine(0o700, DIRECTORY, path) for path in key_directories(lines)]
    body = sorted(lines + dirs, key=lambda line: (line.path.startswith("/"), line.path))
    return ("\n".join(head + [line.text() for line in body]) + "\n").encode()


def parse_manifest(text: str) -> tuple[dict[str, str], list[ManifestLine]]:
    """The single-valued header fields (node, arch, roles, serial) and the lines of a MANIFEST."""
    rows = text.splitlines()
    if not rows or rows[0] != f"# {MANIFEST_FORMAT}":
        raise KthwError(f"MANIFEST: not a kthw-airgap bundle manifest (first line: {rows[0] if rows else ''!r})")
    words = rows[1].lstrip("# ").split() if len(rows) > 1 else []
    header = dict(zip(words[::2], words[1::2], strict=False))  # an odd last word has no value
    lines = []
    for number, row in enumerate(rows[1:], start=2):
        if row.startswith("# serial "):
            header["serial"] = row.split()[2]
        if row.startswith("#") or not row.strip():
            continue
        parts = row.split(" ")
        if len(parts) != 3 or not re.fullmatch(r"0[0-7]{3}", parts[0]) or not (
                parts[1] == DIRECTORY or re.fullmatch(r"[0-9a-f]{64}", parts[1])):
            raise KthwError(f"MANIFEST line {number}: expected '<mode> <sha256> <path>', got {row!r}")
        lines.append(ManifestLine(int(parts[0], 8), parts[1], parts[2]))
    return header, lines


def is_managed(node_path: str) -> bool:
    return node_path in MANAGED_FILES or any(node_path.startswith(d + "/") for d in MANAGED_DIRS)


def next_serial(record: Path, body_sha256: str) -> int:
    """The serial of a MANIFEST whose content (serial aside) hashes to ``body_sha256``: the
    recorded one when the content is the same as last time, else one more. Recorded before
    the bundle is written, so two different bundles of a node never share a serial."""
    serial, recorded = 0, ""
    try:
        words = record.read_text().split()
        serial, recorded = int(words[1]), words[3]
    except FileNotFoundError:
        pass
    except (OSError, ValueError, IndexError):
        raise KthwError(f"{record}: not a bundle serial record ('serial <n> manifest-sha256 <hex>'); restore it "
                        "from a backup, or write the serial of the node's last bundle (`# serial` in its "
                        "MANIFEST) as 'serial <n> manifest-sha256 -'") from None
    if recorded != body_sha256:
        serial += 1
        atomic_write(record, f"serial {serial} manifest-sha256 {body_sha256}\n".encode())
    return serial


# --- templates ----------------------------------------------------------------------------------


def template_paths(templates: Path | None = None) -> list[Path]:
    return [path for name in TEMPLATES for path in templating.files(name, templates, comments=False)]


def _render(templates: Path | None, name: str, **context) -> bytes:
    # Bash is full of "${#array[@]}": no Jinja comments, so "{#" stays text.
    return templating.render(name, context, templates, comments=False).encode()


def machines_of(arch: str) -> list[str]:
    """What `uname -m` says on a machine of this arch."""
    return sorted(name for name, canon in ARCH_ALIASES.items() if canon == arch)


def node_plan(spec: BundleSpec, files: list[tuple[str, bytes, int]], installed: set[str]) -> NodePlan:
    units = units_of(files)
    texts = {path: data for path, data, _ in files}
    reads = service_files(units, texts, installed)
    return NodePlan(node=spec.node, arch=spec.arch, roles=spec.roles, machines=tuple(machines_of(spec.arch)),
                    services=tuple((name, tuple(reads[name])) for name in service_order(units)),
                    images=spec.vendored.images,
                    etcd_endpoint=f"https://{url_host(spec.node_ip)}:{ETCD_CLIENT_PORT}" if "etcd" in units else None)


def _installer_context() -> dict:
    """The installer's constants: the same for every node (what differs is in the MANIFEST)."""
    return {"manifest_format": MANIFEST_FORMAT, "directory": DIRECTORY, "unit_dir": UNIT_DIR, "top": TOP,
            "files": FILES, "manifest": MANIFEST, "signature": SIGNATURE, "endorsements": ENDORSEMENTS,
            "install": INSTALL, "readme": README, "installer": INSTALLER, "state_dir": STATE_DIR,
            "backup_dir": BACKUP_DIR, "managed_dirs": MANAGED_DIRS, "managed_files": MANAGED_FILES,
            "ctr": f"{PATHS['bin']}/ctr", "etcdctl": f"{PATHS['bin']}/etcdctl", "etcd_ca": PATHS["etcd_ca"],
            "etcd_cert": PATHS["etcd_healthcheck_client_cert"], "etcd_key": PATHS["etcd_healthcheck_client_key"],
            "api_hosts": PATHS["api_hosts"],
            "safe_path": _SAFE_PATH.pattern, "spki_prefix": bundle_signing.SPKI_PREFIX,
            "endorsement_header": bundle_signing.ENDORSEMENT_HEADER, "versions_file": VERSIONS_FILE}


def _readme_context(plan: NodePlan) -> dict:
    return {"node": plan.node, "arch": plan.arch, "roles": list(plan.roles), "top": TOP,
            "services": [name for name, _ in plan.services], "images": [name for _, name, _ in plan.images],
            "check_signature": bundle_signing.check_signature_command("ed25519:<hex>"),
            "check_files": CHECK_FILES, "installer": INSTALLER, "state_dir": STATE_DIR, "backup_dir": BACKUP_DIR,
            "member_script": membership.MEMBER_SCRIPT}


@functools.lru_cache(maxsize=4)
def installer(templates: Path | None = None) -> bytes:
    return _render(templates, INSTALL_TEMPLATE, **_installer_context())


# --- the vendored part: one gzip member per arch and role set, cached -----------------------------


def _vendored_entries(spec: BundleSpec) -> list[dict]:
    entries = []
    for placed in spec.vendored.files:
        _check_path(placed.path, placed.source)
        try:
            stat = placed.source.stat()
        except FileNotFoundError:
            raise KthwError(f"{placed.source}: vendored file missing ({placed.path} on {spec.node}); run "
                            "`doit vendor` first") from None
        entries.append({"name": f"{TOP}/{FILES}{placed.path}", "path": placed.path, "mode": placed.mode,
                        "source": str(placed.source), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns})
    return sorted(entries, key=lambda e: e["name"])


@dataclass(frozen=True)
class SharedPart:
    """The cached start of a node's bundle: the gzip header and the deflate part of its
    vendored files (kthw.bundle.tarball)."""

    path: Path
    crc: int                 # CRC32 of its uncompressed bytes
    size: int                # their length
    sha256: dict[str, str]   # node path -> sha256 of the file


def shared_part(spec: BundleSpec) -> SharedPart:
    """The cached deflate part of the node's vendored files, made now if missing or stale."""
    member, index = cache_files(spec)
    vendored = _vendored_entries(spec)
    wanted = {"format": 3, "level": tarball.COMPRESSION_LEVEL, "mtime": spec.epoch, "entries": vendored}
    try:
        cached = json.loads(index.read_text())
        if {key: cached.get(key) for key in wanted} == wanted and member.stat().st_size == cached["part_size"]:
            return SharedPart(member, cached["crc"], cached["size"], cached["sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    spec.cache.mkdir(parents=True, exist_ok=True)
    entries = [tarball.Entry(e["name"], e["mode"], source=Path(e["source"])) for e in vendored]
    with _writing(member) as handle:
        # The gzip header comes first in the cached file, so that each bundle begins with a
        # copy from offset 0 to offset 0: page-aligned, as fast as cp.
        handle.write(tarball.GZIP_HEADER)
        part = tarball.DeflatePart(handle, final=False)
        try:
            digests = tarball.write_entries(part, entries, spec.epoch, end=False)
        except OSError as err:
            # tarball's "changed size while it was packed" carries no errno, a disk error does;
            # a source whose size or mtime moved changed too. Neither is a full disk.
            if err.errno is None or _vendored_entries(spec) != wanted["entries"]:
                raise _vendor_changed(spec, f" ({err})") from None
            raise
        part.close()
        handle.flush()
        part_size = handle.tell()
        if _vendored_entries(spec) != wanted["entries"]:  # a source changed while it was read
            raise _vendor_changed(spec)
    shared = SharedPart(member, part.crc, part.size, {e["path"]: digests[e["name"]] for e in wanted["entries"]})
    atomic_write(index, (json.dumps({**wanted, "part_size": part_size, "crc": shared.crc, "size": shared.size,
                                     "sha256": shared.sha256}, indent=1) + "\n").encode())
    return shared


def _vendor_changed(spec: BundleSpec, detail: str = "") -> KthwError:
    return KthwError(f"vendored files of {spec.node} changed while the bundle was built{detail}: something "
                     "wrote to vendor/ meanwhile; do not modify vendor/ during a build, run `doit vendor` again "
                     "(it checks every vendored file), then `doit bundle`")


@contextlib.contextmanager
def _writing(target: Path):
    """``target`` written through :func:`atomic_file` (mode 0600: bundles hold private keys); a
    write error becomes a message naming ``target``."""
    try:
        with atomic_file(target, SECRET_MODE) as handle:
            yield handle
    except OSError as err:
        raise KthwError(f"{target}: cannot write ({err}); free some disk space, then run again") from None


# --- building -----------------------------------------------------------------------------------


def build(spec: BundleSpec) -> str:
    """Write bundles/<node>.tar.gz (through a temp file and a rename); return what was done."""
    key = bundle_signing.load_key(spec.signing_key)
    install = installer(spec.templates)
    files = [*tree_files(spec), (INSTALLER, install, 0o755)]
    clash = {path for path, _, _ in files} & {placed.path for placed in spec.vendored.files}
    if clash:
        raise KthwError(f"{spec.tree}: {', '.join(sorted(clash))} would also come from vendor/; remove it from "
                        "the node's tree")
    unmanaged = sorted(path for path in [p for p, _, _ in files] + [p.path for p in spec.vendored.files]
                       if not is_managed(path))
    if unmanaged:
        raise KthwError(f"{unmanaged[0]}: install.sh installs files only under {', '.join(MANAGED_DIRS)} (and "
                        f"{', '.join(MANAGED_FILES)}); add the directory to kthw.bundle.build.MANAGED_DIRS")
    shared = shared_part(spec)
    vendored_sums = shared.sha256
    installed = {path for path, _, _ in files} | set(vendored_sums)
    plan = node_plan(spec, files, installed)
    readme = _render(spec.templates, README_TEMPLATE, **_readme_context(plan))

    node_entries = [tarball.Entry(f"{TOP}/{FILES}{path}", mode, data=data) for path, data, mode in files]
    lines = [ManifestLine(mode, sha256_hex(data), path) for path, data, mode in files]
    lines += [ManifestLine(p.mode, vendored_sums[p.path], p.path) for p in spec.vendored.files]
    lines += [ManifestLine(0o755, sha256_hex(install), INSTALL), ManifestLine(0o644, sha256_hex(readme), README)]
    serial = next_serial(spec.serial, sha256_hex(manifest_text(plan, lines, 0)))
    manifest = manifest_text(plan, lines, serial)
    node_entries += [
        tarball.Entry(f"{TOP}/{INSTALL}", 0o755, data=install),
        tarball.Entry(f"{TOP}/{README}", 0o644, data=readme),
        tarball.Entry(f"{TOP}/{MANIFEST}", 0o644, data=manifest),
        tarball.Entry(f"{TOP}/{SIGNATURE}", 0o644, data=bundle_signing.sign(key, manifest)),
    ]
    endorsements = "".join(line + "\n" for line in bundle_signing.read_endorsements(spec.endorsements)).encode()
    if endorsements:
        node_entries.append(tarball.Entry(f"{TOP}/{ENDORSEMENTS}", 0o644, data=endorsements))
    node_entries.sort(key=lambda entry: entry.name)

    spec.output.parent.mkdir(parents=True, exist_ok=True)
    with _writing(spec.output) as handle:
        tarball.copy_into(handle, shared.path)  # gzip header + deflate part of the vendored files
        part = tarball.DeflatePart(handle, final=True, crc=shared.crc, size=shared.size)
        tarball.write_entries(part, node_entries, spec.epoch, end=True)
        part.close()
        handle.write(tarball.gzip_trailer(part.crc, part.size))
        handle.flush()
        size = handle.tell()
    count = len(files) + len(spec.vendored.files)
    return (f"{spec.output}: {count} files, serial {serial}, {size / 1e6:.1f} MB, signed by "
            f"{bundle_signing.fingerprint(key)}")


def obsolete_bundles(bundles: Path, nodes: list[str]) -> list[Path]:
    """Bundles of nodes the inventory no longer has (their serial records stay in build/state,
    so a node that comes back goes on from its last serial)."""
    wanted = {f"{node}.tar.gz" for node in nodes}
    return sorted(path for path in Path(bundles).glob("*.tar.gz") if path.name not in wanted)


def remove_obsolete(bundles: Path, nodes: list[str]) -> str:
    removed = obsolete_bundles(bundles, nodes)
    for path in removed:
        path.unlink()
    return "\n".join(f"removed {path} ({path.name.removesuffix('.tar.gz')} is no longer in the inventory)"
                     for path in removed)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- checking a bundle on the workstation -----------------------------------------------------


@dataclass(frozen=True)
class _Member:
    """What :func:`verify_tarball` keeps of one archive member, from a single pass."""

    is_file: bool
    is_dir: bool
    sha256: str | None   # of a file's bytes
    data: bytes | None   # the bytes themselves, only for MANIFEST, MANIFEST.sig and KEY-ENDORSEMENTS


def _read_members(archive: tarfile.TarFile, path: Path) -> dict[str, _Member]:
    """Every member by name (a later one of the same name wins, as tar unpacks it), the
    archive decompressed once: each file hashed in chunks as it streams past."""
    import tarfile  # tarfile is loaded only where an archive is read or written: a no-op run never is
    kept = {f"{TOP}/{name}" for name in (MANIFEST, SIGNATURE, ENDORSEMENTS)}
    members = {}
    try:
        for member in archive:
            digest = data = None
            handle = archive.extractfile(member) if member.isfile() else None
            if handle is not None:
                sha256, chunks = hashlib.sha256(), []
                while chunk := handle.read(tarball.CHUNK):
                    sha256.update(chunk)
                    if member.name in kept:
                        chunks.append(chunk)
                digest = sha256.hexdigest()
                data = b"".join(chunks) if member.name in kept else None
            members[member.name] = _Member(member.isfile(), member.isdir(), digest, data)
    except (OSError, tarfile.TarError, EOFError, ValueError) as err:
        raise KthwError(f"{path}: damaged archive ({err}); copy the bundle again") from None
    return members


def _open_bundle(path: Path) -> tarfile.TarFile:
    import tarfile
    try:
        return tarfile.open(path, "r:gz")
    except (OSError, tarfile.TarError, EOFError) as err:
        raise KthwError(f"{path}: not a readable .tar.gz ({err}); copy the bundle again") from None


def _kept_data(path: Path, members: dict[str, _Member], name: str) -> bytes:
    """The bytes of MANIFEST or MANIFEST.sig, which every bundle holds."""
    member = members.get(f"{TOP}/{name}")
    if member is None or not member.is_file or member.data is None:
        raise KthwError(f"{path}: {TOP}/{name} is missing; this is not a complete kthw-airgap bundle")
    return member.data


def _signed_manifest(path: Path, members: dict[str, _Member], trusted: str) -> tuple[str, bytes]:
    """The signer's fingerprint, reached from ``trusted``, and the MANIFEST it signed."""
    endorsements = members.get(f"{TOP}/{ENDORSEMENTS}")
    try:
        signer = bundle_signing.follow(trusted, endorsements.data if endorsements else None)
    except KthwError as err:
        raise KthwError(f"{path}: {err}") from None
    manifest = _kept_data(path, members, MANIFEST)
    if not bundle_signing.verify(bundle_signing.public_key(signer), _kept_data(path, members, SIGNATURE), manifest):
        raise KthwError(f"{path}: {MANIFEST}: the signature does not verify with the key {signer}: the MANIFEST "
                        "or its signature was altered, or another key signed it")
    return signer, manifest


def _check_contents(path: Path, members: dict[str, _Member], lines: list[ManifestLine]) -> None:
    """Every file the MANIFEST lists is there with its sha256, and nothing else is."""
    listed = {f"{TOP}/{MANIFEST}", f"{TOP}/{SIGNATURE}", f"{TOP}/{ENDORSEMENTS}"}
    for line in lines:
        if line.sha256 == DIRECTORY:
            continue
        name = f"{TOP}/{line.member}"
        listed.add(name)
        member = members.get(name)
        if member is None or not member.is_file:
            raise KthwError(f"{path}: {name} is listed in the MANIFEST but missing")
        # A member's mode in the archive is not checked: the installer sets the MANIFEST's
        # mode on every file it installs, whatever the unpacked copy has.
        if member.sha256 != line.sha256:
            raise KthwError(f"{path}: {name}: sha256 differs from the MANIFEST (altered or damaged)")
    extra = sorted(name for name, member in members.items() if name not in listed and not member.is_dir)
    if extra:
        raise KthwError(f"{path}: holds files the MANIFEST does not list: {', '.join(extra[:5])}")


def verify_tarball(path: Path, trusted: str, node: str | None = None) -> str:
    """Check a bundle file as the node's installer does: the MANIFEST's signature with the key
    reached from the ``trusted`` fingerprint (through the bundle's endorsements), every file's
    sha256, that it holds nothing the MANIFEST does not list and no link."""
    path = Path(path)
    with _open_bundle(path) as archive:
        members = _read_members(archive, path)
    odd = sorted(name for name, member in members.items() if not (member.is_file or member.is_dir))
    if odd:
        raise KthwError(f"{path}: {odd[0]} is neither a file nor a directory (a link?); a bundle holds neither")
    signer, manifest = _signed_manifest(path, members, trusted)
    header, lines = parse_manifest(manifest.decode("utf-8", "replace"))
    if node is not None and header.get("node") != node:
        raise KthwError(f"{path}: this is the bundle of {header.get('node')}, not of {node}")
    _check_contents(path, members, lines)
    return (f"{path}: OK, bundle of {header.get('node')} ({header.get('arch')}), serial {header.get('serial')}, "
            f"{sum(1 for line in lines if line.path.startswith('/') and line.sha256 != DIRECTORY)} files, "
            f"signed by {signer}, MANIFEST sha256 {sha256_hex(manifest)}")
