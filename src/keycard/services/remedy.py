"""What would grant a denied access: keycard's ``keycardRemedy`` extension of the v3 troubleshooter answer.

For a principal lacking a permission on a resource: the smallest predefined role holding it, and the
narrowest node of the resource's ancestry (the resource itself first) where granting that role to the
principal would give the access — checked with the engine's what-if (``check_with_policy``), so deny
rules and conditions are respected — as a runnable ``keycard … add-iam-policy-binding`` command. When a deny
rule decides, no grant helps: the remedy names the rule instead. Pure: engine in, JSON out.
"""

from __future__ import annotations

import datetime as dt
import re
import shlex
from typing import Any

from keycard.engine.engine import Engine
from keycard.engine.model import AllowPolicy, parse_allow_policy

__all__ = ["grant_command", "membership_chains", "remedy"]

MAX_ROLES = 5           # candidate roles tried, smallest first

_COMMANDS: tuple[tuple[re.Pattern[str], str, str], ...] = (    # (node, command group, its arguments)
    (re.compile(r"^//cloudresourcemanager\.googleapis\.com/organizations/([^/]+)$"), "organizations", "{0}"),
    (re.compile(r"^//cloudresourcemanager\.googleapis\.com/folders/([^/]+)$"), "resource-manager folders", "{0}"),
    (re.compile(r"^//cloudresourcemanager\.googleapis\.com/projects/([^/]+)$"), "projects", "{0}"),
    (re.compile(r"^//iam\.googleapis\.com/projects/[^/]+/serviceAccounts/([^/]+)$"), "iam service-accounts", "{0}"),
    (re.compile(r"^//storage\.googleapis\.com/projects/_/buckets/([^/]+)$"), "storage buckets", "gs://{0}"),
    (re.compile(r"^//ml\.googleapis\.com/projects/([^/]+)/models/([^/]+)$"), "ai-platform models",
     "{1} --project={0}"),
    (re.compile(r"^//ml\.googleapis\.com/projects/([^/]+)/jobs/([^/]+)$"), "ai-platform jobs", "{1} --project={0}"),
)


def grant_command(node: str, member: str, role: str) -> str | None:
    """The ``keycard`` command that grants ``role`` to ``member`` on ``node`` (None: no policy there)."""
    for rx, group, args in _COMMANDS:
        m = rx.match(node)
        if m:
            return (f"keycard {group} add-iam-policy-binding {args.format(*m.groups())} "
                    f"--member={shlex.quote(member)} --role={role}")
    return None


def _with_binding(current: AllowPolicy | None, member: str, role: str) -> AllowPolicy:
    bindings: list[Any] = list(current.to_json().get("bindings", [])) if current is not None else []
    bindings.append({"role": role, "members": [member]})
    return parse_allow_policy({"version": 3, "bindings": bindings}, "policy")


def remedy(engine: Engine, principal: str, permission: str, resource: str, *,
           time: dt.datetime | None = None) -> dict[str, Any]:
    """The smallest role and narrowest node that would grant ``permission``, or why no grant would."""
    reason, _ = engine.deny_reason(principal, permission, resource, time=time)
    if reason is not None:
        return {"deniedBy": {"attachmentPoint": reason.attachment, "policy": reason.policy,
                             "ruleIndex": reason.rule_index, "deniedPrincipal": reason.principal},
                "message": f"A deny rule decides ({reason}); no allow grant would help. Change the deny policy "
                           "(remove the principal or add an exception) to give this access."}
    roles = engine.find_roles([permission], predefined_only=True)[:MAX_ROLES]
    if not roles:
        return {"message": f"No predefined role holds {permission}: create a custom role with it "
                           f"(keycard iam roles find {permission} --custom)."}
    nodes = [n for n in engine.ancestry(resource) if grant_command(n, principal, "r") is not None]
    for role in roles:
        for node in nodes:
            policy = _with_binding(engine.get_iam_policy(node), principal, role.name)
            if engine.check_with_policy(principal, permission, resource, at=node, policy=policy, time=time):
                return {"role": role.name, "rolePermissionCount": len(role.permissions),
                        "fullResourceName": node, "member": principal,
                        "command": grant_command(node, principal, role.name),
                        "message": f"Grant {role.name} ({len(role.permissions)} permissions, the smallest "
                                   f"predefined role with {permission}) on {node}."}
    return {"role": roles[0].name, "rolePermissionCount": len(roles[0].permissions),
            "message": f"No single grant of {roles[0].name} on the resource's ancestry would give the access "
                       "(conditions or the principal's membership decide)."}


def membership_chains(engine: Engine, principal: str, permission: str, resource: str, *,
                      time: dt.datetime | None = None,
                      extra_members: frozenset[str] | None = None) -> dict[str, list[str]]:
    """For each binding member that includes the principal only through groups (or a domain, a principal
    set): the chain from the principal to it, e.g. ``group:ml-team`` → ``[user:carol, group:ml-juniors,
    group:ml-team]`` (keycard's ``keycardMembershipChains`` extension of the v3 answer)."""
    ex = engine.explain(principal, permission, resource, time=time, extra_members=extra_members)
    return {b.matched_member: list(b.membership) for n in ex.nodes for b in n.bindings
            if b.matched_member is not None and len(b.membership) > 2}
