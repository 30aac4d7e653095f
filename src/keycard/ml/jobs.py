"""The background runner of ml v1 jobs: claiming, heartbeats, cancellation, restarts.

Each ``keycard serve`` process has one :class:`JobRunner` (a small thread pool). A job is claimed
before it runs with one etag-guarded commit that sets the job's ``keycardRunner`` (host, process id
and process start time) and its lease record (kind ``ml_job_lease``, named like the job, deleted
when the job ends), so among replicas sharing a database exactly one runs it. The runner renews
the lease every few seconds (no audit entry: bookkeeping, not an API call).

A job whose runner is gone — the process on this host no longer exists, or another host's lease
was not renewed for ``LEASE_TTL`` seconds — is taken over by the next scan (at start-up and every
``SCAN_EVERY`` seconds): a batch prediction starts again from scratch (it writes its outputs only
at the end, so a restart overwrites nothing but its own earlier result); a training job is marked
FAILED with a message saying why (its code may not be safe to run twice); a job being cancelled
ends CANCELLED. No job stays QUEUED or RUNNING without a live runner.

Cancellation (``jobs.cancel``) writes CANCELLING; the running job sees it between batches (batch
prediction) or within half a second (training, whose process is killed) and ends CANCELLED.

``KEYCARD_ML_JOB_WORKERS`` (default 2): jobs run at once per process. ``KEYCARD_ML_BATCH_DELAY`` (seconds):
a pause after each prediction batch, a testing knob to make jobs slow enough to cancel; not for production.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from keycard.errors import Aborted, InvalidArgument
from keycard.services.common import Caller, Services, rfc3339
from keycard.store.base import Delete, Expect, Put, Record

__all__ = ["LEASE", "TERMINAL", "Cancelled", "JobFailed", "JobRunner", "parse_gs", "runner",
           "start_job_runner"]

log = logging.getLogger("keycard.ml.jobs")

LEASE = "ml_job_lease"
TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED")
HEARTBEAT_EVERY = 5.0
LEASE_TTL = 20.0
SCAN_EVERY = 5.0
UNCLAIMED_GRACE = 3.0          # seconds a fresh job is left to the replica that created it
_ATTR, _SERVICE = "_keycard_ml_job_runner", "ml.googleapis.com"

class JobFailed(Exception):
    """The job cannot go on; its message becomes the job's errorMessage."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Cancelled(Exception):
    """The job was cancelled while it ran."""


class LeaseLost(Exception):
    """Another runner took the job over (this one was presumed dead): stop without writing."""


def parse_gs(uri: object, fld: str, *, wildcard: bool = False, prefix: bool = False) -> tuple[str, str]:
    """``gs://BUCKET/NAME`` → (bucket, name); 400 naming ``fld`` for anything else, including ``.``/``..``
    segments (path traversal), empty segments inside the name, control characters, or a ``*`` that is
    not the last character (with ``wildcard``)."""
    from keycard.services.storage import _bucket_name
    if not isinstance(uri, str) or not uri.startswith("gs://"):
        raise InvalidArgument(f"Invalid {fld} {str(uri)[:100]!r}: expected a gs://BUCKET/PATH URI in keycard's "
                              "object store.", field=fld)
    bucket, _, name = uri[5:].partition("/")
    _bucket_name(bucket, fld)
    segments = name.split("/")
    inner = segments[:-1] if (prefix or name.endswith("/")) else segments
    bad = (any(s in (".", "..") for s in segments) or (name and any(s == "" for s in inner))
           or any(c in name for c in "\\\r\n\x00") or len(name.encode()) > 1000
           or ("*" in name and (not wildcard or name.index("*") != len(name) - 1)))
    if bad or (not prefix and not name):
        raise InvalidArgument(f"Invalid {fld} {uri[:200]!r}: an object path without '.' or '..' segments, empty "
                              "segments, backslashes or control characters"
                              + (", with at most one '*', at its end." if wildcard else "."), field=fld)
    return bucket, name


def check_storage(svc: Services, identity: str, permission: str, bucket: str, obj: str | None = None) -> None:
    """Does the job's identity hold ``permission`` on the bucket (or object)? JobFailed naming the identity,
    the permission, the resource and the grant command if not."""
    from keycard.services.storage import bucket_full, grant_bucket_access, object_full
    full = object_full(bucket, obj) if obj is not None else bucket_full(bucket)
    if svc.runtime.engine.check(identity, permission, full, time=svc.clock()).allowed:
        return
    shown = f"gs://{bucket}/{obj}" if obj is not None else f"gs://{bucket}"
    raise JobFailed(f"{identity} lacks {permission} on {shown}. Grant it with: "
                    f"{grant_bucket_access(bucket, identity, [permission])}")


# ------------------------------------------------------------------------------------- runner

def _proc_start(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux), so a reused pid is not mistaken for it."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class JobRunner:
    def __init__(self, svc: Services, keys: Callable[[], Any], base_url: str, *, workers: int | None = None) -> None:
        self.svc = svc
        self.keys = keys
        self.base_url = base_url.rstrip("/")
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.proc_start = _proc_start(self.pid)
        self.me = {"host": self.host, "pid": self.pid, "procStart": self.proc_start, "startTime": time.time()}
        self.batch_delay = float(os.environ.get("KEYCARD_ML_BATCH_DELAY", "0") or 0)
        n = workers or int(os.environ.get("KEYCARD_ML_JOB_WORKERS", "2") or 2)
        self._pool = ThreadPoolExecutor(max(1, n), thread_name_prefix="keycard-ml-job")
        self._mine: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._scanner = threading.Thread(target=self._scan_loop, name="keycard-ml-job-scan", daemon=True)

    @property
    def runner_id(self) -> str:
        return f"{self.host}/{self.pid}/{self.proc_start or self.me['startTime']}"

    def stop(self) -> None:
        self._stop.set()
        self._pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------------- scheduling
    def submit(self, full: str) -> None:
        with self._lock:
            if full in self._mine or self._stop.is_set():
                return
            self._mine[full] = threading.Event()
        self._pool.submit(self._run, full)

    def cancel_local(self, full: str) -> None:
        with self._lock:
            ev = self._mine.get(full)
        if ev is not None:
            ev.set()

    def _scan_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.scan()
            except Exception:  # keep scanning; the next round retries
                log.exception("ml job scan failed")
            self._stop.wait(SCAN_EVERY)

    def scan(self) -> None:
        """Submit every job that has no live runner (unclaimed for a while, or its runner is gone)."""
        store = self.svc.runtime.store
        token = ""
        now = time.time()
        while True:
            page = store.list(LEASE, page_size=500, page_token=token)
            for rec in page.records:
                owner = rec.data.get("runner") or {}
                if not owner:
                    if now - float(rec.data.get("createdAt", 0)) >= UNCLAIMED_GRACE:
                        self.submit(rec.name)
                elif self.orphaned(rec):
                    self.submit(rec.name)
            token = page.next_token
            if not token:
                return

    def orphaned(self, lease: Record) -> bool:
        owner = lease.data.get("runner") or {}
        if not owner:
            return True
        if owner.get("host") == self.host:
            pid = int(owner.get("pid", 0))
            if pid == self.pid and owner.get("procStart") == self.proc_start:
                with self._lock:
                    return lease.name not in self._mine       # ours, but no thread runs it (cannot happen)
            if not _pid_alive(pid):
                return True
            start = owner.get("procStart")
            return bool(start) and _proc_start(pid) not in ("", start)   # the pid now belongs to another process
        return time.time() - float(lease.data.get("heartbeat", 0)) > LEASE_TTL

    # ------------------------------------------------------------------------------ running
    def _run(self, full: str) -> None:
        try:
            self._claim_and_run(full)
        except LeaseLost:
            log.warning("job %s was taken over by another runner", full)
        except Exception as e:  # a bug must not leave the job RUNNING: fail it with what happened
            log.exception("job %s crashed", full)
            self.finish(full, "FAILED", error=f"Internal error in keycard's job runner: {type(e).__name__}: {e}")
        finally:
            with self._lock:
                self._mine.pop(full, None)

    def _claim_and_run(self, full: str) -> None:
        store = self.svc.runtime.store
        for _ in range(5):
            job, lease = store.get("resource", full), store.get(LEASE, full)
            if job is None or job.deleted or job.data.get("state") in TERMINAL:
                if lease is not None:
                    self._commit_quiet(deletes=[Delete(LEASE, full)], expect=[Expect(LEASE, full, lease.revision)])
                return
            if lease is None:
                return
            owner = lease.data.get("runner") or {}
            if owner and owner != self.me and not self.orphaned(lease):
                return
            taken_over = bool(owner) and owner != self.me
            state = job.data.get("state")
            data = dict(job.data)
            data["keycardRunner"] = self.runner_id
            if state != "CANCELLING":
                data["state"] = "RUNNING"
                data.setdefault("startTime", rfc3339(self.svc.clock()))
            try:
                self.svc.commit(Caller(None), puts=[Put("resource", full, data, parent=job.parent),
                                                    Put(LEASE, full, {**lease.data, "runner": self.me,
                                                                      "heartbeat": time.time()})],
                                expect=[Expect("resource", full, job.revision), Expect(LEASE, full, lease.revision)],
                                method="keycard.ml.v1.JobRunner.ClaimJob", service=_SERVICE,
                                resource_name=full.split("/", 3)[3],
                                service_data={"runner": self.runner_id, "takenOver": taken_over})
            except Aborted:
                continue
            break
        else:
            return
        if state == "CANCELLING":
            self.finish(full, "CANCELLED")
            return
        if taken_over and "trainingInput" in job.data:
            from keycard.ml.training import cleanup_leftovers
            cleanup_leftovers(self.svc, full.split("/", 3)[3])
            self.finish(full, "FAILED", error=(
                f"The keycard server process running this training job ({owner.get('host')}, pid {owner.get('pid')}) "
                "stopped before the job finished. keycard does not rerun training code automatically (it may not be "
                "safe to run twice); submit the job again under a new jobId."))
            return
        self._execute(full)

    def _execute(self, full: str) -> None:
        job = self.svc.runtime.store.get("resource", full)
        assert job is not None
        ctx = JobContext(self, full)
        try:
            if "predictionInput" in job.data:
                from keycard.ml.batch import run_batch
                output = run_batch(self.svc, job.data, ctx)
                self.finish(full, "SUCCEEDED", output=("predictionOutput", output))
            elif not self.svc.training_enabled:
                self.finish(full, "FAILED", error="Training jobs are off on this server (a replica without "
                            "`keycard serve --enable-training` picked this job up); submit it again where they "
                            "are on.")
            else:
                from keycard.ml.training import run_training
                output, error = run_training(self, job.data, full, ctx)
                self.finish(full, "FAILED" if error else "SUCCEEDED", error=error, output=("trainingOutput", output))
        except Cancelled:
            self.finish(full, "CANCELLED")
        except JobFailed as e:
            self.finish(full, "FAILED", error=e.message)

    def finish(self, full: str, state: str, *, error: str | None = None,
               output: tuple[str, Mapping[str, Any]] | None = None) -> None:
        """Write the job's final state (if this runner still holds it) and drop its lease."""
        store = self.svc.runtime.store
        for _ in range(10):
            job, lease = store.get("resource", full), store.get(LEASE, full)
            if job is None or job.data.get("state") in TERMINAL:
                return
            if lease is not None and (lease.data.get("runner") or {}) not in ({}, self.me):
                return                                          # someone else holds it now
            data = {k: v for k, v in job.data.items() if k != "keycardRunner"}
            data["state"] = state
            data["endTime"] = rfc3339(self.svc.clock())
            if state != "CANCELLED" or "startTime" in data:
                data.setdefault("startTime", data["endTime"])
            if error:
                data["errorMessage"] = error
            if output is not None:
                data[output[0]] = dict(output[1])
            expect = [Expect("resource", full, job.revision)]
            deletes = []
            if lease is not None:
                deletes.append(Delete(LEASE, full))
                expect.append(Expect(LEASE, full, lease.revision))
            try:
                self.svc.commit(Caller(None), puts=[Put("resource", full, data, parent=job.parent)], deletes=deletes,
                                expect=expect, method="keycard.ml.v1.JobRunner.FinishJob", service=_SERVICE,
                                resource_name=full.split("/", 3)[3], service_data={"state": state})
                return
            except Aborted:
                continue

    def heartbeat(self, full: str) -> None:
        lease = self.svc.runtime.store.get(LEASE, full)
        if lease is None or (lease.data.get("runner") or {}) != self.me:
            raise LeaseLost(full)
        try:
            self._commit_quiet(puts=[Put(LEASE, full, {**lease.data, "heartbeat": time.time()})],
                               expect=[Expect(LEASE, full, lease.revision)])
        except Aborted:
            raise LeaseLost(full) from None

    def cancel_requested(self, full: str) -> bool:
        with self._lock:
            ev = self._mine.get(full)
        if ev is not None and ev.is_set():
            return True
        job = self.svc.runtime.store.get("resource", full)
        return job is None or job.data.get("state") == "CANCELLING"

    def _commit_quiet(self, *, puts: list[Put] | None = None, deletes: list[Delete] | None = None,
                      expect: list[Expect]) -> None:
        """Lease bookkeeping: not an API call, so no audit entry; the lease kind is not mirrored."""
        self.svc.runtime.store.commit(puts or [], deletes or [], expect=expect)


class JobContext:
    """What a running job calls between units of work: cancellation, heartbeats, the test delay."""

    def __init__(self, runner: JobRunner, full: str) -> None:
        self.runner = runner
        self.full = full
        self.delay = runner.batch_delay
        self._last_check = 0.0
        self._last_beat = time.monotonic()

    def checkpoint(self, *, force: bool = False) -> None:
        """Raise Cancelled if the job was cancelled, LeaseLost if another runner took it over."""
        now = time.monotonic()
        if now - self._last_beat >= HEARTBEAT_EVERY:
            self.runner.heartbeat(self.full)
            self._last_beat = now
        if force or now - self._last_check >= 0.25:
            self._last_check = now
            if self.runner.cancel_requested(self.full):
                raise Cancelled(self.full)

    def pause(self) -> None:
        if self.delay > 0:
            time.sleep(self.delay)


def runner(svc: Services) -> JobRunner | None:
    return getattr(svc.runtime, _ATTR, None)


_START_LOCK = threading.Lock()


def start_job_runner(svc: Services, keys: Callable[[], Any], base_url: str) -> JobRunner:
    """This process's runner (created and started once): resumes or ends jobs left by dead runners."""
    with _START_LOCK:
        existing = runner(svc)
        if existing is not None:
            return existing
        return _start(svc, keys, base_url)


def _start(svc: Services, keys: Callable[[], Any], base_url: str) -> JobRunner:
    host = base_url.split("://", 1)[-1].rsplit(":", 1)
    if host[0] in ("0.0.0.0", "[::]", "::", ""):
        base_url = f"http://127.0.0.1:{host[1]}" if len(host) == 2 else "http://127.0.0.1"
    r = JobRunner(svc, keys, base_url)
    setattr(svc.runtime, _ATTR, r)
    r._scanner.start()
    return r
