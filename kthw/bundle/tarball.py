"""Reproducible .tar.gz whose bulk is compressed once and joined by a plain byte copy.

A deflate stream is a sequence of blocks; only the last has the "final" bit. A part
compressed on its own and ended with a *full flush* (an empty stored block: byte
aligned, not final, no reference to it from later data) can therefore be followed by
the blocks of another, independent deflate stream. So a bundle is written as

    gzip header | deflate part A (vendored files) | deflate part B (node files,
    end-of-archive, final block) | CRC32 and size of A+B

where the header and part A are copied byte for byte from a cache file and the
trailer's CRC continues from A's recorded CRC. The result is ONE ordinary gzip member (this is zlib's gzjoin
technique). Concatenated gzip members would also be a valid .tar.gz for gunzip, GNU
tar and ``tarfile.open()``, but Python's streaming reader (``tarfile.open(mode="r|gz")``)
stops after the first member without an error: a bundle read that way would silently
lose its node files.

Every entry is a regular file with uid/gid 0, no user or group names, one fixed mtime
and the mode it gets on the node; entries are written in the order given (callers sort
them). The gzip header has mtime 0, no file name, OS "unix". The same inputs give the
same bytes on every run and every workstation with the same zlib.
"""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

BLOCK = 512
END_OF_ARCHIVE = bytes(2 * BLOCK)
COMPRESSION_LEVEL = 6  # gzip's default: about a third off real binaries, ~50 MB/s per core
CHUNK = 1 << 20
# ID1 ID2, CM=deflate, FLG=0 (no name, no comment), MTIME=0, XFL=0, OS=3 (unix)
GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03"


@dataclass(frozen=True)
class Entry:
    """One file of the archive: ``name`` inside it, its bytes from ``source`` or ``data``."""

    name: str
    mode: int
    source: Path | None = None
    data: bytes | None = None


def header(name: str, size: int, mode: int, mtime: int) -> bytes:
    """The tar header of a regular file, with nothing taken from the host."""
    import tarfile  # tarfile is loaded only where an archive is read or written: a no-op run never is
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, mode, mtime
    info.type = tarfile.REGTYPE
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    # POSIX (pax) format: a plain ustar header for the short ASCII names used here.
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "strict")


class DeflatePart:
    """Raw deflate data written to ``out``, with the CRC32 and length of what went in.

    ``final=False`` ends with a full flush, so that another part may follow; ``crc`` and
    ``size`` continue the counts of the parts before it.
    """

    def __init__(self, out: BinaryIO, *, final: bool, crc: int = 0, size: int = 0,
                 level: int = COMPRESSION_LEVEL):
        self.out, self.final, self.crc, self.size = out, final, crc, size
        self._zlib = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)

    def write(self, data: bytes) -> None:
        self.crc = zlib.crc32(data, self.crc)
        self.size += len(data)
        self.out.write(self._zlib.compress(data))

    def close(self) -> None:
        self.out.write(self._zlib.flush(zlib.Z_FINISH if self.final else zlib.Z_FULL_FLUSH))


def gzip_trailer(crc: int, size: int) -> bytes:
    return struct.pack("<II", crc & 0xFFFFFFFF, size & 0xFFFFFFFF)


def write_entries(part: DeflatePart, entries: Iterable[Entry], mtime: int, *, end: bool) -> dict[str, str]:
    """Write tar ``entries`` into ``part``; return the sha256 of each entry's bytes by name.

    Each source file is read once: hashed and compressed in the same pass. With ``end``
    the two zero blocks that close a tar archive follow.
    """
    digests: dict[str, str] = {}
    for entry in entries:
        digest = hashlib.sha256()
        if entry.data is not None:
            size = len(entry.data)
            part.write(header(entry.name, size, entry.mode, mtime))
            part.write(entry.data)
            digest.update(entry.data)
        elif entry.source is None:
            raise ValueError(f"{entry.name}: an archive entry needs its source or its data")
        else:
            with open(entry.source, "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                part.write(header(entry.name, size, entry.mode, mtime))
                copied = 0
                while chunk := handle.read(CHUNK):
                    part.write(chunk)
                    digest.update(chunk)
                    copied += len(chunk)
            if copied != size:  # the file changed while it was read: the header would lie
                raise OSError(f"{entry.source} changed size while it was packed")
        part.write(bytes(-size % BLOCK))
        digests[entry.name] = digest.hexdigest()
    if end:
        part.write(END_OF_ARCHIVE)
    return digests


def copy_into(out: BinaryIO, source: Path) -> int:
    """Append the bytes of ``source`` to ``out``, in the kernel where it can (no trip through
    Python: as fast as cp). Returns the number of bytes copied."""
    out.flush()
    with open(source, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        copied = 0
        try:
            while copied < size:
                count = os.copy_file_range(handle.fileno(), out.fileno(), size - copied)
                if count == 0:
                    break
                copied += count
        except (AttributeError, OSError):
            # No copy_file_range here (old kernel, other OS, some filesystems): a plain copy.
            handle.seek(copied)
            out.seek(0, os.SEEK_END)
            while chunk := handle.read(CHUNK):
                out.write(chunk)
                copied += len(chunk)
        out.seek(0, os.SEEK_END)
    if copied != size:
        raise OSError(f"{source}: copied {copied} of {size} bytes")
    return copied
