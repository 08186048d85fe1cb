"""Pulling an image by digest from an OCI registry, over the registry v2 HTTP API.

No docker daemon: the pinned multi-arch index is fetched by digest, the arch's manifest is
taken from it, every manifest and blob is verified against its digest, and the result is
written as an OCI image layout tar that `ctr -n k8s.io images import` accepts. The archive's
index.json names the image (``io.containerd.image.name`` and
``org.opencontainers.image.ref.name``), so it keeps its name on the node.

Registries that want a token get the anonymous bearer-token flow: a 401 with
``WWW-Authenticate: Bearer realm=...,service=...,scope=...`` sends us to the realm for a
pull token, and the request is repeated with it.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import tempfile
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from kthw.fsutil import atomic_file
from kthw.supply import download
from kthw.supply.download import DownloadError

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
ACCEPT = ", ".join(INDEX_TYPES + MANIFEST_TYPES)
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
NAME_ANNOTATION = "io.containerd.image.name"
REF_ANNOTATION = "org.opencontainers.image.ref.name"

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY = re.compile(rf"^(?:(https?)://)?((?:[a-zA-Z0-9-]+\.)*[a-zA-Z0-9-]+(?::\d+)?|\[[0-9a-fA-F:]+\](?::\d+)?)"
                         rf"/({_COMPONENT}(?:/{_COMPONENT})*)$")
_API_HOSTS = {"docker.io": "registry-1.docker.io"}


class OciError(DownloadError):
    """An image could not be pulled or did not match its pinned digest."""


@dataclass(frozen=True)
class Repository:
    """``[http(s)://]host[:port]/path``: where the registry API is reached for one image."""

    scheme: str
    host: str
    path: str

    @classmethod
    def parse(cls, text: str) -> Repository:
        match = _REPOSITORY.match(text.strip())
        if not match or ("." not in match.group(2) and ":" not in match.group(2) and match.group(2) != "localhost"):
            raise ValueError(f"'{text}' is not an image repository: write host/path, e.g. registry.k8s.io/pause "
                             "(no tag, no digest; lowercase path)")
        return cls(match.group(1) or "https", match.group(2), match.group(3))

    def __str__(self) -> str:
        return f"{self.host}/{self.path}" if self.scheme == "https" else f"{self.scheme}://{self.host}/{self.path}"

    def mirrored(self, registry: str) -> Repository:
        """The same image in a registry mirror (``http(s)://host[:port][/prefix]``)."""
        parts = urllib.parse.urlsplit(registry)
        prefix = parts.path.strip("/")
        return Repository(parts.scheme, parts.netloc, f"{prefix}/{self.path}" if prefix else self.path)

    def api(self, kind: str, reference: str) -> str:
        host = _API_HOSTS.get(self.host, self.host)
        return f"{self.scheme}://{host}/v2/{self.path}/{kind}/{reference}"


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Client:
    """One repository of one registry, with the anonymous token once it is known."""

    def __init__(self, repository: Repository):
        self.repository = repository
        self.token: str | None = None

    def _headers(self, accept: str | None = None) -> dict:
        headers = {"Accept": accept} if accept else {}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def get(self, url: str, accept: str | None = None, hint: str = "") -> download.Response:
        answer = download.get(url, self._headers(accept), allow=(401,), hint=hint)
        if answer.status == 401 and self.token is None:
            self._login(answer.headers, url)
            answer = download.get(url, self._headers(accept), allow=(401,), hint=hint)
        if answer.status == 401:
            raise OciError(f"{url}: the registry refuses the anonymous pull token (401)\n  fix: only public "
                           "images can be pulled; use a registry mirror that serves this image anonymously")
        return answer

    def _login(self, headers: dict, url: str) -> None:
        challenge = headers.get("www-authenticate", "")
        if not challenge.lower().startswith("bearer "):
            raise OciError(f"{url}: the registry wants credentials ({challenge or 'no challenge given'})\n  fix: "
                           "only anonymous pulls are supported; use a registry mirror that serves the image "
                           "anonymously")
        params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
        realm = params.get("realm", "")
        if not download.is_url(realm):
            raise OciError(f"{url}: the registry's token challenge has no http(s) realm ({challenge})")
        query = {key: params[key] for key in ("service", "scope") if key in params}
        query.setdefault("scope", f"repository:{self.repository.path}:pull")
        answer = download.get(f"{realm}?{urllib.parse.urlencode(query)}")
        try:
            data = json.loads(answer.body)
            self.token = data.get("token") or data.get("access_token")
        except (ValueError, AttributeError):
            self.token = None
        if not isinstance(self.token, str) or not self.token:
            raise OciError(f"{realm}: the token server gave no token")

    def manifest(self, digest: str, what: str) -> tuple[bytes, str]:
        """A manifest or index by digest, verified; returns its bytes and media type."""
        url = self.repository.api("manifests", digest)
        answer = self.get(url, ACCEPT, hint=f"the registry does not hold {what}: check the pin and the registry "
                                          "mirror or override")
        got = _sha256(answer.body)
        if got != digest:
            raise OciError(f"{url}: image digest mismatch for {what}\n  expected {digest}\n  got      {got}\n  "
                           "nothing was kept.\n  fix: the registry serves other content than the pinned image: "
                           "check the registry mirror or override, and the pin")
        try:
            document = json.loads(answer.body)
        except ValueError:
            raise OciError(f"{url}: {what} is not JSON") from None
        media_type = document.get("mediaType") if isinstance(document, dict) else None
        header_type = answer.headers.get("content-type", "")
        return answer.body, media_type or header_type.split(";")[0].strip()

    def resolve(self, tag: str) -> str:
        """The digest a tag points at now (for pinning)."""
        url = self.repository.api("manifests", tag)
        answer = self.get(url, ACCEPT, hint="check the image version and the registry mirror or override")
        digest = _sha256(answer.body)
        claimed = answer.headers.get("docker-content-digest", digest)
        if claimed != digest:
            raise OciError(f"{url}: the registry says the manifest is {claimed} but its bytes are {digest}")
        return digest

    def blob(self, digest: str, dest: Path, label: str) -> None:
        url = self.repository.api("blobs", digest)
        download.fetch(url, dest, digest, label=label, headers=self._headers(),
                       hint="the registry does not hold this layer: check the registry mirror")


def _platform_manifest(index: dict, arch: str, where: str) -> dict:
    candidates = []
    for entry in index.get("manifests") or []:
        platform = entry.get("platform") or {}
        if platform.get("os") == "linux" and platform.get("architecture") == arch:
            candidates.append(entry)
    # arm64 images may name the variant (v8) or not; prefer a plain or v8 entry.
    candidates.sort(key=lambda e: (e.get("platform", {}).get("variant") not in (None, "v8")))
    if not candidates:
        found = sorted({f"{(e.get('platform') or {}).get('os')}/{(e.get('platform') or {}).get('architecture')}"
                        for e in index.get("manifests") or []})
        raise OciError(f"{where}: the image has no linux/{arch} manifest (it has: {', '.join(found) or 'none'})"
                       f"\n  fix: pin an image that is built for {arch}")
    return candidates[0]


def _descriptor(entry: object, where: str) -> tuple[str, int, str]:
    if not isinstance(entry, dict) or not DIGEST.match(str(entry.get("digest", ""))) \
            or not isinstance(entry.get("size"), int):
        raise OciError(f"{where}: a descriptor without a sha256 digest and size: {entry!r}")
    return entry["digest"], entry["size"], entry.get("mediaType", "")


def pull(repository: Repository, name: str, tag: str, index_digest: str, arch: str, dest: Path, origin: str) -> None:
    """Write the ``arch`` image of the pinned index as an OCI layout tar at ``dest``.

    ``name`` is the reference the node knows the image by (e.g. registry.k8s.io/pause:3.10.1);
    ``origin`` is what the file's stamp vouches for.
    """
    dest = Path(dest)
    where = f"{name}@{index_digest} ({arch})"
    client = Client(repository)
    work = None
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}."))
        digest, body, media_type, document = _image_manifest(client, name, index_digest, arch, where)
        blobs = [_descriptor(document.get("config"), where)] + [_descriptor(layer, where)
                                                                 for layer in document.get("layers") or []]
        _pull_blobs(client, work, blobs, f"{name} ({arch})", where)
        if digest == index_digest:
            config = json.loads((work / blobs[0][0].split(":")[1]).read_bytes())
            if config.get("architecture") != arch:
                raise OciError(f"{where}: the pinned digest is a single {config.get('architecture')} image"
                               f"\n  fix: pin the multi-arch index digest")
        (work / digest.split(":")[1]).write_bytes(body)
        index_json = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [{
            "mediaType": media_type, "digest": digest, "size": len(body),
            "platform": {"architecture": arch, "os": "linux"},
            "annotations": {NAME_ANNOTATION: name, REF_ANNOTATION: tag}}]}
        _write_layout(dest, work, [digest] + [blob[0] for blob in blobs], index_json, origin)
    except DownloadError as err:
        raise type(err)(f"image {where}: {err}") from None
    except OSError as err:
        raise OciError(f"{dest.parent}: cannot write the image archive ({err.strerror}); nothing was kept"
                       "\n  fix: free some disk space (or fix the directory's permissions), then run again") from None
    finally:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)


def _image_manifest(client: Client, name: str, index_digest: str, arch: str,
                    where: str) -> tuple[str, bytes, str, dict]:
    """The ``arch`` image manifest the pinned digest leads to: its digest, bytes, media type and document.
    A pinned index leads to its ``arch`` entry; a pinned single-arch manifest is itself."""
    body, media_type = client.manifest(index_digest, f"the image index of {name}")
    document = json.loads(body)
    if media_type in INDEX_TYPES:
        digest, _, media_type = _descriptor(_platform_manifest(document, arch, where), where)
        body, media_type = client.manifest(digest, f"the {arch} manifest of {name}")
        document = json.loads(body)
    elif media_type in MANIFEST_TYPES:
        digest = index_digest  # a single-arch image: its config must say it is this arch
    else:
        raise OciError(f"{where}: unexpected manifest type '{media_type}'")
    if media_type not in MANIFEST_TYPES:
        raise OciError(f"{where}: the {arch} entry is a '{media_type}', not an image manifest")
    return digest, body, media_type, document


def _pull_blobs(client: Client, work: Path, blobs: list[tuple[str, int, str]], label: str, where: str) -> None:
    """Each blob into ``work``, named by its hex digest, of the size its descriptor gives."""
    for index, (blob_digest, size, _) in enumerate(blobs):
        path = work / blob_digest.split(":")[1]
        client.blob(blob_digest, path, f"{label} blob {index + 1}/{len(blobs)}")
        if path.stat().st_size != size:
            raise OciError(f"{where}: blob {blob_digest} is {path.stat().st_size} bytes, the manifest says {size}")


def _write_layout(dest: Path, work: Path, digests: list[str], index_json: dict, origin: str) -> None:
    """A reproducible tar: fixed order, owner and times, so the same image gives the same bytes."""
    import tarfile  # tarfile is loaded only where an archive is read or written: a no-op run never is

    def info(name: str, size: int = 0, directory: bool = False) -> tarfile.TarInfo:
        entry = tarfile.TarInfo(name)
        entry.size, entry.mtime, entry.uid, entry.gid, entry.uname, entry.gname = size, 0, 0, 0, "", ""
        entry.type, entry.mode = (tarfile.DIRTYPE, 0o755) if directory else (tarfile.REGTYPE, 0o644)
        return entry

    with atomic_file(dest, 0o644) as out:
        with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as archive:
            for name, data in (("oci-layout", {"imageLayoutVersion": "1.0.0"}), ("index.json", index_json)):
                raw = json.dumps(data, indent=2, sort_keys=True).encode() + b"\n"
                archive.addfile(info(name, len(raw)), io.BytesIO(raw))
            archive.addfile(info("blobs", directory=True))
            archive.addfile(info("blobs/sha256", directory=True))
            for digest in dict.fromkeys(digests):
                path = work / digest.split(":")[1]
                with open(path, "rb") as handle:
                    archive.addfile(info(f"blobs/sha256/{path.name}", path.stat().st_size), handle)
        out.flush()
        checksum = "sha256:" + download.hash_file(Path(out.name), "sha256")
    download.record(dest, checksum, origin)
