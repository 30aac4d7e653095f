"""IAM lint: rules over a snapshot of allow policies, deny decisions, service accounts and keys. Pure.

Each rule looks at a :class:`Snapshot` (built by keycard.services.lint from the server's engine and
identity registry, or by anyone from any source) and yields :class:`Finding` objects with a severity
(LOW < MEDIUM < HIGH < CRITICAL), the resource, a message and the fix. Rules:

==========================  ========  ======================================================================
rule                        severity  flags
==========================  ========  ======================================================================
public-access               CRITICAL  ``allUsers`` in a binding (HIGH for ``allAuthenticatedUsers``)
basic-role                  HIGH      roles/owner or roles/editor on a project, folder or organization
                                      (MEDIUM for roles/viewer)
service-account-basic-role  HIGH      a service account holding roles/owner or roles/editor
default-compute-editor      HIGH      the default compute account (N-compute@developer…) with roles/editor
key-too-old                 MEDIUM    a user-managed key older than 90 days
key-no-expiry               MEDIUM    a user-managed key without an expiry (validBeforeTime 9999-12-31)
key-never-used              LOW       a user-managed key never used (no keycardLastUsedTime)
dead-binding                MEDIUM    every permission of the role denied to the member by deny policies
deleted-principal           MEDIUM    ``deleted:`` members, and service accounts that are deleted or absent
                                      in a project this server knows
condition-never-true        MEDIUM    a condition that is ``false`` or requires request.time before a past
                                      instant (an expired grant)
policy-limits               LOW/MED   a policy at 80 % (LOW) / 90 % (MEDIUM) of Google's limits: 1,500
                                      principals, 250 groups and domains, 100 conditional bindings
==========================  ========  ======================================================================
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from keycard.engine.model import AllowPolicy

__all__ = ["SEVERITIES", "Finding", "KeyInfo", "PolicyNode", "Snapshot", "lint", "severity_rank"]

SEVERITIES = ("LOW", "MEDIUM", "HIGH", "CRITICAL")
MAX_PRINCIPALS, MAX_GROUPS_DOMAINS, MAX_CONDITIONAL = 1500, 250, 100
KEY_MAX_AGE = dt.timedelta(days=90)
_BASIC = {"roles/owner": "HIGH", "roles/editor": "HIGH", "roles/viewer": "MEDIUM"}
_HIERARCHY = ("Project", "Folder", "Organization")
_COMPUTE = re.compile(r"^serviceAccount:\d+-compute@developer\.gserviceaccount\.com$")
_EXPIRED = re.compile(r"""request\.time\s*(<|<=)\s*timestamp\(\s*["']([^"']+)["']\s*\)""")


def severity_rank(severity: str) -> int:
    return SEVERITIES.index(severity.upper())


@dataclass(frozen=True, slots=True)
class Finding:
    rule: str
    severity: str
    resource: str
    message: str
    fix: str = ""
    details: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rule": self.rule, "severity": self.severity, "resource": self.resource,
                               "message": self.message}
        if self.fix:
            out["fix"] = self.fix
        if self.details:
            out["details"] = dict(self.details)
        return out


@dataclass(frozen=True, slots=True)
class PolicyNode:
    resource: str                  # full resource name
    type: str                      # e.g. "Project", "Folder", "Organization", "Bucket", "ServiceAccount"
    policy: AllowPolicy


@dataclass(frozen=True, slots=True)
class KeyInfo:
    name: str                      # projects/P/serviceAccounts/EMAIL/keys/ID
    account: str                   # email
    key_type: str                  # USER_MANAGED | SYSTEM_MANAGED
    valid_after: dt.datetime
    valid_before: dt.datetime
    last_used: str | None
    disabled: bool


@dataclass(frozen=True, slots=True)
class Snapshot:
    nodes: Sequence[PolicyNode]
    keys: Sequence[KeyInfo]
    now: dt.datetime
    role_permissions: Callable[[str], frozenset[str]]         # role → permissions (empty if unknown)
    denied: Callable[[str, str, str], bool]                   # (member, permission, resource) → a deny rule denies
    account_state: Callable[[str], str]                       # email → "active" | "deleted" | "absent" | "unknown"


def _short(resource: str) -> str:
    return resource.split("/", 3)[3] if resource.startswith("//") else resource


def _policy_rules(s: Snapshot, n: PolicyNode) -> Iterator[Finding]:
    where = _short(n.resource)
    high_level = n.type in _HIERARCHY
    for i, b in enumerate(n.policy.bindings):
        base = {"role": b.role, "binding": i}
        for m in b.members:
            if m in ("allUsers", "allAuthenticatedUsers"):
                yield Finding("public-access", "CRITICAL" if m == "allUsers" else "HIGH", n.resource,
                              f"{b.role} is granted to {m} on {where}.",
                              f"keycard projects remove-iam-policy-binding … --member={m} --role={b.role}"
                              if n.type == "Project" else f"Remove {m} from the {b.role} binding.",
                              {**base, "member": m})
            if high_level and b.role in _BASIC and b.condition is None:
                yield Finding("basic-role", _BASIC[b.role], n.resource,
                              f"Basic role {b.role} is granted to {m} on {where}.",
                              "Grant predefined roles instead (`keycard iam recommend` proposes the smallest).",
                              {**base, "member": m})
            if m.startswith("serviceAccount:") and b.role in ("roles/owner", "roles/editor"):
                if _COMPUTE.match(m) and b.role == "roles/editor":
                    yield Finding("default-compute-editor", "HIGH", n.resource,
                                  f"The default compute service account {m[15:]} holds roles/editor on {where}.",
                                  "Remove roles/editor and grant the account only the roles its workloads need "
                                  "(org policy iam.automaticIamGrantsForDefaultServiceAccounts prevents it).",
                                  {**base, "member": m})
                else:
                    yield Finding("service-account-basic-role", "HIGH", n.resource,
                                  f"Service account {m[15:]} holds {b.role} on {where}.",
                                  "Grant the account the predefined roles its workload needs.", {**base, "member": m})
            if m.startswith("deleted:"):
                yield Finding("deleted-principal", "MEDIUM", n.resource,
                              f"{b.role} on {where} is bound to a deleted principal {m}.",
                              f"Remove {m} from the binding.", {**base, "member": m})
            elif m.startswith("serviceAccount:"):
                state = s.account_state(m[15:])
                if state in ("deleted", "absent"):
                    yield Finding("deleted-principal", "MEDIUM", n.resource,
                                  f"{b.role} on {where} is bound to service account {m[15:]}, which is {state}.",
                                  "Remove it (a new account of the same name would inherit the grant).",
                                  {**base, "member": m})
            if m.startswith(("user:", "serviceAccount:")) and b.condition is None:
                perms = s.role_permissions(b.role)
                if perms and all(s.denied(m, p, n.resource) for p in sorted(perms)):
                    yield Finding("dead-binding", "MEDIUM", n.resource,
                                  f"Every permission of {b.role} on {where} is denied to {m} by deny policies: the "
                                  "binding grants nothing.", "Remove the binding or the deny rule.",
                                  {**base, "member": m})
        if b.condition is not None:
            reason = _never_true(b.condition.expression, s.now)
            if reason:
                yield Finding("condition-never-true", "MEDIUM", n.resource,
                              f"The condition of {b.role} on {where} can never be true: {reason}.",
                              "Remove the binding (it grants nothing).",
                              {**base, "expression": b.condition.expression})
    yield from _limits(n)


def _never_true(expression: str, now: dt.datetime) -> str:
    text = expression.strip()
    if text in ("false", "(false)"):
        return "it is the constant false"
    if "||" in text:
        return ""
    for op, stamp in _EXPIRED.findall(text):
        try:
            t = dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        except ValueError:
            continue
        if t.tzinfo is not None and t <= now:
            return f"it requires request.time {op} {stamp}, which has passed"
    return ""


def _limits(n: PolicyNode) -> Iterator[Finding]:
    members = sum(len(b.members) for b in n.policy.bindings)
    groups = sum(1 for b in n.policy.bindings for m in b.members if m.startswith(("group:", "domain:")))
    conditional = sum(1 for b in n.policy.bindings if b.condition is not None)
    for what, used, limit in (("principals", members, MAX_PRINCIPALS),
                              ("group and domain principals", groups, MAX_GROUPS_DOMAINS),
                              ("conditional role bindings", conditional, MAX_CONDITIONAL)):
        if used >= 0.8 * limit:
            yield Finding("policy-limits", "MEDIUM" if used >= 0.9 * limit else "LOW", n.resource,
                          f"The policy of {_short(n.resource)} has {used} {what}; Google's limit is {limit}.",
                          "Grant to groups instead of individual principals.",
                          {"used": used, "limit": limit, "what": what})


def _key_rules(s: Snapshot, k: KeyInfo) -> Iterator[Finding]:
    if k.key_type != "USER_MANAGED" or k.disabled:
        return
    age = s.now - k.valid_after
    if age > KEY_MAX_AGE:
        yield Finding("key-too-old", "MEDIUM", k.name, f"Key of {k.account} is {age.days} days old (more than 90).",
                      f"Rotate it: create a new key, then `keycard iam service-accounts keys delete {k.name}`.")
    if k.valid_before.year >= 9999:
        yield Finding("key-no-expiry", "MEDIUM", k.name, f"Key of {k.account} never expires.",
                      "Prefer short-lived credentials (impersonation, workload identity federation), or set "
                      "constraints/iam.serviceAccountKeyExpiryHours.")
    if not k.last_used:
        yield Finding("key-never-used", "LOW", k.name, f"Key of {k.account} has never been used.",
                      f"Delete it: `keycard iam service-accounts keys delete {k.name}`.")


def lint(snapshot: Snapshot, *, min_severity: str = "LOW") -> list[Finding]:
    """Every finding at or above ``min_severity``, most severe first, then by resource and rule."""
    floor = severity_rank(min_severity)
    found: list[Finding] = []
    for n in snapshot.nodes:
        found.extend(_policy_rules(snapshot, n))
    for k in snapshot.keys:
        found.extend(_key_rules(snapshot, k))
    found = [f for f in found if severity_rank(f.severity) >= floor]
    found.sort(key=lambda f: (-severity_rank(f.severity), f.resource, f.rule, f.message))
    return found
