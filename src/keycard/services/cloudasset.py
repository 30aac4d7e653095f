"""Cloud Asset API v1: ``analyzeIamPolicy``, ``searchAllIamPolicies``, ``searchAllResources``.

Each method is authorized on its ``scope`` (``organizations/O``, ``folders/F`` or ``projects/P``) with
Google's permission — ``cloudasset.assets.analyzeIamPolicy`` (and, as Google requires,
``searchAllResources`` and ``searchAllIamPolicies``), ``cloudasset.assets.searchAllIamPolicies``,
``cloudasset.assets.searchAllResources`` — and answers only about resources inside the scope, so a
caller learns nothing beyond what the scope's grant lets it see. The analysis itself is pure
(keycard.analysis.iam_analysis); search queries use Cloud Asset's ``field:value`` / ``field=value``
terms with AND, OR, NOT and parentheses (compiled by keycard.audit, keycard's one filter language).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from typing import Any

from keycard import names
from keycard.analysis.iam_analysis import analyze, parse_query
from keycard.audit import compile_filter
from keycard.engine.engine import Engine
from keycard.errors import InvalidArgument
from keycard.services.common import Caller, Services, parse_page_size

__all__ = ["analyze_iam_policy", "scope_full", "search_all_iam_policies", "search_all_resources"]

SERVICE = "cloudasset.googleapis.com"
_SCOPE = re.compile(r"^(organizations|folders|projects)/[^/]+$")


def scope_full(scope: str, fld: str = "scope") -> str:
    """``organizations/O`` | ``folders/F`` | ``projects/P`` → its full resource name (400 otherwise)."""
    if not isinstance(scope, str) or not _SCOPE.match(scope):
        raise InvalidArgument(f"Invalid {fld} {scope!r}: expected organizations/NUMBER, folders/NUMBER, "
                              "projects/PROJECT_ID or projects/NUMBER.", field=fld)
    return names.parse_resource(f"//{names.CRM}/{scope}", fld).full


def _within(engine: Engine, scope_canon: str) -> Any:
    def inside(name: str) -> bool:
        return scope_canon in engine.ancestry(name)
    return inside


# ======================================================================================== analyze
def _nest(query: Mapping[str, Any], lists: Mapping[str, list[str]]) -> dict[str, Any]:
    """Flattened ``analysisQuery.a.b`` query parameters → the nested request object."""
    out: dict[str, Any] = {}
    for key, value in query.items():
        if not key.startswith("analysisQuery."):
            continue
        parts = key.split(".")[1:]
        cur = out
        for p in parts[:-1]:
            cur = cur.setdefault(p, {})
            if not isinstance(cur, dict):
                raise InvalidArgument(f"Invalid {key}: conflicting parameters.", field=key)
        multi = lists.get(key, [value])
        cur[parts[-1]] = multi if parts[-1] in ("roles", "permissions") else value
    return out


def analyze_iam_policy(svc: Services, caller: Caller, scope: str, query: Mapping[str, Any],
                       lists: Mapping[str, list[str]]) -> dict[str, Any]:
    full = scope_full(scope)
    for perm in ("cloudasset.assets.analyzeIamPolicy", "cloudasset.assets.searchAllResources",
                 "cloudasset.assets.searchAllIamPolicies"):
        svc.authorize(caller, perm, full, service=SERVICE)
    if query.get("savedAnalysisQuery"):
        raise InvalidArgument("Invalid savedAnalysisQuery: keycard has no saved queries; send analysisQuery.",
                              field="savedAnalysisQuery")
    engine = svc.runtime.engine
    raw = _nest(query, lists)
    q = parse_query(engine, raw)
    canon = engine.canonical_name(full)
    results = analyze(engine, q, canon)
    main = [r for r in results if "keycardImpersonates" not in r]
    echoed = {**raw, "scope": scope}
    out: dict[str, Any] = {"mainAnalysis": {"analysisQuery": echoed, "analysisResults": main,
                                            "fullyExplored": True}, "fullyExplored": True}
    if q.impersonation:
        by_sa: dict[str, list[dict[str, Any]]] = {}
        for r in results:
            sa = r.pop("keycardImpersonates", None)
            if sa is not None:
                by_sa.setdefault(sa, []).append(r)
        out["serviceAccountImpersonationAnalysis"] = [
            {"analysisQuery": {"scope": scope, "resourceSelector": {
                "fullResourceName": rs[0]["accessControlLists"][0]["resources"][0]["fullResourceName"]},
                "accessSelector": {"permissions": sorted({a["permission"] for r in rs
                                                          for a in r["accessControlLists"][0]["accesses"]
                                                          if "permission" in a})},
                "keycardServiceAccount": sa},
             "analysisResults": rs, "fullyExplored": True} for sa, rs in by_sa.items()]
    return out


# ========================================================================================= search
def _page(items: list[dict[str, Any]], query: Mapping[str, Any], default: int) -> dict[str, Any]:
    size = parse_page_size(query.get("pageSize"), default)
    start = 0
    token = query.get("pageToken") or ""
    if token:
        try:
            start = int(base64.urlsafe_b64decode(str(token).encode()).decode())
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise InvalidArgument("Invalid pageToken: send the nextPageToken of the previous response.",
                                  field="pageToken") from None
    page = items[start:start + size]
    out: dict[str, Any] = {"results": page} if page else {}
    if start + size < len(items):
        out["nextPageToken"] = base64.urlsafe_b64encode(str(start + size).encode()).decode()
    return out


def _asset_types(query: Mapping[str, Any], lists: Mapping[str, list[str]]) -> list[re.Pattern[str]]:
    raw = lists.get("assetTypes") or ([str(query["assetTypes"])] if query.get("assetTypes") else [])
    out = []
    for t in raw:
        for one in str(t).split(","):
            one = one.strip()
            if one and not re.fullmatch(r"[\w.*/-]+", one):
                raise InvalidArgument(f"Invalid assetTypes {one!r}: an asset type such as "
                                      "'storage.googleapis.com/Bucket' (or with '.*' wildcards).", field="assetTypes")
            if one:
                out.append(re.compile("^" + ".*".join(re.escape(x) for x in one.split(".*")) + "$"))
    return out


def _order(items: list[dict[str, Any]], order_by: str, fields: tuple[str, ...]) -> None:
    if not order_by:
        return
    keys = []
    for part in reversed([p.strip() for p in order_by.split(",") if p.strip()]):
        name, _, direction = part.partition(" ")
        if name not in fields or direction.strip().upper() not in ("", "ASC", "DESC"):
            raise InvalidArgument(f"Invalid orderBy {order_by!r}: order by {', '.join(fields)} with optional "
                                  "DESC.", field="orderBy")
        keys.append((name, direction.strip().upper() == "DESC"))
    for name, desc in keys:
        def key(r: dict[str, Any], n: str = name) -> str:
            return str(r.get(n, ""))
        items.sort(key=key, reverse=desc)


def _context(engine: Engine, name: str) -> dict[str, Any]:
    """project / folders / organization of a resource (Google's search-result context fields)."""
    chain = engine.ancestry(name)
    out: dict[str, Any] = {}
    folders = [a.split("/", 3)[3] for a in chain if a.startswith(f"//{names.CRM}/folders/")]
    proj = next((a for a in chain if a.startswith(f"//{names.CRM}/projects/")), None)
    org = next((a for a in chain if a.startswith(f"//{names.CRM}/organizations/")), None)
    if proj:
        out["project"] = proj.split("/", 3)[3]
    if folders:
        out["folders"] = folders
    if org:
        out["organization"] = org.split("/", 3)[3]
    return out


def _search_doc(engine: Engine, result: dict[str, Any]) -> dict[str, Any]:
    doc = dict(result)
    project = result.get("project")
    if isinstance(project, str):
        alias = engine._h.project_alias.get(project.split("/", 1)[1])          # project id ↔ number
        doc["project"] = [project, f"projects/{alias}"] if alias else project
    doc["parent"] = doc.get("parentFullResourceName", "")
    return doc


def search_all_resources(svc: Services, caller: Caller, scope: str, query: Mapping[str, Any],
                         lists: Mapping[str, list[str]]) -> dict[str, Any]:
    full = scope_full(scope)
    svc.authorize(caller, "cloudasset.assets.searchAllResources", full, service=SERVICE)
    engine = svc.runtime.engine
    pred = compile_filter(_cai_query(str(query.get("query") or ""), ("name", "displayName")))
    types = _asset_types(query, lists)
    canon = engine.canonical_name(full)
    stored = {r.name: r for r in svc.runtime.store.scan(["resource"]) if r.name.startswith(f"//{names.CRM}/")}
    items = []
    for name in engine.resources():
        chain = engine.ancestry(name)
        if canon not in chain:
            continue
        node_type = engine._h.nodes[name].type if name in engine._h.nodes else names.parse_resource(name).type
        if types and not any(t.match(node_type) for t in types):
            continue
        result: dict[str, Any] = {"name": name, "assetType": node_type, **_context(engine, name)}
        if len(chain) > 1:
            result["parentFullResourceName"] = chain[1]
            result["parentAssetType"] = engine._h.nodes[chain[1]].type if chain[1] in engine._h.nodes else ""
        rec = stored.get(name)
        if rec is not None:
            d = rec.data
            result["displayName"] = str(d.get("displayName") or d.get("projectId") or "")
            if d.get("labels"):
                result["labels"] = dict(d["labels"])
            if d.get("state"):
                result["state"] = str(d["state"])
            for k in ("createTime", "updateTime"):
                if d.get(k):
                    result[k] = d[k]
        else:
            result["displayName"] = name.rsplit("/", 1)[-1]
        if pred(_search_doc(engine, result)):
            items.append(result)
    _order(items, str(query.get("orderBy") or ""), ("name", "assetType", "project", "displayName", "state",
                                                     "createTime", "updateTime"))
    return _page(items, query, 100)


def search_all_iam_policies(svc: Services, caller: Caller, scope: str, query: Mapping[str, Any],
                            lists: Mapping[str, list[str]]) -> dict[str, Any]:
    full = scope_full(scope)
    svc.authorize(caller, "cloudasset.assets.searchAllIamPolicies", full, service=SERVICE)
    engine = svc.runtime.engine
    text = str(query.get("query") or "").replace("policy.role.permissions", "keycardPermissions")
    pred = compile_filter(_cai_query(text, ("policy",)))
    types = _asset_types(query, lists)
    canon = engine.canonical_name(full)
    items = []
    for name in engine.resources():
        pol = engine.get_iam_policy(name)
        if pol is None or not pol.bindings or canon not in engine.ancestry(name):
            continue
        node_type = engine._h.nodes[name].type
        if types and not any(t.match(node_type) for t in types):
            continue
        result: dict[str, Any] = {"resource": name, "assetType": node_type, **_context(engine, name),
                                  "policy": {"version": pol.version, "bindings": [b.to_json() for b in pol.bindings]}}
        members = sorted({m for b in pol.bindings for m in b.members})
        role_perms: dict[str, frozenset[str]] = {}
        for b in pol.bindings:
            role = engine.get_role(b.role)
            role_perms[b.role] = role.permissions if role is not None else frozenset()
        perms = sorted({p for ps in role_perms.values() for p in ps})
        doc = _search_doc(engine, result)
        doc["policy"] = members + [b.role for b in pol.bindings]
        doc["keycardPermissions"] = perms
        doc["memberTypes"] = sorted({m.split(":", 1)[0] if ":" in m else m for m in members})
        if pred(doc):
            matched = {p for p in perms if p.lower() in text.lower()}
            explained = {r: {"permissions": sorted(matched & ps)} for r, ps in role_perms.items() if matched & ps}
            if explained:
                result["explanation"] = {"matchedPermissions": explained}
            items.append(result)
    _order(items, str(query.get("orderBy") or ""), ("resource", "assetType", "project"))
    return _page(items, query, 100)


def _cai_query(text: str, free_fields: tuple[str, ...]) -> str:
    """Cloud Asset query → keycard's filter language: bare words search ``free_fields``."""
    out: list[str] = []
    for token in re.findall(r'"[^"]*"|\(|\)|[^\s()]+', text):
        if token in ("AND", "OR", "NOT", "(", ")") or re.match(r'^[A-Za-z_.]+(:|=|!=|>=|<=|>|<)', token) \
                or token.startswith("-"):
            out.append(token)
        else:
            value = token if token.startswith('"') else f'"{token}"'
            out.append("(" + " OR ".join(f"{f}:{value}" for f in free_fields) + ")")
    return " ".join(out)
