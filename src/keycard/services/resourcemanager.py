"""Cloud Resource Manager v3: organizations, folders, projects, operations.

Resources are stored as records of kind ``resource`` named by their full resource name
(projects by number), with Google's JSON as data. Mutations return long-running Operations
that are already done, stored for ``operations.get``.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from typing import Any

from keycard import names
from keycard.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from keycard.runtime import etag_for
from keycard.services.common import Caller, Services, parse_page_size, rfc3339
from keycard.store.base import Expect, Put, Record

CRM = names.CRM
SERVICE = "cloudresourcemanager.googleapis.com"
_DISPLAY_RE = re.compile(r"^[\w'\"-](?:[\w '\"-]{0,28}[\w'\"-])?$")
_PROJECT_ID_RE = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$")
_LABEL_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_LABEL_VAL = re.compile(r"^[a-z0-9_-]{0,63}$")
_V3 = "type.googleapis.com/google.cloud.resourcemanager.v3."


def full(short: str) -> str:
    return f"//{CRM}/{short}"


# ------------------------------------------------------------------------------------ lookups

def resolve_project(svc: Services, project: str) -> str:
    """``projects/ID`` or ``projects/NUMBER`` (or bare) → canonical full name (by number)."""
    short = project if project.startswith("projects/") else f"projects/{project}"
    names.parse_resource(short, "name")
    return svc.runtime.engine.canonical_name(full(short))


def shown_project(project: str) -> str:
    return full(project if project.startswith("projects/") else f"projects/{project}")


def _get(svc: Services, fullname: str) -> Record | None:
    return svc.runtime.store.get("resource", fullname)


def _present(rec: Record) -> dict[str, Any]:
    out = dict(rec.data)
    out["etag"] = etag_for(rec.revision)
    return out


def _operation(svc: Services, caller: Caller, kind: str, resource: Mapping[str, Any],
               metadata: Mapping[str, Any]) -> tuple[dict[str, Any], Put]:
    name = f"operations/{kind}.{secrets.randbelow(10**18):018d}"
    op = {"name": name, "done": True, "metadata": dict(metadata),
          "response": {"@type": _V3 + ("Project" if "projectId" in resource else
                                       "Folder" if str(resource.get("name", "")).startswith("folders/")
                                       else "Organization"), **resource}}
    return op, Put("operation", name, {**op, "keycardCaller": caller.principal or ""})


def get_operation(svc: Services, caller: Caller, name: str) -> dict[str, Any]:
    rec = svc.runtime.store.get("operation", name)
    if rec is None or rec.data.get("keycardCaller") not in (caller.principal, None):
        raise NotFound(f"Operation {name} not found.", field="name")
    return {k: v for k, v in rec.data.items() if k != "keycardCaller"}


def _new_number() -> str:
    return str(100_000_000_000 + secrets.randbelow(899_999_999_999))


def _parent(value: object, field: str = "parent", *, folders_ok: bool = True) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidArgument(f"Invalid {field}: expected 'organizations/NUMBER' or 'folders/NUMBER'.", field=field)
    rn = names.parse_resource(value, field)
    kind = rn.relative.split("/")[0]
    if not rn.is_container or kind == "projects" or (kind == "folders" and not folders_ok):
        raise InvalidArgument(f"Invalid {field} {value!r}: expected 'organizations/NUMBER' or 'folders/NUMBER'.",
                              field=field)
    return rn.full


def _display_name(value: object, field: str = "displayName", *, required: bool = True) -> str:
    if value in (None, "") and not required:
        return ""
    if not isinstance(value, str) or not _DISPLAY_RE.match(value):
        raise InvalidArgument(f"Invalid {field} {value!r}: 1-30 letters, digits, spaces, hyphens, underscores, "
                              "quotes, starting and ending with a letter, digit or quote.", field=field)
    return value


def _labels(value: object) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or len(value) > 256:
        raise InvalidArgument("Invalid labels: expected an object of at most 256 string labels.", field="labels")
    for k, v in value.items():
        if not isinstance(k, str) or not _LABEL_KEY.match(k) or not isinstance(v, str) or not _LABEL_VAL.match(v):
            raise InvalidArgument(f"Invalid labels[{k!r}]: keys start with a lower-case letter; keys and values "
                                  "hold lower-case letters, digits, '_' and '-' (63 at most).", field=f"labels.{k}")
    return dict(value)


# -------------------------------------------------------------------------------- organizations

def get_organization(svc: Services, caller: Caller, name: str) -> dict[str, Any]:
    fn = full(f"organizations/{name}")
    names.parse_resource(fn, "name")
    svc.authorize(caller, "resourcemanager.organizations.get", fn, service=SERVICE)
    rec = _get(svc, fn)
    if rec is None:
        raise NotFound(f"Organization organizations/{name} not found.", field="name")
    return _present(rec)


def search_organizations(svc: Services, caller: Caller, query: str) -> dict[str, Any]:
    out = []
    for rec in svc.runtime.store.list("resource", prefix=full("organizations/")).records:
        if svc.allowed(caller, "resourcemanager.organizations.get", rec.name):
            data = _present(rec)
            if not query or _matches_query(data, query):
                out.append(data)
    return {"organizations": out} if out else {}


# --------------------------------------------------------------------------------------- folders

def _folder_name(folder: str) -> str:
    fn = full(f"folders/{folder}")
    names.parse_resource(fn, "name")
    return fn


def _siblings(svc: Services, parent: str) -> list[Record]:
    out: list[Record] = []
    token = ""
    while True:
        page = svc.runtime.store.list("resource", parent=parent, page_token=token)
        out.extend(page.records)
        if not page.next_token:
            return out
        token = page.next_token


def create_folder(svc: Services, caller: Caller, body: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(body, Mapping):
        raise InvalidArgument("Invalid request body: expected a Folder.", field="folder")
    parent = _parent(body.get("parent"))
    svc.authorize(caller, "resourcemanager.folders.create", parent, service=SERVICE)
    display = _display_name(body.get("displayName"))
    parent_rec = _get(svc, parent)
    if parent_rec is None or parent_rec.data.get("state") != "ACTIVE":
        raise NotFound(f"Parent {parent.split('/', 3)[3]} not found.", field="parent")
    for sib in _siblings(svc, parent):
        if sib.name.startswith(full("folders/")) and sib.data.get("displayName") == display \
                and sib.data.get("state") == "ACTIVE":
            raise FailedPrecondition(f"A folder named {display!r} already exists under {parent.split('/', 3)[3]}; "
                                     "folder display names are unique among siblings.", reason="FOLDER_NAME_TAKEN",
                                     field="displayName")
    number = _new_number()
    now = rfc3339(svc.clock())
    data = {"name": f"folders/{number}", "parent": parent.split("/", 3)[3], "displayName": display,
            "state": "ACTIVE", "createTime": now, "updateTime": now}
    fn = full(f"folders/{number}")
    op, op_put = _operation(svc, caller, "cf", data, {"@type": _V3 + "CreateFolderMetadata",
                                                     "displayName": display, "parent": data["parent"]})
    rev = svc.commit(caller, puts=[Put("resource", fn, data, parent=parent), op_put],
                     expect=[Expect("resource", fn, None), Expect("resource", parent, parent_rec.revision)],
                     method="google.cloud.resourcemanager.v3.Folders.CreateFolder", service=SERVICE,
                     resource_name=data["name"], request=dict(body))
    op["response"]["etag"] = etag_for(rev)
    return op


def get_folder(svc: Services, caller: Caller, folder: str) -> dict[str, Any]:
    fn = _folder_name(folder)
    svc.authorize(caller, "resourcemanager.folders.get", fn, service=SERVICE)
    rec = _get(svc, fn)
    if rec is None:
        raise NotFound(f"Folder folders/{folder} not found.", field="name")
    return _present(rec)


def list_children(svc: Services, caller: Caller, kind: str, parent: object, *, show_deleted: bool,
                  page_size: object, page_token: str) -> dict[str, Any]:
    pfull = _parent(parent, "parent")
    svc.authorize(caller, f"resourcemanager.{kind}.list", pfull, service=SERVICE)
    size = parse_page_size(page_size, 500)
    page = svc.runtime.store.list("resource", parent=pfull, prefix=full(f"{kind}/"), page_size=size,
                                  page_token=page_token)
    items = [_present(r) for r in page.records if show_deleted or r.data.get("state") == "ACTIVE"]
    out: dict[str, Any] = {kind: items} if items else {}
    if page.next_token:
        out["nextPageToken"] = page.next_token
    return out


def _matches_query(data: Mapping[str, Any], query: str) -> bool:
    """Resource Manager search queries: `field:value` terms joined by spaces or AND (all must match)."""
    for term in re.split(r"\s+AND\s+|\s+", query.strip()):
        if not term:
            continue
        key, sep, value = term.partition(":")
        if not sep:
            key, sep, value = term.partition("=")
        if not sep:
            raise InvalidArgument(f"Invalid query term {term!r}: use field:value, e.g. displayName:prod.",
                                  field="query")
        value = value.strip("\"'")
        key = {"id": "projectId", "name": "displayName", "parent.id": "parent", "lifecycleState": "state"}.get(key, key)
        if key.startswith("labels."):
            actual = str(data.get("labels", {}).get(key[7:], "")) if value != "*" else \
                ("*" if key[7:] in data.get("labels", {}) else "")
        else:
            actual = str(data.get(key, ""))
        if key == "parent" and "/" not in value:
            actual = actual.split("/")[-1]
        if value.endswith("*"):
            if not actual.lower().startswith(value[:-1].lower()):
                return False
        elif actual.lower() != value.lower():
            return False
    return True


def search(svc: Services, caller: Caller, kind: str, query: str, page_size: object, page_token: str
           ) -> dict[str, Any]:
    parse_page_size(page_size, 500)
    perm = f"resourcemanager.{kind}.get"
    out = []
    for rec in svc.runtime.store.list("resource", prefix=full(f"{kind}/"), page_size=100_000).records:
        if rec.data.get("state") != "ACTIVE" and "state:" not in query:
            continue
        if svc.allowed(caller, perm, rec.name) and _matches_query(rec.data, query):
            out.append(_present(rec))
    return {kind: out} if out else {}


def _mutate(svc: Services, caller: Caller, fn: str, permission: str, method: str, *, short: str,
            change: Any, op_kind: str, metadata_type: str, extra_check: Any = None,
            request: Mapping[str, Any] | None = None, new_parent: str | None = None,
            shown: str | None = None) -> dict[str, Any]:
    # ``shown``: the name as the caller wrote it (a project id), so a denial does not reveal the number
    svc.authorize(caller, permission, fn, service=SERVICE, shown=full(shown or short))
    if extra_check is not None:
        extra_check()
    rec = _get(svc, fn)
    if rec is None:
        raise NotFound(f"{short} not found.", field="name")
    data = dict(rec.data)
    change(data)
    data["updateTime"] = rfc3339(svc.clock())
    parent = new_parent or rec.parent
    op, op_put = _operation(svc, caller, op_kind, data, {"@type": _V3 + metadata_type})
    rev = svc.commit(caller, puts=[Put("resource", fn, data, parent=parent), op_put],
                     expect=[Expect("resource", fn, rec.revision)], method=method, service=SERVICE,
                     resource_name=short, request=request)
    op["response"]["etag"] = etag_for(rev)
    return op


def update_folder(svc: Services, caller: Caller, folder: str, body: Mapping[str, Any], mask: str) -> dict[str, Any]:
    fn = _folder_name(folder)
    fields = {f.strip() for f in (mask or "displayName").split(",") if f.strip()}
    if fields - {"displayName", "display_name"}:
        raise InvalidArgument("Invalid updateMask: only displayName can be updated on a folder.", field="updateMask")
    display = _display_name(body.get("displayName") if isinstance(body, Mapping) else None)

    def change(d: dict[str, Any]) -> None:
        d["displayName"] = display
    return _mutate(svc, caller, fn, "resourcemanager.folders.update",
                   "google.cloud.resourcemanager.v3.Folders.UpdateFolder", short=f"folders/{folder}",
                   change=change, op_kind="uf", metadata_type="UpdateFolderMetadata", request=dict(body))


def move(svc: Services, caller: Caller, kind: str, fn: str, body: Mapping[str, Any], *,
         shown: str | None = None) -> dict[str, Any]:
    dest = _parent(body.get("destinationParent") if isinstance(body, Mapping) else None, "destinationParent")
    singular = kind[:-1]
    short = fn.split("/", 3)[3]

    def check() -> None:
        svc.authorize(caller, f"resourcemanager.{kind}.create", dest, service=SERVICE)
        if _get(svc, dest) is None:
            raise NotFound(f"Destination {dest.split('/', 3)[3]} not found.", field="destinationParent")
        if kind == "folders" and fn in svc.runtime.engine.ancestry(dest):
            raise FailedPrecondition(f"Cannot move {short} under itself or one of its descendants.",
                                     field="destinationParent")

    def change(d: dict[str, Any]) -> None:
        d["parent"] = dest.split("/", 3)[3]
    return _mutate(svc, caller, fn, f"resourcemanager.{kind}.move",
                   f"google.cloud.resourcemanager.v3.{kind.title()}.Move{singular.title()}", short=short,
                   change=change, op_kind="m" + singular[0], metadata_type=f"Move{singular.title()}Metadata",
                   extra_check=check, request=dict(body), new_parent=dest, shown=shown)


def delete(svc: Services, caller: Caller, kind: str, fn: str, *, shown: str | None = None) -> dict[str, Any]:
    short = fn.split("/", 3)[3]
    singular = kind[:-1]

    def check() -> None:
        if kind == "folders":
            active = [r for r in _siblings(svc, fn) if r.data.get("state") == "ACTIVE"]
            if active:
                raise FailedPrecondition(f"Folder {short} is not empty: it still holds {len(active)} active "
                                         "folder(s) or project(s); move or delete them first.",
                                         reason="FOLDER_NOT_EMPTY")

    def change(d: dict[str, Any]) -> None:
        if d.get("state") != "ACTIVE":
            raise FailedPrecondition(f"{short} is already {d.get('state')}.", reason="ALREADY_DELETED")
        d["state"] = "DELETE_REQUESTED"
        d["deleteTime"] = rfc3339(svc.clock())
    return _mutate(svc, caller, fn, f"resourcemanager.{kind}.delete",
                   f"google.cloud.resourcemanager.v3.{kind.title()}.Delete{singular.title()}", short=short,
                   change=change, op_kind="d" + singular[0], metadata_type=f"Delete{singular.title()}Metadata",
                   extra_check=check, shown=shown)


def undelete(svc: Services, caller: Caller, kind: str, fn: str, *, shown: str | None = None) -> dict[str, Any]:
    short = fn.split("/", 3)[3]
    singular = kind[:-1]

    def change(d: dict[str, Any]) -> None:
        if d.get("state") != "DELETE_REQUESTED":
            raise FailedPrecondition(f"{short} is not deleted.", reason="NOT_DELETED")
        d["state"] = "ACTIVE"
        d.pop("deleteTime", None)
    return _mutate(svc, caller, fn, f"resourcemanager.{kind}.undelete",
                   f"google.cloud.resourcemanager.v3.{kind.title()}.Undelete{singular.title()}", short=short,
                   change=change, op_kind="ud" + singular[0], metadata_type=f"Undelete{singular.title()}Metadata",
                   shown=shown)


# -------------------------------------------------------------------------------------- projects

def create_project(svc: Services, caller: Caller, body: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(body, Mapping):
        raise InvalidArgument("Invalid request body: expected a Project.", field="project")
    parent = _parent(body.get("parent"))
    svc.authorize(caller, "resourcemanager.projects.create", parent, service=SERVICE)
    pid = body.get("projectId")
    if not isinstance(pid, str) or not _PROJECT_ID_RE.match(pid):
        raise InvalidArgument(f"Invalid projectId {pid!r}: 6-30 lower-case letters, digits and hyphens, starting "
                              "with a letter and not ending with a hyphen.", field="projectId")
    display = _display_name(body.get("displayName"), required=False) or pid
    labels = _labels(body.get("labels"))
    parent_rec = _get(svc, parent)
    if parent_rec is None or parent_rec.data.get("state") != "ACTIVE":
        raise NotFound(f"Parent {parent.split('/', 3)[3]} not found.", field="parent")
    alias = svc.runtime.store.get("project_id", pid)
    if alias is not None:
        raise AlreadyExists(f"Project id {pid} is taken; project ids are unique and never reused.",
                            reason="PROJECT_ID_TAKEN", field="projectId")
    number = _new_number()
    now = rfc3339(svc.clock())
    data: dict[str, Any] = {"name": f"projects/{number}", "parent": parent.split("/", 3)[3], "projectId": pid,
            "state": "ACTIVE", "displayName": display, "createTime": now, "updateTime": now}
    if labels:
        data["labels"] = labels
    fn = full(f"projects/{number}")
    from keycard.services.service_accounts import managed_accounts
    account_puts, managed_bindings = managed_accounts(svc, fn, parent, pid, number)
    bindings = [{"role": "roles/owner", "members": [caller.principal]}] if caller.principal else []
    owner_policy = {"version": 1, "bindings": [*bindings, *managed_bindings]}
    op, op_put = _operation(svc, caller, "cp", data, {"@type": _V3 + "CreateProjectMetadata", "gettable": True,
                                                      "ready": True, "createTime": now})
    rev = svc.commit(caller, puts=[Put("resource", fn, data, parent=parent), Put("project_id", pid, {"name": fn}),
                                   Put("iam_policy", fn, owner_policy), op_put, *account_puts],
                     expect=[Expect("project_id", pid, None), Expect("resource", fn, None),
                             Expect("resource", parent, parent_rec.revision)],
                     method="google.cloud.resourcemanager.v3.Projects.CreateProject", service=SERVICE,
                     resource_name=data["name"], request=dict(body))
    op["response"]["etag"] = etag_for(rev)
    return op


def get_project(svc: Services, caller: Caller, project: str) -> dict[str, Any]:
    fn = resolve_project(svc, project)
    svc.authorize(caller, "resourcemanager.projects.get", fn, service=SERVICE, shown=shown_project(project))
    rec = _get(svc, fn)
    if rec is None:
        raise NotFound(f"Project projects/{project} not found.", field="name")
    return _present(rec)


def update_project(svc: Services, caller: Caller, project: str, body: Mapping[str, Any], mask: str
                   ) -> dict[str, Any]:
    fn = resolve_project(svc, project)
    fields = {f.strip() for f in (mask or "displayName,labels").split(",") if f.strip()}
    if not isinstance(body, Mapping):
        raise InvalidArgument("Invalid request body: expected a Project.", field="project")
    if fields - {"displayName", "display_name", "labels"}:
        raise InvalidArgument("Invalid updateMask: displayName and labels can be updated on a project.",
                              field="updateMask")
    display = _display_name(body.get("displayName"), required=False) if fields & {"displayName", "display_name"} \
        else None
    labels = _labels(body.get("labels")) if "labels" in fields else None

    def change(d: dict[str, Any]) -> None:
        if display is not None:
            d["displayName"] = display or d.get("projectId", "")
        if labels is not None:
            if labels:
                d["labels"] = labels
            else:
                d.pop("labels", None)
    return _mutate(svc, caller, fn, "resourcemanager.projects.update",
                   "google.cloud.resourcemanager.v3.Projects.UpdateProject", short=f"projects/{project}",
                   change=change, op_kind="up", metadata_type="UpdateProjectMetadata", request=dict(body))
