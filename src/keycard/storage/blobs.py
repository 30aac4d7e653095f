"""Object data on local disk: one directory per bucket, one file per object generation.

File names are generation numbers chosen by keycard, never object names, so no object name can
reach outside its bucket's directory. A write goes to a temporary file in the bucket's directory,
is fsync'd and renamed into place (atomic on POSIX), and only then is the object's metadata
committed to the store; a failed commit deletes the file. Files no metadata names (a crash between
the rename and the commit) are removed by :meth:`BlobStore.sweep`.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import re
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["BlobStore", "Written", "crc32c_b64"]

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")
_BLOB = re.compile(r"^[0-9]{16,20}$")

_crc32c: Any
try:  # the C implementation google-cloud-storage uses, when installed
    import google_crc32c as _crc32c  # type: ignore[import-not-found, unused-ignore, no-redef]
except ImportError:  # pragma: no cover - depends on the environment
    _crc32c = None


def crc32c_b64(data: bytes) -> str | None:
    """Base64 of the big-endian CRC32C (Cloud Storage's ``crc32c`` field), when a fast implementation exists."""
    if _crc32c is None:
        return None
    return base64.b64encode(int(_crc32c.value(data)).to_bytes(4, "big")).decode()


@dataclass(frozen=True, slots=True)
class Written:
    blob: str              # file name inside the bucket directory (the generation)
    size: int
    md5: str               # base64, as Cloud Storage reports md5Hash
    crc32c: str | None


class BlobStore:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def _dir(self, bucket: str) -> Path:
        if not _BUCKET.match(bucket) or ".." in bucket:
            raise ValueError(f"not a bucket name: {bucket!r}")
        return self.root / bucket

    def _path(self, bucket: str, blob: str) -> Path:
        if not _BLOB.match(blob):
            raise ValueError(f"not a blob id: {blob!r}")
        return self._dir(bucket) / blob

    def write(self, bucket: str, data: bytes) -> Written:
        d = self._dir(bucket)
        d.mkdir(parents=True, exist_ok=True)
        blob = str(10**15 + secrets.randbelow(9 * 10**15)) + f"{secrets.randbelow(1000):03d}"
        tmp = d / f".tmp-{secrets.token_hex(8)}"
        try:
            with tmp.open("wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, d / blob)
            dfd = os.open(d, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        md5 = base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()
        return Written(blob, len(data), md5, crc32c_b64(data))

    def read(self, bucket: str, blob: str, start: int = 0, end: int | None = None) -> bytes:
        with self._path(bucket, blob).open("rb") as fh:
            fh.seek(start)
            return fh.read() if end is None else fh.read(max(0, end - start))

    def stream(self, bucket: str, blob: str, chunk: int = 1 << 20) -> Iterator[bytes]:
        with self._path(bucket, blob).open("rb") as fh:
            while True:
                part = fh.read(chunk)
                if not part:
                    return
                yield part

    def delete(self, bucket: str, blob: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(bucket, blob).unlink()

    def remove_bucket(self, bucket: str) -> None:
        d = self._dir(bucket)
        if d.exists():
            for f in d.iterdir():
                f.unlink()
            d.rmdir()

    def sweep(self, bucket: str, live: Iterable[str]) -> int:
        """Delete files of ``bucket`` that no object names (left by a crash); return how many."""
        d = self._dir(bucket)
        if not d.exists():
            return 0
        keep = set(live)
        gone = 0
        for f in d.iterdir():
            if f.name not in keep:
                f.unlink()
                gone += 1
        return gone
