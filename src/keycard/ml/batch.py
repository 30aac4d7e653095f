"""Batch prediction: read newline-delimited JSON instances from the object store, predict, write results.

The job runs as its identity (the project's ML service agent, or the service account the job names):
before anything is read or written, the engine checks that identity's ``storage.objects.get`` on
every input file (and ``storage.objects.list`` on the bucket of a ``*`` path), and
``storage.objects.create`` (plus ``storage.objects.delete`` when a file is there already) on the two
output files; a missing one fails the job with a message naming the identity, the permission, the
object and the command that grants it. The outputs are written only once every instance has been
predicted, so a failed or cancelled job leaves nothing under ``outputPath``.

Input (``dataFormat: JSON``): each non-empty line is one instance, e.g. ``[5.1, 3.5, 1.4, 0.2]``.
A ``*`` at the end of an input path matches any rest of the name without a ``/``.

Output, under ``outputPath`` (a prefix; a ``/`` is added if missing):
- ``prediction.results-00000-of-00001``: one JSON object per line, in input order,
  ``{"instance": <the input line>, "prediction": <the model's output>}``;
- ``prediction.errors_stats-00000-of-00001``: one JSON object per failed line,
  ``{"input": "gs://…", "line": N, "error": "…"}`` (empty when nothing failed).
A line that is not JSON or that the model rejects counts in ``errorCount`` and does not stop the
job; a job in which every instance failed ends FAILED with the first error.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Mapping
from typing import Any

from keycard.errors import KeycardError
from keycard.ml.jobs import JobContext, JobFailed, check_storage, parse_gs
from keycard.ml.serving import LoadedModel, PredictionError
from keycard.services.common import Caller, Services
from keycard.services.ml_common import SERVICE
from keycard.store.base import Record

__all__ = ["DEFAULT_BATCH_SIZE", "ERRORS_FILE", "RESULTS_FILE", "run_batch"]

RESULTS_FILE = "prediction.results-00000-of-00001"
ERRORS_FILE = "prediction.errors_stats-00000-of-00001"
DEFAULT_BATCH_SIZE = 64
MAX_INPUT_BYTES = 256 * 1024 * 1024
MAX_ERROR_LINES = 10_000


def _load_model(svc: Services, job: Mapping[str, Any]) -> LoadedModel:
    """The model the job names: a file under ``uri`` (read as the job's identity) or a deployed version
    (read as the version's own identity, as online prediction does; loaded models are shared with it)."""
    from keycard.services.ml_versions import _cache, _deploy
    from keycard.services.service_accounts import ml_service_agent_email
    spec = job["predictionInput"]
    identity = str(job["keycardIdentity"])
    try:
        if spec.get("uri"):
            bucket, prefix = parse_gs(spec["uri"], "predictionInput.uri", prefix=True)
            if prefix and not prefix.endswith("/"):
                prefix += "/"
            return _deploy(svc, identity, str(spec["framework"]), bucket, prefix)
        store = svc.runtime.store
        vname = spec.get("versionName")
        if not vname:
            mrec = store.get("resource", f"//{SERVICE}/{spec['modelName']}")
            if mrec is None or mrec.deleted:
                raise JobFailed(f"Model {spec['modelName']} no longer exists.")
            vname = (mrec.data.get("defaultVersion") or {}).get("name")
            if not vname:
                raise JobFailed(f"Model {spec['modelName']} has no default version; deploy a version first.")
        vfull = f"//{SERVICE}/{vname}"
        vrec = store.get("resource", vfull)
        if vrec is None or vrec.deleted:
            raise JobFailed(f"Version {vname} no longer exists.")
        if vrec.data.get("state") != "READY":
            raise JobFailed(f"Version {vname} is {vrec.data.get('state')}, not READY.")
        loaded = _cache(svc).get((vfull, str(vrec.revision)))
        if loaded is None:
            bucket, prefix = parse_gs(vrec.data.get("deploymentUri"), "version.deploymentUri", prefix=True)
            if prefix and not prefix.endswith("/"):
                prefix += "/"
            sa = vrec.data.get("serviceAccount") or ml_service_agent_email(str(job["keycardProjectNumber"]))
            loaded = _deploy(svc, f"serviceAccount:{sa}", str(vrec.data["framework"]), bucket, prefix)
            _cache(svc).put((vfull, str(vrec.revision)), loaded)
        return loaded
    except KeycardError as e:
        raise JobFailed(e.message) from None


def _bucket_exists(svc: Services, bucket: str) -> None:
    from keycard.services.storage import bucket_full
    rec = svc.runtime.store.get("resource", bucket_full(bucket))
    if rec is None or rec.deleted:
        raise JobFailed(f"Bucket gs://{bucket} does not exist.")


def _inputs(svc: Services, identity: str, paths: list[str]) -> list[tuple[str, Record]]:
    store = svc.runtime.store
    found: list[tuple[str, Record]] = []
    for uri in paths:
        bucket, name = parse_gs(uri, "predictionInput.inputPaths", wildcard=True)
        if name.endswith("*"):
            check_storage(svc, identity, "storage.objects.list", bucket)
            _bucket_exists(svc, bucket)
            stem = name[:-1]
            token, matched = "", 0
            while True:
                page = store.list("object", parent=bucket, prefix=f"{bucket}/{stem}", page_token=token)
                for rec in page.records:
                    obj = rec.name.split("/", 1)[1]
                    if rec.deleted or "/" in obj[len(stem):]:
                        continue
                    check_storage(svc, identity, "storage.objects.get", bucket, obj)
                    found.append((f"gs://{rec.name}", rec))
                    matched += 1
                token = page.next_token
                if not token:
                    break
            if not matched:
                raise JobFailed(f"No input files match {uri}.")
        else:
            check_storage(svc, identity, "storage.objects.get", bucket, name)
            one = store.get("object", f"{bucket}/{name}")
            if one is None or one.deleted:
                _bucket_exists(svc, bucket)
                raise JobFailed(f"Input file {uri} does not exist.")
            found.append((uri, one))
    if sum(int(r.data.get("size", 0)) for _, r in found) > MAX_INPUT_BYTES:
        raise JobFailed(f"The input files hold more than {MAX_INPUT_BYTES} bytes, keycard's batch prediction limit; "
                        "split the job.")
    return found


def _outputs(svc: Services, identity: str, output_path: str) -> tuple[str, list[str]]:
    bucket, prefix = parse_gs(output_path, "predictionInput.outputPath", prefix=True)
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    names = [prefix + RESULTS_FILE, prefix + ERRORS_FILE]
    for name in names:
        check_storage(svc, identity, "storage.objects.create", bucket, name)
    _bucket_exists(svc, bucket)
    for name in names:
        if svc.runtime.store.get("object", f"{bucket}/{name}") is not None:      # overwriting needs delete too
            check_storage(svc, identity, "storage.objects.delete", bucket, name)
    return bucket, names


class _Batch:
    def __init__(self, model: LoadedModel, ctx: JobContext, size: int) -> None:
        self.model, self.ctx, self.size = model, ctx, size
        self.pending: list[tuple[Any, str, int]] = []
        self.results: list[str] = []
        self.errors: list[str] = []
        self.error_count = 0
        self.first_error = ""

    def error(self, uri: str, line: int, message: str) -> None:
        self.error_count += 1
        self.first_error = self.first_error or f"{uri} line {line}: {message}"
        if len(self.errors) < MAX_ERROR_LINES:
            self.errors.append(json.dumps({"input": uri, "line": line, "error": message}))

    def add(self, instance: Any, uri: str, line: int) -> None:
        self.pending.append((instance, uri, line))
        if len(self.pending) >= self.size:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        self.ctx.checkpoint()
        batch, self.pending = self.pending, []
        try:
            outs = self.model.predict([b[0] for b in batch])
            if len(outs) != len(batch):
                raise PredictionError(f"the model returned {len(outs)} predictions for {len(batch)} instances")
            for (inst, _u, _n), out in zip(batch, outs, strict=True):
                self.results.append(json.dumps({"instance": inst, "prediction": out}))
        except PredictionError:
            for inst, uri, line in batch:       # find the culprits one by one
                try:
                    out = self.model.predict([inst])[0]
                except PredictionError as e:
                    self.error(uri, line, str(e))
                else:
                    self.results.append(json.dumps({"instance": inst, "prediction": out}))
        self.ctx.pause()


def run_batch(svc: Services, job: Mapping[str, Any], ctx: JobContext) -> dict[str, Any]:
    """Run one batch prediction job; the predictionOutput, or JobFailed / Cancelled."""
    from keycard.services import storage
    started = time.monotonic()
    spec = job["predictionInput"]
    identity = str(job["keycardIdentity"])
    out_bucket, out_names = _outputs(svc, identity, str(spec["outputPath"]))
    inputs = _inputs(svc, identity, list(spec["inputPaths"]))
    model = _load_model(svc, job)
    ctx.checkpoint(force=True)
    if svc.blobs is None:
        raise JobFailed("Object storage is not configured on this server.")
    work = _Batch(model, ctx, int(spec.get("batchSize") or DEFAULT_BATCH_SIZE))
    for uri, rec in inputs:
        data = svc.blobs.read(rec.name.split("/", 1)[0], str(rec.data["keycardBlob"]))
        for n, raw in enumerate(data.split(b"\n"), 1):
            if not raw.strip():
                continue
            try:
                instance = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                work.error(uri, n, f"not a JSON instance: {e}")
                continue
            work.add(instance, uri, n)
    work.flush()
    if not work.results:
        raise JobFailed(f"Every one of the {work.error_count} instances failed; the first error: {work.first_error}"
                        if work.error_count else "The input files hold no instances.")
    ctx.checkpoint(force=True)
    caller = Caller(identity)
    written: list[str] = []
    try:
        for name, lines in zip(out_names, (work.results, work.errors), strict=True):
            body = ("\n".join(lines) + "\n").encode() if lines else b""
            storage.insert_object(svc, caller, out_bucket, name, body, content_type="application/json",
                                  metadata=None, base_url="")
            written.append(name)
    except KeycardError as e:
        for name in written:            # leave nothing partial behind
            with contextlib.suppress(KeycardError):
                storage.delete_object(svc, caller, out_bucket, name)
        raise JobFailed(f"Cannot write the results to gs://{out_bucket}: {e.message}") from None
    return {"outputPath": spec["outputPath"], "predictionCount": str(len(work.results)),
            "errorCount": str(work.error_count), "nodeHours": round((time.monotonic() - started) / 3600, 6)}
