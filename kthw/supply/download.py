"""Fetching files over HTTP(S) or from a directory: streamed, hashed while streaming, and put
in place (by a rename) only once the bytes match the pinned checksum.

- A transfer cut short is resumed with an HTTP Range request; 5xx answers and connection
  errors are retried a bounded number of times with a growing pause.
- The standard proxy variables (http_proxy, https_proxy, no_proxy) are honoured (urllib).
- On any failure the temporary file is deleted: the destination holds either nothing,
  its previous content, or a verified file.
- A verified file gets a stamp (size, mtime, checksum) beside it, so that checking it again
  later costs one stat unless the file changed; a changed file is hashed again.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import socket
import sys
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, TypeVar

from kthw.errors import KthwError
from kthw.fsutil import atomic_file, atomic_write, remove

T = TypeVar("T")

# http.client, urllib.request and urllib.error (with the email package, ~15 ms) are imported
# by the functions that go to the network: the inventory reads this module's types on every
# doit run, which never downloads.
if TYPE_CHECKING:
    import email.message
    import urllib.error
    import urllib.request

ATTEMPTS = 5          # tries per file, the first included
BACKOFF = 0.5         # seconds before the second try; doubles after each failure
TIMEOUT = 30          # seconds without a byte before a connection counts as broken
CHUNK = 1 << 16
USER_AGENT = "kthw-airgap"
ALGORITHMS = {"sha256": 64, "sha512": 128}
_CHECKSUM = re.compile(r"^(sha256|sha512):([0-9a-f]+)$")
_RETRY_STATUS = {408, 425, 429}


class DownloadError(KthwError):
    """A file could not be fetched or did not match its pin; nothing was left behind."""


@dataclass(frozen=True)
class Checksum:
    """A pinned file's expected digest."""

    algorithm: str
    hex: str

    @classmethod
    def parse(cls, text: str) -> Checksum:
        match = _CHECKSUM.match(text.strip().lower()) if isinstance(text, str) else None
        if not match or len(match.group(2)) != ALGORITHMS[match.group(1)]:
            raise ValueError(f"'{text}' is not a checksum: write sha256:<64 hex digits> or sha512:<128 hex digits>")
        return cls(match.group(1), match.group(2))

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"

    def hasher(self):
        return hashlib.new(self.algorithm)


def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


# --- stamps: cheap re-verification ------------------------------------------------


def _stamp_path(path: Path) -> Path:
    return path.parent / f".{path.name}.verified"


def record(path: Path, checksum: str, origin: str) -> None:
    """Remember that ``path`` (as it is now) has ``checksum`` and was verified for ``origin``."""
    stat = path.stat()
    stamp = {"origin": origin, "checksum": checksum, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    # Atomic: a run killed mid-write leaves the previous stamp, never a torn one.
    atomic_write(_stamp_path(path), (json.dumps(stamp, sort_keys=True) + "\n").encode())


def verified(path: Path, origin: str) -> bool:
    """True when ``path`` is the file once verified for ``origin`` (a pin) and unchanged since.

    An unchanged size and mtime trusts the stamp; otherwise the file is hashed again and
    the stamp refreshed if it still matches. A missing or corrupted file is False.
    """
    path = Path(path)
    try:
        stat = path.stat()
        stamp = json.loads(_stamp_path(path).read_text())
        if stamp["origin"] != origin:
            return False
        if (stamp["size"], stamp["mtime_ns"]) == (stat.st_size, stat.st_mtime_ns):
            return True
        expected = Checksum.parse(stamp["checksum"])
        if stat.st_size != stamp["size"] or hash_file(path, expected.algorithm) != expected.hex:
            return False
    except (OSError, ValueError, KeyError, TypeError):
        return False
    record(path, str(expected), origin)
    return True


def forget(path: Path) -> None:
    """Delete the file and its stamp."""
    remove((path, _stamp_path(path)))


def hash_file(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


# --- progress -------------------------------------------------------------------------


def _size(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.1f} {unit}" if unit != "B" else f"{int(count)} B"
        count /= 1024
    return ""


class Meter:
    """A progress bar (bytes, rate, ETA) on a terminal; one line per finished file otherwise."""

    def __init__(self, label: str, stream=None):
        self.label, self.stream = label, stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.monotonic()
        self.done = 0
        self.total: int | None = None
        self._shown = 0.0

    def update(self, done: int, total: int | None) -> None:
        self.done, self.total = done, total
        now = time.monotonic()
        if self.tty and now - self._shown >= 0.2:
            self._shown = now
            rate = done / max(now - self.start, 1e-6)
            if total:
                eta = (total - done) / rate if rate else 0
                text = (f"{self.label}: {done * 100 // total:3d}% {_size(done)} of {_size(total)}, "
                        f"{_size(rate)}/s, ETA {int(eta)} s")
            else:
                text = f"{self.label}: {_size(done)}, {_size(rate)}/s"
            self.stream.write("\r" + text[:120].ljust(80))
            self.stream.flush()

    def note(self, text: str) -> None:
        if self.tty:
            self.stream.write("\r" + " " * 80 + "\r")
        self.stream.write(f"{self.label}: {text}\n")
        self.stream.flush()

    def finish(self) -> None:
        elapsed = max(time.monotonic() - self.start, 1e-6)
        self.note(f"{_size(self.done)} in {elapsed:.1f} s ({_size(self.done / elapsed)}/s), verified")


# --- HTTP -------------------------------------------------------------------------------

@functools.cache
def _opener() -> urllib.request.OpenerDirector:
    import urllib.request

    return urllib.request.build_opener()  # ProxyHandler reads the proxy variables


@dataclass(frozen=True)
class Response:
    """An HTTP response, read whole."""

    status: int
    headers: dict     # names lower-cased: HTTP header names are case-insensitive
    body: bytes
    url: str


def _header_dict(message: email.message.Message) -> dict:
    return {name.lower(): value for name, value in message.items()}


def _request(url: str, headers: dict | None, method: str = "GET") -> urllib.request.Request:
    import urllib.request

    request = urllib.request.Request(url, method=method, headers={"User-Agent": USER_AGENT})
    for name, value in (headers or {}).items():
        # Credentials go to the host asked, never to the host a redirect points at.
        if name.lower() == "authorization":
            request.add_unredirected_header(name, value)
        else:
            request.add_header(name, value)
    return request


def _pause(attempt: int) -> float:
    return BACKOFF * 2 ** (attempt - 1)


def _retry_note(meter: Meter | None, url: str, why: str, attempt: int) -> None:
    text = f"{why}; trying again in {_pause(attempt):.1f} s (try {attempt + 1} of {ATTEMPTS})"
    if meter:
        meter.note(text)
    else:
        print(f"{url}: {text}", file=sys.stderr)


def _connection_problem(err: BaseException) -> str:
    import http.client
    import urllib.error

    if isinstance(err, urllib.error.URLError):
        err = err.reason if isinstance(err.reason, BaseException) else err
    if isinstance(err, http.client.IncompleteRead):
        return "the connection closed early"
    return f"connection error ({type(err).__name__}: {err})".replace(": )", ")")


def _give_up_on_unknown_host(url: str, err: BaseException) -> None:
    """A name that does not resolve will not resolve a second later: no retries for it."""
    import urllib.error

    reason = err.reason if isinstance(err, urllib.error.URLError) else err
    if isinstance(reason, socket.gaierror):
        host = urllib.parse.urlsplit(url).hostname
        raise DownloadError(f"{url}: cannot resolve the host name {host} ({reason.strerror})\n  fix: this "
                            "needs the connected workstation (or set vendor.mirror to a reachable mirror, or the "
                            "proxy variables http_proxy/https_proxy)") from None


def _http_error(url: str, err: urllib.error.HTTPError, hint: str) -> DownloadError:
    text = f"{url}: the server answered {err.code} {err.reason}"
    if err.code == 404:
        text += "; the file is not at this address"
    if err.code in (401, 403):
        text += "; it wants credentials (only anonymous access is supported)"
    return DownloadError(text + (f"\n  fix: {hint}" if hint else ""))


class _Retry(Exception):
    """A try failed in a way the next one may not; the text says how."""


class _Truncated(_Retry):
    """The body ended before its Content-Length (or resumed at the wrong place)."""


class _StartOver(Exception):
    """Try again at once, without a pause: it counts as a try, but no failure is reported."""


def _retrying(url: str, attempt: Callable[[], T], *, meter: Meter | None = None, hint: str = "",
              fix: str = "check the network, the proxy variables and the server",
              progress: Callable[[], str] | None = None) -> T:
    """``attempt()``'s result, tried again with a growing pause after a 5xx or retryable answer,
    a dropped connection or a :class:`_Retry`, at most :data:`ATTEMPTS` times. ``progress`` adds
    to a connection error how far the try got."""
    import http.client
    import urllib.error

    tries = 0
    while True:
        tries += 1
        try:
            return attempt()
        except _StartOver:
            continue
        except urllib.error.HTTPError as err:
            if not (err.code >= 500 or err.code in _RETRY_STATUS):
                raise _http_error(url, err, hint) from None
            why = f"the server answered {err.code} {err.reason}"
        except _Retry as err:
            why = str(err)
        except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
            _give_up_on_unknown_host(url, err)
            why = _connection_problem(err) + (progress() if progress else "")
        if tries >= ATTEMPTS:
            raise DownloadError(f"{url}: {why}, {ATTEMPTS} tries\n  fix: {fix}, then run again")
        _retry_note(meter, url, why, tries)
        time.sleep(_pause(tries))


def get(url: str, headers: dict | None = None, *, method: str = "GET", allow: tuple[int, ...] = (),
        hint: str = "", limit: int = 16 << 20) -> Response:
    """A small document (checksum file, manifest, token), with the same retries as files.

    Answers listed in ``allow`` (e.g. 401 for a registry challenge) are returned, not raised.
    """
    import urllib.error

    def attempt() -> Response:
        try:
            with _opener().open(_request(url, headers, method), timeout=TIMEOUT) as answer:
                body = answer.read(limit + 1)
                if len(body) > limit:
                    raise DownloadError(f"{url}: the answer is larger than {limit} bytes; this is not the "
                                        "small document expected here")
                return Response(answer.status, _header_dict(answer.headers), body, answer.url)
        except urllib.error.HTTPError as err:
            if err.code in allow:
                return Response(err.code, _header_dict(err.headers), err.read(limit), url)
            raise
    return _retrying(url, attempt, hint=hint)


class _WriteFailed(Exception):
    """Writing the local file failed: not an OSError, so the read loop does not retry it as a network failure."""

    def __init__(self, err: OSError):
        super().__init__(err)
        self.strerror = err.strerror


def _write(out: IO[bytes], chunk: bytes) -> None:
    try:
        out.write(chunk)
    except OSError as err:
        raise _WriteFailed(err) from None


def _content_range_start(value: str | None) -> int | None:
    match = re.match(r"^bytes (\d+)-\d+/(\d+|\*)$", (value or "").strip())
    return int(match.group(1)) if match else None


class _Transfer:
    """One file streamed into ``out`` across tries: how much has arrived, and its running digest."""

    def __init__(self, url: str, out: IO[bytes], checksum: Checksum, headers: dict | None, meter: Meter):
        self.url, self.out, self.checksum, self.headers, self.meter = url, out, checksum, headers, meter
        self.digest, self.have = checksum.hasher(), 0
        self.resumed = self.restarted = False

    def restart(self) -> None:
        self.out.seek(0)
        self.out.truncate()
        self.digest, self.have = self.checksum.hasher(), 0

    def progress(self) -> str:
        return f" after {_size(self.have)}" if self.have else ""

    def attempt(self) -> str:
        """One try, resuming where the last one stopped; the hex digest of the whole file."""
        import urllib.error

        try:
            self._receive()
        except urllib.error.HTTPError as err:
            if err.code == 416 and self.have:
                self.restart()
                raise _Retry("the server refused to resume (416)") from None
            raise
        if self.digest.hexdigest() != self.checksum.hex and self.resumed and not self.restarted:
            # A resumed transfer that does not verify: once, take the whole file again,
            # in case the parts came from two different versions of the file.
            self.meter.note("the resumed file does not verify; fetching it again from the start")
            self.restarted, self.resumed = True, False
            self.restart()
            raise _StartOver
        return self.digest.hexdigest()

    def _receive(self) -> None:
        extra = dict(self.headers or {})
        if self.have:
            extra["Range"] = f"bytes={self.have}-"
        with _opener().open(_request(self.url, extra), timeout=TIMEOUT) as answer:
            if self.have and answer.status == 206:
                if _content_range_start(answer.headers.get("Content-Range")) != self.have:
                    self.restart()
                    raise _Truncated("the server resumed at the wrong offset")
                self.resumed = True
            elif self.have:
                self.restart()  # the server ignored the Range: take the whole body again
            length = answer.headers.get("Content-Length")
            total = self.have + int(length) if length and length.isdigit() else None
            while chunk := answer.read(CHUNK):
                _write(self.out, chunk)
                self.digest.update(chunk)
                self.have += len(chunk)
                self.meter.update(self.have, total)
            if total is not None and self.have < total:
                raise _Truncated(f"the connection closed after {_size(self.have)} of {_size(total)}")


def _fetch_http(url: str, out: IO[bytes], checksum: Checksum, headers: dict | None, meter: Meter,
                hint: str) -> str:
    """Stream ``url`` into ``out``; returns the hex digest of what was written."""
    transfer = _Transfer(url, out, checksum, headers, meter)
    return _retrying(url, transfer.attempt, meter=meter, hint=hint, progress=transfer.progress,
                     fix="check the network, the proxy variables and the server (or the mirror)")


def _open_mirrored(source: str, hint: str) -> IO[bytes]:
    """A file of a mirror directory, opened to read; a missing or unreadable one is a DownloadError."""
    try:
        return open(source, "rb")
    except FileNotFoundError:
        raise DownloadError(f"{source}: no such file in the mirror directory"
                            + (f"\n  fix: {hint}" if hint else "")) from None
    except OSError as err:
        raise DownloadError(f"{source}: cannot read ({err.strerror})\n  fix: check the mirror "
                            "directory's permissions") from None


def _copy_local(source: str, out: IO[bytes], checksum: Checksum, meter: Meter, hint: str) -> str:
    digest = checksum.hasher()
    # Opened apart from the copy: an error reading the opened file is not the mirror's missing file.
    with _open_mirrored(source, hint) as handle:
        total, done = os.fstat(handle.fileno()).st_size, 0
        while chunk := handle.read(1 << 20):
            _write(out, chunk)
            digest.update(chunk)
            done += len(chunk)
            meter.update(done, total)
    return digest.hexdigest()


def fetch(source: str, dest: Path, checksum: str, *, origin: str | None = None, label: str = "",
          headers: dict | None = None, hint: str = "", mode: int = 0o644) -> None:
    """Put the file at ``source`` (URL or path) at ``dest`` once it matches ``checksum``.

    ``origin`` names what the stamp vouches for (default: the checksum itself). ``hint``
    is the fix printed when the source has no such file.
    """
    expected = Checksum.parse(checksum)
    dest = Path(dest)
    meter = Meter(label or dest.name)
    try:
        with atomic_file(dest, mode, suffix=".part") as out:
            if is_url(source):
                got = _fetch_http(source, out, expected, headers, meter, hint)
            else:
                got = _copy_local(source, out, expected, meter, hint)
            if got != expected.hex:
                raise DownloadError(f"{source}: checksum mismatch\n  expected {expected}\n  got      "
                                    f"{expected.algorithm}:{got}\n  the downloaded file was deleted."
                                    "\n  fix: the source serves other bytes than the pinned release: check the "
                                    "mirror or override, and the pin (a site pins file overrides the shipped one)")
        record(dest, str(expected), origin or str(expected))
        meter.finish()
    except (_WriteFailed, OSError) as err:
        raise DownloadError(f"{dest.parent}: cannot write {dest.name} ({err.strerror}); nothing was kept"
                            "\n  fix: free some disk space (or fix the directory's permissions), then run "
                            "again") from None
