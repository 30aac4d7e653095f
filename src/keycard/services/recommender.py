"""IAM recommendations (Recommender v1, recommender ``google.iam.policy.Recommender``) from the access record.

For each binding of a project's (folder's, organization's) own allow policy and each ``user:``,
``serviceAccount:`` or ``group:`` member of it, the permissions the role grants are compared with the
permissions that member *used* there over the observation window (default 90 days): a granted
authorization check recorded by :mod:`keycard.services.access_record` for a principal the member
includes (itself, or a member of the group), on the node or a resource below it, of a permission the
role holds. Then:

* nothing used → ``REMOVE_ROLE``: remove the member from the binding;
* some used → ``REPLACE_ROLE``: the smallest predefined role that holds every used permission (the
  engine's role finder) when it is smaller than the current role;
* otherwise no recommendation (the insight still reports the usage).

Conditional bindings, basic convenience members and domains are not analysed (their grant is not one
principal's). Recommendations are computed when read; their ids are stable (a hash of what they
propose), so a state set by markClaimed/markSucceeded/markFailed/markDismissed (stored as a
``recommendation_state`` record, with a snapshot of the recommendation) sticks to them and outlives
them: once applied, a recommendation is no longer computed but is still listed with its final state.
The etag is a hash of content and state; a mark with a stale etag is 409 ABORTED.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from keycard import names
from keycard.engine.engine import Engine
from keycard.errors import Aborted, FailedPrecondition, InvalidArgument, NotFound
from keycard.services.access_record import minute_of
from keycard.services.common import Caller, Services, parse_page_size, rfc3339
from keycard.store.base import AccessRecord, Expect, Put

__all__ = ["INSIGHT_TYPE", "RECOMMENDER", "Finding", "Node", "analyse", "get_insight", "get_recommendation",
           "list_insights", "list_recommendations", "mark", "resolve_node", "used_permissions"]

SERVICE = "recommender.googleapis.com"
RECOMMENDER = "google.iam.policy.Recommender"
INSIGHT_TYPE = "google.iam.policy.Insight"
WINDOW_DAYS = 90
STATE_KIND = "recommendation_state"
_MEMBER_KINDS = ("user:", "serviceAccount:", "group:")
_KINDS = {"projects": "Project", "folders": "Folder", "organizations": "Organization"}


@dataclass(frozen=True, slots=True)
class Node:
    """A recommender parent: ``projects/ID``, ``folders/N`` or ``organizations/N`` as written and resolved."""

    kind: str          # projects | folders | organizations
    written: str       # e.g. projects/my-proj (as the caller wrote it)
    full: str          # canonical full name (projects by number)

    @property
    def resource_type(self) -> str:
        return f"{names.CRM}/{_KINDS[self.kind]}"


def resolve_node(svc: Services, kind: str, ident: str, field: str = "parent") -> Node:
    if kind not in _KINDS:
        raise InvalidArgument(f"Invalid {field}: {kind}/{ident} is not a project, folder or organization.",
                              field=field)
    written = f"{kind}/{ident}"
    names.parse_resource(written, field)
    full = svc.runtime.engine.canonical_name(f"//{names.CRM}/{written}")
    return Node(kind, written, full)


def check_location(location: str, field: str = "parent") -> None:
    if location != "global":
        raise InvalidArgument(f"Invalid {field}: location {location!r} is not supported; IAM recommendations "
                              "and replays live in 'global'.", field=field)


def require_exists(svc: Services, node: Node) -> None:
    rec = svc.runtime.store.get("resource", node.full)
    if rec is None or rec.deleted:
        raise NotFound(f"Resource '{node.written}' was not found.")


# ======================================================================================= analysis

@dataclass(frozen=True, slots=True)
class Finding:
    """One (binding, member) analysed: what it grants, what was used, and what to do (if anything)."""

    binding_index: int
    role: str
    member: str
    granted: frozenset[str]
    used: frozenset[str]
    subtype: str | None             # REMOVE_ROLE | REPLACE_ROLE | None
    replacement: str | None         # the smaller role of a REPLACE_ROLE


def used_permissions(engine: Engine, node: str, rows: Iterable[AccessRecord]) -> dict[str, set[str]]:
    """member key → permissions used on ``node`` or below, by any principal that member key includes."""
    below: dict[str, bool] = {}
    keys: dict[str, tuple[str, ...]] = {}
    out: dict[str, set[str]] = {}
    for r in rows:
        if not r.granted:
            continue
        inside = below.get(r.resource)
        if inside is None:
            try:
                inside = below[r.resource] = node in engine.ancestry(r.resource)
            except InvalidArgument:
                inside = below[r.resource] = False
        if not inside:
            continue
        ks = keys.get(r.principal)
        if ks is None:
            ks = keys[r.principal] = engine.identity_keys(None if r.principal == "allUsers" else r.principal)
        for k in ks:
            out.setdefault(k, set()).add(r.permission)
    return out


def analyse(engine: Engine, node: str, rows: Iterable[AccessRecord]) -> list[Finding]:
    policy = engine.get_iam_policy(node)
    if policy is None:
        return []
    used_by = used_permissions(engine, node, rows)
    out: list[Finding] = []
    for i, b in enumerate(policy.bindings):
        role = engine.get_role(b.role)
        if b.condition is not None or role is None or not role.grants:
            continue
        granted = frozenset(role.permissions)
        for m in b.members:
            if not m.startswith(_MEMBER_KINDS):
                continue
            used = frozenset(used_by.get(m, set()) & granted)
            subtype: str | None = None
            replacement: str | None = None
            if not used:
                subtype = "REMOVE_ROLE"
            elif used != granted:
                smaller = [r for r in engine.find_roles(sorted(used), resource=node, predefined_only=True)
                           if len(r.permissions) < len(granted) and r.name != b.role and r.stage != "DEPRECATED"]
                if smaller:
                    subtype, replacement = "REPLACE_ROLE", smaller[0].name
            out.append(Finding(i, b.role, m, granted, used, subtype, replacement))
    return out


def _id(node: str, *parts: str) -> str:
    return hashlib.sha256("\x1f".join((node, *parts)).encode()).hexdigest()[:32]


def _etag(body: Mapping[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]
    return f'"{digest}"'


def _operation(action: str, node: Node, member: str, role: str) -> dict[str, Any]:
    filters: dict[str, Any] = {"/iamPolicy/bindings/*/condition/expression": "",
                               "/iamPolicy/bindings/*/role": role}
    op: dict[str, Any] = {"action": action, "resourceType": node.resource_type, "resource": node.full}
    if action == "add":
        op.update(path="/iamPolicy/bindings/*/members/-", value=member)
    else:
        op["path"] = "/iamPolicy/bindings/*/members/*"
        filters["/iamPolicy/bindings/*/members/*"] = member
    op["pathFilters"] = filters
    return op


def _names(node: Node) -> tuple[str, str]:
    prefix = f"{node.written}/locations/global"
    return (f"{prefix}/recommenders/{RECOMMENDER}/recommendations/",
            f"{prefix}/insightTypes/{INSIGHT_TYPE}/insights/")


def _build(svc: Services, node: Node, findings: list[Finding], window_days: int
           ) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """(recommendation id → Recommendation JSON without state/etag, insight id → Insight JSON)."""
    reco_prefix, insight_prefix = _names(node)
    now = rfc3339(svc.clock())
    period = f"{window_days * 86400}s"
    recos: dict[str, dict[str, Any]] = {}
    insights: dict[str, dict[str, Any]] = {}
    for f in findings:
        iid = _id(node.full, "insight", f.role, f.member)
        insight: dict[str, Any] = {
            "name": insight_prefix + iid,
            "description": f"{len(f.used)} of {len(f.granted)} permissions of {f.role} used by {f.member} in the "
                           f"last {window_days} days.",
            "content": {"role": f.role, "member": f.member, "condition": None,
                        "exercisedPermissions": [{"permission": p} for p in sorted(f.used)],
                        "inferredPermissions": [], "currentTotalPermissionsCount": str(len(f.granted))},
            "lastRefreshTime": now, "observationPeriod": period, "insightSubtype": "PERMISSIONS_USAGE",
            "category": "SECURITY", "severity": "LOW" if f.subtype is None else "MEDIUM",
            "targetResources": [node.full], "stateInfo": {"state": "ACTIVE"}, "associatedRecommendations": [],
        }
        insights[iid] = insight
        if f.subtype is None:
            continue
        rid = _id(node.full, f.subtype, f.role, f.member, f.replacement or "")
        ops = [_operation("remove", node, f.member, f.role)]
        added: list[str] = []
        if f.replacement is not None:
            ops.insert(0, _operation("add", node, f.member, f.replacement))
            added = [f.replacement]
        revoked = len(f.granted) - (len(svc.runtime.engine.get_role(f.replacement).permissions)  # type: ignore[union-attr]
                                    if f.replacement else 0)
        basic = f.role in ("roles/owner", "roles/editor")
        recos[rid] = {
            "name": reco_prefix + rid,
            "description": (f"Remove {f.role} from {f.member}: none of its permissions were used in the last "
                            f"{window_days} days." if f.replacement is None else
                            f"Replace {f.role} with {f.replacement} for {f.member}: it covers the "
                            f"{len(f.used)} permissions used in the last {window_days} days."),
            "recommenderSubtype": f.subtype,
            "lastRefreshTime": now,
            "primaryImpact": {"category": "SECURITY",
                              "securityProjection": {"details": {"revokedIamPermissionsCount": revoked}}},
            "priority": "P2" if basic or f.replacement is None else "P4",
            "content": {"operationGroups": [{"operations": ops}],
                        "overview": {"member": f.member, "removedRole": f.role, "addedRoles": added,
                                     "resource": node.full, "minimumObservationPeriodInDays": str(window_days),
                                     "usedPermissions": sorted(f.used)}},
            "associatedInsights": [{"insight": insight["name"]}],
            "targetResources": [node.full],
        }
        insight["associatedRecommendations"] = [{"recommendation": recos[rid]["name"]}]
    return recos, insights


def _rows(svc: Services, window_days: int) -> list[AccessRecord]:
    if svc.access is not None:
        svc.access.flush()
    since = minute_of(svc.clock()) - window_days * 1440
    return list(svc.runtime.store.accesses(since_minute=since))


def _states(svc: Services, node: Node) -> dict[str, Mapping[str, Any]]:
    out: dict[str, Mapping[str, Any]] = {}
    token = ""
    while True:
        page = svc.runtime.store.list(STATE_KIND, parent=node.full, page_token=token)
        for rec in page.records:
            out[rec.name.rsplit("/", 1)[1]] = rec.data
        token = page.next_token
        if not token:
            return out


def _with_state(reco: Mapping[str, Any], state: Mapping[str, Any] | None) -> dict[str, Any]:
    out = dict(reco)
    info = {"state": "ACTIVE"} if state is None else {"state": state["state"],
                                                      **({"stateMetadata": state["stateMetadata"]}
                                                         if state.get("stateMetadata") else {})}
    out["stateInfo"] = info
    out["etag"] = _etag({"content": out.get("content"), "state": info})
    return out


def _all(svc: Services, node: Node) -> dict[str, dict[str, Any]]:
    findings = analyse(svc.runtime.engine, node.full, _rows(svc, WINDOW_DAYS))
    recos, _ = _build(svc, node, findings, WINDOW_DAYS)
    states = _states(svc, node)
    out = {rid: _with_state(r, states.get(rid)) for rid, r in recos.items()}
    reco_prefix, _ = _names(node)
    for rid, st in states.items():
        if rid not in out and isinstance(st.get("snapshot"), Mapping):
            out[rid] = _with_state({**st["snapshot"], "name": reco_prefix + rid}, st)
    return out


def _insights(svc: Services, node: Node) -> dict[str, dict[str, Any]]:
    findings = analyse(svc.runtime.engine, node.full, _rows(svc, WINDOW_DAYS))
    _, insights = _build(svc, node, findings, WINDOW_DAYS)
    return {iid: {**i, "etag": _etag(i["content"])} for iid, i in insights.items()}


# =========================================================================================== filters

_TERM = re.compile(r"^\s*([A-Za-z_.]+)\s*(=|:)\s*\"?([^\"]*?)\"?\s*$")
_FIELDS = {"stateInfo.state": ("stateInfo", "state"), "state_info.state": ("stateInfo", "state"),
           "recommenderSubtype": ("recommenderSubtype",), "recommender_subtype": ("recommenderSubtype",),
           "priority": ("priority",), "targetResources": ("targetResources",),
           "target_resources": ("targetResources",), "insightSubtype": ("insightSubtype",),
           "severity": ("severity",)}


def _filter(expression: str) -> Any:
    """AIP-160 subset: ``a = X AND (b = Y OR b = Z)``, ``targetResources : NAME``."""
    if len(expression) > 500:
        raise InvalidArgument("Invalid filter: at most 500 characters.", field="filter")
    groups: list[list[tuple[tuple[str, ...], str, str]]] = []
    for part in re.split(r"\s+AND\s+", expression.strip()) if expression.strip() else []:
        terms = []
        for t in re.split(r"\s+OR\s+", part.strip().removeprefix("(").removesuffix(")")):
            m = _TERM.match(t)
            if m is None or m.group(1) not in _FIELDS:
                raise InvalidArgument(f"Invalid filter term {t.strip()!r}: use stateInfo.state = ACTIVE, "
                                      "recommenderSubtype = REMOVE_ROLE, priority = P2 or targetResources : NAME "
                                      "(joined by AND / OR).", field="filter")
            terms.append((_FIELDS[m.group(1)], m.group(2), m.group(3)))
        groups.append(terms)

    def pred(item: Mapping[str, Any]) -> bool:
        for terms in groups:
            hit = False
            for path, op, value in terms:
                v: Any = item
                for p in path:
                    v = v.get(p) if isinstance(v, Mapping) else None
                values = v if isinstance(v, list) else [v]
                if any((str(x) == value) if op == "=" else (value in str(x)) for x in values if x is not None):
                    hit = True
                    break
            if not hit:
                return False
        return True
    return pred


def _page(items: list[dict[str, Any]], query: Mapping[str, str], key: str) -> dict[str, Any]:
    size = parse_page_size(query.get("pageSize"), 100)
    token = query.get("pageToken") or ""
    start = 0
    if token:
        if not token.isdigit():
            raise InvalidArgument("Invalid pageToken: pass the nextPageToken of the previous page.",
                                  field="pageToken")
        start = int(token)
    out: dict[str, Any] = {key: items[start:start + size]}
    if start + size < len(items):
        out["nextPageToken"] = str(start + size)
    return out


@dataclass(frozen=True, slots=True)
class _Collection:
    """Recommendations or insights: how a list or a get of them is checked, read and named."""

    served: str                 # the one recommender (insight type) keycard serves
    served_what: str            # "Recommender", "Insight type"
    list_permission: str
    key: str                    # the list's field: recommendations | insights
    noun: str                   # "Recommendation", "Insight"
    prefix: int                 # which of _names(node) prefixes an item's id
    read: Callable[[Services, Node], dict[str, dict[str, Any]]]   # node → id → item


_RECOMMENDATIONS = _Collection(RECOMMENDER, "Recommender", "recommender.iamPolicyRecommendations.list",
                               "recommendations", "Recommendation", 0, _all)
_INSIGHTS = _Collection(INSIGHT_TYPE, "Insight type", "recommender.iamPolicyInsights.list", "insights", "Insight",
                        1, _insights)


def _check(svc: Services, caller: Caller, node: Node, location: str, served: str, c: _Collection, permission: str,
           field: str) -> None:
    """Authorized first, then the location, the recommender (insight type) and the node itself."""
    svc.authorize(caller, permission, node.full, service=SERVICE, shown=f"//{names.CRM}/{node.written}")
    check_location(location, field)
    if served != c.served:
        raise NotFound(f"{c.served_what} '{served}' is not served here; keycard serves {c.served}.")
    require_exists(svc, node)


def _list(svc: Services, caller: Caller, node: Node, location: str, served: str, query: Mapping[str, str],
          c: _Collection) -> dict[str, Any]:
    _check(svc, caller, node, location, served, c, c.list_permission, "parent")
    pred = _filter(query.get("filter", ""))
    items = [i for _, i in sorted(c.read(svc, node).items()) if pred(i)]
    return _page(items, query, c.key)


def _get(svc: Services, caller: Caller, node: Node, location: str, served: str, ident: str, c: _Collection,
         permission: str) -> dict[str, Any]:
    _check(svc, caller, node, location, served, c, permission, "name")
    found = c.read(svc, node).get(ident)
    if found is None:
        raise NotFound(f"{c.noun} '{_names(node)[c.prefix]}{ident}' was not found.")
    return found


# =============================================================================================== API

def list_recommendations(svc: Services, caller: Caller, node: Node, location: str, recommender: str,
                         query: Mapping[str, str]) -> dict[str, Any]:
    return _list(svc, caller, node, location, recommender, query, _RECOMMENDATIONS)


def get_recommendation(svc: Services, caller: Caller, node: Node, location: str, recommender: str, rid: str,
                       permission: str = "recommender.iamPolicyRecommendations.get") -> dict[str, Any]:
    return _get(svc, caller, node, location, recommender, rid, _RECOMMENDATIONS, permission)


_MARKS = {"markClaimed": ("CLAIMED", {"ACTIVE", "CLAIMED", "SUCCEEDED", "FAILED"}),
          "markSucceeded": ("SUCCEEDED", {"ACTIVE", "CLAIMED", "SUCCEEDED", "FAILED"}),
          "markFailed": ("FAILED", {"ACTIVE", "CLAIMED", "SUCCEEDED", "FAILED"}),
          "markDismissed": ("DISMISSED", {"ACTIVE", "DISMISSED"})}


def mark(svc: Services, caller: Caller, node: Node, location: str, recommender: str, rid: str, verb: str,
         body: Any) -> dict[str, Any]:
    current = get_recommendation(svc, caller, node, location, recommender, rid,
                                 permission="recommender.iamPolicyRecommendations.update")
    if not isinstance(body, Mapping):
        raise InvalidArgument("Invalid request body: expected {\"etag\": ..., \"stateMetadata\": {...}}.",
                              field="etag")
    etag = body.get("etag")
    if not isinstance(etag, str) or not etag:
        raise InvalidArgument("Invalid etag: required; send the recommendation's etag from get or list.",
                              field="etag")
    metadata = body.get("stateMetadata") or {}
    if not isinstance(metadata, Mapping) or not all(isinstance(k, str) and isinstance(v, str) and len(k) <= 63
                                                    and len(v) <= 63 for k, v in metadata.items()):
        raise InvalidArgument("Invalid stateMetadata: a map of strings (keys and values at most 63 characters).",
                              field="stateMetadata")
    state, allowed_from = _MARKS[verb]
    if etag != current["etag"]:
        raise Aborted("The recommendation changed since you read it (etag mismatch): get it again and retry.",
                      reason="ETAG_MISMATCH")
    if current["stateInfo"]["state"] not in allowed_from:
        raise FailedPrecondition(f"Cannot {verb} a recommendation in state {current['stateInfo']['state']}.",
                                 reason="INVALID_STATE_TRANSITION")
    key = f"{node.full}/recommendations/{rid}"
    existing = svc.runtime.store.get(STATE_KIND, key)
    snapshot = {k: v for k, v in current.items() if k not in ("stateInfo", "etag")}
    data = {"state": state, "stateMetadata": dict(metadata), "snapshot": snapshot}
    svc.commit(caller, puts=[Put(STATE_KIND, key, data, parent=node.full)],
               expect=[Expect(STATE_KIND, key, existing.revision if existing else None)],
               method=f"google.cloud.recommender.v1.Recommender.MarkRecommendation{verb[4:]}", service=SERVICE,
               resource_name=current["name"], request={"name": current["name"], "etag": etag,
                                                       "stateMetadata": dict(metadata)})
    return _with_state(snapshot, data)


def list_insights(svc: Services, caller: Caller, node: Node, location: str, insight_type: str,
                  query: Mapping[str, str]) -> dict[str, Any]:
    return _list(svc, caller, node, location, insight_type, query, _INSIGHTS)


def get_insight(svc: Services, caller: Caller, node: Node, location: str, insight_type: str, iid: str
                ) -> dict[str, Any]:
    return _get(svc, caller, node, location, insight_type, iid, _INSIGHTS, "recommender.iamPolicyInsights.get")
