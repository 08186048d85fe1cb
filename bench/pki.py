"""bench/pki: the full cert set + kubeconfigs for 3 control planes and 50 workers.

    python bench/pki.py [--rounds N] [--rsa-rounds N] [--parallel-rounds N]

Contenders, alternated round by round:
  ours            `doit pki` from an empty build directory
  openssl-shell   a bash script making the same keys and certs with the openssl CLI,
                  one process per step (genpkey, req, x509), as the hard-way guides do
  bare-loop       one Python process making the same keys and certs with cryptography
                  and writing them, nothing else: the in-process limit
Both baselines are generated from the certs ours produced, so they make exactly the
same number and kind of keys and certs (same subjects, SANs, issuers, lifetimes).
Also: the same with RSA-2048, and `doit -n 2` vs `-n 1` (multiprocess).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Scratch, alternate, inventory, report  # noqa: E402

BARE_LOOP = Path(__file__).resolve().parent / "bare_loop.py"


def cert_set(build: Path) -> list[dict]:
    """What ours made, in issuing order: CAs (root first), then leaves."""
    entries = []
    ca_dir = build / "pki" / "ca"
    for name in ("root", "kubernetes", "etcd", "front-proxy"):
        entries.append(_entry(ca_dir / f"{name}.crt", f"ca/{name}", None if name == "root" else "ca/root"))
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
        ext = ["basicConstraints=critical,CA:TRUE,pathlen:0", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature"] \
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--rsa-rounds", type=int, default=3)
    parser.add_argument("--parallel-rounds", type=int, default=5)
    args = parser.parse_args()

    for algorithm, rounds in (("ecdsa-p256", args.rounds), ("rsa-2048", args.rsa_rounds)):
        if rounds <= 0:
            continue
        scratch = Scratch(inventory(workers=50, key_algorithm=algorithm))
        scratch.doit("pki")
        entries = cert_set(scratch.root / "build")
        work = Path(tempfile.mkdtemp(prefix="kthw-bench-base-"))
        (work / "spec.json").write_text(json.dumps({"algorithm": algorithm, "certs": entries}))
        (work / "openssl.sh").write_text(openssl_script(entries, algorithm))

        def clean_outputs():
            scratch.reset()
            subprocess.run(["rm", "-rf", str(work / "out-shell"), str(work / "out-loop")], check=True)

        times = alternate({
            "ours": lambda: scratch.doit("pki"),
            "openssl-shell": lambda: subprocess.run(["bash", str(work / "openssl.sh"), str(work / "out-shell")],
                                                    check=True),
            "bare-loop": lambda: subprocess.run([sys.executable, str(BARE_LOOP), str(work / "spec.json"),
                                                 str(work / "out-loop")], check=True),
        }, rounds, before_each=clean_outputs)
        report(f"pki, 3 control planes + 50 workers, {algorithm}: {len(entries)} keys and certs "
               "(ours also writes node copies and kubeconfigs)", times, "ours",
               {"openssl-shell": ">= 20 (ECDSA P-256)", "bare-loop": "<= 3 (inverse: ours/bare)"})
        scratch.remove()
        subprocess.run(["rm", "-rf", str(work)], check=True)

    if args.parallel_rounds > 0:
        scratch = Scratch(inventory(workers=50))
        times = alternate({"-n 1": lambda: scratch.doit("pki"),
                           "-n 2": lambda: scratch.doit("-n", "2", "-P", "process", "pki")},
                          args.parallel_rounds, before_each=scratch.reset)
        report("doit -n 2 vs -n 1, pki stage, ECDSA P-256", times, "-n 1")
        scratch.remove()


if __name__ == "__main__":
    main()
