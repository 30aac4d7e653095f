"""``keycard import --cai``: load an organization from a Cloud Asset Inventory export into a server's store.

The local admin path (on the server's host, like ``keycard init``): the export (newline-delimited JSON as
``gcloud asset export --content-type=resource`` and ``--content-type=iam-policy`` write it, the two files
concatenated or given one after the other) is read by the engine's own loader (``Engine.load``: every name,
policy and condition validated, ancestors resolved) before anything is written, so a bad file writes
nothing. Then every resource becomes a ``resource`` record (projects with their id), every allow policy an
``iam_policy`` record, every group of ``--groups`` (``{email: [members]}``) a Cloud Identity group, in
batched commits (the store's bulk path: one transaction per batch, ``executemany`` inserts), each audited.

Roles that keycard's catalog does not define are kept in the policies (they grant nothing until the role is
defined, e.g. with ``--catalog`` at serve time). A policy imported for the installation's own organization
is merged with its current one (the installation's administrators keep their grants). ``grant`` members get
``roles/cloudasset.viewer`` on each imported organization, so they can analyze it.
"""

from __future__ import annotations

import datetime as dt
import gc
import hashlib
import json
import os
import secrets
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from keycard import names
from keycard.engine.engine import Engine
from keycard.errors import InvalidArgument, KeycardError
from keycard.store.base import Put, Store

__all__ = ["import_cai"]

Progress = Callable[[str, int, int], None]        # (phase, done, total)
_BATCH = 20_000
_CONTAINERS = (f"{names.CRM}/Organization", f"{names.CRM}/Folder", f"{names.CRM}/Project")


def _records(paths: Sequence[str | os.PathLike[str]], progress: Progress) -> Iterator[Any]:
    total = sum(os.path.getsize(p) for p in paths)
    done = 0
    for path in paths:
        with open(path, "rb") as f:
            for lineno, line in enumerate(f, 1):
                done += len(line)
                if lineno % 5000 == 0:
                    progress("read", done, total)
                line = line.strip()
                if not line:
                    continue
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as e:
                    raise InvalidArgument(f"Invalid {os.fspath(path)} line {lineno}: not JSON ({e.msg}).",
                                          field="cai") from None
    progress("read", total, total)


def _audit(org: str, what: str, count: int) -> dict[str, Any]:
    return {"logName": f"{org.split('/', 3)[3]}/logs/cloudaudit.googleapis.com%2Factivity",
            "insertId": secrets.token_hex(8), "severity": "NOTICE",
            "timestamp": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "protoPayload": {"@type": "type.googleapis.com/google.cloud.audit.AuditLog",
                             "authenticationInfo": {"principalEmail": "keycard-import"},
                             "methodName": "keycard.ImportCloudAssetInventory", "serviceName": "keycard",
                             "resourceName": org.split("/", 3)[3], "request": {"what": what, "records": count}}}


def import_cai(store: Store, paths: Sequence[str | os.PathLike[str]], *,
               groups: Mapping[str, Sequence[str]] | None = None, grant: Sequence[str] = (),
               progress: Progress | None = None) -> dict[str, Any]:
    """Import the export(s) at ``paths``; return counts. Raises InvalidArgument (nothing written) on bad input.

    Millions of small objects and no garbage cycles: the cyclic collector is paused while it runs."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _import(store, paths, groups=groups, grant=grant, progress=progress)
    finally:
        if was_enabled:
            gc.enable()


def _import(store: Store, paths: Sequence[str | os.PathLike[str]], *, groups: Mapping[str, Sequence[str]] | None,
            grant: Sequence[str], progress: Progress | None) -> dict[str, Any]:
    report = progress or (lambda phase, done, total: None)
    inst = store.get("installation", "default")
    if inst is None:
        raise KeycardError("This database has no installation yet: run `keycard init --organization-domain "
                           "example.com --admin user:you@example.com` first.")
    own_org = str(inst.data["organization"])
    customer = str(inst.data["customerId"])
    grant = [names.parse_member(m, "grant") for m in grant]
    if groups is not None and (not isinstance(groups, Mapping) or not all(
            isinstance(v, list) and all(isinstance(m, str) for m in v) for v in groups.values())):
        raise InvalidArgument("Invalid groups: expected a JSON object {\"group@example.com\": [\"user:…\", …]}.",
                              field="groups")
    eng = Engine.load(_records(paths, report), groups=dict(groups or {}), unknown_roles="ignore")
    h = eng._h
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    puts: list[Put] = []
    counts = {"resources": 0, "projects": 0, "policies": 0, "bindings": 0, "groups": 0, "organizations": 0}
    orgs: list[str] = []
    for node in list(h.nodes.values()):
        name = node.name
        rel = name.split("/", 3)[3]
        parent = node.parent.name if node.parent is not None else None
        if node.type in _CONTAINERS:
            data: dict[str, Any] = {"name": rel, "state": "ACTIVE", "displayName": rel.split("/", 1)[1],
                                    "createTime": stamp, "updateTime": stamp}
            if parent is not None:
                data["parent"] = parent.split("/", 3)[3]
            if node.type == f"{names.CRM}/Project":
                number = rel.split("/", 1)[1]
                pid = h.project_alias.get(number)
                if pid is not None and not pid.isdigit():
                    data["projectId"] = data["displayName"] = pid
                    puts.append(Put("project_id", pid, {"name": name}))
                counts["projects"] += 1
            if node.type == f"{names.CRM}/Organization":
                orgs.append(name)
                counts["organizations"] += 1
        else:
            data = {"name": rel}
        if name != own_org:
            puts.append(Put("resource", name, data, parent=parent))
            counts["resources"] += 1
        policy = node.policy
        if policy is not None and (policy.bindings or name in orgs):
            doc = policy.to_json()
            doc.pop("etag", None)
            bindings = list(doc.get("bindings", []))
            if name == own_org:
                rec = store.get("iam_policy", name)
                current = list((rec.data if rec else {}).get("bindings", []))
                bindings = current + [b for b in bindings if b not in current]
                doc["version"] = max(int(doc.get("version", 1)), int((rec.data if rec else {}).get("version", 1)))
            if name in orgs and grant:
                bindings.append({"role": "roles/cloudasset.viewer", "members": sorted(set(grant))})
            doc["bindings"] = bindings
            if bindings:
                puts.append(Put("iam_policy", name, doc))
                counts["policies"] += 1
                counts["bindings"] += len(bindings)
        elif name in orgs and grant:
            puts.append(Put("iam_policy", name, {"version": 1, "bindings": [
                {"role": "roles/cloudasset.viewer", "members": sorted(set(grant))}]}))
    for email, members in (groups or {}).items():
        key = email.lower()
        if store.get("group_key", key) is not None:
            continue
        gid = "0imp" + hashlib.sha256(key.encode()).hexdigest()[:12]
        gname = f"groups/{gid}"
        puts += [Put("group", gname, {"name": gname, "groupKey": {"id": key}, "parent": f"customers/{customer}",
                                      "labels": {"cloudidentity.googleapis.com/groups.discussion_forum": ""},
                                      "displayName": key, "createTime": stamp, "updateTime": stamp,
                                      "keycardMembers": sorted({names.parse_member(m, f"groups[{email}]")
                                                                for m in members}),
                                      "keycardMemberships": []}),
                 Put("group_key", key, {"name": gname})]
        counts["groups"] += 1
    del eng
    total = len(puts)
    target = orgs[0] if orgs else own_org
    for start in range(0, total, _BATCH):
        batch = puts[start:start + _BATCH]
        store.commit(batch, audit=[_audit(target, f"batch {start // _BATCH + 1}", len(batch))])
        report("write", min(start + _BATCH, total), total)
    report("write", total, total)
    return {**counts, "records": total, "organizationsImported": [o.split("/", 3)[3] for o in orgs],
            "installationOrganization": own_org.split("/", 3)[3]}
