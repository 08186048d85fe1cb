"""Bundle stage: one signed, reproducible tarball per node.

    bundle_signing_key ─────────────┐   build/state/bundle-signing.key (precious, made once)
    pki:<node>, secrets:<node>,     ├─► bundle:<node>   bundles/<node>.tar.gz
    render (every node; made on     │                   bundle = every node
    demand), vendor files ──────────┘
    bundle:.removed              delete the bundles of nodes no longer in the inventory
    fingerprint                  print the signing key's fingerprint (install.sh --fingerprint)
    verify_bundle [path=FILE] [fingerprint=ed25519:HEX]
                                 check bundle files as a node would, with this workstation's key
    rotate_bundle_signing_key    explicit, never a default task: a new signing key

A bundle's file_dep is every file it packs: the files other stages write under
build/nodes/<node>/ (kthw.bundle.build.expected_files; the bundle waits for those stages'
tasks of its node), the vendored files of its arch and roles, the templates and the
signing key. It is rebuilt exactly when one of them changes. The vendored files are never fetched from here: when
one is missing the task fails and names `doit vendor`.
"""

from __future__ import annotations

from pathlib import Path

from doit import create_after, get_var

from kthw.bundle import signing as bundle_signing
from kthw.errors import KthwError
from kthw.fsutil import remove

from .common import checked, config_changed, context, failing, guarded
from .render import planned


def task_bundle_signing_key():
    """The Ed25519 key that signs every bundle's MANIFEST (precious: made once, never replaced here)."""
    _, layout = context()
    return {
        "actions": [(guarded, [bundle_signing.ensure, layout.state])],
        "targets": [bundle_signing.key_path(layout.state), bundle_signing.pub_path(layout.state)],
        "uptodate": [(checked, [bundle_signing.is_current, layout.state])],
        "clean": [],  # precious: never removed
        "verbosity": 2,  # a new key prints its fingerprint
    }


# Made when a bundle is about to be built, not whenever doit loads (see tasks/render.py).
@create_after()
def task_bundle():
    """Per-node tarballs: bundles/<node>.tar.gz with install.sh, MANIFEST and its signature."""
    # Loaded only where bundles are made or checked, like the tasks.
    from kthw.bundle import build as bundle
    from kthw.render import membership
    from kthw.vendor import fetch as vendor

    inv, layout = context()
    try:
        epoch = bundle.source_date_epoch()
    except KthwError as err:
        for node in inv.nodes:
            yield failing(node.name, f"bundle of {node.name}", str(err))
        return
    rendered, _ = planned()
    templates = bundle.template_paths()
    signing_key = bundle_signing.key_path(layout.state)
    try:
        items = vendor.plan(inv, vendor.load_pins(inv), layout)
    except KthwError:
        items = None  # each node's task reports it below
    for node in inv.nodes:
        doc = f"bundles/{node.name}.tar.gz"
        try:
            vendored = bundle.vendored_files(node, inv, layout, items)
        except KthwError as err:
            yield failing(node.name, doc, f"{node.name}: {err}")
            continue
        missing = bundle.missing_vendored(vendored)
        if missing:
            yield failing(node.name, doc, (
                f"{node.name}: {len(missing)} vendored file(s) are missing, e.g. {missing[0]}; run `doit vendor` "
                "first (on a workstation that reaches the release sites or the mirror), then `doit bundle`"))
            continue
        expected = bundle.expected_files(inv, layout, node, None if rendered is None else rendered[node.name])
        spec = bundle.spec_for(layout, node, vendored, expected, epoch)
        yield {
            "name": node.name,
            "doc": doc,
            "actions": [(guarded, [bundle.build, spec])],
            "file_dep": sorted(layout.on_node(node.name, path) for path in expected)
                        + [placed.source for placed in vendored.files] + templates + [signing_key],
            # Render's tasks are made only when they are about to run (create_after): a bundle
            # waits for the whole group. A plan that cannot be made has no group to wait for.
            "task_dep": [f"pki:{node.name}", *(["render"] if rendered is not None else []), f"secrets:{node.name}"],
            "targets": [spec.output],
            # What decides the bytes besides the files: where each vendored file goes, the
            # node's identity and the entries' mtime.
            "uptodate": [config_changed({
                "node": [node.name, node.arch, sorted(node.roles), str(node.ip)], "epoch": epoch,
                "vendored": [[p.path, str(p.source), p.mode] for p in vendored.files],
                "images": [list(image) for image in vendored.images], "files": sorted(expected)}),
                (checked, [bundle.tree_is_as_planned, spec])],
            "clean": [(remove, [[spec.output, *bundle.cache_files(spec)]])],
            "verbosity": 2,  # shows the size and the signing key's fingerprint
        }
    names = [node.name for node in inv.nodes]
    # A leading dot: never a node's name (node names are DNS labels).
    yield {
        "name": ".removed",
        "doc": "delete the bundles of nodes no longer in the inventory",
        # An etcd member's removal from the cluster is named before its bundle goes.
        "actions": [(guarded, [membership.removal_notes, layout.bundles, layout.build / "nodes", names]),
                    (guarded, [bundle.remove_obsolete, layout.bundles, names])],
        "uptodate": [(checked, [_no_obsolete_bundle, layout.bundles, names])],
        "verbosity": 2,  # names what it removed
    }


def _no_obsolete_bundle(bundles: Path, nodes: list[str]) -> bool:
    from kthw.bundle import build as bundle

    return not bundle.obsolete_bundles(bundles, nodes)


def _print_fingerprint(state: Path) -> str:
    return bundle_signing.announce(bundle_signing.load_key(bundle_signing.key_path(state)))


def task_fingerprint():
    """Print the bundle-signing key's fingerprint, the value install.sh --fingerprint wants."""
    _, layout = context()
    return {
        "actions": [(guarded, [_print_fingerprint, layout.state])],
        "file_dep": [bundle_signing.key_path(layout.state)],
        "uptodate": [False],
        "verbosity": 2,
    }


def _verify(paths: list[Path], state: Path, nodes: list[str | None], trusted: str | None) -> str:
    from kthw.bundle import build as bundle

    if trusted:
        bundle_signing.public_key(trusted)  # a clear error for a malformed value
    expected = trusted or bundle_signing.fingerprint(bundle_signing.load_key(bundle_signing.key_path(state)))
    lines = []
    for path, node in zip(paths, nodes, strict=True):
        if not Path(path).is_file():
            raise KthwError(f"{path}: no such bundle; build it with `doit bundle`")
        lines.append(bundle.verify_tarball(path, expected, node))
    return "\n".join(lines)


def task_verify_bundle():
    """Check bundles as a node would: doit verify_bundle [path=FILE] [fingerprint=ed25519:HEX]."""
    inv, layout = context()
    chosen = get_var("path", None)
    trusted = get_var("fingerprint", None)
    nodes: list[str | None]
    if chosen:
        paths, nodes = [Path(chosen)], [None]
    else:
        paths = [layout.bundles / f"{node.name}.tar.gz" for node in inv.nodes]
        nodes = [node.name for node in inv.nodes]
    return {
        "actions": [(guarded, [_verify, paths, layout.state, nodes, trusted])],
        "uptodate": [False],
        "verbosity": 2,
    }


def task_rotate_bundle_signing_key():
    """Explicit: replace the bundle-signing key (the old one is kept as *.old); then `doit bundle`."""
    _, layout = context()
    return {
        "actions": [(guarded, [bundle_signing.rotate, layout.state])],
        "uptodate": [False],
        "verbosity": 2,
    }
