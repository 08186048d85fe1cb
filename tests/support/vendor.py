"""Loopback servers for the vendor tests (no tests here).

- ``Upstream``: a real HTTP server on 127.0.0.1 playing dl.k8s.io / GitHub releases (and a
  forward proxy), serving stand-in release files, counting requests and injecting faults.
- ``Registry``: Debian's real ``docker-registry`` on 127.0.0.1 with token auth, and a small
  token server of ours that hands out anonymous pull (and, for the test, push) tokens, so
  the bearer-token flow is the real one a public registry uses.
- ``release()``: stand-in payloads for every component and arch, and a site pins file
  with their checksums.
- ``vendor_section()``: the inventory's vendor block for those servers; ``NO_PROXY_ENV``
  keeps a proxy of this machine out of the way.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import gzip
import hashlib
import io
import json
import random
import socket
import subprocess
import tarfile
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kthw.supply import components
from support.jwt import sign_jwt
from support.servers import free_port
from support.tools import require

K8S = "1.37.90"  # a supported minor that the shipped pins do not pin
RELEASE = {"etcd": "9.5.1", "containerd": "9.2.1", "runc": "9.3.4", "cni-plugins": "9.8.0", "crictl": "1.99.0",
           "pause": "3.99", "coredns": "9.14.2"}
# The templates the site pins use: real upstream URLs (a mirror replaces them in the tests).
URL_TEMPLATES = {
    "kubernetes-server": "https://dl.k8s.io/v{version}/kubernetes-server-linux-{arch}.tar.gz",
    "kubernetes-node": "https://dl.k8s.io/v{version}/kubernetes-node-linux-{arch}.tar.gz",
    "etcd": "https://github.com/etcd-io/etcd/releases/download/v{version}/etcd-v{version}-linux-{arch}.tar.gz",
    "containerd": "https://github.com/containerd/containerd/releases/download/v{version}/containerd-{version}-linux-{arch}.tar.gz",
    "runc": "https://github.com/opencontainers/runc/releases/download/v{version}/runc.{arch}",
    "cni-plugins": "https://github.com/containernetworking/plugins/releases/download/v{version}/cni-plugins-linux-{arch}-v{version}.tgz",
    "crictl": "https://github.com/kubernetes-sigs/cri-tools/releases/download/v{version}/crictl-v{version}-linux-{arch}.tar.gz",
}


# --- stand-in release files ----------------------------------------------------------------


def binary_text(name: str, version: str, arch: str) -> bytes:
    return f"#!/bin/sh\necho stand-in {name} {version} {arch}\n".encode()


def _tar_gz(members: dict[str, bytes]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o755, 1700000000
            archive.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0)


def file_name(component: str, version: str, arch: str) -> str:
    return URL_TEMPLATES[component].format(version=version, arch=arch).rsplit("/", 1)[1]


def payload(component: str, version: str, arch: str, padding: int = 0) -> bytes:
    """A stand-in release file laid out like the real one (kthw/supply/components.py)."""
    spec = components.FILES[component]
    if not spec.is_archive:
        return binary_text(spec.binaries[0].name, version, arch)
    members = {binary.member.format(version=version, arch=arch): binary_text(binary.name, version, arch)
               for binary in spec.binaries}
    if padding:  # incompressible bytes, so that a transfer can be cut half way through
        members["padding.bin"] = random.Random(f"{component}{arch}").randbytes(padding)
    return _tar_gz(members)


def checksum(component: str, data: bytes) -> str:
    algorithm = components.FILES[component].algorithm
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


@dataclass
class Release:
    """Every stand-in file of one Kubernetes version, keyed by mirror path."""

    k8s: str
    versions: dict
    files: dict[str, bytes] = field(default_factory=dict)          # mirror path -> bytes
    checksums: dict[tuple, str] = field(default_factory=dict)      # (component, version, arch) -> pin

    def path(self, component: str, arch: str) -> str:
        version = self.versions[component]
        return f"/mirror/{component}/{version}/{file_name(component, version, arch)}"


def release(k8s: str = K8S, padding: int = 200_000, **overrides: str) -> Release:
    versions = {**RELEASE, **overrides, "kubernetes-server": k8s, "kubernetes-node": k8s}
    result = Release(k8s, versions)
    for component in components.FILES:
        for arch in ("amd64", "arm64"):
            data = payload(component, versions[component], arch, padding if component == "kubernetes-server" else 0)
            result.files[result.path(component, arch)] = data
            result.checksums[(component, versions[component], arch)] = checksum(component, data)
    return result


def site_pins(releases: list[Release], images: dict[tuple[str, str], str] | None = None,
              templates: dict | None = None) -> str:
    """A site pins file for the stand-ins; ``images`` maps (name, version) to an index digest."""
    data: dict = {"schema": 1, "url_templates": templates or URL_TEMPLATES, "releases": {}, "checksums": {}}
    for rel in releases:
        data["releases"][rel.k8s] = {name: rel.versions[name] for name in components.RELEASE_KEYS}
        for (component, version, arch), pin in rel.checksums.items():
            data["checksums"].setdefault(component, {}).setdefault(version, {})[arch] = pin
    if images:
        data["images"] = {}
        for (name, version), digest in images.items():
            repository = "registry.k8s.io/pause" if name == "pause" else "registry.k8s.io/coredns/coredns"
            data["images"].setdefault(name, {})[version] = {"repository": repository, "digest": digest}
    return "# test site pins\n" + yaml.safe_dump(data, sort_keys=False)


# --- the HTTP server playing upstream --------------------------------------------------------


@dataclass
class Seen:
    method: str
    path: str
    headers: dict
    proxied: bool


class UpstreamHandler(BaseHTTPRequestHandler):
    """Upstream's requests: its files, with its faults."""

    def log_message(self, *args):
        pass

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        upstream = self.server.upstream
        parts = urllib.parse.urlsplit(self.path)
        with upstream.lock:
            upstream.seen.append(Seen(self.command, parts.path, dict(self.headers.items()),
                                      self.path.startswith("http://")))
            queue = upstream.faults.get(parts.path) or []
            fault = queue.pop(0) if queue else None
        if fault == "500":
            return self.send_error(500)
        body = upstream.files.get(parts.path)
        if fault == "404" or body is None:
            return self.send_error(404)
        if fault == "wrong":
            body = bytes(b ^ 0x5A for b in body)
        start = 0
        if self.headers.get("Range", "").startswith("bytes="):
            start = int(self.headers["Range"][6:].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        part = body[start:]
        if fault != "nolength":
            self.send_header("Content-Length", str(len(part)))
        self.end_headers()
        if self.command == "HEAD":
            return
        if fault in ("cut", "nolength"):
            self.wfile.write(part[: len(part) // 2])
            self.wfile.flush()
            self.close_connection = True
            with contextlib.suppress(OSError):  # the client may have gone already
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(part)


class Upstream:
    """Serves ``files`` (path -> bytes); ``faults[path]`` is a list of faults used up one per request:
    "500", "404", "wrong" (other bytes, same length), "cut" (half the body, then the connection
    closes), "nolength" (half the body without a Content-Length)."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.faults: dict[str, list[str]] = {}
        self.seen: list[Seen] = []
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), UpstreamHandler)
        self.server.upstream = self
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def requests(self, path: str | None = None) -> list[Seen]:
        with self.lock:
            return [seen for seen in self.seen if path is None or seen.path == path]

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


# --- a real registry with the anonymous token flow ---------------------------------------------


class TokenServer:
    """Issues ES256 tokens the registry verifies against our self-signed cert (x5c header)."""

    SERVICE, ISSUER = "kthw-test-registry", "kthw-test-issuer"

    def __init__(self, directory: Path):
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kthw test token issuer")])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - datetime.timedelta(hours=1))
                     .not_valid_after(now + datetime.timedelta(days=1))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .sign(self.key, hashes.SHA256()))
        self.bundle = directory / "token-issuer.crt"
        self.bundle.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        self.scopes: list[str] = []
        tokens = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                scope = query.get("scope", [""])[0]
                tokens.scopes.append(scope)
                body = json.dumps({"token": tokens.token(scope)}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/token"

    def token(self, scope: str) -> str:
        access = []
        if scope:
            kind, name, actions = scope.split(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        claims = {"iss": self.ISSUER, "sub": "", "aud": self.SERVICE, "exp": now + 600, "nbf": now - 60,
                  "iat": now, "jti": str(random.random()), "access": access}
        return sign_jwt(self.key, claims,
                        x5c=[base64.b64encode(self.cert.public_bytes(serialization.Encoding.DER)).decode()])

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class Registry:
    """Debian's docker-registry on 127.0.0.1, storage in a temp dir, token auth; stopped by close()."""

    def __init__(self, directory: Path):
        binary = require("docker-registry")
        self.tokens = TokenServer(directory)
        self.port = free_port()
        config = {
            "version": 0.1,
            "log": {"level": "info", "formatter": "text"},
            "storage": {"filesystem": {"rootdirectory": str(directory / "storage")}, "delete": {"enabled": True}},
            "http": {"addr": f"127.0.0.1:{self.port}", "secret": "kthw-test"},
            "auth": {"token": {"realm": self.tokens.realm, "service": TokenServer.SERVICE,
                               "issuer": TokenServer.ISSUER, "rootcertbundle": str(self.tokens.bundle)}},
        }
        (directory / "config.yml").write_text(yaml.safe_dump(config))
        self.log = directory / "registry.log"
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen([binary, "serve", str(directory / "config.yml")],
                                            stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    break
            except OSError as error:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.close()
                    raise AssertionError(f"docker-registry did not start:\n{self.log.read_text()}") from error
                time.sleep(0.1)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def requests(self) -> int:
        """HTTP requests the registry answered so far (its access log)."""
        return self.log.read_text(errors="replace").count("response completed")

    def close(self):
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        self.tokens.close()

    # -- pushing a test image through the registry API --

    def _call(self, method: str, url: str, repository: str, body: bytes = b"", content_type: str = ""):
        token = self.tokens.token(f"repository:{repository}:pull,push")
        request = urllib.request.Request(url if url.startswith("http") else self.url + url, data=body or None,
                                         method=method, headers={"Authorization": f"Bearer {token}"})
        if content_type:
            request.add_header("Content-Type", content_type)
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.headers

    def push_blob(self, repository: str, data: bytes) -> dict:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        _, headers = self._call("POST", f"/v2/{repository}/blobs/uploads/", repository)
        location = headers["Location"]
        location += ("&" if "?" in location else "?") + urllib.parse.urlencode({"digest": digest})
        self._call("PUT", location, repository, data, "application/octet-stream")
        return {"digest": digest, "size": len(data)}

    def push_manifest(self, repository: str, reference: str, document: dict, media_type: str) -> dict:
        raw = json.dumps(document).encode()
        self._call("PUT", f"/v2/{repository}/manifests/{reference}", repository, raw, media_type)
        return {"mediaType": media_type, "digest": "sha256:" + hashlib.sha256(raw).hexdigest(), "size": len(raw)}

    def push_image(self, repository: str, tag: str) -> str:
        """A two-arch image (one small layer each); returns the index digest."""
        entries = []
        for arch in ("amd64", "arm64"):
            layer_tar = io.BytesIO()
            with tarfile.open(fileobj=layer_tar, mode="w") as archive:
                data = f"{repository}:{tag} for {arch}\n".encode()
                info = tarfile.TarInfo(f"hello-{arch}")
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
            layer = gzip.compress(layer_tar.getvalue(), mtime=0)
            config = json.dumps({"architecture": arch, "os": "linux", "config": {},
                                 "rootfs": {"type": "layers",
                                            "diff_ids": ["sha256:" + hashlib.sha256(layer_tar.getvalue()).hexdigest()]}
                                 }).encode()
            manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                   **self.push_blob(repository, config)},
                        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                                    **self.push_blob(repository, layer)}]}
            descriptor = self.push_manifest(repository, f"{tag}-{arch}", manifest,
                                            "application/vnd.oci.image.manifest.v1+json")
            entries.append({**descriptor, "platform": {"architecture": arch, "os": "linux"}})
        index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": entries}
        return self.push_manifest(repository, tag, index, "application/vnd.oci.image.index.v1+json")["digest"]


NO_PROXY_ENV = {name: "" for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy",
                                      "ALL_PROXY")}


def vendor_section(mirror: str, registry: str | None = None, overrides: dict | None = None) -> str:
    lines = ["vendor:", f"  mirror: {mirror}", "  site_pins: site-pins.yaml"]
    if registry:
        lines.append(f"  registry_mirror: {registry}")
    if overrides:
        lines.append("  overrides:")
        lines += [f"    {name}: {value}" for name, value in overrides.items()]
    return "\n".join(lines)
