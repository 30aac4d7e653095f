"""Object data on local disk: one directory per bucket, one file per object generation.

File names are generation numbers chosen by keycard, never object names, so no object name can
reach outside its bucket's directory. A write goes to a temporary file in the bucket's directory,
is fsync'd and renamed into place (atomic on POSIX), and only then is the object's metadata
committed to the store; a failed commit deletes the file. Files no metadata names (a crash between
the rename and the commit) are removed by :meth:`BlobStore.sweep`.

Resumable upload sessions live under ``.uploads/`` (a name no bucket can have): ``ID.json`` holds the
session (rewritten atomically), ``ID.part`` the bytes received so far, each chunk fsync'd before it is
acknowledged. :meth:`BlobStore.adopt_part` hashes the finished file and renames it into the bucket's
directory under a new generation, so an object appears only when its upload is complete.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import secrets
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["BlobStore", "Written", "crc32c_b64"]

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")
_BLOB = re.compile(r"^[0-9]{16,20}$")
_SESSION = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
UPLOADS = ".uploads"

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
        blob = _new_blob()
        tmp = d / f".tmp-{secrets.token_hex(8)}"
        try:
            with tmp.open("wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, d / blob)
            _fsync_dir(d)
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

    # ------------------------------------------------------------------------ resumable upload sessions
    def _session(self, upload_id: str, suffix: str) -> Path:
        if not _SESSION.match(upload_id):
            raise ValueError(f"not an upload id: {upload_id!r}")
        return self.root / UPLOADS / f"{upload_id}{suffix}"

    def open_session(self, upload_id: str, session: Mapping[str, Any]) -> None:
        """A new session: its state and an empty part file."""
        (self.root / UPLOADS).mkdir(parents=True, exist_ok=True)
        self._session(upload_id, ".part").touch(exist_ok=False)
        self.save_session(upload_id, session)

    def save_session(self, upload_id: str, session: Mapping[str, Any]) -> None:
        path = self._session(upload_id, ".json")
        tmp = path.with_name(f".tmp-{secrets.token_hex(8)}")
        try:
            with tmp.open("w") as fh:
                json.dump(session, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def session(self, upload_id: str) -> dict[str, Any] | None:
        """The session's state (None for an id that is malformed, unknown or dropped)."""
        try:
            with self._session(upload_id, ".json").open() as fh:
                out = json.load(fh)
        except (ValueError, OSError):
            return None
        return out if isinstance(out, dict) else None

    def sessions(self) -> Iterator[tuple[str, dict[str, Any]]]:
        d = self.root / UPLOADS
        if not d.exists():
            return
        for f in d.glob("*.json"):
            session = self.session(f.stem)
            if session is not None:
                yield f.stem, session

    def persisted(self, upload_id: str) -> int:
        """Bytes of the session's part file (0 once it has been adopted)."""
        try:
            return self._session(upload_id, ".part").stat().st_size
        except FileNotFoundError:
            return 0

    def append(self, upload_id: str, offset: int, data: bytes) -> int:
        """Write ``data`` at ``offset`` (the bytes persisted so far), fsync; return the new size."""
        with self._session(upload_id, ".part").open("r+b") as fh:
            fh.seek(offset)
            fh.truncate()
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
            return fh.tell()

    def adopt_part(self, upload_id: str, bucket: str) -> Written:
        """Hash the finished part file and rename it into ``bucket`` as a new generation."""
        part = self._session(upload_id, ".part")
        md5 = hashlib.md5(usedforsecurity=False)
        crc = _crc32c.Checksum() if _crc32c is not None else None
        size = 0
        with part.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                md5.update(chunk)
                if crc is not None:
                    crc.update(chunk)
                size += len(chunk)
        d = self._dir(bucket)
        d.mkdir(parents=True, exist_ok=True)
        blob = _new_blob()
        os.replace(part, d / blob)
        _fsync_dir(d)
        return Written(blob, size, base64.b64encode(md5.digest()).decode(),
                       base64.b64encode(crc.digest()).decode() if crc is not None else None)

    def drop_session(self, upload_id: str) -> None:
        for suffix in (".part", ".json"):
            with contextlib.suppress(FileNotFoundError):
                self._session(upload_id, suffix).unlink()


def _new_blob() -> str:
    return str(10**15 + secrets.randbelow(9 * 10**15)) + f"{secrets.randbelow(1000):03d}"


def _fsync_dir(d: Path) -> None:
    dfd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
