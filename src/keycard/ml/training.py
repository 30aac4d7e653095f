"""Training jobs: ``python -m MODULE ARGS…`` in a subprocess that acts as the job's service account.

The packages (``trainingInput.packageUris``) are read from the object store as the job's identity
(``storage.objects.get`` on each, or the job fails naming the permission and the grant command) into
a fresh temporary directory: a ``.tar.gz``/``.tgz`` source distribution is extracted (tarfile's
``data`` filter: no absolute paths, no ``..``, no links out) and both its root and its top-level
directories (and their ``src/``) go on ``PYTHONPATH``; a ``.whl`` (pure Python) is put on
``PYTHONPATH`` as is (zipimport); a single ``.py`` file is copied. The interpreter is the server's own
(``sys.executable``), so the training code sees the packages installed beside keycard.

Identity: for the run, keycard attaches a metadata server to the job's service account (the account
in ``trainingInput.serviceAccount`` — whose actAs the job's creator proved at create — or else the
project's ML service agent) and serves it on a free loopback port inside the server process. The
subprocess's environment is built from scratch (nothing of the server's environment but ``PATH``):

    GCE_METADATA_HOST, GCE_METADATA_IP   127.0.0.1:PORT (google.auth.default() finds the account there)
    GOOGLE_CLOUD_PROJECT, CLOUD_ML_PROJECT_ID, CLOUD_ML_JOB_ID, TF_CONFIG (task master 0)
    KEYCARD_ENDPOINT                     keycard's URL, for client_options={"api_endpoint": …}
    GOOGLE_API_USE_CLIENT_CERTIFICATE=false, GOOGLE_API_USE_MTLS_ENDPOINT=never, CLOUDSDK_CONFIG=<empty dir>

so unmodified google-auth gets the account's keycard tokens. A ``sitecustomize`` on the path refuses
name lookups and connections past loopback (and keycard's own host): a guard against accidental
traffic (e.g. google-auth's background regional-access-boundary lookup), not a sandbox — training
code is trusted code, run with the server's operating-system user. The attachment is deleted when the
job ends (its tokens stop working at once); the process is killed if the job is cancelled, exceeds
``trainingInput.scheduling.maxRunningTime`` (default 1 h), or the server dies (Linux: parent-death
signal).

Logs: every stdout line (severity INFO) and stderr line (ERROR) is kept, with its time, in a record of
kind ``ml_job_log`` (the last ``MAX_LOG_ENTRIES`` lines), updated every two seconds while the job runs;
``GET /v1/projects/P/jobs/J:keycardLogs`` returns them as Cloud Logging LogEntries (needs ml.jobs.get).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import io
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from keycard.errors import Aborted, KeycardError
from keycard.identity.metadata import Attachment, MetadataServer, Upstream, UpstreamError
from keycard.ml.jobs import JobContext, JobFailed, check_storage, parse_gs
from keycard.services.common import Caller, Services, rfc3339
from keycard.store.base import Delete, Expect, Put

if TYPE_CHECKING:
    from keycard.ml.jobs import JobRunner

__all__ = ["LOG_KIND", "MAX_LOG_ENTRIES", "cleanup_leftovers", "run_training"]

LOG_KIND = "ml_job_log"
MAX_LOG_ENTRIES = 5000
MAX_LINE = 8192
MAX_UNPACKED = 512 * 1024 * 1024
DEFAULT_MAX_SECONDS = 3600
_ATT = "sa_attachment"



# ------------------------------------------------------------------------ the metadata server

class _InProcess(Upstream):
    """The metadata server's calls to keycard, made in this process (no HTTP round trip)."""

    def __init__(self, svc: Services, keys: Callable[[], Any], issuer: str) -> None:
        super().__init__(issuer)
        self.svc, self.keys = svc, keys

    def call(self, method: str, path: str, body: Mapping[str, Any] | None = None, *, bearer: str | None = None
             ) -> Any:
        from keycard.services import attachments as att
        m = re.fullmatch(r"/v1/keycardAttachments/([0-9a-f]+):(\w+)", path)
        if m is None:
            raise UpstreamError(404, f"no such attachment method {path}")
        aid, verb = m.groups()
        try:
            if verb == "generateAccessToken":
                return att.generate_access_token(self.svc, self.keys(), aid, body)
            if verb == "generateIdToken":
                return att.generate_id_token(self.svc, self.keys(), aid, body, issuer=self.endpoint)
            if verb == "check":
                return att.check(self.svc, aid, body)
            if verb == "detach":
                return att.detach(self.svc, aid, body)
        except KeycardError as e:
            raise UpstreamError(e.http_status, e.message) from None
        raise UpstreamError(404, f"no such attachment method {verb}")


def _serve(mds: MetadataServer) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        server_version = "Metadata Server for VM"
        sys_version = ""

        def _answer(self) -> None:
            url = urlsplit(self.path)
            headers = {k.lower(): v for k, v in self.headers.items()}
            resp = mds.handle(self.command, url.path, dict(parse_qsl(url.query, keep_blank_values=True)), headers)
            body = bytes(resp.body)
            self.send_response(resp.status_code)
            for k, v in resp.headers.items():
                if k.lower() not in ("content-length", "server"):
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _answer

        def log_message(self, format: str, *args: Any) -> None:
            return

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, name="keycard-job-mds", daemon=True).start()
    return httpd


def _creator_tag(job_relative: str) -> str:
    return f"keycard ml job {job_relative}"


def _attach(svc: Services, email: str, job_relative: str) -> Attachment:
    store = svc.runtime.store
    acct = svc.runtime.identities.account(email)
    rec = store.get("service_account", acct.email) if acct is not None else None
    if acct is None or acct.deleted or rec is None:
        raise JobFailed(f"Service account {email} of this job no longer exists.")
    if not acct.usable:
        raise JobFailed(f"Service account {email} of this job is disabled; enable it and submit the job again.")
    aid, secret = secrets.token_hex(10), secrets.token_urlsafe(32)
    data = {"id": aid, "serviceAccount": acct.email, "uniqueId": acct.unique_id, "creator": _creator_tag(job_relative),
            "createTime": rfc3339(svc.clock()), "displayName": f"training job {job_relative.rsplit('/', 1)[1]}"[:100],
            "keycardSecretSha256": hashlib.sha256(secret.encode()).hexdigest()}
    name = f"projects/{acct.project_id}/serviceAccounts/{acct.email}/keycardAttachments/{aid}"
    svc.commit(Caller(None), puts=[Put(_ATT, aid, data, parent=acct.email)],
               expect=[Expect(_ATT, aid, None), Expect("service_account", acct.email, rec.revision)],
               method="keycard.iam.v1.CreateServiceAccountAttachment", service="iam.googleapis.com",
               resource_name=name, service_data={"job": job_relative})
    return Attachment(aid, name, acct.email, acct.unique_id, secret, acct.project_id, acct.project_number)


def cleanup_leftovers(svc: Services, job_relative: str) -> None:
    """Delete what a dead runner left for this job: its attachments (their secret died with it) and, on
    this host, its temporary directory."""
    parts = job_relative.split("/")
    for d in Path(tempfile.gettempdir()).glob(f"keycard-job.{parts[1]}.{parts[3]}.*"):
        shutil.rmtree(d, ignore_errors=True)
    tag = _creator_tag(job_relative)
    for aid, data in list(svc.runtime.identities.attachments.items()):
        if data.get("creator") != tag:
            continue
        rec = svc.runtime.store.get(_ATT, aid)
        if rec is not None:
            with contextlib.suppress(Aborted):
                svc.commit(Caller(None), deletes=[Delete(_ATT, aid)], expect=[Expect(_ATT, aid, rec.revision)],
                           method="keycard.iam.v1.DeleteServiceAccountAttachment", service="iam.googleapis.com",
                           resource_name=f"keycardAttachments/{aid}", service_data={"job": job_relative})


# ------------------------------------------------------------------------------------ packages

def _packages(svc: Services, identity: str, uris: list[str], dest: Path) -> list[str]:
    path: list[str] = []
    for i, uri in enumerate(uris):
        bucket, name = parse_gs(uri, "trainingInput.packageUris")
        check_storage(svc, identity, "storage.objects.get", bucket, name)
        rec = svc.runtime.store.get("object", f"{bucket}/{name}")
        if rec is None or rec.deleted or svc.blobs is None:
            raise JobFailed(f"Package {uri} does not exist.")
        data = svc.blobs.read(bucket, str(rec.data["keycardBlob"]))
        base = name.rsplit("/", 1)[-1]
        d = dest / str(i)
        d.mkdir(parents=True)
        if base.endswith((".tar.gz", ".tgz")):
            try:
                with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
                    members = tar.getmembers()
                    if len(members) > 20_000 or sum(m.size for m in members) > MAX_UNPACKED:
                        raise JobFailed(f"Package {uri} unpacks to more than {MAX_UNPACKED} bytes or 20,000 files.")
                    tar.extractall(d, filter="data")
            except (tarfile.TarError, OSError, EOFError) as e:
                raise JobFailed(f"Package {uri} is not a readable .tar.gz: {e}") from None
            path.append(str(d))
            for sub in sorted(d.iterdir()):
                if sub.is_dir():
                    path.append(str(sub))
                    if (sub / "src").is_dir():
                        path.append(str(sub / "src"))
        elif base.endswith(".whl"):
            (d / base).write_bytes(data)
            path.append(str(d / base))
        elif base.endswith(".py"):
            (d / base).write_bytes(data)
            path.append(str(d))
        else:
            raise JobFailed(f"Package {uri}: keycard runs .tar.gz source distributions, .whl wheels (pure Python) "
                            "and single .py files.")
    return path


# ---------------------------------------------------------------------------------------- logs

class _Logs:
    def __init__(self, svc: Services, full: str, project: str, job_id: str) -> None:
        self.svc, self.full = svc, full
        self.entries: deque[dict[str, Any]] = deque(maxlen=MAX_LOG_ENTRIES)
        self.total = 0
        self.stderr_tail: deque[str] = deque(maxlen=5)
        self.lock = threading.Lock()
        self.dirty = False
        self.last_flush = 0.0
        self.base = {"logName": f"projects/{project}/logs/master-replica-0",
                     "resource": {"type": "ml_job", "labels": {"job_id": job_id, "project_id": project,
                                                               "task_name": "master-replica-0"}}}

    def add(self, severity: str, text: str) -> None:
        with self.lock:
            self.total += 1
            self.entries.append({**self.base, "insertId": f"{self.total:08d}", "severity": severity,
                                 "timestamp": rfc3339(self.svc.clock()), "textPayload": text[:MAX_LINE]})
            if severity == "ERROR":
                self.stderr_tail.append(text[:500])
            self.dirty = True

    def pump(self, stream: IO[bytes], severity: str) -> None:
        for raw in iter(stream.readline, b""):
            self.add(severity, raw.decode("utf-8", errors="replace").rstrip("\r\n"))

    def flush(self, *, force: bool = False) -> None:
        if not self.dirty or (not force and time.monotonic() - self.last_flush < 2.0):
            return
        with self.lock:
            data = {"entries": list(self.entries), "dropped": self.total - len(self.entries)}
            self.dirty = False
        self.last_flush = time.monotonic()
        store = self.svc.runtime.store
        for _ in range(3):
            rec = store.get(LOG_KIND, self.full)
            try:       # job output, not an API call: no audit entry
                store.commit([Put(LOG_KIND, self.full, data)],
                             expect=[Expect(LOG_KIND, self.full, rec.revision if rec else None)])
                return
            except Aborted:
                continue


# ------------------------------------------------------------------------------------- running

def _die_with_parent() -> None:      # runs in the child before exec (Linux): SIGKILL when the server dies
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG


def _kill(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(Exception):
        proc.kill()
    proc.wait()


def max_seconds(spec: Mapping[str, Any]) -> float:
    raw = str((spec.get("scheduling") or {}).get("maxRunningTime") or f"{DEFAULT_MAX_SECONDS}s")
    return float(raw[:-1])


def run_training(runner: JobRunner, job: Mapping[str, Any], full: str, ctx: JobContext
                 ) -> tuple[dict[str, Any], str | None]:
    """Run the job's module to its end: (trainingOutput, errorMessage or None); Cancelled if cancelled."""
    svc = runner.svc
    spec = job["trainingInput"]
    identity = str(job["keycardIdentity"])
    relative = full.split("/", 3)[3]
    project, job_id = relative.split("/")[1], relative.rsplit("/", 1)[1]
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix=f"keycard-job.{project}.{job_id}."))   # '.' is in neither name
    logs = _Logs(svc, full, project, job_id)
    att: Attachment | None = None
    httpd: ThreadingHTTPServer | None = None
    try:
        path = _packages(svc, identity, list(spec["packageUris"]), root / "packages")
        site = root / "site"
        for d in (site, root / "work", root / "home", root / "gcloud"):
            d.mkdir()
        shutil.copyfile(Path(__file__).with_name("job_guard.py"), site / "sitecustomize.py")
        att = _attach(svc, identity.split(":", 1)[1], relative)
        mds = MetadataServer(_InProcess(svc, runner.keys, runner.base_url), att, project_id=project,
                             project_number=str(job.get("keycardProjectNumber", "")))
        httpd = _serve(mds)
        hostport = f"127.0.0.1:{httpd.server_address[1]}"
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(root / "home"), "LANG": "C.UTF-8",
               "PYTHONUNBUFFERED": "1", "PYTHONNOUSERSITE": "1", "PYTHONPATH": os.pathsep.join([str(site), *path]),
               "GCE_METADATA_HOST": hostport, "GCE_METADATA_IP": hostport, "GOOGLE_CLOUD_PROJECT": project,
               "CLOUD_ML_PROJECT_ID": project, "CLOUD_ML_JOB_ID": job_id, "KEYCARD_ENDPOINT": runner.base_url,
               "CLOUDSDK_CONFIG": str(root / "gcloud"), "GOOGLE_API_USE_CLIENT_CERTIFICATE": "false",
               "GOOGLE_API_USE_MTLS_ENDPOINT": "never",
               "TF_CONFIG": json.dumps({"cluster": {}, "task": {"type": "master", "index": 0},
                                        "environment": "cloud", "job": {k: v for k, v in spec.items()
                                                                        if k != "serviceAccount"}})}
        ctx.checkpoint(force=True)
        proc = subprocess.Popen([sys.executable, "-m", str(spec["pythonModule"]), *map(str, spec.get("args") or [])],
                                cwd=root / "work", env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True, preexec_fn=_die_with_parent)
        assert proc.stdout is not None and proc.stderr is not None
        pumps = [threading.Thread(target=logs.pump, args=(s, sev), daemon=True)
                 for s, sev in ((proc.stdout, "INFO"), (proc.stderr, "ERROR"))]
        for t in pumps:
            t.start()
        deadline = started + max_seconds(spec)
        error: str | None = None
        try:
            while True:
                try:
                    rc = proc.wait(timeout=0.5)
                    break
                except subprocess.TimeoutExpired:
                    pass
                ctx.checkpoint()
                logs.flush()
                if time.monotonic() > deadline:
                    _kill(proc)
                    error = (f"The job ran longer than its maxRunningTime of {max_seconds(spec):g}s and was stopped "
                             "(trainingInput.scheduling.maxRunningTime).")
                    rc = proc.returncode
                    break
        except BaseException:
            _kill(proc)
            raise
        finally:
            for t in pumps:
                t.join(timeout=5)
            logs.flush(force=True)
        if error is None and rc != 0:
            how = f"was killed by signal {-rc}" if rc < 0 else f"exited with a non-zero status of {rc}"
            tail = " | ".join(logs.stderr_tail)
            error = f"The replica master 0 {how}." + (f" Last error output: {tail}" if tail else "") + \
                f" See the job's logs: GET /v1/{relative}:keycardLogs"
        return {"consumedMLUnits": round((time.monotonic() - started) / 3600, 6)}, error
    finally:
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        if att is not None:
            with contextlib.suppress(KeycardError):
                from keycard.services import attachments
                attachments.detach(svc, att.id, {"secret": att.secret})
        shutil.rmtree(root, ignore_errors=True)
