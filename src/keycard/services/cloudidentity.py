"""Cloud Identity v1 groups and memberships (google.apps.cloudidentity.groups.v1).

Each group is ONE record of kind ``group`` named ``groups/{id}``: the Group JSON plus
``keycardMembers`` (member keys such as ``user:a@x.com`` — the engine's group graph is built
from them) and ``keycardMemberships`` (the Membership JSON). A membership change is a single
read-modify-write of that record, guarded by its revision, so the engine sees it at once.
A record of kind ``group_key`` named by the group's email points at the group (unique emails,
``groups:lookup``); it keeps pointing at a deleted group until the email is taken again.

Authorization: Google governs groups with Workspace admin roles, not IAM. keycard checks its
own permissions ``cloudidentity.groups.*`` and ``cloudidentity.memberships.*`` on the
installation's organization (roles/keycard.groupsAdmin, roles/keycard.groupsViewer); besides,
a group's OWNERs and MANAGERs manage its memberships (a MANAGER cannot add or remove an OWNER)
and its members may read it.
"""

from __future__ import annotations

import base64
import re
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

from keycard import names
from keycard.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from keycard.services.common import Caller, Services, rfc3339
from keycard.store.base import Delete, Expect, Put, Record

__all__ = ["create_group", "create_membership", "delete_group", "delete_membership", "get_group",
           "get_membership", "list_groups", "list_memberships", "lookup_group", "lookup_membership",
           "member_key", "update_group"]

SERVICE = "cloudidentity.googleapis.com"
_GROUPS = "google.apps.cloudidentity.groups.v1.GroupsService."
_MEMBERSHIPS = "google.apps.cloudidentity.groups.v1.MembershipsService."
_V1 = "type.googleapis.com/google.apps.cloudidentity.groups.v1."
DISCUSSION = "cloudidentity.googleapis.com/groups.discussion_forum"
_LABELS = {DISCUSSION, "cloudidentity.googleapis.com/groups.security", "system/groups/external"}
_ROLES = ("OWNER", "MANAGER", "MEMBER")
_ID_RE = re.compile(r"^[a-z0-9]{1,64}$")
MAX_MEMBERSHIPS = 10_000
_CONFIGS = {"INITIAL_GROUP_CONFIG_UNSPECIFIED": "EMPTY", "0": "EMPTY", "WITH_INITIAL_OWNER": "WITH_INITIAL_OWNER",
            "1": "WITH_INITIAL_OWNER", "EMPTY": "EMPTY", "2": "EMPTY"}


# ------------------------------------------------------------------------------------------ helpers

def _org(svc: Services) -> str:
    if not svc.organization:
        raise FailedPrecondition("This installation has no organization: run `keycard init` first.",
                                 reason="NO_INSTALLATION")
    return svc.organization


def _customer(svc: Services) -> str:
    inst = svc.runtime.store.get("installation", "default")
    if inst is None:
        raise FailedPrecondition("This installation has no customer id: run `keycard init` first.",
                                 reason="NO_INSTALLATION")
    return str(inst.data["customerId"])


def _email(value: object, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidArgument(f"Invalid {field}: expected an email address.", field=field)
    email = value.strip().lower()
    try:
        names.parse_member(f"user:{email}", field)
    except InvalidArgument:
        raise InvalidArgument(f"Invalid {field} {value!r}: expected an email address such as "
                              "'team@example.com'.", field=field) from None
    return email


def _group_name(group_id: str) -> str:
    if not _ID_RE.match(group_id):
        raise InvalidArgument(f"Invalid name 'groups/{group_id}': expected groups/ID as returned by groups.create "
                              "or groups:lookup.", field="name")
    return f"groups/{group_id}"


def _new_id() -> str:
    alphabet = "0123456789abcdefghijklmnopqrstuvwxyz"
    return "0" + "".join(secrets.choice(alphabet) for _ in range(14))


def _live(svc: Services, name: str) -> Record | None:
    rec = svc.runtime.store.get("group", name)
    return None if rec is None or rec.deleted else rec


def _by_email(svc: Services, email: str) -> Record | None:
    idx = svc.runtime.store.get("group_key", email)
    return _live(svc, str(idx.data["name"])) if idx is not None else None


def _present(rec: Record) -> dict[str, Any]:
    return {k: v for k, v in rec.data.items() if not k.startswith("keycard")}


def _memberships(rec: Record) -> list[dict[str, Any]]:
    return [dict(m) for m in rec.data.get("keycardMemberships", [])]


def _roles_of(rec: Record, principal: str | None) -> set[str]:
    if principal is None:
        return set()
    for m in rec.data.get("keycardMemberships", []):
        if m.get("keycardKey") == principal:
            return {str(r.get("name")) for r in m.get("roles", [])}
    return set()


def _is_member(svc: Services, rec: Record, caller: Caller) -> bool:
    """Direct or nested membership of the caller, from the engine's group graph (and the groups its
    credential carries, e.g. an IdP token's)."""
    return caller.principal is not None and f"group:{rec.data['groupKey']['id']}" in \
        svc.runtime.engine.identity_keys(caller.principal, caller.extra_members)


def _authorize(svc: Services, caller: Caller, permission: str, rec: Record | None, shown: str, *,
               as_member: bool = False, group_roles: Sequence[str] = ()) -> None:
    """The org-wide permission, or a role in the group; the same 403 whether or not the group exists."""
    org = _org(svc)
    if not svc.allowed(caller, permission, org) and rec is not None:
        roles = _roles_of(rec, caller.principal)
        if roles & set(group_roles) or (as_member and (roles or _is_member(svc, rec, caller))):
            caller.authorizations.append({"resource": shown, "permission": permission, "granted": True,
                                          "via": "group membership"})
            if caller.resource is None:
                caller.resource = org
            return
    svc.authorize(caller, permission, org, service=SERVICE, shown=shown)


def member_key(svc: Services, email: str) -> tuple[str, str]:
    """(IAM member key, Membership type) for an email: a known group, a service account or a user."""
    if _by_email(svc, email) is not None:
        return f"group:{email}", "GROUP"
    if email.endswith(".gserviceaccount.com"):
        return f"serviceAccount:{email}", "SERVICE_ACCOUNT"
    return f"user:{email}", "USER"


def _page(items: list[dict[str, Any]], key: str, page_size: object, page_token: str, *,
          default: int, maximum: int) -> dict[str, Any]:
    size = default
    if page_size not in (None, ""):
        if not str(page_size).isdigit():
            raise InvalidArgument(f"Invalid pageSize {page_size!r}: expected a non-negative integer.",
                                  field="pageSize")
        size = min(int(str(page_size)) or default, maximum)
    start = 0
    if page_token:
        try:
            start = int(base64.urlsafe_b64decode(page_token.encode()).decode())
        except ValueError:
            raise InvalidArgument(f"Invalid pageToken {page_token!r}: pass the nextPageToken of the previous "
                                  "page.", field="pageToken") from None
    chunk = items[start:start + size]
    out: dict[str, Any] = {key: chunk} if chunk else {}
    if start + size < len(items):
        out["nextPageToken"] = base64.urlsafe_b64encode(str(start + size).encode()).decode()
    return out


def _done(response: Mapping[str, Any], kind: str) -> dict[str, Any]:
    return {"done": True, "response": {"@type": _V1 + kind, **response}}


# -------------------------------------------------------------------------------------------- groups

def create_group(svc: Services, caller: Caller, body: object, initial_config: str | None) -> dict[str, Any]:
    org = _org(svc)
    svc.authorize(caller, "cloudidentity.groups.create", org, service=SERVICE)
    if not isinstance(body, Mapping):
        raise InvalidArgument("Invalid request body: expected a Group.", field="group")
    config = _CONFIGS.get(str(initial_config or "EMPTY"))
    if config is None:
        raise InvalidArgument(f"Invalid initialGroupConfig {initial_config!r}: WITH_INITIAL_OWNER or EMPTY.",
                              field="initialGroupConfig")
    key = body.get("groupKey")
    if not isinstance(key, Mapping):
        raise InvalidArgument("Invalid groupKey: expected {\"id\": \"GROUP_EMAIL\"}.", field="groupKey.id")
    if key.get("namespace"):
        raise InvalidArgument("Invalid groupKey.namespace: keycard groups are Google groups; omit the namespace.",
                              field="groupKey.namespace")
    email = _email(key.get("id"), "groupKey.id")
    customer = _customer(svc)
    if body.get("parent") != f"customers/{customer}":
        raise InvalidArgument(f"Invalid parent {body.get('parent')!r}: expected 'customers/{customer}', this "
                              "installation's customer.", field="parent")
    labels = body.get("labels")
    if not isinstance(labels, Mapping) or DISCUSSION not in labels:
        raise InvalidArgument(f"Invalid labels: a group needs the label {{\"{DISCUSSION}\": \"\"}}.",
                              field="labels")
    unknown = sorted(set(labels) - _LABELS)
    if unknown or any(v != "" for v in labels.values()):
        raise InvalidArgument(f"Invalid labels: only {', '.join(sorted(_LABELS))} with empty values are supported.",
                              field="labels")
    group: dict[str, Any] = {"groupKey": {"id": email}, "parent": f"customers/{customer}",
                             "labels": dict(labels)}
    for f in ("displayName", "description"):
        v = body.get(f)
        if v not in (None, ""):
            if not isinstance(v, str) or len(v) > (4096 if f == "description" else 75):
                raise InvalidArgument(f"Invalid {f}: expected a string of at most "
                                      f"{4096 if f == 'description' else 75} characters.", field=f)
            group[f] = v
    store = svc.runtime.store
    idx = store.get("group_key", email)
    old = _live(svc, str(idx.data["name"])) if idx is not None else None
    if old is not None:
        raise AlreadyExists(f"A group with email {email} already exists ({old.name}).", field="groupKey.id")
    now = rfc3339(svc.clock())
    name = f"groups/{_new_id()}"
    group = {"name": name, **group, "createTime": now, "updateTime": now}
    memberships: list[dict[str, Any]] = []
    members: list[str] = []
    if config == "WITH_INITIAL_OWNER" and caller.principal:
        owner = names.member_email(caller.principal)
        if owner:
            mtype = "SERVICE_ACCOUNT" if caller.principal.startswith("serviceAccount:") else "USER"
            memberships.append(_membership(name, owner, caller.principal, mtype, ["OWNER", "MEMBER"], now))
            members.append(caller.principal)
    data = {**group, "keycardMembers": members, "keycardMemberships": memberships}
    deletes = [Delete("group", idx.data["name"])] if idx is not None else []   # a deleted group's email reused
    svc.commit(caller, puts=[Put("group", name, data), Put("group_key", email, {"name": name})], deletes=deletes,
               expect=[Expect("group", name, None), Expect("group_key", email, idx.revision if idx else None)],
               method=_GROUPS + "CreateGroup", service=SERVICE, resource_name=name,
               request={"group": dict(body), "initialGroupConfig": config})
    return _done(group, "Group")


def get_group(svc: Services, caller: Caller, group_id: str) -> dict[str, Any]:
    name = _group_name(group_id)
    rec = _live(svc, name)
    _authorize(svc, caller, "cloudidentity.groups.get", rec, name, as_member=True)
    if rec is None:
        raise NotFound(f"Group {name} not found.", field="name")
    return _present(rec)


def list_groups(svc: Services, caller: Caller, parent: object, page_size: object, page_token: str
                ) -> dict[str, Any]:
    org = _org(svc)
    svc.authorize(caller, "cloudidentity.groups.list", org, service=SERVICE)
    customer = _customer(svc)
    if parent not in (f"customers/{customer}", "customers/my_customer"):
        raise InvalidArgument(f"Invalid parent {parent!r}: expected 'customers/{customer}'.", field="parent")
    size = 200
    if page_size not in (None, ""):
        if not str(page_size).isdigit():
            raise InvalidArgument(f"Invalid pageSize {page_size!r}: expected a non-negative integer.",
                                  field="pageSize")
        size = min(int(str(page_size)) or 200, 1000)
    try:
        page = svc.runtime.store.list("group", prefix="groups/", page_size=size, page_token=page_token or "")
    except InvalidArgument:
        raise InvalidArgument(f"Invalid pageToken {page_token!r}: pass the nextPageToken of the previous page.",
                              field="pageToken") from None
    out: dict[str, Any] = {"groups": [_present(r) for r in page.records]} if page.records else {}
    if page.next_token:
        out["nextPageToken"] = page.next_token
    return out


def lookup_group(svc: Services, caller: Caller, email: object) -> dict[str, Any]:
    key = _email(email, "groupKey.id")
    rec = _by_email(svc, key)
    _authorize(svc, caller, "cloudidentity.groups.get", rec, f"groups:lookup?groupKey.id={key}", as_member=True)
    if rec is None:
        raise NotFound(f"No group has the email {key}.", field="groupKey.id")
    return {"name": rec.name}


def update_group(svc: Services, caller: Caller, group_id: str, body: object, mask: str) -> dict[str, Any]:
    name = _group_name(group_id)
    rec = _live(svc, name)
    _authorize(svc, caller, "cloudidentity.groups.update", rec, name)
    if not isinstance(body, Mapping):
        raise InvalidArgument("Invalid request body: expected a Group.", field="group")
    fields = {{"display_name": "displayName"}.get(f.strip(), f.strip()) for f in (mask or "").split(",")
              if f.strip()}
    if not fields or fields - {"displayName", "description"}:
        raise InvalidArgument("Invalid updateMask: give displayName and/or description (the fields keycard lets "
                              "you change).", field="updateMask")
    if rec is None:
        raise NotFound(f"Group {name} not found.", field="name")
    data = dict(rec.data)
    for f in fields:
        v = body.get(f)
        if v in (None, ""):
            data.pop(f, None)
        elif not isinstance(v, str) or len(v) > (4096 if f == "description" else 75):
            raise InvalidArgument(f"Invalid {f}: expected a string of at most "
                                  f"{4096 if f == 'description' else 75} characters.", field=f)
        else:
            data[f] = v
    data["updateTime"] = rfc3339(svc.clock())
    svc.commit(caller, puts=[Put("group", name, data)], expect=[Expect("group", name, rec.revision)],
               method=_GROUPS + "UpdateGroup", service=SERVICE, resource_name=name,
               request={"group": dict(body), "updateMask": ",".join(sorted(fields))})
    return _done({k: v for k, v in data.items() if not k.startswith("keycard")}, "Group")


def delete_group(svc: Services, caller: Caller, group_id: str) -> dict[str, Any]:
    name = _group_name(group_id)
    rec = _live(svc, name)
    _authorize(svc, caller, "cloudidentity.groups.delete", rec, name)
    if rec is None:
        raise NotFound(f"Group {name} not found.", field="name")
    # soft delete: the runtime empties the group in the engine; the email can be taken again
    data = {**rec.data, "keycardMembers": [], "deleteTime": rfc3339(svc.clock())}
    svc.commit(caller, puts=[Put("group", name, data, deleted=True)], expect=[Expect("group", name, rec.revision)],
               method=_GROUPS + "DeleteGroup", service=SERVICE, resource_name=name, request={"name": name})
    return {"done": True, "response": {"@type": "type.googleapis.com/google.protobuf.Empty"}}


# --------------------------------------------------------------------------------------- memberships

def _membership(group: str, email: str, key: str, mtype: str, roles: Sequence[str], now: str) -> dict[str, Any]:
    mid = str(10**20 + secrets.randbelow(9 * 10**20))
    return {"name": f"{group}/memberships/{mid}", "preferredMemberKey": {"id": email},
            "roles": [{"name": r} for r in sorted(set(roles), key=_ROLES.index)], "type": mtype,
            "createTime": now, "updateTime": now, "deliverySetting": "ALL_MAIL", "keycardKey": key}


def _shown_membership(m: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in m.items() if k != "keycardKey"}


def _roles(value: object) -> list[str]:
    if value is None:
        return ["MEMBER"]
    if not isinstance(value, list):
        raise InvalidArgument("Invalid roles: expected [{\"name\": \"MEMBER\"}], optionally with OWNER or MANAGER.",
                              field="roles")
    out: list[str] = []
    for i, r in enumerate(value):
        n = r.get("name") if isinstance(r, Mapping) else None
        if n not in _ROLES:
            raise InvalidArgument(f"Invalid roles[{i}].name {n!r}: one of OWNER, MANAGER, MEMBER.",
                                  field=f"roles[{i}].name")
        if n in out:
            raise InvalidArgument(f"Invalid roles[{i}]: role {n} is listed twice.", field=f"roles[{i}].name")
        out.append(str(n))
    if "MEMBER" not in out:
        out.append("MEMBER")
    return out


def _would_cycle(svc: Services, group_key: str, new_member: str) -> bool:
    """Does ``new_member`` (a group) already contain ``group_key``, directly or through nesting?

    Read from the store, not the engine, so a write another replica has not yet delivered counts.
    """
    stack, seen = [new_member], set()
    while stack:
        g = stack.pop()
        if g == group_key:
            return True
        if g in seen:
            continue
        seen.add(g)
        rec = _by_email(svc, g[len("group:"):])
        if rec is not None:
            stack.extend(str(m) for m in rec.data.get("keycardMembers", []) if str(m).startswith("group:"))
    return False


def create_membership(svc: Services, caller: Caller, group_id: str, body: object) -> dict[str, Any]:
    name = _group_name(group_id)
    rec = _live(svc, name)
    _authorize(svc, caller, "cloudidentity.memberships.create", rec, name, group_roles=("OWNER", "MANAGER"))
    if not isinstance(body, Mapping):
        raise InvalidArgument("Invalid request body: expected a Membership.", field="membership")
    key = body.get("preferredMemberKey")
    if not isinstance(key, Mapping):
        raise InvalidArgument("Invalid preferredMemberKey: expected {\"id\": \"MEMBER_EMAIL\"}.",
                              field="preferredMemberKey.id")
    email = _email(key.get("id"), "preferredMemberKey.id")
    roles = _roles(body.get("roles"))
    if rec is None:
        raise NotFound(f"Group {name} not found.", field="parent")
    if "OWNER" in roles and not svc.allowed(caller, "cloudidentity.memberships.create", _org(svc)) \
            and "OWNER" not in _roles_of(rec, caller.principal):
        raise FailedPrecondition("A group MANAGER cannot make someone an OWNER; ask an OWNER.",
                                 reason="OWNER_REQUIRED", field="roles")
    gkey = f"group:{rec.data['groupKey']['id']}"
    mkey, mtype = member_key(svc, email)
    members = [str(m) for m in rec.data.get("keycardMembers", [])]
    if mkey in members:
        raise AlreadyExists(f"{email} is already a member of {name}.", field="preferredMemberKey.id")
    if len(members) >= MAX_MEMBERSHIPS:
        raise InvalidArgument(f"Invalid parent: {name} already has {MAX_MEMBERSHIPS} direct members, the limit.",
                              field="parent", reason="MEMBERSHIP_LIMIT")
    if mtype == "GROUP" and (mkey == gkey or _would_cycle(svc, gkey, mkey)):
        raise InvalidArgument(f"Invalid preferredMemberKey.id {email!r}: {email} contains {gkey[6:]}, so the "
                              "membership would make the group a member of itself (a group cycle).",
                              field="preferredMemberKey.id", reason="GROUP_CYCLE")
    now = rfc3339(svc.clock())
    m = _membership(name, email, mkey, mtype, roles, now)
    data = {**rec.data, "keycardMembers": [*members, mkey], "keycardMemberships": [*_memberships(rec), m]}
    svc.commit(caller, puts=[Put("group", name, data)], expect=[Expect("group", name, rec.revision)],
               method=_MEMBERSHIPS + "CreateMembership", service=SERVICE, resource_name=m["name"],
               request={"parent": name, "membership": dict(body)})
    return _done(_shown_membership(m), "Membership")


def list_memberships(svc: Services, caller: Caller, group_id: str, page_size: object, page_token: str
                     ) -> dict[str, Any]:
    name = _group_name(group_id)
    rec = _live(svc, name)
    _authorize(svc, caller, "cloudidentity.memberships.list", rec, name, as_member=True)
    if rec is None:
        raise NotFound(f"Group {name} not found.", field="parent")
    items = [_shown_membership(m) for m in _memberships(rec)]
    return _page(items, "memberships", page_size, page_token, default=200, maximum=1000)


def _find(rec: Record, membership: str) -> dict[str, Any] | None:
    wanted = f"{rec.name}/memberships/{membership}"
    return next((m for m in _memberships(rec) if m["name"] == wanted), None)


def get_membership(svc: Services, caller: Caller, group_id: str, membership: str) -> dict[str, Any]:
    name = _group_name(group_id)
    rec = _live(svc, name)
    _authorize(svc, caller, "cloudidentity.memberships.get", rec, f"{name}/memberships/{membership}",
               as_member=True)
    m = _find(rec, membership) if rec is not None else None
    if m is None:
        raise NotFound(f"Membership {name}/memberships/{membership} not found.", field="name")
    return _shown_membership(m)


def lookup_membership(svc: Services, caller: Caller, group_id: str, email: object) -> dict[str, Any]:
    name = _group_name(group_id)
    rec = _live(svc, name)
    _authorize(svc, caller, "cloudidentity.memberships.get", rec, f"{name}/memberships:lookup", as_member=True)
    key = _email(email, "memberKey.id")
    m = next((m for m in _memberships(rec) if m["preferredMemberKey"]["id"] == key), None) if rec else None
    if m is None:
        raise NotFound(f"{key} is not a member of {name}.", field="memberKey.id")
    return {"name": m["name"]}


def delete_membership(svc: Services, caller: Caller, group_id: str, membership: str) -> dict[str, Any]:
    name = _group_name(group_id)
    rec = _live(svc, name)
    mname = f"{name}/memberships/{membership}"
    _authorize(svc, caller, "cloudidentity.memberships.delete", rec, mname, group_roles=("OWNER", "MANAGER"))
    m = _find(rec, membership) if rec is not None else None
    if rec is None or m is None:
        raise NotFound(f"Membership {mname} not found.", field="name")
    if any(r.get("name") == "OWNER" for r in m.get("roles", [])) \
            and not svc.allowed(caller, "cloudidentity.memberships.delete", _org(svc)) \
            and "OWNER" not in _roles_of(rec, caller.principal):
        raise FailedPrecondition("A group MANAGER cannot remove an OWNER; ask an OWNER.", reason="OWNER_REQUIRED",
                                 field="name")
    data = {**rec.data,
            "keycardMembers": [k for k in rec.data.get("keycardMembers", []) if k != m["keycardKey"]],
            "keycardMemberships": [x for x in _memberships(rec) if x["name"] != mname]}
    svc.commit(caller, puts=[Put("group", name, data)], expect=[Expect("group", name, rec.revision)],
               method=_MEMBERSHIPS + "DeleteMembership", service=SERVICE, resource_name=mname,
               request={"name": mname})
    return {"done": True, "response": {"@type": "type.googleapis.com/google.protobuf.Empty"}}
