"""A throwaway PostgreSQL cluster for tests.

``cluster_url()`` starts (once per process) a cluster with ``initdb``/``pg_ctl`` from PATH or
``/usr/lib/postgresql/*/bin`` in a temporary directory: loopback only, on a free port, its unix
socket inside the temporary directory, trust authentication, ``fsync=off``. It returns
``postgresql://postgres@127.0.0.1:PORT/postgres`` and stops and deletes the cluster at interpreter
exit. As root (initdb refuses to run as root) the server runs as ``nobody`` via runuser or setpriv.
A small watchdog process also stops and deletes the cluster if the test process dies without running
its exit handlers (``timeout`` sends SIGTERM, ``kill -9``), so no postmaster is left behind.

Set ``KEYCARD_TEST_PG_URL`` to use an existing server instead (its superuser URL). When neither
works, :class:`PgUnavailable` says why, so callers can ``pytest.skip(str(exc))``.

    from pg import PgUnavailable, cluster_url, create_database, drop_database
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import uuid
from pathlib import Path

import psycopg

__all__ = ["PgCluster", "PgUnavailable", "cluster_url", "create_database", "drop_database", "find_bin_dir"]

ENV_URL = "KEYCARD_TEST_PG_URL"
SUPERUSER = "postgres"
_RUN_AS = "nobody"


# Run by a detached interpreter: wait for the test process to go, then stop the cluster and delete
# its directory unless a clean exit already did (argv: parent pid, cluster dir, stop command as JSON).
_WATCHDOG = """
import json, os, shutil, subprocess, sys, time
parent, root, stop = int(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
while True:
    try:
        os.kill(parent, 0)
    except ProcessLookupError:
        break
    except PermissionError:
        pass
    time.sleep(1)
if os.path.isdir(root):
    try:
        subprocess.run(stop, cwd=root, capture_output=True, timeout=60)
    finally:
        shutil.rmtree(root, ignore_errors=True)
"""


class PgUnavailable(RuntimeError):
    """No PostgreSQL for tests on this machine; the message says why (use it as the skip reason)."""


def find_bin_dir() -> Path | None:
    """The directory holding initdb and pg_ctl: PATH first, then the newest /usr/lib/postgresql/*/bin."""
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(initdb).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: _version_key(Path(p).parent.name))
    for directory in reversed(candidates):
        if (Path(directory) / "initdb").exists() and (Path(directory) / "pg_ctl").exists():
            return Path(directory)
    return None


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in name.split(".") if part.isdigit())


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PgCluster:
    """One initdb'ed cluster in a temporary directory, started with pg_ctl."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.as_root = os.geteuid() == 0
        self.root = Path(tempfile.mkdtemp(prefix="keycard-pg-", dir="/tmp" if self.as_root else None))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.port = 0
        self._started = False
        if self.as_root:
            user = pwd.getpwnam(_RUN_AS)
            os.chown(self.root, user.pw_uid, user.pw_gid)
        os.chmod(self.root, 0o700)

    @property
    def url(self) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/postgres"

    def _cmd(self, *args: str) -> list[str]:
        if not self.as_root:
            return list(args)
        if shutil.which("runuser"):
            return ["runuser", "-u", _RUN_AS, "--", *args]
        if shutil.which("setpriv"):
            user = pwd.getpwnam(_RUN_AS)
            return ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups", *args]
        raise PgUnavailable("running as root and neither runuser nor setpriv is available to drop privileges")

    def _run(self, *args: str, timeout: float = 60) -> None:
        done = subprocess.run(self._cmd(*args), cwd=self.root, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "LC_ALL": "C", "TZ": "UTC"}, check=False)
        if done.returncode != 0:
            detail = (done.stderr or done.stdout).strip().splitlines()[-5:]
            raise PgUnavailable(f"{Path(args[0]).name} failed ({done.returncode}): {' | '.join(detail)}")

    def start(self) -> None:
        self._run(str(self.bin_dir / "initdb"), "-D", str(self.data), "-U", SUPERUSER, "-A", "trust",
                  "-E", "UTF8", "--locale=C", "--no-sync")
        last: PgUnavailable | None = None
        for _attempt in range(3):  # the free port can be taken between probing and binding
            self.port = _free_port()
            options = (f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c fsync=off "
                       "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
            try:
                self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options,
                          "-w", "-t", "60", "start", timeout=90)
            except PgUnavailable as exc:
                last = exc
                continue
            self._started = True
            self._watch()
            return
        log_tail = self.log.read_text(errors="replace").strip().splitlines()[-3:] if self.log.exists() else []
        raise PgUnavailable(f"{last}; log: {' | '.join(log_tail)}")

    def _stop_command(self) -> list[str]:
        return self._cmd(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def _watch(self) -> None:
        subprocess.Popen(
            [sys.executable, "-c", _WATCHDOG, str(os.getpid()), str(self.root), json.dumps(self._stop_command())],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, close_fds=True,
        )

    def stop(self) -> None:
        if self._started:
            self._started = False
            with contextlib.suppress(Exception):
                subprocess.run(self._stop_command(), cwd=self.root, capture_output=True, timeout=60, check=False)
        shutil.rmtree(self.root, ignore_errors=True)


_lock = threading.Lock()
_cluster: PgCluster | None = None
_failure: PgUnavailable | None = None


def cluster_url() -> str:
    """Superuser URL of the test server: $KEYCARD_TEST_PG_URL, else a cluster started once per process."""
    global _cluster, _failure
    if os.environ.get(ENV_URL):
        return os.environ[ENV_URL]
    with _lock:
        if _cluster is not None:
            return _cluster.url
        if _failure is not None:
            raise _failure
        bin_dir = find_bin_dir()
        if bin_dir is None:
            _failure = PgUnavailable("PostgreSQL binaries (initdb, pg_ctl) not found on PATH or in "
                                     f"/usr/lib/postgresql/*/bin; set {ENV_URL} to use a running server")
            raise _failure
        cluster = PgCluster(bin_dir)
        try:
            cluster.start()
        except PgUnavailable as exc:
            cluster.stop()
            _failure = exc
            raise
        atexit.register(cluster.stop)
        _cluster = cluster
        return cluster.url


def _with_database(url: str, database: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{database}"


def create_database(admin_url: str, prefix: str = "keycard_test") -> str:
    """A fresh, empty database on the server of ``admin_url``; returns its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return _with_database(admin_url, name)


def drop_database(admin_url: str, database_url: str) -> None:
    name = database_url.rpartition("/")[2]
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
