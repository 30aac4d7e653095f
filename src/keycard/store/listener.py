"""PostgreSQL change notifications for :meth:`SqlStore.wait`.

One daemon thread per store owns a dedicated psycopg connection that ``LISTEN``\\s on the channel
commits ``NOTIFY`` (payload: the new revision). Waiters block on a condition variable instead of
polling. The thread reconnects with backoff if the connection drops; while it is down waiters fall
back to polling ``head()`` every 50 ms, and every (re)connect wakes them to re-check ``head()``
(notifications sent while nobody listened are lost, so ``head()`` stays the source of truth).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import psycopg

__all__ = ["CHANNEL", "PgListener"]

CHANNEL = "keycard_changes"
_POLL = 0.05          # polling interval while the listener is down
_SAFETY = 1.0         # re-check head() at least this often even when notifications flow
_SLICE = 0.25         # how long one notifies() call blocks, so close() is noticed promptly


class PgListener:
    def __init__(self, conninfo: str, channel: str = CHANNEL) -> None:
        self._conninfo = conninfo
        self._channel = channel
        self._cond = threading.Condition()
        self._latest = 0          # highest revision announced by a notification
        self._healthy = False     # LISTEN is active right now
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    # ---------------------------------------------------------------------------- waiting
    def wait(self, since: int, timeout: float, head: Callable[[], int]) -> int:
        """Block until ``head() > since`` or ``timeout`` passes; return ``head()``."""
        deadline = time.monotonic() + max(timeout, 0.0)
        self._ensure_started(min(max(timeout, 0.0), 5.0))
        current = head()  # only now: LISTEN was active before this read, so no commit after it is missed
        while current <= since:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            with self._cond:
                if self._latest <= since:
                    self._cond.wait(min(remaining, _SAFETY if self._healthy else _POLL))
            current = head()
        return current

    def _ensure_started(self, timeout: float) -> None:
        with self._start_lock:
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._run, name="keycard-pg-listen", daemon=True)
                self._thread.start()
        self._ready.wait(timeout)

    # ---------------------------------------------------------------------------- the thread
    def _run(self) -> None:
        backoff = _POLL
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True) as conn:
                    conn.execute(f"LISTEN {self._channel}")
                    self._set_healthy(True)
                    backoff = _POLL
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=_SLICE):
                            self._announce(note.payload)
            except psycopg.Error:
                if self._stop.is_set():
                    break
            finally:
                self._set_healthy(False)
            self._stop.wait(backoff)
            backoff = min(backoff * 2, 2.0)

    def _announce(self, payload: str) -> None:
        try:
            revision = int(payload)
        except ValueError:
            return
        with self._cond:
            if revision > self._latest:
                self._latest = revision
            self._cond.notify_all()

    def _set_healthy(self, healthy: bool) -> None:
        with self._cond:
            self._healthy = healthy
            self._cond.notify_all()
        self._ready.set()

    def close(self) -> None:
        self._stop.set()
        self._ready.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout=2 * _SLICE + 1.0)
