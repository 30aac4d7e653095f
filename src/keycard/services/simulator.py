"""Policy Simulator v1 replays: what a proposed allow policy would change, from the access record.

``replays.create`` takes a ``policyOverlay`` (one full resource name → a proposed allow Policy) and
replays the access attempts recorded over the last ``DAYS`` days (keycard.services.access_record)
on that resource and below it: each distinct (principal, permission, resource) is checked twice by
the engine at the replay's time — as things are (``baseline``: :meth:`Engine.check`) and with the
overlay in place of the resource's policy (``simulated``: :meth:`Engine.check_with_policy`, which
evaluates the proposed policy without touching the engine's state). Deny policies apply to both.

The replay runs in a background thread; ``replays.create`` answers with a long-running Operation that
``replays.operations.get`` reports done with the Replay. ``replays.results.list`` lists the accesses
whose state changes (``ACCESS_REVOKED`` / ``ACCESS_GAINED``) and the ones that could not be replayed
(``error``); unchanged accesses are counted in ``resultsSummary.unchangedCount`` only, as the
Console shows them. ``logCount`` counts distinct access tuples, not individual checks.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from keycard import names
from keycard.engine.engine import Engine
from keycard.engine.model import AllowPolicy, parse_allow_policy
from keycard.errors import InvalidArgument, KeycardError, NotFound
from keycard.services.access_record import minute_of
from keycard.services.common import Caller, Services, parse_page_size, rfc3339
from keycard.services.recommender import Node, check_location, require_exists
from keycard.store.base import AccessRecord, Put

__all__ = ["Outcome", "create_replay", "get_operation", "get_replay", "list_operations", "list_results",
           "replay"]

log = logging.getLogger("keycard.simulator")
SERVICE = "policysimulator.googleapis.com"
DAYS = 90
MAX_STORED = 50_000            # differences kept per replay (the summary counts them all)
_KIND = "replay"
_RESULTS = "replay_results"
_T = "type.googleapis.com/google.cloud.policysimulator.v1."


@dataclass(frozen=True, slots=True)
class Outcome:
    principal: str
    permission: str
    resource: str
    last_minute: int
    baseline: bool | None         # None: could not be replayed (error)
    simulated: bool | None
    error: str | None = None

    @property
    def change(self) -> str:
        if self.error is not None:
            return "UNKNOWN_CHANGE"
        if self.baseline == self.simulated:
            return "NO_CHANGE"
        return "ACCESS_REVOKED" if self.baseline else "ACCESS_GAINED"


def replay(engine: Engine, target: str, policy: AllowPolicy, rows: Iterable[AccessRecord], *,
           time: dt.datetime, progress: Callable[[int, int], None] | None = None
           ) -> tuple[list[Outcome], dict[str, Any]]:
    """Replay ``rows`` under ``policy`` at ``target`` (pure: reads the engine, changes nothing).

    Returns (outcomes that changed or failed, summary counts)."""
    tuples: dict[tuple[str, str, str], int] = {}
    oldest = newest = None
    below: dict[str, bool] = {}
    for r in rows:
        inside = below.get(r.resource)
        if inside is None:
            try:
                inside = below[r.resource] = target in engine.ancestry(r.resource)
            except KeycardError:
                inside = below[r.resource] = False
        if not inside:
            continue
        key = (r.principal, r.permission, r.resource)
        if tuples.get(key, -1) < r.minute:
            tuples[key] = r.minute
        oldest = r.minute if oldest is None or r.minute < oldest else oldest
        newest = r.minute if newest is None or r.minute > newest else newest
    changed: list[Outcome] = []
    unchanged = errors = 0
    total = len(tuples)
    overlay = _Overlay(engine, target, policy)
    for i, ((principal, permission, resource), last) in enumerate(sorted(tuples.items())):
        who = None if principal == "allUsers" else principal
        try:
            decision = engine.check(who, permission, resource, time=time)
            base = decision.allowed
            sim = overlay.simulate(who, permission, resource, decision, time)
            out = Outcome(principal, permission, resource, last, base, sim)
        except KeycardError as e:
            out = Outcome(principal, permission, resource, last, None, None, e.message)
        if out.change == "NO_CHANGE":
            unchanged += 1
        else:
            errors += out.error is not None
            changed.append(out)
        if progress is not None and (i % 1000 == 999 or i == total - 1):
            progress(i + 1, total)
    summary: dict[str, Any] = {"logCount": total, "unchangedCount": unchanged,
                               "differenceCount": len(changed) - errors, "errorCount": errors}
    if oldest is not None and newest is not None:
        summary["oldestDate"], summary["newestDate"] = _date(oldest), _date(newest)
    return changed, summary


# membership chains that do not depend on any allow policy (unlike projectOwner:P convenience values)
_STABLE = frozenset({"user", "group", "serviceAccount", "domain", "principal", "principalSet", "allUsers",
                     "allAuthenticatedUsers"})


class _Overlay:
    """The simulated check, answered without the engine's what-if evaluation when the baseline decides it.

    Only ``target``'s allow policy changes, so: a grant from another node through stable memberships
    stands; a grant the overlay repeats unconditionally (predefined role) stands; a request nothing
    granted stays ungranted unless the overlay names one of the principal's keys with a role holding the
    permission. Everything else — conditions, custom roles, grants at the target the overlay drops —
    goes to :meth:`Engine.check_with_policy` (which also applies the deny rules)."""

    def __init__(self, engine: Engine, target: str, policy: AllowPolicy) -> None:
        self.engine, self.target, self.policy = engine, target, policy
        self.index: dict[str, list[tuple[frozenset[str], bool]]] = {}
        for b in policy.bindings:
            role = engine.get_role(b.role)
            if role is None or not role.grants:
                continue
            plain = b.condition is None and names.role_scope(b.role) is None
            for m in b.members:
                self.index.setdefault(m, []).append((frozenset(role.permissions), plain))
        self._keys: dict[str | None, tuple[str, ...]] = {}

    def _named(self, who: str | None, permission: str) -> tuple[bool, bool]:
        """(some overlay binding of the principal's keys holds the permission, one of them unconditionally)."""
        keys = self._keys.get(who)
        if keys is None:
            keys = self._keys[who] = self.engine.identity_keys(who)
        any_, plain = False, False
        for k in keys:
            for perms, unconditional in self.index.get(k, ()):
                if permission in perms:
                    any_ = True
                    plain = plain or unconditional
        return any_, plain

    def simulate(self, who: str | None, permission: str, resource: str, base: Any, time: dt.datetime) -> bool:
        if base.allowed:
            g = base.grant
            stable = g is not None and all(m.split(":", 1)[0] in _STABLE for m in g.membership)
            if stable and g.resource != self.target:
                return True
            if stable and self._named(who, permission)[1]:
                return True
        elif not self._named(who, permission)[0]:
            return False
        return self.engine.check_with_policy(who, permission, resource, at=self.target, policy=self.policy,
                                             time=time)


def _date(minute: int) -> dict[str, int]:
    d = dt.datetime.fromtimestamp(minute * 60, dt.UTC)
    return {"year": d.year, "month": d.month, "day": d.day}


# ============================================================================================== API

def _overlay(svc: Services, node: Node, body: Any) -> tuple[str, dict[str, Any], AllowPolicy]:
    if not isinstance(body, Mapping):
        raise InvalidArgument("Invalid request body: expected a Replay {\"config\": {\"policyOverlay\": {...}}}.",
                              field="config")
    config = body.get("config")
    if not isinstance(config, Mapping):
        raise InvalidArgument("Invalid config: required, with policyOverlay.", field="config")
    source = config.get("logSource", "RECENT_ACCESSES")
    if source not in ("RECENT_ACCESSES", "LOG_SOURCE_UNSPECIFIED"):
        raise InvalidArgument(f"Invalid config.logSource {source!r}: use RECENT_ACCESSES.", field="config.logSource")
    overlay = config.get("policyOverlay")
    if not isinstance(overlay, Mapping) or len(overlay) != 1:
        raise InvalidArgument("Invalid config.policyOverlay: exactly one entry {full resource name: Policy}.",
                              field="config.policyOverlay")
    (resource, raw), = overlay.items()
    fld = f"config.policyOverlay[{resource!r}]"
    target = svc.runtime.engine.canonical_name(names.parse_resource(resource, "config.policyOverlay").full)
    if not isinstance(raw, Mapping):
        raise InvalidArgument(f"Invalid {fld}: expected an allow Policy.", field="config.policyOverlay")
    policy = parse_allow_policy(raw, fld)
    for i, b in enumerate(policy.bindings):
        if svc.runtime.engine.get_role(b.role) is None:
            raise InvalidArgument(f"Invalid {fld}.bindings[{i}].role: role {b.role} does not exist.",
                                  field=f"{fld}.bindings[{i}].role", reason="UNKNOWN_ROLE")
    return target, {"policyOverlay": {resource: dict(raw)}, "logSource": "RECENT_ACCESSES"}, policy


def create_replay(svc: Services, caller: Caller, node: Node, location: str, body: Any) -> dict[str, Any]:
    from keycard.http.routes.troubleshooter import required_permission
    svc.authorize(caller, "policysimulator.replays.create", node.full, service=SERVICE,
                  shown=f"//{names.CRM}/{node.written}")
    check_location(location)
    require_exists(svc, node)
    target, config, policy = _overlay(svc, node, body)
    if node.full not in svc.runtime.engine.ancestry(target):
        raise InvalidArgument(f"Invalid config.policyOverlay: the resource must be {node.written} or below it.",
                              field="config.policyOverlay")
    permission, at = required_permission(svc, target)      # the overlay shows the resource's policy effect
    svc.authorize(caller, permission, at, service=SERVICE)
    rid = secrets.token_hex(8)
    key = f"{node.full}/replays/{rid}"
    started = svc.clock()
    data = {"config": config, "state": "RUNNING", "startTime": rfc3339(started), "operation": secrets.token_hex(8),
            "creator": caller.principal or ""}
    svc.commit(caller, puts=[Put(_KIND, key, data, parent=node.full)], method=
               "google.cloud.policysimulator.v1.Simulator.CreateReplay", service=SERVICE,
               resource_name=f"{node.written}/locations/global/replays/{rid}", request={"config": config})
    threading.Thread(target=_run, args=(svc, key, node.full, data, target, policy, started), daemon=True,
                     name=f"keycard-replay-{rid}").start()
    return _operation(node, rid, data)


def _run(svc: Services, key: str, parent: str, data: dict[str, Any], target: str, policy: AllowPolicy,
         started: dt.datetime) -> None:
    try:
        if svc.access is not None:
            svc.access.flush()
        rows = svc.runtime.store.accesses(since_minute=minute_of(started) - DAYS * 1440)
        changed, summary = replay(svc.runtime.engine, target, policy, rows, time=started)
        results = [[o.principal, o.permission, o.resource, o.last_minute, o.baseline, o.simulated, o.error]
                   for o in changed[:MAX_STORED]]
        done = {**data, "state": "SUCCEEDED", "resultsSummary": summary, "endTime": rfc3339(svc.clock())}
        svc.runtime.store.commit([Put(_KIND, key, done, parent=parent),
                                  Put(_RESULTS, key, {"results": results})])
    except Exception as e:
        log.exception("replay %s failed", key)
        failed = {**data, "state": "FAILED", "error": {"code": 13, "message": f"The replay failed: {e}"}}
        try:
            svc.runtime.store.commit([Put(_KIND, key, failed, parent=parent)])
        except Exception:
            log.exception("could not record the failure of replay %s", key)


def _record(svc: Services, node: Node, rid: str) -> Mapping[str, Any]:
    rec = svc.runtime.store.get(_KIND, f"{node.full}/replays/{rid}")
    if rec is None:
        raise NotFound(f"Replay '{node.written}/locations/global/replays/{rid}' was not found.")
    return rec.data


def _replay_json(node: Node, rid: str, data: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"name": f"{node.written}/locations/global/replays/{rid}", "state": data["state"],
                           "config": data["config"]}
    if "resultsSummary" in data:
        out["resultsSummary"] = data["resultsSummary"]
    return out


def _operation(node: Node, rid: str, data: Mapping[str, Any]) -> dict[str, Any]:
    name = f"{node.written}/locations/global/replays/{rid}/operations/{data['operation']}"
    op: dict[str, Any] = {"name": name, "metadata": {"@type": _T + "ReplayOperationMetadata",
                                                     "startTime": data["startTime"]},
                          "done": data["state"] in ("SUCCEEDED", "FAILED")}
    if data["state"] == "SUCCEEDED":
        op["response"] = {"@type": _T + "Replay", **_replay_json(node, rid, data)}
    elif data["state"] == "FAILED":
        op["error"] = data.get("error", {"code": 13, "message": "The replay failed."})
    return op


def _auth(svc: Services, caller: Caller, node: Node, permission: str, location: str) -> None:
    svc.authorize(caller, permission, node.full, service=SERVICE, shown=f"//{names.CRM}/{node.written}")
    check_location(location, "name")


def get_replay(svc: Services, caller: Caller, node: Node, location: str, rid: str) -> dict[str, Any]:
    _auth(svc, caller, node, "policysimulator.replays.get", location)
    return _replay_json(node, rid, _record(svc, node, rid))


def get_operation(svc: Services, caller: Caller, node: Node, location: str, rid: str, op: str) -> dict[str, Any]:
    _auth(svc, caller, node, "policysimulator.replays.get", location)
    data = _record(svc, node, rid)
    if data["operation"] != op:
        raise NotFound(f"Operation '{node.written}/locations/global/replays/{rid}/operations/{op}' was not found.")
    return _operation(node, rid, data)


def list_operations(svc: Services, caller: Caller, node: Node, location: str, rid: str) -> dict[str, Any]:
    _auth(svc, caller, node, "policysimulator.replays.get", location)
    return {"operations": [_operation(node, rid, _record(svc, node, rid))]}


def _principal(member: str) -> str:
    return names.member_email(member) or member


def list_results(svc: Services, caller: Caller, node: Node, location: str, rid: str,
                 query: Mapping[str, str]) -> dict[str, Any]:
    _auth(svc, caller, node, "policysimulator.replayResults.list", location)
    data = _record(svc, node, rid)
    if data["state"] != "SUCCEEDED":
        return {}
    rec = svc.runtime.store.get(_RESULTS, f"{node.full}/replays/{rid}")
    stored = list(rec.data.get("results", [])) if rec is not None else []
    size = parse_page_size(query.get("pageSize"), 1000)
    token = query.get("pageToken") or ""
    if token and not token.isdigit():
        raise InvalidArgument("Invalid pageToken: pass the nextPageToken of the previous page.", field="pageToken")
    start = int(token or 0)
    parent = f"{node.written}/locations/global/replays/{rid}"
    out = []
    for n, (principal, permission, resource, last, base, sim, error) in enumerate(stored[start:start + size],
                                                                                    start):
        o = Outcome(principal, permission, resource, last, base, sim, error)
        item: dict[str, Any] = {"name": f"{parent}/results/{n}", "parent": parent,
                                "accessTuple": {"principal": _principal(principal), "fullResourceName": resource,
                                                "permission": permission},
                                "lastSeenDate": _date(last)}
        if error is not None:
            item["error"] = {"code": 3, "message": error}
        else:
            item["diff"] = {"accessDiff": {
                "baseline": {"accessState": "GRANTED" if base else "NOT_GRANTED"},
                "simulated": {"accessState": "GRANTED" if sim else "NOT_GRANTED"},
                "accessChange": o.change}}
        out.append(item)
    page: dict[str, Any] = {"replayResults": out}
    if start + size < len(stored):
        page["nextPageToken"] = str(start + size)
    return page
