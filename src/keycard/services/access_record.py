"""Recording access attempts: every authorization check keycard makes, for the recommender and the simulator.

``Services.authorize`` calls :meth:`AccessRecorder.record` with the decision it just made. The hot path
is one dict update under a lock (no I/O, no allocation beyond the key): checks are aggregated in memory
per (UTC minute, principal, permission, resource, granted) and a background thread writes them to the
store every ``interval`` seconds in one transaction (an upsert that adds hits, so replicas and repeated
flushes of one minute merge). Bounded: at most ``max_pending`` distinct keys wait in memory; beyond
that new keys are dropped and counted (``dropped``) — and the flusher is woken — rather than letting a
flood grow memory. A flush that fails (store down) puts its rows back, within the same bound, and
retries on the next tick. Rows older than ``retention_days`` are pruned once an hour.

The record is what Google calls "recent accesses": it holds the principal, permission, resource,
decision and time (to the minute) of every check, whatever the auditConfigs say (Data Access audit
entries stay governed by them). Only checks that gate a request are recorded (``authorize``), not the
per-item filtering of list methods (``Services.allowed``), which would otherwise count as "use".
"""

from __future__ import annotations

import atexit
import datetime as dt
import logging
import threading
import time
from collections.abc import Callable

from keycard.store.base import AccessRecord, Store

__all__ = ["ANONYMOUS", "AccessRecorder", "minute_of"]

log = logging.getLogger("keycard.access")
ANONYMOUS = "allUsers"
Key = tuple[int, str, str, str, bool]


def minute_of(t: dt.datetime) -> int:
    """Minutes since the Unix epoch (UTC) of an aware datetime."""
    return int(t.timestamp()) // 60


class AccessRecorder:
    def __init__(self, store: Store, *, interval: float = 1.0, max_pending: int = 200_000,
                 retention_days: int = 90, clock: Callable[[], dt.datetime] | None = None) -> None:
        self.store = store
        self.interval = interval
        self.max_pending = max_pending
        self.retention_days = retention_days
        self.dropped = 0
        self._clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self._pending: dict[Key, int] = {}
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pruned = 0.0

    # ------------------------------------------------------------------------------ hot path
    def record(self, principal: str | None, permission: str, resource: str, granted: bool,
               when: dt.datetime) -> None:
        key = (int(when.timestamp()) // 60, principal or ANONYMOUS, permission, resource, granted)
        with self._lock:
            pending = self._pending
            n = pending.get(key)
            if n is not None:
                pending[key] = n + 1
            elif len(pending) < self.max_pending:
                pending[key] = 1
            else:
                self.dropped += 1
                self._wake.set()
        if self._thread is None:
            self.start()

    # ---------------------------------------------------------------------------- background
    def start(self) -> None:
        with self._flush_lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name="keycard-access-record", daemon=True)
            self._thread.start()
            atexit.register(self.close)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            try:
                self.flush()
                if time.monotonic() - self._pruned > 3600:
                    self._pruned = time.monotonic()
                    self.prune()
            except Exception:  # keep recording; the rows were put back and the next tick retries
                log.exception("writing the access record failed; retrying")

    def flush(self) -> int:
        """Write what is pending now (also called before reading the record); return the rows written."""
        with self._flush_lock:
            with self._lock:
                batch, self._pending = self._pending, {}
            if not batch:
                return 0
            rows = [AccessRecord(m, p, perm, r, g, n) for (m, p, perm, r, g), n in batch.items()]
            try:
                self.store.record_access(rows)
            except BaseException:
                with self._lock:
                    for key, n in batch.items():
                        if key in self._pending:
                            self._pending[key] += n
                        elif len(self._pending) < self.max_pending:
                            self._pending[key] = n
                        else:
                            self.dropped += n
                raise
            return len(rows)

    def prune(self) -> int:
        cutoff = minute_of(self._clock()) - self.retention_days * 1440
        return self.store.prune_access(cutoff)

    def close(self) -> None:
        """Stop the flusher and write what is pending (idempotent; also run at exit)."""
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        try:
            self.flush()
        except Exception:
            log.warning("could not write the last access-record rows at shutdown", exc_info=True)
