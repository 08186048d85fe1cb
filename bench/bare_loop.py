"""The in-process limit for bench/pki: make and write the given keys and certs, nothing else.

    python bench/bare_loop.py SPEC.json OUT_DIR
"""

import ipaddress
import json
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

spec = json.loads(Path(sys.argv[1]).read_text())
out = Path(sys.argv[2])
now = datetime.now(timezone.utc)
made: dict[str, tuple] = {}
for entry in spec["certs"]:
    key = (ec.generate_private_key(ec.SECP256R1()) if spec["algorithm"] == "ecdsa-p256"
           else rsa.generate_private_key(65537, 2048))
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in entry["orgs"]]
                     + [x509.NameAttribute(NameOID.COMMON_NAME, entry["cn"])])
    issuer_cert, issuer_key = made.get(entry["issuer"], (None, key))
    builder = (x509.CertificateBuilder().subject_name(name)
               .issuer_name(issuer_cert.subject if issuer_cert else name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now).not_valid_after(now + timedelta(days=entry["days"]))
               .add_extension(x509.BasicConstraints(ca=entry["ca"], path_length=None), critical=True))
    if entry["eku"]:
        builder = builder.add_extension(x509.ExtendedKeyUsage(
            [ExtendedKeyUsageOID.SERVER_AUTH if e == "serverAuth" else ExtendedKeyUsageOID.CLIENT_AUTH
             for e in entry["eku"]]), critical=False)
    sans = [x509.DNSName(s[4:]) if s.startswith("DNS:") else x509.IPAddress(ipaddress.ip_address(s[3:]))
            for s in entry["sans"]]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(issuer_key, hashes.SHA256())
    made[entry["id"]] = (cert, key)
    path = out / entry["id"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    path.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
