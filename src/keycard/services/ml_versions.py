"""ml v1 model versions: create (deploy), get, list, patch, delete, setDefault, and online prediction.

Deploying a version from ``deploymentUri`` (``gs://BUCKET/PREFIX``) runs as the version's
``serviceAccount`` (the caller needs actAs on it) or else the project's ML service agent, which
must hold ``storage.buckets.list`` and ``storage.objects.get`` on the bucket, as in Google. If it
does not, the operation fails with an error naming the identity, the bucket, the missing
permissions and the command that grants them; the version is left FAILED. The deployment runs
within the request; the Operation comes back already done.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from keycard.errors import AlreadyExists, FailedPrecondition, InvalidArgument, KeycardError
from keycard.ml.serving import FILES, FRAMEWORKS, LoadedModel, ModelCache, PredictionError, load_model
from keycard.services.common import Caller, Services, rfc3339
from keycard.services.ml_common import (
    SERVICE,
    Project,
    list_page,
    ml_id,
    new_operation,
    operation_json,
    present,
    project,
    stored,
    typed,
)
from keycard.services.ml_models import finish_operation
from keycard.services.service_accounts import ml_service_agent_email, require_act_as
from keycard.services.storage import bucket_full, grant_bucket_access, object_full
from keycard.store.base import Delete, Expect, Put, Record

__all__ = ["DEPLOY_PERMISSIONS", "MAX_PREDICT_BYTES", "Prediction", "create_version", "prepare_predict"]

DEPLOY_PERMISSIONS = ("storage.buckets.list", "storage.objects.get")
MAX_PREDICT_BYTES = 1_500_000           # Google's online prediction request limit (1.5 MB)
_VERSION_FIELDS = ("description", "labels", "runtimeVersion", "pythonVersion", "machineType", "manualScaling",
                   "autoScaling", "predictionClass", "packageUris")
_CACHE_ATTR = "_keycard_model_cache"


def _cache(svc: Services) -> ModelCache:
    cache = getattr(svc.runtime, _CACHE_ATTR, None)
    if cache is None:
        cache = ModelCache()
        setattr(svc.runtime, _CACHE_ATTR, cache)
    return cache


def _version_json(rec: Record, model: Record | None) -> dict[str, Any]:
    out = present(rec)
    default = (model.data.get("defaultVersion") or {}).get("name") if model is not None else None
    if default == rec.data.get("name"):
        out["isDefault"] = True
    return out


def _gs(uri: object) -> tuple[str, str]:
    if not isinstance(uri, str) or not uri.startswith("gs://") or len(uri) < 8:
        raise InvalidArgument("Invalid version.deploymentUri: expected gs://BUCKET/PATH in keycard's object store.",
                              field="version.deploymentUri")
    bucket, _, prefix = uri[5:].partition("/")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    return bucket, prefix


# ------------------------------------------------------------------------------------- deploy

def _deploy(svc: Services, identity: str, framework: str, bucket: str, prefix: str) -> LoadedModel:
    """Check the deploying identity's access, find and load the model file; KeycardError if it fails."""
    engine = svc.runtime.engine
    now = svc.clock()
    missing = [p for p in DEPLOY_PERMISSIONS if not engine.check(identity, p, bucket_full(bucket), time=now).allowed]
    if missing:
        raise FailedPrecondition(
            f"{identity.split(':', 1)[1]} cannot read the model files: it lacks {', '.join(missing)} on bucket "
            f"gs://{bucket}. Grant it with: {grant_bucket_access(bucket, identity, missing)}",
            reason="DEPLOYMENT_ACCESS_DENIED",
            metadata={"serviceAccount": identity.split(":", 1)[1], "bucket": bucket, "permissions": ",".join(missing)})
    store = svc.runtime.store
    if store.get("resource", bucket_full(bucket)) is None:
        raise FailedPrecondition(f"Bucket gs://{bucket} of deploymentUri does not exist.", reason="NO_BUCKET")
    rec = None
    for fname in FILES[framework]:
        rec = store.get("object", f"{bucket}/{prefix}{fname}")
        if rec is not None:
            break
    if rec is None:
        raise FailedPrecondition(f"No {' or '.join(FILES[framework])} under gs://{bucket}/{prefix} for framework "
                                 f"{framework}.", reason="MODEL_FILE_NOT_FOUND")
    if not engine.check(identity, "storage.objects.get", object_full(bucket, rec.name.split("/", 1)[1]),
                        time=now).allowed:
        raise FailedPrecondition(f"{identity.split(':', 1)[1]} lacks storage.objects.get on gs://{rec.name}.",
                                 reason="DEPLOYMENT_ACCESS_DENIED")
    if svc.blobs is None:
        raise FailedPrecondition("Object storage is not configured on this server.", reason="STORAGE_DISABLED")
    data = svc.blobs.read(bucket, str(rec.data["keycardBlob"]))
    try:
        return load_model(framework, data)
    except ValueError as e:
        raise FailedPrecondition(f"Cannot load gs://{rec.name}: {e}", reason="MODEL_LOAD_FAILED") from None


def create_version(svc: Services, caller: Caller, ident: str, model: str, body: object) -> dict[str, Any]:
    if not isinstance(body, Mapping):
        raise InvalidArgument("Invalid request body: expected a Version.", field="version")
    proj = project(svc, caller, ident)
    mfull = proj.full(f"models/{model}")
    svc.authorize(caller, "ml.versions.create", mfull, service=SERVICE)
    mrec = stored(svc, mfull, "Model", proj.relative(f"models/{model}"))
    vid = ml_id(body.get("name"), "version.name", "version")
    framework = body.get("framework")
    if framework not in FRAMEWORKS:
        raise InvalidArgument(f"Invalid version.framework {framework!r}: keycard serves {', '.join(FRAMEWORKS)}.",
                              field="version.framework")
    bucket, prefix = _gs(body.get("deploymentUri"))
    sa = body.get("serviceAccount")
    if sa is not None:
        if not isinstance(sa, str):
            raise InvalidArgument("Invalid version.serviceAccount: an email.", field="version.serviceAccount")
        require_act_as(svc, caller, sa, what="deploy a model version")
    vfull = proj.full(f"models/{model}/versions/{vid}")
    if svc.runtime.store.get("resource", vfull) is not None:
        raise AlreadyExists("Field: version.name Error: A version with the same name already exists.",
                            field="version.name", reason="VERSION_EXISTS")
    data: dict[str, Any] = {k: body[k] for k in _VERSION_FIELDS if body.get(k) is not None}
    data.update({"name": proj.relative(f"models/{model}/versions/{vid}"), "deploymentUri": body["deploymentUri"],
                 "framework": framework, "state": "CREATING", "createTime": rfc3339(svc.clock())})
    data.setdefault("runtimeVersion", "2.11")
    data.setdefault("pythonVersion", "3.7")
    data.setdefault("machineType", "mls1-c1-m2")
    if sa:
        data["serviceAccount"] = sa
    op, op_puts = new_operation(svc, caller, proj, "CREATE_VERSION", str(mrec.data["name"]), data)
    svc.commit(caller, puts=[Put("resource", vfull, data, parent=mfull), *op_puts],
               expect=[Expect("resource", vfull, None)], method="google.cloud.ml.v1.VersionService.CreateVersion",
               service=SERVICE, resource_name=data["name"], request=dict(body))
    op_full = proj.full(f"operations/{op['name'].rsplit('/', 1)[1]}")
    identity = f"serviceAccount:{sa or ml_service_agent_email(proj.number)}"
    try:
        loaded = _deploy(svc, identity, str(framework), bucket, prefix)
    except KeycardError as e:
        _set_state(svc, vfull, "FAILED", e.message)
        finish_operation(svc, op_full, error={"code": 9, "message": e.message, "details": [
            {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": e.reason, "domain": SERVICE,
             "metadata": e.metadata}]})
    else:
        vrec = _set_state(svc, vfull, "READY", None, make_default_of=mfull)
        _cache(svc).put((vfull, str(vrec.revision)), loaded)
        finish_operation(svc, op_full, response=typed("Version", _version_json(vrec, None)))
    return operation_json(stored(svc, op_full, "Operation", op["name"]))


def _set_state(svc: Services, vfull: str, state: str, error: str | None, make_default_of: str | None = None
               ) -> Record:
    store = svc.runtime.store
    rec = store.get("resource", vfull)
    assert rec is not None
    data = dict(rec.data)
    data["state"] = state
    if error:
        data["errorMessage"] = error
    puts = [Put("resource", vfull, data, parent=rec.parent)]
    expect = [Expect("resource", vfull, rec.revision)]
    if make_default_of is not None:
        mrec = store.get("resource", make_default_of)
        if mrec is not None and not (mrec.data.get("defaultVersion") or {}).get("name"):
            puts.append(Put("resource", make_default_of, {**mrec.data, "defaultVersion": {"name": data["name"]}},
                            parent=mrec.parent))
            expect.append(Expect("resource", make_default_of, mrec.revision))
    svc.commit(Caller(None), puts=puts, expect=expect, method="google.cloud.ml.v1.VersionService.Deploy",
               service=SERVICE, resource_name=str(data["name"]))
    out = store.get("resource", vfull)
    assert out is not None
    return out


# ------------------------------------------------------------------------------- reads, updates

def _model_and_version(svc: Services, caller: Caller, ident: str, model: str, version: str, permission: str
                       ) -> tuple[Project, Record, Record]:
    proj = project(svc, caller, ident)
    vfull = proj.full(f"models/{model}/versions/{version}")
    svc.authorize(caller, permission, vfull, service=SERVICE)
    mrec = stored(svc, proj.full(f"models/{model}"), "Model", proj.relative(f"models/{model}"))
    return proj, mrec, stored(svc, vfull, "Version", proj.relative(f"models/{model}/versions/{version}"))


def get_version(svc: Services, caller: Caller, ident: str, model: str, version: str) -> dict[str, Any]:
    _proj, mrec, vrec = _model_and_version(svc, caller, ident, model, version, "ml.versions.get")
    return _version_json(vrec, mrec)


def list_versions(svc: Services, caller: Caller, ident: str, model: str, query: Mapping[str, str]
                  ) -> dict[str, Any]:
    proj = project(svc, caller, ident)
    mfull = proj.full(f"models/{model}")
    svc.authorize(caller, "ml.versions.list", mfull, service=SERVICE)
    mrec = stored(svc, mfull, "Model", proj.relative(f"models/{model}"))
    return list_page(svc, query, "versions", mfull, lambda r: _version_json(r, mrec))


def patch_version(svc: Services, caller: Caller, ident: str, model: str, version: str, body: object,
                  mask: str | None) -> dict[str, Any]:
    proj, mrec, vrec = _model_and_version(svc, caller, ident, model, version, "ml.versions.update")
    if not isinstance(body, Mapping):
        raise InvalidArgument("Invalid request body: expected a Version.", field="version")
    paths = {p.strip() for p in (mask or "").split(",") if p.strip()}
    allowed = {"description", "labels", "manualScaling.nodes", "autoScaling.minNodes", "requestLoggingConfig"}
    if not paths or paths - allowed:
        raise InvalidArgument(f"Invalid updateMask: {', '.join(sorted(allowed))} can be updated.", field="updateMask")
    data = dict(vrec.data)
    for p in paths:
        top = p.split(".", 1)[0]
        if body.get(top) is None:
            data.pop(top, None)
        else:
            data[top] = body[top]
    op, op_puts = new_operation(svc, caller, proj, "UPDATE_VERSION", str(mrec.data["name"]), done=True,
                                response=typed("Version", {k: v for k, v in data.items()
                                                           if not k.startswith("keycard")}))
    svc.commit(caller, puts=[Put("resource", vrec.name, data, parent=vrec.parent), *op_puts],
               expect=[Expect("resource", vrec.name, vrec.revision)],
               method="google.cloud.ml.v1.VersionService.UpdateVersion", service=SERVICE,
               resource_name=str(data["name"]), request=dict(body))
    return op


def set_default(svc: Services, caller: Caller, ident: str, model: str, version: str) -> dict[str, Any]:
    proj = project(svc, caller, ident)
    mfull = proj.full(f"models/{model}")
    svc.authorize(caller, "ml.models.update", mfull, service=SERVICE)
    mrec = stored(svc, mfull, "Model", proj.relative(f"models/{model}"))
    vrec = stored(svc, proj.full(f"models/{model}/versions/{version}"), "Version",
                  proj.relative(f"models/{model}/versions/{version}"))
    svc.commit(caller, puts=[Put("resource", mfull, {**mrec.data, "defaultVersion": {"name": vrec.data["name"]}},
                                 parent=mrec.parent)],
               expect=[Expect("resource", mfull, mrec.revision), Expect("resource", vrec.name, vrec.revision)],
               method="google.cloud.ml.v1.VersionService.SetDefaultVersion", service=SERVICE,
               resource_name=str(vrec.data["name"]))
    return _version_json(vrec, stored(svc, mfull, "Model", str(mrec.data["name"])))


def delete_version(svc: Services, caller: Caller, ident: str, model: str, version: str) -> dict[str, Any]:
    proj, mrec, vrec = _model_and_version(svc, caller, ident, model, version, "ml.versions.delete")
    store = svc.runtime.store
    is_default = (mrec.data.get("defaultVersion") or {}).get("name") == vrec.data.get("name")
    siblings = [r for r in store.list("resource", parent=mrec.name, page_size=2).records if r.name != vrec.name]
    if is_default and siblings:
        raise FailedPrecondition("Cannot delete the default version of a model that has other versions; make "
                                 "another version the default first (versions.setDefault).",
                                 reason="DEFAULT_VERSION")
    op, op_puts = new_operation(svc, caller, proj, "DELETE_VERSION", str(mrec.data["name"]),
                                {k: v for k, v in vrec.data.items() if not k.startswith("keycard")}, done=True,
                                response={"@type": "type.googleapis.com/google.protobuf.Empty"})
    puts = list(op_puts)
    expect = [Expect("resource", vrec.name, vrec.revision)]
    if is_default:
        model_data = {k: v for k, v in mrec.data.items() if k != "defaultVersion"}
        puts.append(Put("resource", mrec.name, model_data, parent=mrec.parent))
        expect.append(Expect("resource", mrec.name, mrec.revision))
    deletes = [Delete("resource", vrec.name)]
    pol = store.get("iam_policy", vrec.name)
    if pol is not None:
        deletes.append(Delete("iam_policy", vrec.name))
        expect.append(Expect("iam_policy", vrec.name, pol.revision))
    svc.commit(caller, puts=puts, deletes=deletes, expect=expect,
               method="google.cloud.ml.v1.VersionService.DeleteVersion", service=SERVICE,
               resource_name=str(vrec.data["name"]))
    return op


# ----------------------------------------------------------------------------- online prediction

INLINE_INSTANCES = 64       # a cached model answers this many instances faster than a threadpool round trip


class Prediction:
    """An authorized, validated online prediction, ready to run: ``cheap`` when its model is loaded
    and the request small (run it where it is, e.g. on the event loop), else run it on a worker thread
    (loading the model reads the store and the object files)."""

    __slots__ = ("_identity", "_instances", "_key", "_loaded", "_svc", "_vrec", "cheap")

    def __init__(self, svc: Services, vrec: Record, identity: str, instances: Any) -> None:
        self._svc, self._vrec, self._identity, self._instances = svc, vrec, identity, instances
        self._key = (vrec.name, str(vrec.revision))
        self._loaded = _cache(svc).get(self._key)
        self.cheap = self._loaded is not None and (not isinstance(instances, list)
                                                   or len(instances) <= INLINE_INSTANCES)

    def __call__(self) -> dict[str, Any]:
        loaded = self._loaded
        if loaded is None:
            bucket, prefix = _gs(self._vrec.data.get("deploymentUri"))
            loaded = _deploy(self._svc, self._identity, str(self._vrec.data["framework"]), bucket, prefix)
            _cache(self._svc).put(self._key, loaded)
        try:
            return {"predictions": loaded.predict(self._instances)}
        except PredictionError as e:
            raise InvalidArgument(f"Prediction failed: {e}.", field="instances", reason="PREDICTION_FAILED") from None


def prepare_predict(svc: Services, caller: Caller, ident: str, model: str, version: str | None, raw: bytes | Any
                    ) -> Prediction:
    """Authorize (ml.models.predict on the model, or ml.versions.predict on a named version) before
    looking anything up, then resolve the version to run — project, model and version come from the
    runtime's in-memory mirror, so this touches neither the store nor the disk."""
    proj = project(svc, caller, ident)
    mfull = proj.full(f"models/{model}")
    if version is None:
        svc.authorize(caller, "ml.models.predict", mfull, service=SERVICE)
    elif not svc.allowed(caller, "ml.models.predict", mfull):
        svc.authorize(caller, "ml.versions.predict", proj.full(f"models/{model}/versions/{version}"),
                      service=SERVICE)
    mrec = stored(svc, mfull, "Model", proj.relative(f"models/{model}"))
    if version is None:
        default = (mrec.data.get("defaultVersion") or {}).get("name")
        if not default:
            raise FailedPrecondition(f"Model {mrec.data['name']} has no default version; deploy a version first.",
                                     reason="NO_DEFAULT_VERSION")
        version = str(default).rsplit("/", 1)[1]
    vfull = proj.full(f"models/{model}/versions/{version}")
    vrec = stored(svc, vfull, "Version", proj.relative(f"models/{model}/versions/{version}"))
    if vrec.data.get("state") != "READY":
        raise FailedPrecondition(f"Version {vrec.data['name']} is {vrec.data.get('state')}, not READY"
                                 + (f": {vrec.data['errorMessage']}" if vrec.data.get("errorMessage") else "."),
                                 reason="VERSION_NOT_READY")
    body = _predict_body(raw)
    sa = vrec.data.get("serviceAccount") or ml_service_agent_email(proj.number)
    return Prediction(svc, vrec, f"serviceAccount:{sa}", body["instances"])


def _predict_body(raw: bytes | Any) -> dict[str, Any]:
    if isinstance(raw, bytes | bytearray):
        if len(raw) > MAX_PREDICT_BYTES:
            raise InvalidArgument(f"Request of {len(raw)} bytes is over the online prediction limit of "
                                  f"{MAX_PREDICT_BYTES} bytes; use a batch prediction job.", field="instances",
                                  reason="REQUEST_TOO_LARGE")
        try:
            raw = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InvalidArgument(f"Invalid JSON payload received: {e}.", field="body") from None
    if not isinstance(raw, Mapping) or "instances" not in raw:
        raise InvalidArgument("Invalid request: expected {\"instances\": [...]}.", field="instances")
    return dict(raw)
