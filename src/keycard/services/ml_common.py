"""What the ml v1 services share: names, ids, stored resources, long-running operations.

Models, versions, jobs and operations are hierarchy nodes (kind ``resource``) named
``//ml.googleapis.com/projects/PROJECT_ID/…`` under their project (versions under their model), so
each has its own allow policy and inherits the project's. Creators get Google's owner roles on
what they create: roles/ml.modelOwner on a model, roles/ml.jobOwner on a job, roles/ml.operationOwner
on the operations their requests start.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Mapping
from typing import Any

from keycard.errors import InvalidArgument, NotFound
from keycard.runtime import etag_for
from keycard.services.common import Caller, Services, parse_page_size, rfc3339
from keycard.store.base import Put, Record

__all__ = ["SERVICE", "Project", "authorized", "list_page", "ml_id", "new_operation", "operation_json", "project"]

SERVICE = "ml.googleapis.com"
_ID = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,127}$")
_ML = "type.googleapis.com/google.cloud.ml.v1."


class Project:
    """A project as ml v1 paths name it (id or number), resolved once."""

    __slots__ = ("crm", "number", "pid", "shown")

    def __init__(self, crm: str, pid: str, number: str, shown: str) -> None:
        self.crm, self.pid, self.number, self.shown = crm, pid, number, shown

    def full(self, relative_tail: str) -> str:
        return f"//{SERVICE}/projects/{self.pid}/{relative_tail}"

    def relative(self, relative_tail: str) -> str:
        return f"projects/{self.pid}/{relative_tail}"


def project(svc: Services, caller: Caller, ident: str, permission: str | None = None) -> Project:
    """Resolve ``projects/IDENT``; with ``permission``, check it on the project first (403 before 404)."""
    from keycard.services.resourcemanager import resolve_project, shown_project
    fn = resolve_project(svc, ident)
    if permission is not None:
        svc.authorize(caller, permission, fn, service=SERVICE, shown=shown_project(ident))
    rec = resource(svc, fn)
    if rec is None or rec.data.get("state") != "ACTIVE":
        raise NotFound(f"Project projects/{ident} not found.", field="name")
    return Project(fn, str(rec.data["projectId"]), fn.rsplit("/", 1)[1], ident)


def ml_id(value: object, fld: str, what: str) -> str:
    if not isinstance(value, str) or not _ID.match(value):
        raise InvalidArgument(f"Invalid {fld} {value!r}: a {what} name starts with a letter and holds letters, "
                              "digits and underscores (at most 128).", field=fld)
    return value


def resource(svc: Services, full: str) -> Record | None:
    """A ``resource`` record: projects, models and versions from the runtime's in-memory mirror (kept by the
    change feed: this replica's own writes are in it when they answer), anything else from the store."""
    runtime = svc.runtime
    return runtime.resource(full) if runtime.mirrors(full) else runtime.store.get("resource", full)


def stored(svc: Services, full: str, what: str, shown: str) -> Record:
    rec = resource(svc, full)
    if rec is None or rec.deleted:
        raise NotFound(f"{what} {shown} not found.", field="name", reason=f"{what.upper()}_NOT_FOUND")
    return rec


def authorized(svc: Services, caller: Caller, ident: str, tail: str, permission: str, what: str
               ) -> tuple[Project, str, Record]:
    """``projects/IDENT/TAIL`` (e.g. ``models/m1``): its project, ``permission`` checked on it, then its record
    (the project, its full name, the record); 404 ``{what} projects/P/TAIL not found.`` when it is not there."""
    proj = project(svc, caller, ident)
    full = proj.full(tail)
    svc.authorize(caller, permission, full, service=SERVICE)
    return proj, full, stored(svc, full, what, proj.relative(tail))


def list_page(svc: Services, query: Mapping[str, str], key: str, parent: str, show: Callable[[Record], Any], *,
              prefix: str | None = None, keep: Callable[[Record], bool] = lambda r: True) -> dict[str, Any]:
    """One page (``pageSize``, ``pageToken``) of the ``resource`` records under ``parent`` named ``prefix…``:
    ``{key: [show(record) …]}`` (absent when none is kept; deleted ones never are) and ``nextPageToken``."""
    page = svc.runtime.store.list("resource", parent=parent, prefix=prefix,
                                  page_size=parse_page_size(query.get("pageSize"), 100),
                                  page_token=query.get("pageToken", ""))
    items = [show(r) for r in page.records if not r.deleted and keep(r)]
    out: dict[str, Any] = {key: items} if items else {}
    if page.next_token:
        out["nextPageToken"] = page.next_token
    return out


def present(rec: Record) -> dict[str, Any]:
    out = {k: v for k, v in rec.data.items() if not k.startswith("keycard")}
    out["etag"] = etag_for(rec.revision)
    return out


def owner_policy(caller: Caller, role: str) -> dict[str, Any]:
    return {"version": 1, "bindings": [{"role": role, "members": [caller.principal]}]} if caller.principal \
        else {"version": 1}


# ------------------------------------------------------------------------------------ operations

def new_operation(svc: Services, caller: Caller, proj: Project, op_type: str, model: str,
                  version: Mapping[str, Any] | None = None, *, done: bool = False,
                  response: Mapping[str, Any] | None = None) -> tuple[dict[str, Any], list[Put]]:
    """A new Operation (and the caller's roles/ml.operationOwner on it), as records to commit."""
    model_id = model.rsplit("/", 1)[1]
    op_id = f"{op_type.lower()}_{model_id}-{secrets.randbelow(10**13):013d}"
    now = rfc3339(svc.clock())
    meta: dict[str, Any] = {"@type": _ML + "OperationMetadata", "createTime": now, "startTime": now,
                            "operationType": op_type, "modelName": model, "isCancellationRequested": False,
                            "projectNumber": proj.number, "labels": {}}
    if version is not None:
        meta["version"] = dict(version)
    op: dict[str, Any] = {"name": proj.relative(f"operations/{op_id}"), "metadata": meta, "done": done}
    if done:
        meta["endTime"] = now
        if response is not None:
            op["response"] = dict(response)
    full = proj.full(f"operations/{op_id}")
    return op, [Put("resource", full, {**op, "keycardCaller": caller.principal or ""}, parent=proj.crm),
                Put("iam_policy", full, owner_policy(caller, "roles/ml.operationOwner"))]


def operation_json(rec: Record) -> dict[str, Any]:
    return {k: v for k, v in rec.data.items() if not k.startswith("keycard")}


def finished(op: Mapping[str, Any], now: str, *, response: Mapping[str, Any] | None = None,
             error: Mapping[str, Any] | None = None) -> dict[str, Any]:
    out = dict(op)
    out["metadata"] = {**op.get("metadata", {}), "endTime": now}
    out["done"] = True
    out.pop("response", None)
    out.pop("error", None)
    if error is not None:
        out["error"] = dict(error)
    elif response is not None:
        out["response"] = dict(response)
    return out


def typed(kind: str, body: Mapping[str, Any]) -> dict[str, Any]:
    return {"@type": _ML + kind, **body}
