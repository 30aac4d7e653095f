"""keycard itself, through its public API only.

``Engine.load(assets.ndjson, groups=…, roles=custom roles, deny_policies=…)`` — plus, at the
large scale, ``catalog=`` Google's full role catalog (``../shared/data/gcp-iam/roles.json``).
``Engine.warm()`` and, from ``hugepages.WORTH_FROM`` (500k) bindings, ``keycard.hugepages.collapse()``
are part of the load (both are what ``keycard serve`` does after start). Checks pass ``time=`` the
workload's fixed request.time; writes are ``set_iam_policy``.
"""

from __future__ import annotations

from typing import Any

from bench.workload import SHARED_ROLES
from keycard import hugepages

NAME = "keycard"
DESCRIPTION = "keycard Engine: Engine.load(CAI NDJSON, groups, roles, deny_policies); check / check_many"
UNSUPPORTED: frozenset[str] = frozenset()

_TIME: Any = None


def build(wl: Any) -> Any:
    global _TIME
    from keycard import Engine

    _TIME = wl.time
    kw: dict[str, Any] = {}
    if wl.full_catalog:
        kw["catalog"] = str(SHARED_ROLES)
    engine = Engine.load(str(wl.assets_path), groups=wl.groups, roles=wl.roles,
                         deny_policies=wl.deny_policies, **kw)
    engine.warm()      # projects' merged indexes now, as `keycard serve` does after start (counted in load)
    if engine.binding_count >= hugepages.WORTH_FROM:
        hugepages.collapse()    # the heap on huge pages, as `keycard serve` does after warm (counted in load)
    return engine


def check(engine: Any, principal: str, permission: str, resource: str) -> bool:
    return engine.check(principal, permission, resource, time=_TIME).allowed  # type: ignore[no-any-return]


def check_batch(engine: Any, queries: list[tuple[str, str, str]]) -> list[bool]:
    return [d.allowed for d in engine.check_many(queries, time=_TIME)]


def write(engine: Any, resource: str, policy: dict[str, Any]) -> None:
    engine.set_iam_policy(resource, policy)
