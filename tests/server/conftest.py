"""A real `keycard serve` process on loopback, initialised with a fresh organization."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from pg import PgUnavailable, cluster_url, create_database, drop_database

ADMIN = "alice@example.com"
_TOKENS: dict[tuple[str, str], str] = {}
KEYCARD = [sys.executable, "-m", "keycard.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    url: str
    database: str
    organization: str
    process: subprocess.Popen[bytes]
    log: Path

    def token(self, user: str = ADMIN) -> str:
        """A user token minted the local-admin way (cached: one CLI run per user and server)."""
        cached = _TOKENS.get((self.database, user))
        if cached is None:
            out = subprocess.run([*KEYCARD, "auth", "print-access-token", "--user", user, "--database",
                                  self.database], check=True, capture_output=True, text=True)
            cached = _TOKENS[(self.database, user)] = out.stdout.strip()
        return cached

    def client(self, user: str | None = ADMIN) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.token(user)}"} if user else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)


def start_server(database: str, log: Path, *, enforcement: str = "enforce", domain: str = "example.com",
                 extra_args: Sequence[str] = ()) -> Server:
    init = subprocess.run([*KEYCARD, "init", "--organization-domain", domain, "--admin", f"user:{ADMIN}",
                           "--database", database, "--format", "json"], capture_output=True, text=True)
    assert init.returncode == 0, init.stderr
    return serve(database, log, json.loads(init.stdout)["organization"], enforcement=enforcement,
                 extra_args=extra_args)


def serve(database: str, log: Path, organization: str, *, enforcement: str = "enforce",
          extra_args: Sequence[str] = ()) -> Server:
    """`keycard serve` on a free port against an initialised database; returns once /healthz answers."""
    port = free_port()
    fh = log.open("ab")
    proc = subprocess.Popen([*KEYCARD, "serve", "--port", str(port), "--database", database,
                             "--enforcement", enforcement, *extra_args], stdout=fh, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"keycard serve exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return Server(url, database, organization, proc, log)
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"keycard serve did not start: {log.read_text()[-2000:]}")


@contextmanager
def database(backend: str, directory: Path) -> Iterator[str]:
    """A fresh database URL: a SQLite file in ``directory``, or a throwaway PostgreSQL database (dropped
    afterwards; the test is skipped when PostgreSQL is unavailable)."""
    if backend == "sqlite":
        yield f"sqlite:///{directory / 'keycard.db'}"
        return
    try:
        admin = cluster_url()
    except PgUnavailable as e:
        pytest.skip(f"PostgreSQL unavailable: {e}")
    url = create_database(admin)
    try:
        yield url
    finally:
        drop_database(admin, url)


def stop_server(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.process.kill()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    d = tmp_path_factory.mktemp("kc")
    srv = start_server(f"sqlite:///{d / 'keycard.db'}", d / "server.log")
    yield srv
    stop_server(srv)
