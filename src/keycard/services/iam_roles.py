"""IAM v1 roles: predefined roles, custom roles of projects and organizations, grantable roles, testable permissions.

Custom roles are records of kind ``role`` named exactly like the role (``projects/my-proj/roles/r``,
``organizations/123/roles/r``; a project keeps the id form the caller used), with the IAM v1 Role
JSON plus ``deleted`` and ``deleteTime`` as data and the canonical full name of their project or
organization as the record's parent. The runtime hands every such record to the engine, so a
change (a new permission, DISABLED, deleted) is in force the moment the write answers.

Google's rules, kept here:
- role ids match ``[a-zA-Z0-9_.]{3,64}`` and are unique in their parent, deleted roles included
  (409 ALREADY_EXISTS); ``title`` ≤ 100 characters, ``description`` ≤ 256, at most 3,000
  permissions, each one a permission keycard knows (any permission of any role in the engine's
  catalog); stages ALPHA, BETA, GA, DEPRECATED, DISABLED, EAP (ALPHA is the default and, being
  the proto default, is left out of responses);
- at most 300 custom roles per organization and 300 per project; a deleted role still counts
  while it can be undeleted (7 days), 400 FAILED_PRECONDITION naming the limit and the count;
- delete is soft (``deleted: true``, ``deleteTime``): the role grants nothing at once; undelete
  works for 7 days after ``deleteTime``, FAILED_PRECONDITION after that;
- patch and delete honour the ``etag`` (record revision): stale → 409 ABORTED, nothing written;
- permissions are checked before existence (403, not 404); predefined roles need none.

Grantable roles and testable permissions (keycard's approximation of Google's answer): a
permission ``service.collection.verb`` (or ``service.googleapis.com/collection.verb``) *applies*
to a resource type when ``service.collection`` is the type's own collection or the collection of
a type below it:
- organization: every permission; folder: all but organization-only collections
  (``resourcemanager.organizations``, ``orgpolicy.customConstraints``, ``iam.workforcePool*``,
  ``iam.principalaccessboundarypolicies``); project: all but those and ``resourcemanager.folders``;
- a bucket: the storage collections of buckets and what they hold (``storage.buckets``,
  ``storage.objects``, ``storage.managedFolders``, …); an object: ``storage.objects``; a model:
  ``ml.models`` and ``ml.versions``; a service account: its own and its keys'; and so on (``_TYPES``);
- any other name: the service's prefix and the name's last collection (``//logging.googleapis.com/
  projects/p/sinks/s`` → ``logging.sinks``).
A role is grantable on a resource when it holds at least one permission that applies there;
basic roles (owner, editor, viewer) only on organizations, folders and projects. Custom roles of
the resource's project and organization are offered too, to callers who may list them there
(``iam.roles.list``).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from keycard import names
from keycard.engine.model import ROLE_STAGES, Role
from keycard.errors import Aborted, AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from keycard.runtime import etag_for, revision_from_etag
from keycard.services.common import Caller, Services, parse_page_size, rfc3339
from keycard.services.resourcemanager import resolve_project, shown_project
from keycard.store.base import ABORTED_MESSAGE, Expect, Put, Record
from keycard.store.codec import decode_page_token, encode_page_token

__all__ = [
    "MAX_CUSTOM_ROLES",
    "UNDELETE_WINDOW",
    "create_role",
    "delete_role",
    "get_custom_role",
    "get_predefined_role",
    "list_custom_roles",
    "list_predefined_roles",
    "list_roles",
    "patch_role",
    "query_grantable_roles",
    "query_testable_permissions",
    "undelete_role",
]

SERVICE = "iam.googleapis.com"
_METHOD = "google.iam.admin.v1."
MAX_CUSTOM_ROLES = 300
MAX_PERMISSIONS = 3000
MAX_TITLE = 100
MAX_DESCRIPTION = 256
UNDELETE_WINDOW = dt.timedelta(days=7)
PREDEFINED_ETAG = "AA=="
_ROLE_ID_RE = re.compile(r"^[a-zA-Z0-9_.]{3,64}$")
_PATH_ROLE_ID_RE = re.compile(r"^[a-zA-Z0-9_.]{1,64}$")
_MASKABLE = {"title": "title", "description": "description", "includedPermissions": "includedPermissions",
             "included_permissions": "includedPermissions", "stage": "stage"}
_BASIC = frozenset({"roles/owner", "roles/editor", "roles/viewer"})
_FQDN_TO_PREFIX = {"cloudresourcemanager.googleapis.com": "resourcemanager"}

# ------------------------------------------------------------------------------ applicability rule
_ORG_ONLY = ("resourcemanager.organizations", "orgpolicy.customConstraints", "iam.workforcePool*",
             "iam.principalaccessboundarypolicies")
_FOLDER_UP = ("resourcemanager.folders",)
_CONTAINERS: dict[str, tuple[str, ...]] = {       # type → collections that do NOT apply
    f"{names.CRM}/Organization": (),
    f"{names.CRM}/Folder": _ORG_ONLY,
    f"{names.CRM}/Project": _ORG_ONLY + _FOLDER_UP,
}
# type → the collections of the type and of every type below it (``x*``: every collection starting with x)
_TYPES: dict[str, tuple[str, ...]] = {
    "storage.googleapis.com/Bucket": ("storage.buckets", "storage.objects", "storage.managedFolders",
                                      "storage.folders", "storage.anywhereCaches", "storage.bucketOperations",
                                      "storage.multipartUploads"),
    "storage.googleapis.com/Object": ("storage.objects",),
    "ml.googleapis.com/Model": ("ml.models", "ml.versions"),
    "ml.googleapis.com/Version": ("ml.versions",),
    "ml.googleapis.com/Job": ("ml.jobs",),
    "ml.googleapis.com/Operation": ("ml.operations",),
    "iam.googleapis.com/ServiceAccount": ("iam.serviceAccounts", "iam.serviceAccountKeys",
                                          "iam.serviceAccountApiKeyBindings"),
    "iam.googleapis.com/ServiceAccountKey": ("iam.serviceAccountKeys",),
    "iam.googleapis.com/Role": ("iam.roles",),
    "iam.googleapis.com/WorkloadIdentityPool": ("iam.workloadIdentityPool*",),
}


def _collection(permission: str) -> str:
    """``ml.models.get`` → ``ml.models``; ``iam.googleapis.com/oauthClients.get`` → ``iam.oauthClients``."""
    if "/" in permission:
        fqdn, rest = permission.split("/", 1)
        return f"{_FQDN_TO_PREFIX.get(fqdn, fqdn.split('.', 1)[0])}.{rest.split('.', 1)[0]}"
    return ".".join(permission.split(".", 2)[:2])


def _matches(collection: str, prefixes: Iterable[str]) -> bool:
    return any(collection.startswith(p[:-1]) if p.endswith("*") else collection == p for p in prefixes)


class _Applies:
    """Which permissions apply to one resource (see the module docstring)."""

    def __init__(self, rn: names.ResourceName) -> None:
        self.container = rn.type in _CONTAINERS
        self.excluded: tuple[str, ...] = _CONTAINERS.get(rn.type, ())
        own = _TYPES.get(rn.type)
        if own is None and not self.container:
            segs = rn.relative.split("/")
            coll = segs[-2] if len(segs) % 2 == 0 else segs[-1]
            own = (f"{_FQDN_TO_PREFIX.get(rn.service, rn.service.split('.', 1)[0])}.{coll}",)
        self.own: tuple[str, ...] = own or ()

    def __call__(self, permission: str) -> bool:
        coll = _collection(permission)
        if self.container:
            return not _matches(coll, self.excluded)
        return _matches(coll, self.own)

    def grantable(self, role: Role) -> bool:
        if role.name in _BASIC and not self.container:
            return False
        return any(self(p) for p in role.permissions)


# ------------------------------------------------------------------------------------- helpers


def _token(value: object) -> str:
    if value in (None, ""):
        return ""
    if not isinstance(value, str):
        raise InvalidArgument("Invalid pageToken: pass the nextPageToken of the previous page unchanged.",
                              field="pageToken")
    try:
        return decode_page_token(value)
    except InvalidArgument:
        raise InvalidArgument("Invalid pageToken: pass the nextPageToken of the previous page unchanged, or "
                              "omit it.", field="pageToken") from None


def _page(items: Sequence[dict[str, Any]], key: str, size: int, token: object) -> dict[str, Any]:
    """In-memory paging over items sorted by ``name``; the token is the last name served."""
    after = _token(token)
    rest = [i for i in items if i["name"] > after] if after else list(items)
    out: dict[str, Any] = {key: rest[:size]} if rest else {}
    if len(rest) > size:
        out["nextPageToken"] = encode_page_token(rest[size - 1]["name"])
    return out


def _view(value: object, default: str = "BASIC") -> bool:
    """True for the FULL view."""
    view = default if value in (None, "") else str(value).upper()
    if view not in ("BASIC", "FULL"):
        raise InvalidArgument(f"Invalid view {value!r}: use BASIC or FULL.", field="view")
    return view == "FULL"


def _flag(value: object) -> bool:
    return value is True or str(value).lower() == "true"


def _present(data: Mapping[str, Any], etag: str, *, full_view: bool = True) -> dict[str, Any]:
    """Google's Role JSON: proto3 defaults (empty strings, ALPHA, deleted false) left out."""
    out: dict[str, Any] = {"name": data["name"]}
    for key in ("title", "description"):
        if data.get(key):
            out[key] = data[key]
    if full_view and data.get("includedPermissions"):
        out["includedPermissions"] = sorted(data["includedPermissions"])
    if data.get("stage", "ALPHA") != "ALPHA":
        out["stage"] = data["stage"]
    if data.get("deleted"):
        out["deleted"] = True
    if etag:
        out["etag"] = etag
    return out


def _present_record(rec: Record, *, full_view: bool = True) -> dict[str, Any]:
    return _present(rec.data, etag_for(rec.revision), full_view=full_view)


def _present_predefined(role: Role, *, full_view: bool = True) -> dict[str, Any]:
    return _present(role.to_json(), PREDEFINED_ETAG, full_view=full_view)


def _known_permissions(svc: Services) -> frozenset[str]:
    return frozenset(p for r in svc.runtime.engine.roles() for p in r.permissions)


def _deleted_at(data: Mapping[str, Any]) -> dt.datetime | None:
    raw = data.get("deleteTime")
    if not isinstance(raw, str):
        return None
    try:
        return dt.datetime.fromisoformat(raw)
    except ValueError:
        return None


def _undeletable(svc: Services, data: Mapping[str, Any]) -> bool:
    when = _deleted_at(data)
    return when is not None and svc.clock() - when <= UNDELETE_WINDOW


# ------------------------------------------------------------------------------------- parents

class _Parent:
    """The project or organization that holds custom roles, as the caller named it and as the hierarchy knows it."""

    def __init__(self, svc: Services, kind: str, ident: str) -> None:
        if kind == "projects":
            self.fn = resolve_project(svc, ident)
            self.shown = shown_project(ident)
        else:
            rn = names.parse_resource(f"organizations/{ident}", "parent")
            self.fn = rn.full
            self.shown = rn.full
        self.svc = svc
        self.short = f"{kind}/{ident}"

    def role_name(self, role_id: str) -> str:
        return f"{self.short}/roles/{role_id}"

    def aliases(self, role_id: str) -> list[str]:
        """Every name the role may be stored under (a project's id and number)."""
        out = [self.role_name(role_id)]
        if self.short.startswith("projects/"):
            rec = self.svc.runtime.store.get("resource", self.fn)
            number = self.fn.rsplit("/", 1)[1]
            pid = rec.data.get("projectId") if rec is not None else None
            for ident in (number, pid):
                name = f"projects/{ident}/roles/{role_id}"
                if isinstance(ident, str) and name not in out:
                    out.append(name)
        return out

    def find(self, role_id: str) -> Record | None:
        if not _PATH_ROLE_ID_RE.match(role_id):
            raise InvalidArgument(f"Invalid name {self.role_name(role_id)!r}: role ids hold 1-64 letters, digits, "
                                  "'_' and '.'.", field="name")
        for name in self.aliases(role_id):
            rec = self.svc.runtime.store.get("role", name)
            if rec is not None and rec.parent == self.fn:
                return rec
        return None

    def all_roles(self, *, include_deleted: bool = True) -> list[Record]:
        out: list[Record] = []
        token = ""
        while True:
            page = self.svc.runtime.store.list("role", parent=self.fn, include_deleted=include_deleted,
                                               page_token=token)
            out.extend(page.records)
            if not page.next_token:
                return out
            token = page.next_token


def _get(svc: Services, caller: Caller, parent: _Parent, role_id: str, permission: str) -> Record:
    svc.authorize(caller, permission, parent.fn, service=SERVICE, shown=parent.shown)
    rec = parent.find(role_id)
    if rec is None:
        raise NotFound(f"The role named {parent.role_name(role_id)} was not found.", field="name")
    return rec


# ------------------------------------------------------------------------------------ validation

def _text(value: object, fld: str, limit: int) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidArgument(f"Invalid {fld}: expected a string.", field=fld)
    if len(value) > limit:
        raise InvalidArgument(f"Invalid {fld}: {len(value)} characters; at most {limit}.", field=fld)
    return value


def _stage(value: object) -> str:
    if value in (None, ""):
        return "ALPHA"
    if not isinstance(value, str) or value not in ROLE_STAGES:
        raise InvalidArgument(f"Invalid role.stage {value!r}: one of {', '.join(ROLE_STAGES)}.", field="role.stage")
    return value


def _permissions(svc: Services, value: object) -> list[str]:
    fld = "role.includedPermissions"
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidArgument(f"Invalid {fld}: expected a list of permission names.", field=fld)
    perms = sorted({names.parse_permission(p, f"{fld}[{i}]") for i, p in enumerate(value)})
    if len(perms) > MAX_PERMISSIONS:
        raise InvalidArgument(f"Invalid {fld}: {len(perms)} permissions; a custom role holds at most "
                              f"{MAX_PERMISSIONS}.", field=fld, reason="ROLE_PERMISSION_LIMIT")
    known = _known_permissions(svc)
    unknown = [p for p in perms if p not in known]
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise InvalidArgument(f"Invalid {fld}: permission(s) {shown} are not valid; "
                              "POST /v1/permissions:queryTestablePermissions lists the ones you can use.",
                              field=fld, reason="UNKNOWN_PERMISSION")
    return perms


def _role_body(value: object) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidArgument("Invalid role: expected a Role object.", field="role")
    return value


def _check_etag(etag: object, rec: Record, fld: str) -> None:
    if etag in (None, ""):
        return
    if not isinstance(etag, str):
        raise InvalidArgument(f"Invalid {fld}: expected the etag string the role was read with.", field=fld)
    if revision_from_etag(etag, fld) != rec.revision:
        raise Aborted(ABORTED_MESSAGE, reason="ETAG_MISMATCH")


# ---------------------------------------------------------------------------------- predefined

def _predefined(svc: Services) -> list[Role]:
    return sorted((r for r in svc.runtime.engine.roles() if r.name.startswith("roles/")), key=lambda r: r.name)


def list_roles(svc: Services, caller: Caller, query: Mapping[str, str]) -> dict[str, Any]:
    """roles.list: predefined roles; with ``parent=projects/P`` or ``organizations/O``, that parent's custom roles."""
    parent = query.get("parent", "")
    if not parent:
        return list_predefined_roles(svc, caller, query)
    kind, _, ident = parent.partition("/")
    if kind not in ("projects", "organizations") or not ident or "/" in ident:
        raise InvalidArgument(f"Invalid parent {parent!r}: use projects/PROJECT or organizations/NUMBER, or leave "
                              "it empty for predefined roles.", field="parent")
    return list_custom_roles(svc, caller, kind, ident, query)


def list_predefined_roles(svc: Services, caller: Caller, query: Mapping[str, str]) -> dict[str, Any]:
    full_view = _view(query.get("view"))
    show_deleted = _flag(query.get("showDeleted"))
    items = [_present_predefined(r, full_view=full_view) for r in _predefined(svc) if show_deleted or not r.deleted]
    return _page(items, "roles", parse_page_size(query.get("pageSize"), 300), query.get("pageToken"))


def get_predefined_role(svc: Services, caller: Caller, role: str) -> dict[str, Any]:
    name = f"roles/{role}"
    found = svc.runtime.engine.get_role(name)
    if found is None:
        raise NotFound(f"The role named {name} was not found.", field="name")
    return _present_predefined(found)


# --------------------------------------------------------------------------------------- custom

def list_custom_roles(svc: Services, caller: Caller, kind: str, ident: str, query: Mapping[str, str]
                      ) -> dict[str, Any]:
    parent = _Parent(svc, kind, ident)
    full_view = _view(query.get("view"))
    show_deleted = _flag(query.get("showDeleted"))
    size = parse_page_size(query.get("pageSize"), 300)
    svc.authorize(caller, "iam.roles.list", parent.fn, service=SERVICE, shown=parent.shown)
    token = query.get("pageToken") or ""
    _token(token)
    page = svc.runtime.store.list("role", parent=parent.fn, include_deleted=show_deleted, page_size=size,
                                  page_token=token)
    items = [_present_record(r, full_view=full_view) for r in page.records]
    out: dict[str, Any] = {"roles": items} if items else {}
    if page.next_token:
        out["nextPageToken"] = page.next_token
    return out


def get_custom_role(svc: Services, caller: Caller, kind: str, ident: str, role_id: str) -> dict[str, Any]:
    return _present_record(_get(svc, caller, _Parent(svc, kind, ident), role_id, "iam.roles.get"))


def create_role(svc: Services, caller: Caller, kind: str, ident: str, body: object) -> dict[str, Any]:
    parent = _Parent(svc, kind, ident)
    svc.authorize(caller, "iam.roles.create", parent.fn, service=SERVICE, shown=parent.shown)
    if not isinstance(body, Mapping):
        raise InvalidArgument("Invalid request body: expected {\"roleId\": ..., \"role\": {...}}.", field="role")
    role_id = body.get("roleId")
    if not isinstance(role_id, str) or not _ROLE_ID_RE.match(role_id):
        raise InvalidArgument(f"Invalid roleId {role_id!r}: 3-64 letters, digits, '_' and '.'.", field="roleId")
    role = _role_body(body.get("role"))
    data: dict[str, Any] = {
        "name": parent.role_name(role_id),
        "title": _text(role.get("title"), "role.title", MAX_TITLE),
        "description": _text(role.get("description"), "role.description", MAX_DESCRIPTION),
        "includedPermissions": _permissions(svc, role.get("includedPermissions")),
        "stage": _stage(role.get("stage")),
        "deleted": False,
    }
    container = svc.runtime.store.get("resource", parent.fn)
    if container is None or container.data.get("state", "ACTIVE") != "ACTIVE":
        raise NotFound(f"{parent.short} not found.", field="parent")
    aliases = parent.aliases(role_id)
    for name in aliases:
        existing = svc.runtime.store.get("role", name)
        if existing is not None:
            raise AlreadyExists(f"A role named {role_id} in {parent.short} already exists"
                                + (" (deleted; undelete it or choose another id)" if existing.data.get("deleted")
                                   else "") + ".", field="roleId", reason="ROLE_ALREADY_EXISTS")
    counted = sum(1 for r in parent.all_roles() if not r.data.get("deleted") or _undeletable(svc, r.data))
    if counted >= MAX_CUSTOM_ROLES:
        where = "organization" if kind == "organizations" else "project"
        raise FailedPrecondition(f"{parent.short} already has {counted} custom roles (deleted roles count while "
                                 f"they can be undeleted); the limit is {MAX_CUSTOM_ROLES} per {where}. Delete "
                                 "roles you no longer need.", reason="CUSTOM_ROLE_LIMIT",
                                 metadata={"limit": str(MAX_CUSTOM_ROLES), "count": str(counted)})
    rev = svc.commit(caller, puts=[Put("role", data["name"], data, parent=parent.fn)],
                     expect=[Expect("role", n, None) for n in aliases],
                     method=_METHOD + "CreateRole", service=SERVICE, resource_name=data["name"],
                     request={"parent": parent.short, **dict(body)}, response=_present(data, ""))
    return _present(data, etag_for(rev))


def _write(svc: Services, caller: Caller, parent: _Parent, rec: Record, data: dict[str, Any], method: str,
           request: Mapping[str, Any]) -> dict[str, Any]:
    rev = svc.commit(caller, puts=[Put("role", rec.name, data, parent=parent.fn, deleted=bool(data["deleted"]))],
                     expect=[Expect("role", rec.name, rec.revision)], method=_METHOD + method, service=SERVICE,
                     resource_name=rec.name, request={"name": rec.name, **dict(request)},
                     response=_present(data, ""))
    return _present(data, etag_for(rev))


def patch_role(svc: Services, caller: Caller, kind: str, ident: str, role_id: str, body: object,
               mask: str | None) -> dict[str, Any]:
    parent = _Parent(svc, kind, ident)
    svc.authorize(caller, "iam.roles.update", parent.fn, service=SERVICE, shown=parent.shown)
    role = _role_body(body)
    fields: set[str] = set()
    for f in (mask or "").split(","):
        f = f.strip()
        if not f:
            continue
        if f not in _MASKABLE:
            raise InvalidArgument(f"Invalid updateMask: {f!r} cannot be updated; use title, description, "
                                  "includedPermissions, stage.", field="updateMask")
        fields.add(_MASKABLE[f])
    if not fields:
        fields = {"title", "description", "includedPermissions", "stage"}
    new: dict[str, Any] = {}
    if "title" in fields:
        new["title"] = _text(role.get("title"), "role.title", MAX_TITLE)
    if "description" in fields:
        new["description"] = _text(role.get("description"), "role.description", MAX_DESCRIPTION)
    if "includedPermissions" in fields:
        new["includedPermissions"] = _permissions(svc, role.get("includedPermissions"))
    if "stage" in fields:
        new["stage"] = _stage(role.get("stage"))
    rec = parent.find(role_id)
    if rec is None:
        raise NotFound(f"The role named {parent.role_name(role_id)} was not found.", field="name")
    _check_etag(role.get("etag"), rec, "role.etag")
    if rec.data.get("deleted"):
        raise FailedPrecondition(f"The role {rec.name} is deleted; undelete it before updating it.",
                                 reason="ROLE_DELETED")
    data = {**rec.data, **new}
    return _write(svc, caller, parent, rec, data, "UpdateRole", {"role": dict(role), "updateMask": mask or ""})


def delete_role(svc: Services, caller: Caller, kind: str, ident: str, role_id: str, etag: str | None
                ) -> dict[str, Any]:
    parent = _Parent(svc, kind, ident)
    rec = _get(svc, caller, parent, role_id, "iam.roles.delete")
    _check_etag(etag, rec, "etag")
    if rec.data.get("deleted"):
        raise FailedPrecondition(f"The role {rec.name} is already deleted.", reason="ROLE_DELETED")
    data = {**rec.data, "deleted": True, "deleteTime": rfc3339(svc.clock())}
    return _write(svc, caller, parent, rec, data, "DeleteRole", {"etag": etag or ""})


def undelete_role(svc: Services, caller: Caller, kind: str, ident: str, role_id: str, body: object
                  ) -> dict[str, Any]:
    parent = _Parent(svc, kind, ident)
    rec = _get(svc, caller, parent, role_id, "iam.roles.undelete")
    req = body if isinstance(body, Mapping) else {}
    _check_etag(req.get("etag"), rec, "etag")
    if not rec.data.get("deleted"):
        raise FailedPrecondition(f"The role {rec.name} is not deleted.", reason="ROLE_NOT_DELETED")
    if not _undeletable(svc, rec.data):
        raise FailedPrecondition(f"The role {rec.name} was deleted at {rec.data.get('deleteTime')}; roles can "
                                 "be undeleted for 7 days only. Create a role with another id.",
                                 reason="ROLE_UNDELETE_EXPIRED")
    data = {k: v for k, v in rec.data.items() if k != "deleteTime"}
    data["deleted"] = False
    return _write(svc, caller, parent, rec, data, "UndeleteRole", dict(req))


# ----------------------------------------------------------------------- grantable / testable

def _resource(body: object) -> tuple[Mapping[str, Any], names.ResourceName]:
    if not isinstance(body, Mapping):
        raise InvalidArgument("Invalid request body: expected {\"fullResourceName\": ...}.", field="fullResourceName")
    value = body.get("fullResourceName")
    if value in (None, ""):
        raise InvalidArgument("Invalid fullResourceName: required, e.g. "
                              "'//cloudresourcemanager.googleapis.com/projects/my-project'.", field="fullResourceName")
    return body, names.parse_resource(value, "fullResourceName")


def query_grantable_roles(svc: Services, caller: Caller, body: object) -> dict[str, Any]:
    req, rn = _resource(body)
    full_view = _view(req.get("view"))
    size = parse_page_size(req.get("pageSize"), 300)
    applies = _Applies(rn)
    items = [_present_predefined(r, full_view=full_view) for r in _predefined(svc)
             if not r.deleted and applies.grantable(r)]
    eng = svc.runtime.engine
    for node in eng.ancestry(rn.full):
        node_rn = names.parse_resource(node)
        if node_rn.type not in (f"{names.CRM}/Project", f"{names.CRM}/Organization"):
            continue
        if not svc.allowed(caller, "iam.roles.list", node):
            continue
        for rec in svc.runtime.store.list("role", parent=node, page_size=100_000).records:
            role = eng.get_role(rec.name)
            if role is not None and not role.deleted and applies.grantable(role):
                items.append(_present_record(rec, full_view=full_view))
    items.sort(key=lambda i: str(i["name"]))
    return _page(items, "roles", size, req.get("pageToken"))


def _words(camel: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r" \1", camel).lower()


def _title(permission: str) -> str:
    """``ml.models.get`` → ``Get models`` (Google's titles are of this kind)."""
    words = f"{_words(permission.rsplit('.', 1)[1])} {_words(_collection(permission).split('.', 1)[1])}"
    return words[:1].upper() + words[1:]


def query_testable_permissions(svc: Services, caller: Caller, body: object) -> dict[str, Any]:
    req, rn = _resource(body)
    size = parse_page_size(req.get("pageSize"), 100)
    applies = _Applies(rn)
    items = [{"name": p, "title": _title(p), "stage": "GA", "customRolesSupportLevel": "SUPPORTED",
              "apiDisabled": False}
             for p in sorted(_known_permissions(svc)) if applies(p)]
    return _page(items, "permissions", size, req.get("pageToken"))
