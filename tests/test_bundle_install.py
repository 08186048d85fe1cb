"""install.sh on a node: updates and backups, undo on failure, hostname, systemd order.

Real bash runs the real install.sh throughout. The tests that need a node's "/" run it
in a private mount and UTS namespace (util-linux unshare): a chroot into an overlay of
the host's "/" whose writes land in a tmpfs, with its own hostname, so the host is never
touched. There, systemctl, ctr and etcdctl are stand-ins that record their calls: no
systemd (PID 1) or containerd daemon can run in this environment.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest
from support.bundles import example_project, fingerprint, install, tree_state, two_versions, unpack
from support.project import Project

from kthw.bundle import build as bundle
from kthw.inventory import load
from kthw.layout import Layout

pytestmark = pytest.mark.slow  # end to end (see pyproject's markers)


def _can_unshare() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "-u", "--fork", "sh", "-c",
                            "mount -t tmpfs tmpfs /mnt && hostname probe"], capture_output=True)
    return probe.returncode == 0


needs_namespaces = pytest.mark.skipif(not _can_unshare(),
                                      reason="needs root and unshare (mount and UTS namespaces)")

# Stand-ins for programs that need daemons this environment cannot run. State and calls go
# to /run/stub (inside the chroot's overlay).
SYSTEMCTL = b"""#!/bin/bash
# stand-in systemctl: records the call; "enabled" and "active" are files.
set -eu
state=/run/stub
mkdir -p "$state"
echo "systemctl $*" >>"$state/calls"
command=$1
shift
args=()
for word in "$@"; do [[ $word == --* ]] || args+=("$word"); done
case $command in
  daemon-reload) ;;
  is-enabled) [[ -e $state/enabled-${args[0]} ]] ;;
  is-active) [[ -e $state/active-${args[0]} ]] ;;
  enable) touch "$state/enabled-${args[0]}" ;;
  disable) rm -f "$state/enabled-${args[0]}"; [[ " $* " != *" --now "* ]] || rm -f "$state/active-${args[0]}" ;;
  start | restart) touch "$state/active-${args[0]}" ;;
  *) exit 1 ;;
esac
"""
CTR = b"""#!/bin/bash
# stand-in ctr: answers only while the stand-in containerd is active; an image archive's
# first line names its image.
set -eu
state=/run/stub
echo "ctr $*" >>"$state/calls"
[[ -e $state/active-containerd ]] || exit 1
case "$*" in
  version) ;;
  "-n k8s.io images ls -q") cat "$state/images" 2>/dev/null || true ;;
  "-n k8s.io images import "*) head -n 1 "${!#}" | cut -d' ' -f2 >>"$state/images" ;;
  "-n k8s.io images tag --force "*) echo "${!#}" >>"$state/images" ;;
  *) exit 1 ;;
esac
"""
ETCDCTL = b"""#!/bin/bash
# stand-in etcdctl: the member is healthy once the stand-in etcd is active.
echo "etcdctl $*" >>/run/stub/calls
[[ -e /run/stub/active-etcd ]]
"""
SCRIPTS = {"ctr": CTR, "etcdctl": ETCDCTL}

DRIVER = r"""
set -euo pipefail
scratch=$1 out=$2 share=$3 host=$4
shift 4
mount -t tmpfs tmpfs "$scratch"
mkdir "$scratch/upper" "$scratch/work" "$scratch/node"
mount -t overlay overlay -o "lowerdir=/,upperdir=$scratch/upper,workdir=$scratch/work" "$scratch/node"
mount --rbind /dev "$scratch/node/dev"
mount --rbind /proc "$scratch/node/proc"
# The test's files (bundles, stand-ins), in case /tmp is a mount of its own on the host.
mkdir -p "$scratch/node$share"
mount --bind "$share" "$scratch/node$share"
hostname "$host"
status=0
n=0
for run in "$@"; do
  n=$((n + 1))
  # $run: "<bundle dir> <options...>"
  # shellcheck disable=SC2086
  set -- $run
  dir=$1
  shift
  chroot "$scratch/node" env -i PATH="$out/stubs:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    bash "$dir/install.sh" "$@" >"$out/run$n.out" 2>"$out/run$n.err" || { status=$?; break; }
  # Through the overlay, never its upper layer directly (overlayfs does not allow that).
  cp "$scratch/node/run/stub/calls" "$out/calls$n" 2>/dev/null || : >"$out/calls$n"
  rm -f "$scratch/node/run/stub/calls"
done
mkdir -p "$out/node"
cp -a "$scratch/upper/." "$out/node/"
exit $status
"""


def on_node(share: Path, work: Path, hostname: str, *runs: str) -> list[tuple[str, str, list[str]]]:
    """Run install.sh once per entry of ``runs`` ("<bundle dir> <options>", under ``share``) on
    one fresh node called ``hostname``; return (stdout, stderr, calls) per run, then the
    driver's (stderr, exit status). What the runs wrote to the node ends up in work/out/node."""
    tmp_path = work
    tmp_path.mkdir(parents=True, exist_ok=True)
    out = tmp_path / "out"
    (out / "stubs").mkdir(parents=True, exist_ok=True)
    (out / "stubs" / "systemctl").write_bytes(SYSTEMCTL)
    (out / "stubs" / "systemctl").chmod(0o755)
    scratch = tmp_path / "scratch"
    scratch.mkdir(exist_ok=True)
    driver = tmp_path / "driver.sh"
    driver.write_text(DRIVER)
    result = subprocess.run(["unshare", "-m", "-u", "--fork", "bash", str(driver), str(scratch), str(out), str(share),
                             hostname, *runs], capture_output=True, text=True, timeout=300)
    results = []
    for n in range(1, len(runs) + 1):
        if not (out / f"run{n}.out").exists():
            break
        calls = (out / f"calls{n}").read_text().splitlines() if (out / f"calls{n}").exists() else []
        results.append(((out / f"run{n}.out").read_text(), (out / f"run{n}.err").read_text(), calls))
    results.append(("driver", result.stderr, [str(result.returncode)]))
    return results


def stubbed_project(root: Path) -> Project:
    project = example_project(root)
    from support.bundles import stand_in_vendor
    stand_in_vendor(project.root, project.inventory, size=20_000, scripts=SCRIPTS)
    return project


def _index(calls: list[str], wanted: str) -> int:
    matches = [n for n, call in enumerate(calls) if call == wanted]
    assert matches, f"no call {wanted!r} in {calls}"
    return matches[0]


# --- updates ----------------------------------------------------------------------------------


def test_an_update_replaces_only_what_changed_keeps_a_backup_and_names_the_services(tmp_path):
    project = example_project(tmp_path / "project")
    old, new = two_versions(project, "worker-az1-a", "kubelet-serving", tmp_path)
    root = tmp_path / "root"
    root.mkdir()
    args = ["--root", str(root), "--no-start", "--any-hostname", "--fingerprint", fingerprint(project)]
    install(old, *args, check=True)
    before = tree_state(root)

    result = install(new, *args, check=True)
    changed = {"/etc/k8s/kubelet/kubelet-serving.crt", "/etc/k8s/kubelet/kubelet-serving.key"}
    assert "update: /etc/k8s/kubelet/kubelet-serving.key (0600)" in result.stdout
    assert "services whose files changed: kubelet\n" in result.stdout
    after = tree_state(root)
    # Files only: a directory's mtime moves with what is added to it (the backup, the record).
    moved = {"/" + path for path in before.keys() & after.keys()
             if before[path][4] is not None and before[path] != after[path]}
    assert moved - {"/var/lib/kthw/last-install", "/var/lib/kthw/installed.MANIFEST"} == changed
    backups = list((root / "var/backups/kthw").iterdir())
    assert len(backups) == 1
    for path in changed:
        kept = backups[0] / path.lstrip("/")
        assert kept.read_bytes() == (old / "files" / path.lstrip("/")).read_bytes()
        assert kept.stat().st_mode & 0o777 == (0o600 if path.endswith(".key") else 0o644)
    record = (root / "var/lib/kthw/last-install").read_text()
    assert "changed services kubelet\n" in record and "changed /etc/k8s/kubelet/kubelet-serving.key" in record


def test_a_directory_in_the_way_is_refused_before_anything_is_written(tmp_path):
    project = example_project(tmp_path / "project")
    project.doit("bundle:worker-az1-a")
    directory = unpack(project, "worker-az1-a", tmp_path / "bundle")
    root = tmp_path / "root"
    (root / "usr/local/bin/kubelet").mkdir(parents=True)
    before = tree_state(root)
    result = install(directory, "--root", str(root), "--no-start", "--any-hostname",
                     "--fingerprint", fingerprint(project))
    assert result.returncode != 0 and "usr/local/bin/kubelet exists and is not a regular file" in result.stderr
    assert tree_state(root) == before


def _bundle_without(project: Project, node_name: str, path: str, where: Path) -> Path:
    """The node's bundle built again through the library from its tree less ``path``, unpacked."""
    inv, layout = load(project.inventory), Layout(project.root)
    node = next(n for n in inv.nodes if n.name == node_name)
    (layout.node_root(node_name) / path.lstrip("/")).unlink()
    bundle.build(bundle.spec_for(layout, node, bundle.vendored_files(node, inv, layout)))
    directory = unpack(project, node_name, where)
    assert not (directory / "files" / path.lstrip("/")).exists()
    return directory

def _without_pod_cidrs(text: str) -> str:
    """The example inventory with the workers' own pod CIDRs dropped (the controller manager
    hands them out instead), so a worker's bundle no longer carries a bridge CNI config."""
    text = text.replace(", pod_cidr: 10.244.1.0/24}", "}").replace(", pod_cidr: 10.244.2.0/24}", "}")
    return text.replace("    pod_cidr: 10.244.3.0/24\n", "")


def test_an_update_removes_what_the_new_bundle_no_longer_carries_into_the_backup(tmp_path):
    project = example_project(tmp_path / "project")
    project.doit("bundle:worker-az1-a")
    old = unpack(project, "worker-az1-a", tmp_path / "v1")
    project.write_inventory(_without_pod_cidrs(project.inventory.read_text()))
    project.doit("bundle:worker-az1-a")
    new = unpack(project, "worker-az1-a", tmp_path / "v2")
    gone = "/etc/cni/net.d/10-bridge.conflist"
    assert (old / "files" / gone.lstrip("/")).is_file() and not (new / "files" / gone.lstrip("/")).exists()
    root = tmp_path / "root"
    root.mkdir()
    args = ["--root", str(root), "--no-start", "--any-hostname", "--fingerprint", fingerprint(project)]
    install(old, *args, check=True)
    # Files the bundles never listed stay, even beside the removed one.
    (root / "etc/cni/net.d/50-mine.conflist").write_text("{}")
    (root / "etc/k8s/kubelet/notes").write_text("mine")

    check = install(new, "--check", *args, check=True)
    assert f"  remove: {gone}\n" in check.stdout and (root / gone.lstrip("/")).is_file()
    result = install(new, *args, check=True)
    assert f"  remove: {gone}\n" in result.stdout
    assert not (root / gone.lstrip("/")).exists()
    assert (root / "etc/cni/net.d/99-loopback.conf").is_file()
    assert (root / "etc/cni/net.d/50-mine.conflist").read_text() == "{}"
    assert (root / "etc/k8s/kubelet/notes").read_text() == "mine"
    backups = list((root / "var/backups/kthw").iterdir())
    assert len(backups) == 1
    kept = backups[0] / gone.lstrip("/")
    assert kept.read_bytes() == (old / "files" / gone.lstrip("/")).read_bytes()
    assert kept.stat().st_mode & 0o777 == 0o644
    assert (root / "var/lib/kthw/installed.MANIFEST").read_bytes() == (new / "MANIFEST").read_bytes()
    assert f"removed {gone}\n" in (root / "var/lib/kthw/last-install").read_text()

    before = tree_state(root)
    again = install(new, *args, check=True)
    assert "nothing changed" in again.stdout and "remove:" not in again.stdout
    assert tree_state(root) == before
    # A recorded file that is gone already is only dropped: an older record names the removed file.
    (root / "var/lib/kthw/installed.MANIFEST").write_bytes((old / "MANIFEST").read_bytes())
    rerun = install(new, *args, check=True).stdout
    assert not re.search(r"^  (remove|new|update)", rerun, re.M), rerun
    assert (root / "var/lib/kthw/installed.MANIFEST").read_bytes() == (new / "MANIFEST").read_bytes()


@needs_namespaces
def test_a_failure_half_way_undoes_every_change(tmp_path):
    """A disk that fills up while the new files are copied: the root is left as it was."""
    project = example_project(tmp_path / "project")
    project.doit("bundle:worker-az1-a")
    old = unpack(project, "worker-az1-a", tmp_path / "v1")
    from support.bundles import stand_in_vendor
    stand_in_vendor(project.root, project.inventory, tag="v2",
                    size=lambda name: 6_000_000 if name == "kubelet" else 20_000)
    project.doit("bundle:worker-az1-a")
    # The new bundle also drops a file, so the run removes a file before it fails.
    gone = "/etc/k8s/kubelet/kubelet-serving.crt"
    new = _bundle_without(project, "worker-az1-a", gone, tmp_path / "v2")
    assert not (new / "files" / gone.lstrip("/")).exists()
    fp = fingerprint(project)
    root = tmp_path / "root"
    root.mkdir()
    listing = "find . -printf '%p %m %u %g %T@ %s\\n' | sort; find . -type f -exec sha256sum {} + | sort"
    script = textwrap.dedent(f"""\
        set -u
        mount -t tmpfs -o size=4m,mode=0755 tmpfs {root}
        bash {old}/install.sh --root {root} --no-start --any-hostname --fingerprint {fp} >/dev/null || exit 10
        (cd {root} && {listing}) >{tmp_path}/before
        bash {new}/install.sh --check --root {root} --no-start --any-hostname --fingerprint {fp} >{tmp_path}/check
        bash {new}/install.sh --root {root} --no-start --any-hostname --fingerprint {fp} \
            >{tmp_path}/out 2>{tmp_path}/err && exit 11
        (cd {root} && {listing}) >{tmp_path}/after
        """)
    result = subprocess.run(["unshare", "-m", "--fork", "bash", "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    error = (tmp_path / "err").read_text()
    assert "No space left on device" in error
    assert "failed while copying files/usr/local/bin/kubelet" in error
    assert "every change this run made was undone" in error
    assert (tmp_path / "after").read_text() == (tmp_path / "before").read_text()
    assert "var/backups" not in (tmp_path / "after").read_text()
    assert "etc/k8s/kubelet/kubelet-serving.crt" in (tmp_path / "after").read_text()
    assert f"  remove: {gone}\n" in (tmp_path / "check").read_text()


# --- on a node: hostname, systemd, images -----------------------------------------------------


@needs_namespaces
def test_on_a_worker_services_start_in_order_images_are_imported_and_a_rerun_changes_nothing(tmp_path):
    project = stubbed_project(tmp_path / "project")
    v1, v2 = two_versions(project, "worker-az1-a", "kubelet-serving", tmp_path)
    fp = fingerprint(project)

    wrong_name, = on_node(tmp_path, tmp_path / "a", "worker-az3-a", f"{v1} --fingerprint {fp}")[:1]
    assert "this bundle is for node worker-az1-a but this machine is called worker-az3-a" in wrong_name[1]

    first, second, update, driver = on_node(tmp_path, tmp_path / "b", "worker-az1-a", f"{v1} --fingerprint {fp}",
                                            f"{v1} --fingerprint {fp}", f"{v2} --fingerprint {fp}")
    assert driver[2] == ["0"], driver[1] + first[1] + second[1] + update[1]
    calls = first[2]
    start = {service: _index(calls, f"systemctl start {service}")
             for service in ("containerd", "kube-proxy", "kubelet")}
    imports = [n for n, call in enumerate(calls) if call.startswith("ctr -n k8s.io images import")]
    assert calls[0] == "systemctl daemon-reload"
    assert start["containerd"] < min(imports) and max(imports) < start["kubelet"]
    assert len(imports) == 2  # pause and coredns
    # Each also named by its pinned digest, the name the CoreDNS Deployment uses.
    manifest = (v1 / "MANIFEST").read_text()
    digests = re.findall(r"^# image \S+ (\S+) (\S+@sha256:[0-9a-f]{64})$", manifest, re.M)
    assert len(digests) == 2
    for name, by_digest in digests:
        assert f"ctr -n k8s.io images tag --force {name} {by_digest}" in calls
    for service in start:
        assert _index(calls, f"systemctl enable --quiet {service}") < start[service]
    assert "done: worker-az1-a is installed" in first[0]
    installed = tmp_path / "b/out/node/usr/local/bin/kubelet"
    assert installed.read_bytes() == (v1 / "files/usr/local/bin/kubelet").read_bytes()

    # Again: nothing is written, started, enabled, reloaded or imported.
    assert "nothing changed" in second[0]
    queries = ("systemctl is-", "ctr version", "ctr -n k8s.io images ls")
    assert [call for call in second[2] if not call.startswith(queries)] == []
    assert "kubelet: running, none of its files changed" in second[0]
    assert "already imported" in second[0]

    # A new kubelet serving cert: only the kubelet restarts; no unit changed, so no reload.
    restarts = [call for call in update[2] if call.startswith(("systemctl restart", "systemctl start"))]
    assert restarts == ["systemctl restart kubelet"]
    assert "systemctl daemon-reload" not in update[2]
    assert "kubelet: restarting, changed: /etc/k8s/kubelet/kubelet-serving.crt" in update[0]


@needs_namespaces
def test_on_a_control_plane_etcd_starts_first_in_the_background_and_restarts_wait_for_health(tmp_path):
    project = stubbed_project(tmp_path / "project")
    v1, v2 = two_versions(project, "node-az1", "etcd-server", tmp_path)
    fp = fingerprint(project)
    first, update, driver = on_node(tmp_path, tmp_path / "b", "node-az1", f"{v1} --fingerprint {fp}",
                                    f"{v2} --fingerprint {fp}")
    assert driver[2] == ["0"], driver[1] + first[1] + update[1]
    starts = [call for call in first[2] if call.startswith("systemctl start")]
    assert starts == ["systemctl start --no-block etcd", "systemctl start --no-block kthw-pod-routes",
                      "systemctl start --no-block kube-apiserver",
                      "systemctl start --no-block kube-controller-manager", "systemctl start --no-block kube-scheduler"]
    assert "install the other etcd nodes now" in first[0]
    # An update of etcd's cert on a running member: restart it, wait until healthy, leave the rest.
    calls = update[2]
    restart = _index(calls, "systemctl restart etcd")
    health = [n for n, call in enumerate(calls) if call.startswith("etcdctl") and "endpoint health" in call]
    assert health and health[0] > restart
    assert [call for call in calls if call.startswith(("systemctl restart", "systemctl start"))] == \
        ["systemctl restart etcd"]
    assert "etcd: healthy again" in update[0]


@needs_namespaces
def test_a_removed_file_that_a_service_reads_restarts_that_service_only(tmp_path):
    project = stubbed_project(tmp_path / "project")
    project.doit("bundle:worker-az1-a")
    v1 = unpack(project, "worker-az1-a", tmp_path / "v1")
    # The kubelet's config names the serving cert; nothing else changes.
    gone = "/etc/k8s/kubelet/kubelet-serving.crt"
    v2 = _bundle_without(project, "worker-az1-a", gone, tmp_path / "v2")
    fp = fingerprint(project)
    first, update, driver = on_node(tmp_path, tmp_path / "b", "worker-az1-a", f"{v1} --fingerprint {fp}",
                                    f"{v2} --fingerprint {fp}")
    assert driver[2] == ["0"], driver[1] + first[1] + update[1]
    assert f"  remove: {gone}\n" in update[0]
    assert "services whose files changed: kubelet\n" in update[0]
    assert f"kubelet: restarting, changed: {gone}\n" in update[0]
    assert [call for call in update[2] if call.startswith(("systemctl restart", "systemctl start"))] == \
        ["systemctl restart kubelet"]
    assert "systemctl daemon-reload" not in update[2]
    assert not (tmp_path / "b/out/node" / gone.lstrip("/")).exists()


@needs_namespaces
def test_a_service_the_new_bundle_no_longer_carries_is_stopped_and_disabled_and_its_unit_removed(tmp_path):
    project = stubbed_project(tmp_path / "project")
    project.doit("bundle:worker-az1-a")
    v1 = unpack(project, "worker-az1-a", tmp_path / "v1")
    gone = "/etc/systemd/system/kube-proxy.service"
    v2 = _bundle_without(project, "worker-az1-a", gone, tmp_path / "v2")
    fp = fingerprint(project)
    first, check, update, again, driver = on_node(
        tmp_path, tmp_path / "b", "worker-az1-a", f"{v1} --fingerprint {fp}", f"{v2} --check",
        f"{v2} --fingerprint {fp}", f"{v2} --fingerprint {fp}")
    assert driver[2] == ["0"], driver[1] + first[1] + update[1]
    assert "services that would be stopped and disabled: kube-proxy" in check[0]
    assert not [call for call in check[2] if call.startswith("systemctl disable")]
    assert f"  remove: {gone}\n" in update[0]
    assert "kube-proxy: stopped and disabled (this bundle no longer carries it)" in update[0]
    disable = _index(update[2], "systemctl disable --now --quiet kube-proxy")
    assert disable < _index(update[2], "systemctl daemon-reload")  # while its unit file was still there
    assert not (tmp_path / "b/out/node" / gone.lstrip("/")).exists()
    assert "kube-proxy" not in " ".join(call for call in update[2] if call.startswith(("systemctl start",
                                                                                        "systemctl restart")))
    # Once gone, it is not named again.
    assert "kube-proxy" not in again[0] and not [c for c in again[2] if c.startswith("systemctl disable")]
