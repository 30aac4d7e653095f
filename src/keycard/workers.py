"""``keycard serve --workers N``: several server processes on one port, one database.

A Python process runs Python on one core at a time (the GIL), so one ``keycard serve`` uses about one core
however many requests wait. ``--workers N`` loads the database once, then forks N worker processes that
listen on the same port (Linux: a socket each with SO_REUSEPORT, the kernel spreading new connections over
them; elsewhere one shared socket) and share, copy-on-write, the memory start-up loaded. A keep-alive
connection stays with the worker that accepted it. Each worker is a replica like those sharing a PostgreSQL
database (see
docs/server.md): its own engine, kept current from the store's change feed, its own job runner.

What makes N workers one server to its clients:

- **Read your writes across workers.** A committed write is honoured by the very next request, whichever
  worker takes it: every worker publishes the newest revision it has committed in memory shared by all
  workers (:class:`SharedRevisions`, an anonymous shared mapping made before the fork), and a worker
  catches up to the newest published revision before it answers a request (one read of N integers when it
  is current, which is nearly always).
- **SQLite writers queue in the kernel.** Writers of different processes serialise on an ``flock`` of a
  file beside the database (keycard.store.sql), not in SQLite's busy handler, whose sleeps of 1, 2, 5, 10 …
  ms would stall every contended write.

- **One /metrics.** The workers count in prometheus_client's multiprocess mode: each writes its metrics to
  files of its own in a private directory the parent makes for this run (``PROMETHEUS_MULTIPROC_DIR``, set
  before the workers create their metrics), and a scrape, whichever worker takes it, sums them all. The
  directory is new at every start and removed when the server stops.

The parent process serves nothing: it forks the workers, forwards SIGINT/SIGTERM to them, and if one
exits on its own it stops the others and exits with an error, so that a supervisor (systemd, Kubernetes)
restarts the whole server.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import gc
import logging
import mmap
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["METRICS_DIR", "SharedRevisions", "bind", "listener", "run_workers"]

log = logging.getLogger("keycard.workers")


class SharedRevisions:
    """One 64-bit slot per worker: the newest revision that worker has committed.

    Slots live in an anonymous shared mapping created before the workers are forked, so every worker
    sees every slot. Each slot is written by its own worker only (under a lock, so that the newest of
    that worker's concurrent commits wins) with one aligned 8-byte store, which readers in other
    processes never see half-written."""

    def __init__(self, workers: int) -> None:
        if workers < 1:
            raise ValueError("at least one worker")
        self._map = mmap.mmap(-1, 8 * workers)     # MAP_SHARED | MAP_ANONYMOUS: inherited by forked children
        self._slots = (ctypes.c_int64 * workers).from_buffer(self._map)
        self._lock = threading.Lock()
        self.slot = 0

    def publish(self, revision: int) -> None:
        """This worker committed ``revision``."""
        with self._lock:
            if revision > self._slots[self.slot]:
                self._slots[self.slot] = revision

    def latest(self) -> int:
        """The newest revision any worker has committed."""
        return int(max(self._slots))

    def after_fork(self, slot: int) -> None:
        """In a worker: its slot, and a fresh lock (the parent's may have been held at the fork)."""
        self.slot = slot
        self._lock = threading.Lock()


# Linux: each worker listens on a socket of its own, all bound to the port with SO_REUSEPORT, and the kernel
# spreads new connections over them by a hash of the connection's addresses. With one shared listening
# socket, whichever worker wakes first accepts a burst of connections alone (a client opening 8 keep-alive
# connections at once got all 8 on one worker, the other worker idle).
REUSEPORT = sys.platform == "linux" and hasattr(socket, "SO_REUSEPORT")
_CLAIMS: list[socket.socket] = []


def _socket(host: str, port: int) -> socket.socket:
    info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _canon, addr = info[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if REUSEPORT:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind(addr)
    return sock


def bind(host: str, port: int) -> socket.socket:
    """The parent's socket, bound before forking (so that a port in use fails once, clearly). With
    SO_REUSEPORT it only holds the port (never listens: a listening socket nobody accepts on would get its
    share of connections); otherwise it is the listening socket the workers share."""
    if REUSEPORT:
        # SO_REUSEPORT lets any process of the same user join the port; a second keycard server started on
        # it by mistake must fail instead of silently taking half the connections. An abstract Unix socket
        # named after the address is the claim (released by the kernel when the last process holding it exits).
        claim = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            claim.bind(f"\0keycard-serve:{host}:{port}")
        except OSError:
            claim.close()
            raise OSError(errno.EADDRINUSE, "Address already in use (another keycard serve --workers)") from None
        _CLAIMS.append(claim)
    sock = _socket(host, port)
    if not REUSEPORT:
        sock.listen(2048)
        sock.set_inheritable(True)
    return sock


def listener(held: socket.socket) -> socket.socket:
    """In a worker: the socket it accepts on (its own with SO_REUSEPORT, else the shared one)."""
    if not REUSEPORT:
        return held
    host, port = held.getsockname()[:2]
    sock = _socket(host, port)
    sock.listen(2048)
    held.close()
    return sock


METRICS_DIR = "PROMETHEUS_MULTIPROC_DIR"


@contextlib.contextmanager
def _shared_metrics() -> Iterator[str]:
    """prometheus_client's multiprocess mode for the workers' metrics, in a directory of this run's own.

    A new private directory (mode 0700) at every start, so that the files of a killed earlier run are never
    summed; removed when the workers are gone. The variable is set before the fork, so before any worker
    creates a metric (prometheus_client picks its value class, in-process or file-backed, from it)."""
    path = tempfile.mkdtemp(prefix="keycard-metrics-")
    previous = os.environ.get(METRICS_DIR)
    os.environ[METRICS_DIR] = path
    from prometheus_client import values
    if not values.ValueClass._multiprocess:          # imported before the variable was set: choose again
        values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        if previous is None:
            os.environ.pop(METRICS_DIR, None)
        else:
            os.environ[METRICS_DIR] = previous


def run_workers(workers: int, worker: Callable[[int], None]) -> int:
    """Fork ``workers`` processes running ``worker(index)``; supervise them; return the exit status.

    The workers' metrics are shared (:func:`_shared_metrics`): a worker's app answers /metrics with the sum
    over every worker's files, in the directory ``os.environ[METRICS_DIR]`` names.

    Call with no other thread running (what start-up loaded is frozen out of the cyclic collector first,
    so that the workers' collections do not touch, and so copy, the pages they share)."""
    if not hasattr(os, "fork"):
        raise OSError("--workers needs os.fork (Linux or macOS)")
    with _shared_metrics() as metrics:
        return _supervise(workers, worker, metrics)


def _supervise(workers: int, worker: Callable[[int], None], metrics: str) -> int:
    from prometheus_client.multiprocess import mark_process_dead
    gc.freeze()
    children: dict[int, int] = {}                  # pid → worker index
    stopping = False

    def stop(_sig: int, _frame: Any = None) -> None:
        # SIGTERM whatever the parent got: a Ctrl-C reaches the workers itself (one process group), and a
        # second SIGINT would make uvicorn exit at once instead of finishing the requests in flight
        nonlocal stopping
        stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    previous = {sig: signal.signal(sig, stop) for sig in _STOP_SIGNALS}
    try:
        for index in range(workers):
            parent = os.getpid()
            # signals wait until each side has its own handlers (a worker must never run the parent's stop())
            signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
            pid = os.fork()
            if pid == 0:                            # the worker
                code = 0
                try:
                    for sig, handler in previous.items():
                        signal.signal(sig, handler)
                    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
                    _exit_with_parent(parent)
                    worker(index)
                except SystemExit as e:
                    code = e.code if isinstance(e.code, int) else 1
                except BaseException:
                    log.exception("keycard worker %d failed", index)
                    code = 1
                finally:
                    sys.stdout.flush()
                    sys.stderr.flush()
                    os._exit(code)
            children[pid] = index
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
        status = 0
        while children:
            try:
                pid, raw = os.wait()
            except ChildProcessError:
                break
            except InterruptedError:
                continue
            index = children.pop(pid, -1)
            code = os.waitstatus_to_exitcode(raw)
            mark_process_dead(pid, metrics)  # type: ignore[no-untyped-call]  # its live gauges stop counting
            if not stopping:
                print(f"keycard: worker {index} (pid {pid}) exited with status {code}; stopping the others.",
                      file=sys.stderr, flush=True)
                status = 1
                stop(signal.SIGTERM)
        return status
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _exit_with_parent(parent: int) -> None:
    """Linux: SIGTERM this worker when the parent dies, even by SIGKILL (no orphan keeps the port)."""
    if sys.platform == "linux":
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGTERM, 0, 0, 0)     # PR_SET_PDEATHSIG
    if os.getppid() != parent:                          # it died before that took effect
        raise SystemExit(1)
