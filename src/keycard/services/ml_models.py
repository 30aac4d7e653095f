"""ml v1 projects.getConfig, models (with their IAM policies) and operations."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from keycard.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from keycard.services import iam_policy
from keycard.services.common import Caller, Services, rfc3339
from keycard.services.ml_common import (
    SERVICE,
    authorized,
    finished,
    list_page,
    ml_id,
    new_operation,
    operation_json,
    owner_policy,
    present,
    project,
    stored,
    typed,
)
from keycard.services.service_accounts import ml_service_agent_email
from keycard.store.base import Delete, Expect, Put

__all__ = ["create_model", "get_config", "get_model", "list_models"]

_MODEL_FIELDS = ("description", "regions", "onlinePredictionLogging", "onlinePredictionConsoleLogging", "labels")


def get_config(svc: Services, caller: Caller, ident: str) -> dict[str, Any]:
    proj = project(svc, caller, ident, "ml.projects.getConfig")
    agent = ml_service_agent_email(proj.number)
    return {"serviceAccount": agent, "serviceAccountProject": proj.number,
            "config": {"tpuServiceAccount": f"service-{proj.number}@cloud-tpu.iam.gserviceaccount.com"}}


def _labels(value: object, fld: str = "labels") -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) and isinstance(v, str)
                                                 for k, v in value.items()):
        raise InvalidArgument(f"Invalid {fld}: expected an object of string labels.", field=fld)
    return dict(value)


def _model_fields(body: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if body.get("description") is not None:
        if not isinstance(body["description"], str) or len(body["description"]) > 8192:
            raise InvalidArgument("Invalid model.description: a string.", field="model.description")
        out["description"] = body["description"]
    regions = body.get("regions")
    if regions is not None:
        if not isinstance(regions, list) or len(regions) > 1 or not all(isinstance(r, str) for r in regions):
            raise InvalidArgument("Invalid model.regions: at most one region.", field="model.regions")
        out["regions"] = regions
    for flag in ("onlinePredictionLogging", "onlinePredictionConsoleLogging"):
        if body.get(flag) is not None:
            if not isinstance(body[flag], bool):
                raise InvalidArgument(f"Invalid model.{flag}: true or false.", field=f"model.{flag}")
            out[flag] = body[flag]
    if body.get("labels") is not None:
        out["labels"] = _labels(body["labels"], "model.labels")
    return out


def create_model(svc: Services, caller: Caller, ident: str, body: object) -> dict[str, Any]:
    if not isinstance(body, Mapping):
        raise InvalidArgument("Invalid request body: expected a Model.", field="model")
    proj = project(svc, caller, ident, "ml.models.create")
    model_id = ml_id(body.get("name"), "model.name", "model")
    fields = _model_fields(body)
    full = proj.full(f"models/{model_id}")
    if svc.runtime.store.get("resource", full) is not None:
        raise AlreadyExists("Field: model.name Error: A model with the same name already exists.",
                            field="model.name", reason="MODEL_EXISTS")
    data: dict[str, Any] = {"name": proj.relative(f"models/{model_id}"), "regions": ["us-central1"], **fields,
                            "keycardCreateTime": rfc3339(svc.clock()), "keycardCreator": caller.principal or ""}
    svc.commit(caller, puts=[Put("resource", full, data, parent=proj.crm),
                             Put("iam_policy", full, owner_policy(caller, "roles/ml.modelOwner"))],
               expect=[Expect("resource", full, None)], method="google.cloud.ml.v1.ModelService.CreateModel",
               service=SERVICE, resource_name=data["name"], request=dict(body))
    return present(stored(svc, full, "Model", data["name"]))


def get_model(svc: Services, caller: Caller, ident: str, model: str) -> dict[str, Any]:
    return present(authorized(svc, caller, ident, f"models/{model}", "ml.models.get", "Model")[2])


def list_models(svc: Services, caller: Caller, ident: str, query: Mapping[str, str]) -> dict[str, Any]:
    proj = project(svc, caller, ident, "ml.models.list")
    return list_page(svc, query, "models", proj.crm, present, prefix=proj.full("models/"),
                     keep=lambda r: "/versions/" not in r.name)


def patch_model(svc: Services, caller: Caller, ident: str, model: str, body: object, mask: str | None
                ) -> dict[str, Any]:
    proj, full, rec = authorized(svc, caller, ident, f"models/{model}", "ml.models.update", "Model")
    if not isinstance(body, Mapping):
        raise InvalidArgument("Invalid request body: expected a Model.", field="model")
    paths = {p.strip() for p in (mask or "").split(",") if p.strip()}
    if not paths or paths - {"description", "labels", "defaultVersion.name"}:
        raise InvalidArgument("Invalid updateMask: description, labels and defaultVersion.name can be updated.",
                              field="updateMask")
    data = dict(rec.data)
    fields = _model_fields({k: body.get(k) for k in ("description", "labels")})
    for p in paths & {"description", "labels"}:
        if p in fields:
            data[p] = fields[p]
        else:
            data.pop(p, None)
    puts: list[Put] = []
    expect = [Expect("resource", full, rec.revision)]
    if "defaultVersion.name" in paths:
        dv = body.get("defaultVersion") or {}
        name = dv.get("name") if isinstance(dv, Mapping) else None
        vid = str(name or "").rsplit("/", 1)[-1]
        vrec = stored(svc, proj.full(f"models/{model}/versions/{vid}"), "Version", str(name))
        data["defaultVersion"] = {"name": vrec.data["name"]}
        expect.append(Expect("resource", vrec.name, vrec.revision))
    now = rfc3339(svc.clock())
    op, op_puts = new_operation(svc, caller, proj, "UPDATE_MODEL", data["name"], done=True,
                                response=typed("Model", {k: v for k, v in data.items()
                                                         if not k.startswith("keycard")}))
    puts += [Put("resource", full, data, parent=rec.parent), *op_puts]
    svc.commit(caller, puts=puts, expect=expect, method="google.cloud.ml.v1.ModelService.UpdateModel",
               service=SERVICE, resource_name=data["name"], request=dict(body))
    op["metadata"]["endTime"] = now
    return op


def delete_model(svc: Services, caller: Caller, ident: str, model: str) -> dict[str, Any]:
    proj, full, rec = authorized(svc, caller, ident, f"models/{model}", "ml.models.delete", "Model")
    store = svc.runtime.store
    if store.list("resource", parent=full, page_size=1).records:
        raise FailedPrecondition("A model with versions cannot be deleted; delete its versions first.",
                                 reason="MODEL_HAS_VERSIONS")
    op, op_puts = new_operation(svc, caller, proj, "DELETE_MODEL", str(rec.data["name"]), done=True,
                                response={"@type": "type.googleapis.com/google.protobuf.Empty"})
    deletes = [Delete("resource", full)]
    expect = [Expect("resource", full, rec.revision)]
    pol = store.get("iam_policy", full)
    if pol is not None:
        deletes.append(Delete("iam_policy", full))
        expect.append(Expect("iam_policy", full, pol.revision))
    svc.commit(caller, puts=op_puts, deletes=deletes, expect=expect,
               method="google.cloud.ml.v1.ModelService.DeleteModel", service=SERVICE,
               resource_name=str(rec.data["name"]))
    return op


# ------------------------------------------------------------------------------ model and job IAM

def get_policy(svc: Services, caller: Caller, ident: str, kind: str, rid: str, version: int) -> dict[str, Any]:
    _, full, _ = authorized(svc, caller, ident, f"{kind}/{rid}", f"ml.{kind}.getIamPolicy", kind[:-1].capitalize())
    return iam_policy.get_iam_policy(svc, caller, full, permission=f"ml.{kind}.getIamPolicy", service=SERVICE,
                                     version=version)


def set_policy(svc: Services, caller: Caller, ident: str, kind: str, rid: str, body: object,
               allow_lockout: bool) -> dict[str, Any]:
    _, full, _ = authorized(svc, caller, ident, f"{kind}/{rid}", f"ml.{kind}.setIamPolicy", kind[:-1].capitalize())
    return iam_policy.set_iam_policy(svc, caller, full, body if isinstance(body, Mapping) else {},
                                     permission=f"ml.{kind}.setIamPolicy", service=SERVICE,
                                     method="google.iam.v1.IAMPolicy.SetIamPolicy", allow_lockout=allow_lockout)


def test_permissions(svc: Services, caller: Caller, ident: str, kind: str, rid: str, body: object
                     ) -> dict[str, Any]:
    proj = project(svc, caller, ident)
    return iam_policy.test_iam_permissions(svc, caller, proj.full(f"{kind}/{rid}"),
                                           body if isinstance(body, Mapping) else {})


# ------------------------------------------------------------------------------------ operations

def get_operation(svc: Services, caller: Caller, ident: str, op_id: str) -> dict[str, Any]:
    return operation_json(authorized(svc, caller, ident, f"operations/{op_id}", "ml.operations.get", "Operation")[2])


def list_operations(svc: Services, caller: Caller, ident: str, query: Mapping[str, str]) -> dict[str, Any]:
    proj = project(svc, caller, ident, "ml.operations.list")
    return list_page(svc, query, "operations", proj.crm, operation_json, prefix=proj.full("operations/"))


def cancel_operation(svc: Services, caller: Caller, ident: str, op_id: str) -> dict[str, Any]:
    """Request cancellation; a version deployment still running stops and fails as CANCELLED."""
    _, full, rec = authorized(svc, caller, ident, f"operations/{op_id}", "ml.operations.cancel", "Operation")
    if rec.data.get("done"):
        return {}
    data = dict(rec.data)
    data["metadata"] = {**data.get("metadata", {}), "isCancellationRequested": True}
    svc.commit(caller, puts=[Put("resource", full, data, parent=rec.parent)],
               expect=[Expect("resource", full, rec.revision)],
               method="google.longrunning.Operations.CancelOperation", service=SERVICE,
               resource_name=str(data["name"]))
    return {}


def finish_operation(svc: Services, full: str, *, response: Mapping[str, Any] | None = None,
                     error: Mapping[str, Any] | None = None) -> None:
    """Mark an operation done (by the background work that ran it); retried on a concurrent cancel."""
    from keycard.errors import Aborted
    for _ in range(5):
        rec = svc.runtime.store.get("resource", full)
        if rec is None:
            return
        data = finished(rec.data, rfc3339(svc.clock()), response=response, error=error)
        try:
            svc.commit(Caller(None), puts=[Put("resource", full, data, parent=rec.parent)],
                       expect=[Expect("resource", full, rec.revision)],
                       method="google.longrunning.Operations.Finish", service=SERVICE,
                       resource_name=str(data["name"]))
            return
        except Aborted:
            continue
