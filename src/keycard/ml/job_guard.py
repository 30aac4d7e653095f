"""Installed as ``sitecustomize`` in a training job's process: connections reach loopback (and the host of
``KEYCARD_ENDPOINT``) only. A guard against accidental traffic, not a sandbox."""

from __future__ import annotations

import os
import socket
from typing import Any
from urllib.parse import urlsplit

_ALLOWED = {"localhost", "::1", urlsplit(os.environ.get("KEYCARD_ENDPOINT", "")).hostname or "127.0.0.1"}


def _ok(host: object) -> bool:
    return host is None or str(host).startswith("127.") or str(host) in _ALLOWED


_real_getaddrinfo = socket.getaddrinfo
_real_connect, _real_connect_ex = socket.socket.connect, socket.socket.connect_ex


def _getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
    if not _ok(host):
        raise socket.gaierror(-2, f"keycard training jobs reach only loopback and keycard, not {host}")
    return _real_getaddrinfo(host, *args, **kwargs)


def _check(sock: socket.socket, address: Any) -> None:
    if sock.family in (socket.AF_INET, socket.AF_INET6) and isinstance(address, tuple) and not _ok(address[0]):
        raise OSError(f"keycard training jobs reach only loopback and keycard, not {address[0]}")


def _connect(self: socket.socket, address: Any) -> None:
    _check(self, address)
    _real_connect(self, address)


def _connect_ex(self: socket.socket, address: Any) -> int:
    _check(self, address)
    return _real_connect_ex(self, address)


if __name__ == "sitecustomize":          # only in a job's process, never when keycard imports this module
    socket.getaddrinfo = _getaddrinfo
    setattr(socket.socket, "connect", _connect)          # noqa: B010 - a method of a C base class
    setattr(socket.socket, "connect_ex", _connect_ex)    # noqa: B010
