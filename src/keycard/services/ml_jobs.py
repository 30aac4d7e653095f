"""ml v1 jobs: create, get, list, patch, cancel, and (keycard extension) a training job's logs.

A job is a hierarchy node ``//ml.googleapis.com/projects/PID/jobs/JOB`` under its project, so it has
its own allow policy: its creator gets roles/ml.jobOwner on it, as in Google, which is how a
developer (who holds ml.jobs.get/list on the project but not ml.jobs.cancel) cancels the jobs they
created and no others. Jobs run in the background (:mod:`keycard.ml.jobs`), as the job's identity:

- ``predictionInput.serviceAccount`` / ``trainingInput.serviceAccount``: a service account of the
  caller's choosing, on which the caller needs ``iam.serviceAccounts.actAs`` (checked at create).
  ``trainingInput.serviceAccount`` is Google's field; ``predictionInput.serviceAccount`` is a keycard
  extension (Google runs batch prediction as the service agent only);
- otherwise the project's ML service agent (``service-NUMBER@cloud-ml.google.com.iam.gserviceaccount.com``,
  which holds roles/ml.serviceAgent on its project: the project's buckets, not other projects').

Batch prediction (ROLES.md): ml.jobs.create on the project; with ``modelName`` also ml.models.predict
on the model; with ``versionName`` ml.models.predict on its model or ml.versions.predict on the
version (either suffices); with ``uri`` (a model in the store, plus the keycard field
``predictionInput.framework``: SCIKIT_LEARN or ONNX) nothing more.

``GET /v1/projects/P/jobs/J:keycardLogs`` (ml.jobs.get on the job): the job's output lines as Cloud
Logging LogEntries ``{"entries": [...]}`` — see :mod:`keycard.ml.training`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from typing import Any

from keycard.errors import Aborted, AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from keycard.ml.jobs import LEASE, TERMINAL, parse_gs, runner, start_job_runner
from keycard.ml.serving import FRAMEWORKS
from keycard.runtime import etag_for
from keycard.services.common import Caller, Services, rfc3339
from keycard.services.ml_common import (
    SERVICE,
    Project,
    list_page,
    ml_id,
    owner_policy,
    present,
    project,
    stored,
)
from keycard.services.ml_models import _labels
from keycard.services.service_accounts import ml_service_agent_email, require_act_as
from keycard.store.base import Delete, Expect, Put, Record

__all__ = ["cancel_job", "create_job", "get_job", "job_logs", "list_jobs", "patch_job"]

_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_DURATION = re.compile(r"^[0-9]{1,7}(\.[0-9]{1,9})?s$")
_MODEL = re.compile(r"^projects/([^/]+)/models/([^/]+)(?:/versions/([^/]+))?$")
_FILTER = re.compile(r'^\s*(state|labels\.[A-Za-z0-9_-]+)\s*[=:]\s*"?([A-Za-z0-9_.-]*)"?\s*$')
_PACKAGES = (".tar.gz", ".tgz", ".whl", ".py")
MAX_RUNNING_SECONDS = 7 * 24 * 3600


def _strings(value: object, fld: str, *, limit: int, empty: bool = False) -> list[str]:
    if not isinstance(value, list) or (not value and not empty) or len(value) > limit \
            or not all(isinstance(v, str) and len(v) <= 4096 for v in value):
        raise InvalidArgument(f"Invalid {fld}: a list of {'' if empty else '1 to '}{limit} strings.", field=fld)
    return list(value)


def _opt_str(spec: Mapping[str, Any], key: str, fld: str) -> str | None:
    v = spec.get(key)
    if v is not None and (not isinstance(v, str) or len(v) > 200):
        raise InvalidArgument(f"Invalid {fld}.{key}: a string.", field=f"{fld}.{key}")
    return v


def _identity(svc: Services, caller: Caller, proj: Project, spec: Mapping[str, Any], fld: str, what: str) -> str:
    sa = spec.get("serviceAccount")
    if sa is None:
        return f"serviceAccount:{ml_service_agent_email(proj.number)}"
    if not isinstance(sa, str) or not sa:
        raise InvalidArgument(f"Invalid {fld}.serviceAccount: a service account email.", field=f"{fld}.serviceAccount")
    return f"serviceAccount:{require_act_as(svc, caller, sa, what=what).email}"


def _model_source(svc: Services, caller: Caller, proj: Project, spec: Mapping[str, Any], key: str) -> str:
    """Check predict permission on the deployed model or version; return its name as projects/PID/…."""
    name = spec[key]
    m = _MODEL.match(name) if isinstance(name, str) else None
    if m is None or (key == "versionName") != (m.group(3) is not None) or \
            m.group(1) not in (proj.pid, proj.number, proj.shown):
        shape = "projects/PROJECT/models/MODEL" + ("/versions/VERSION" if key == "versionName" else "")
        raise InvalidArgument(f"Invalid predictionInput.{key} {str(name)[:200]!r}: expected {shape} in this job's "
                              "project.", field=f"predictionInput.{key}")
    model, version = m.group(2), m.group(3)
    mfull = proj.full(f"models/{model}")
    if version is None or svc.allowed(caller, "ml.models.predict", mfull):
        svc.authorize(caller, "ml.models.predict", mfull, service=SERVICE)
    else:
        svc.authorize(caller, "ml.versions.predict", proj.full(f"models/{model}/versions/{version}"), service=SERVICE)
    stored(svc, mfull, "Model", proj.relative(f"models/{model}"))
    if version is None:
        return proj.relative(f"models/{model}")
    stored(svc, proj.full(f"models/{model}/versions/{version}"), "Version",
           proj.relative(f"models/{model}/versions/{version}"))
    return proj.relative(f"models/{model}/versions/{version}")


def _prediction(svc: Services, caller: Caller, proj: Project, pin: object) -> tuple[dict[str, Any], str]:
    f = "predictionInput"
    if not isinstance(pin, Mapping):
        raise InvalidArgument(f"Invalid {f}: expected a PredictionInput object.", field=f)
    if pin.get("dataFormat") != "JSON":
        raise InvalidArgument(f"Invalid {f}.dataFormat {pin.get('dataFormat')!r}: keycard reads JSON "
                              "(newline-delimited instances).", field=f"{f}.dataFormat")
    paths = _strings(pin.get("inputPaths"), f"{f}.inputPaths", limit=100)
    for p in paths:
        parse_gs(p, f"{f}.inputPaths", wildcard=True)
    if not isinstance(pin.get("outputPath"), str):
        raise InvalidArgument(f"Invalid {f}.outputPath: a gs://BUCKET/PREFIX URI is required.", field=f"{f}.outputPath")
    parse_gs(pin["outputPath"], f"{f}.outputPath", prefix=True)
    sources = [k for k in ("modelName", "versionName", "uri") if pin.get(k) is not None]
    if len(sources) != 1:
        raise InvalidArgument(f"Invalid {f}: set exactly one of modelName, versionName and uri.",
                              field=f"{f}.modelName")
    spec: dict[str, Any] = {"dataFormat": "JSON", "inputPaths": paths, "outputPath": pin["outputPath"],
                            "region": _opt_str(pin, "region", f) or "us-central1"}
    for key in ("runtimeVersion", "signatureName"):
        if _opt_str(pin, key, f) is not None:
            spec[key] = pin[key]
    size = pin.get("batchSize")
    if size is not None:
        if not str(size).isdigit() or not 1 <= int(str(size)) <= 10_000:
            raise InvalidArgument(f"Invalid {f}.batchSize {size!r}: an integer from 1 to 10000.",
                                  field=f"{f}.batchSize")
        spec["batchSize"] = str(int(str(size)))
    if sources[0] == "uri":
        parse_gs(pin["uri"], f"{f}.uri", prefix=True)
        if pin.get("framework") not in FRAMEWORKS:
            raise InvalidArgument(f"Invalid {f}.framework {pin.get('framework')!r}: with a model uri, name its "
                                  f"framework: {', '.join(FRAMEWORKS)}.", field=f"{f}.framework")
        spec.update({"uri": pin["uri"], "framework": pin["framework"]})
    else:
        spec[sources[0]] = _model_source(svc, caller, proj, pin, sources[0])
    identity = _identity(svc, caller, proj, pin, f, "run a batch prediction job")
    if pin.get("serviceAccount") is not None:
        spec["serviceAccount"] = identity.split(":", 1)[1]
    return spec, identity


def _training(svc: Services, caller: Caller, proj: Project, tin: object) -> tuple[dict[str, Any], str]:
    f = "trainingInput"
    if not isinstance(tin, Mapping):
        raise InvalidArgument(f"Invalid {f}: expected a TrainingInput object.", field=f)
    tier = tin.get("scaleTier", "BASIC")
    if tier != "BASIC":
        raise InvalidArgument(f"Invalid {f}.scaleTier {tier!r}: keycard runs one process (BASIC).",
                              field=f"{f}.scaleTier")
    uris = _strings(tin.get("packageUris"), f"{f}.packageUris", limit=100)
    for u in uris:
        _bucket, name = parse_gs(u, f"{f}.packageUris")
        if not name.endswith(_PACKAGES):
            raise InvalidArgument(f"Invalid {f}.packageUris {u[:200]!r}: a .tar.gz source distribution, a .whl or a "
                                  ".py file.", field=f"{f}.packageUris")
    module = tin.get("pythonModule")
    if not isinstance(module, str) or len(module) > 200 or not _MODULE.match(module):
        raise InvalidArgument(f"Invalid {f}.pythonModule {str(module)[:200]!r}: a dotted Python module name, e.g. "
                              "trainer.task.", field=f"{f}.pythonModule")
    spec: dict[str, Any] = {"scaleTier": "BASIC", "packageUris": uris, "pythonModule": module,
                            "region": _opt_str(tin, "region", f) or "us-central1"}
    if tin.get("args") is not None:
        spec["args"] = _strings(tin["args"], f"{f}.args", limit=1000, empty=True)
    for key in ("runtimeVersion", "pythonVersion", "jobDir"):
        if _opt_str(tin, key, f) is not None:
            spec[key] = tin[key]
    sched = tin.get("scheduling")
    if sched is not None:
        limit = sched.get("maxRunningTime") if isinstance(sched, Mapping) else None
        if not isinstance(limit, str) or not _DURATION.match(limit) or not 0 < float(limit[:-1]) <= MAX_RUNNING_SECONDS:
            raise InvalidArgument(f"Invalid {f}.scheduling.maxRunningTime {limit!r}: a duration such as \"3600s\", "
                                  "at most 7 days.", field=f"{f}.scheduling.maxRunningTime")
        spec["scheduling"] = {"maxRunningTime": limit}
    identity = _identity(svc, caller, proj, tin, f, "run a training job")
    if tin.get("serviceAccount") is not None:
        spec["serviceAccount"] = identity.split(":", 1)[1]
    return spec, identity


# ------------------------------------------------------------------------------------ methods

def create_job(svc: Services, caller: Caller, ident: str, body: object, *, keys: Callable[[], Any],
               base_url: str) -> dict[str, Any]:
    if not isinstance(body, Mapping):
        raise InvalidArgument("Invalid request body: expected a Job.", field="job")
    proj = project(svc, caller, ident, "ml.jobs.create")
    job_id = ml_id(body.get("jobId"), "job.jobId", "job")
    pin, tin = body.get("predictionInput"), body.get("trainingInput")
    if (pin is None) == (tin is None):
        raise InvalidArgument("Invalid job: set exactly one of predictionInput and trainingInput.",
                              field="job.predictionInput")
    if tin is not None and not svc.training_enabled:
        raise FailedPrecondition("Training jobs are off on this server: their code runs as the server's own OS "
                                 "user, with its files. An operator turns them on with `keycard serve "
                                 "--enable-training` (on a host where that is acceptable).",
                                 reason="TRAINING_DISABLED", field="job.trainingInput")
    labels = _labels(body.get("labels"), "job.labels")
    key = "predictionInput" if pin is not None else "trainingInput"
    spec, identity = _prediction(svc, caller, proj, pin) if pin is not None else _training(svc, caller, proj, tin)
    full = proj.full(f"jobs/{job_id}")
    if svc.runtime.store.get("resource", full) is not None:
        raise AlreadyExists(f"Field: job.job_id Error: A job with the id {job_id} already exists.",
                            field="job.jobId", reason="JOB_EXISTS")
    data: dict[str, Any] = {"jobId": job_id, "createTime": rfc3339(svc.clock()), "state": "QUEUED", key: spec,
                            "keycardCreator": caller.principal or "", "keycardIdentity": identity,
                            "keycardProjectNumber": proj.number}
    if labels:
        data["labels"] = labels
    svc.commit(caller, puts=[Put("resource", full, data, parent=proj.crm),
                             Put("iam_policy", full, owner_policy(caller, "roles/ml.jobOwner")),
                             Put(LEASE, full, {"runner": {}, "createdAt": time.time(), "heartbeat": 0.0})],
               expect=[Expect("resource", full, None), Expect(LEASE, full, None)],
               method="google.cloud.ml.v1.JobService.CreateJob", service=SERVICE,
               resource_name=proj.relative(f"jobs/{job_id}"), request=dict(body))
    out = present(stored(svc, full, "Job", proj.relative(f"jobs/{job_id}")))
    start_job_runner(svc, keys, base_url).submit(full)
    return out


def _job(svc: Services, caller: Caller, ident: str, job_id: str, permission: str) -> tuple[Project, str]:
    """The permission on the job before anything about it (or its project) is revealed: a caller without
    it gets the same 403, naming the job as they wrote it, whether or not the job or project exists."""
    shown = f"//{SERVICE}/projects/{ident}/jobs/{job_id}"
    try:
        proj = project(svc, caller, ident)
    except NotFound:
        if svc.organization is not None:
            svc.authorize(caller, permission, svc.organization, service=SERVICE, shown=shown)
        raise
    full = proj.full(f"jobs/{job_id}")
    svc.authorize(caller, permission, full, service=SERVICE, shown=shown)
    return proj, full


def get_job(svc: Services, caller: Caller, ident: str, job_id: str) -> dict[str, Any]:
    proj, full = _job(svc, caller, ident, job_id, "ml.jobs.get")
    return present(stored(svc, full, "Job", proj.relative(f"jobs/{job_id}")))


def list_jobs(svc: Services, caller: Caller, ident: str, query: Mapping[str, str]) -> dict[str, Any]:
    proj = project(svc, caller, ident, "ml.jobs.list")
    want: list[tuple[str, str]] = []
    for term in re.split(r"\s+AND\s+", query.get("filter") or "", flags=re.IGNORECASE):
        if not term.strip():
            continue
        m = _FILTER.match(term)
        if m is None:
            raise InvalidArgument(f"Invalid filter {term.strip()[:100]!r}: keycard filters jobs by state=STATE and "
                                  "labels.KEY=VALUE, joined by AND.", field="filter")
        want.append((m.group(1), m.group(2)))

    def keep(r: Record) -> bool:
        return all((r.data.get("state") if k == "state" else (r.data.get("labels") or {}).get(k[7:])) == v
                   for k, v in want)

    return list_page(svc, query, "jobs", proj.crm, present, prefix=proj.full("jobs/"), keep=keep)


def patch_job(svc: Services, caller: Caller, ident: str, job_id: str, body: object, mask: str | None
              ) -> dict[str, Any]:
    proj, full = _job(svc, caller, ident, job_id, "ml.jobs.update")
    rec = stored(svc, full, "Job", proj.relative(f"jobs/{job_id}"))
    if not isinstance(body, Mapping):
        raise InvalidArgument("Invalid request body: expected a Job.", field="job")
    paths = {p.strip() for p in (mask or "").split(",") if p.strip()}
    if paths != {"labels"}:
        raise InvalidArgument("Invalid updateMask: only labels can be updated on a job.", field="updateMask")
    etag = body.get("etag")
    if etag is not None and etag != etag_for(rec.revision):
        raise Aborted("The job's etag does not match: it changed since it was read. Get it again and retry.",
                      reason="ETAG_MISMATCH", field="job.etag")
    data = dict(rec.data)
    labels = _labels(body.get("labels"), "job.labels")
    if labels:
        data["labels"] = labels
    else:
        data.pop("labels", None)
    svc.commit(caller, puts=[Put("resource", full, data, parent=rec.parent)],
               expect=[Expect("resource", full, rec.revision)], method="google.cloud.ml.v1.JobService.UpdateJob",
               service=SERVICE, resource_name=proj.relative(f"jobs/{job_id}"), request=dict(body))
    return present(stored(svc, full, "Job", proj.relative(f"jobs/{job_id}")))


def cancel_job(svc: Services, caller: Caller, ident: str, job_id: str) -> dict[str, Any]:
    """QUEUED and not yet picked up: CANCELLED at once; running: CANCELLING, until its runner stops it."""
    proj, full = _job(svc, caller, ident, job_id, "ml.jobs.cancel")
    store = svc.runtime.store
    for _ in range(10):
        rec = stored(svc, full, "Job", proj.relative(f"jobs/{job_id}"))
        state = rec.data.get("state")
        if state in TERMINAL:
            raise FailedPrecondition(f"Job {proj.relative(f'jobs/{job_id}')} is already {state}; only a queued or "
                                     "running job can be cancelled.", reason="JOB_FINISHED")
        if state == "CANCELLING":
            return {}
        lease = store.get(LEASE, full)
        unclaimed = lease is None or not lease.data.get("runner")
        data = dict(rec.data)
        expect = [Expect("resource", full, rec.revision)]
        deletes: list[Delete] = []
        if unclaimed and state == "QUEUED":
            data.update({"state": "CANCELLED", "endTime": rfc3339(svc.clock())})
            if lease is not None:
                deletes.append(Delete(LEASE, full))
                expect.append(Expect(LEASE, full, lease.revision))
        else:
            data["state"] = "CANCELLING"
        try:
            svc.commit(caller, puts=[Put("resource", full, data, parent=rec.parent)], deletes=deletes, expect=expect,
                       method="google.cloud.ml.v1.JobService.CancelJob", service=SERVICE,
                       resource_name=proj.relative(f"jobs/{job_id}"))
        except Aborted:
            continue
        r = runner(svc)
        if r is not None:
            r.cancel_local(full)
        return {}
    raise Aborted("The job changed while it was being cancelled; retry.", reason="CONCURRENT_UPDATE")


def job_logs(svc: Services, caller: Caller, ident: str, job_id: str) -> dict[str, Any]:
    from keycard.ml.training import LOG_KIND
    proj, full = _job(svc, caller, ident, job_id, "ml.jobs.get")
    stored(svc, full, "Job", proj.relative(f"jobs/{job_id}"))
    rec = svc.runtime.store.get(LOG_KIND, full)
    if rec is None:
        return {}
    out: dict[str, Any] = {"entries": list(rec.data.get("entries", []))}
    if rec.data.get("dropped"):
        out["keycardDroppedEntries"] = str(rec.data["dropped"])
    return out
