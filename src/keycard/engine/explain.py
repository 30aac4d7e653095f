"""Decision: allowed or not, and why — and the Policy-Troubleshooter-style rendering.

A Decision names what decided it right away: the granting node, binding, role,
member and membership chain; or the deny rule; and every condition it
evaluated with its value. ``decision.explain()`` adds the full walk (every
policy on the ancestry, every binding's relevance) and ``str(decision)``
renders that walk as text.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from keycard.engine.engine import Engine
    from keycard.engine.hierarchy import Grant
    from keycard.engine.members import Identity

__all__ = [
    "BindingExplanation",
    "ConditionResult",
    "Decision",
    "DenyReason",
    "DenyRuleExplanation",
    "Explanation",
    "GrantReason",
    "NodeExplanation",
]


class ConditionResult(NamedTuple):
    """One evaluated IAM Condition: where it sits, its expression, its value or error."""

    resource: str             # node holding the binding / deny policy
    where: str                # "bindings[2]" or "policies/…/denypolicies/x rules[0]"
    expression: str
    value: bool | None        # None when the expression errored
    error: str | None = None

    def __str__(self) -> str:
        out = "error: " + (self.error or "") if self.value is None else str(self.value).lower()
        return f"condition `{self.expression}` → {out}"


class GrantReason(NamedTuple):
    resource: str                 # node whose allow policy grants
    binding_index: int
    role: str
    member: str                   # the binding member that matched
    membership: tuple[str, ...]   # principal → group → … → member
    condition: ConditionResult | None = None

    def __str__(self) -> str:
        via = " → ".join(self.membership)
        cond = f", {self.condition}" if self.condition else ""
        return (f"granted by {self.role} on {self.resource} (bindings[{self.binding_index}]) "
                f"to {self.member}" + (f" via {via}" if len(self.membership) > 1 else "") + cond)


class DenyReason(NamedTuple):
    attachment: str               # node the deny policy is attached to
    policy: str
    rule_index: int
    principal: str                # the deniedPrincipals entry that matched (as a member key)
    membership: tuple[str, ...]
    condition: ConditionResult | None = None

    def __str__(self) -> str:
        cond = f", {self.condition}" if self.condition else ""
        return (f"denied by deny policy {self.policy} rules[{self.rule_index}] attached to {self.attachment}, "
                f"matching {self.principal}" + cond)


NOT_CHECKED = object()   # a Decision's deny reason that was not needed to decide (computed on first use)


class Decision:
    """The answer to (principal, permission, resource), with its reasons."""

    __slots__ = ("_deny", "_engine", "_grant", "allowed", "conditions", "permission", "principal", "resource",
                 "time")

    def __init__(self, allowed: bool, principal: str, permission: str, resource: str,
                 grant: tuple[Grant, str, Identity, ConditionResult | None] | None,
                 deny: DenyReason | object | None,
                 conditions: tuple[ConditionResult, ...], engine: Engine | None,
                 time: dt.datetime | None) -> None:
        self.allowed = allowed
        self.principal = principal
        self.permission = permission
        self.resource = resource
        self._grant = grant             # built into a GrantReason on first use: the hot path stays cheap
        self._deny = deny               # NOT_CHECKED: a not-granted decision looks at deny rules only if asked
        self.conditions = conditions
        self._engine = engine
        self.time = time

    def __bool__(self) -> bool:
        return self.allowed

    @property
    def deny(self) -> DenyReason | None:
        """The deny rule that denied (None if none did)."""
        if self._deny is NOT_CHECKED:
            found = None
            if self._engine is not None:
                found, conds = self._engine.deny_reason(self.principal, self.permission, self.resource, time=self.time)
                self.conditions = self.conditions + conds
            self._deny = found
        return self._deny  # type: ignore[return-value]

    @property
    def grant(self) -> GrantReason | None:
        """The binding that granted access (None unless allowed)."""
        if self._grant is None:
            return None
        g, key, ident, cond = self._grant
        return GrantReason(g.node.name, g.index, g.binding.role, key, tuple(ident.chain(key)), cond)

    @property
    def outcome(self) -> str:
        if self.allowed:
            return "GRANTED"
        return "DENIED_BY_DENY_POLICY" if self.deny is not None else "NOT_GRANTED"

    @property
    def reasons(self) -> list[str]:
        out = [str(self.deny)] if self.deny else []
        if self.grant:
            out.append(str(self.grant))
        if not out:
            out.append(f"no binding on {self.resource} or its ancestors grants {self.permission} "
                       f"to {self.principal}")
        shown = self._grant[3] if self._grant else None
        out.extend(str(c) for c in self.conditions if c is not shown)
        return out

    def explain(self) -> Explanation:
        """The full walk, as Policy Troubleshooter shows it."""
        if self._engine is None:
            raise RuntimeError("this Decision was detached from its engine")
        return self._engine.explain(self.principal, self.permission, self.resource, time=self.time)

    def __repr__(self) -> str:
        return (f"Decision(allowed={self.allowed}, principal={self.principal!r}, permission={self.permission!r}, "
                f"resource={self.resource!r}, outcome={self.outcome})")

    def __str__(self) -> str:
        if self._engine is None:
            return "\n".join([repr(self), *self.reasons])
        return self.explain().render()

    def to_json(self) -> dict[str, Any]:
        return {"allowed": self.allowed, "outcome": self.outcome, "principal": self.principal,
                "permission": self.permission, "resource": self.resource, "reasons": self.reasons}


# ------------------------------------------------------------------------------------ full explanation

@dataclass(frozen=True, slots=True)
class BindingExplanation:
    index: int
    role: str
    role_state: str                         # ok / unknown / disabled / deleted / out-of-scope
    role_has_permission: bool
    members: tuple[str, ...]
    matched_member: str | None
    membership: tuple[str, ...]
    condition: ConditionResult | None
    grants: bool

    @property
    def relevant(self) -> bool:
        return self.role_has_permission or self.matched_member is not None


@dataclass(frozen=True, slots=True)
class NodeExplanation:
    resource: str
    has_policy: bool
    etag: str
    bindings: tuple[BindingExplanation, ...]


@dataclass(frozen=True, slots=True)
class DenyRuleExplanation:
    attachment: str
    policy: str
    rule_index: int
    permission_matches: bool
    permission_excepted: bool
    principal_match: str | None
    membership: tuple[str, ...]
    principal_excepted: str | None
    condition: ConditionResult | None
    denies: bool


@dataclass(frozen=True, slots=True)
class Explanation:
    principal: str
    permission: str
    resource: str
    allowed: bool
    time: dt.datetime
    ancestry: tuple[str, ...]
    deny_rules: tuple[DenyRuleExplanation, ...]
    nodes: tuple[NodeExplanation, ...]
    notes: tuple[str, ...] = field(default=())

    def render(self, *, verbose: bool = False) -> str:
        """Text in the spirit of Policy Troubleshooter."""
        verdict = "GRANTED" if self.allowed else "DENIED"
        lines = [f"{verdict}: {self.principal} {'has' if self.allowed else 'does not have'} "
                 f"{self.permission} on {self.resource}",
                 f"  evaluated at {self.time.isoformat()}",
                 "  ancestry: " + " → ".join(self.ancestry)]
        lines.extend(f"  note: {n}" for n in self.notes)
        lines.append("Deny policies (evaluated first):")
        relevant_deny = [d for d in self.deny_rules if verbose or d.permission_matches]
        if not relevant_deny:
            lines.append("  no deny rule on the ancestry names this permission for this principal")
        for d in relevant_deny:
            mark = "✖ DENIES" if d.denies else "· does not deny"
            lines.append(f"  {mark}: {d.policy} rules[{d.rule_index}] attached to {d.attachment}")
            lines.append(f"      permission {'listed' if d.permission_matches else 'not listed'}"
                         + (" but excepted" if d.permission_excepted else ""))
            if d.principal_match:
                who = "principalSet://goog/public:all (everyone)" if d.principal_match == "allUsers" \
                    else d.principal_match
                path = d.membership if d.principal_match != "allUsers" else ()
                lines.append(f"      principal matches {who}" + (f" via {' → '.join(path)}" if len(path) > 1 else ""))
            else:
                lines.append("      principal not listed")
            if d.principal_excepted:
                lines.append(f"      principal excepted by {d.principal_excepted}")
            if d.condition:
                lines.append(f"      {d.condition}")
        lines.append("Allow policies (resource first, then each ancestor):")
        for n in self.nodes:
            shown = [b for b in n.bindings if verbose or b.relevant]
            head = f"  {n.resource}"
            if not n.has_policy:
                lines.append(head + ": no allow policy")
                continue
            lines.append(head + f" (etag {n.etag or '-'}): {len(n.bindings)} binding(s)"
                         + ("" if shown or not n.bindings else ", none relevant"))
            for b in shown:
                mark = "✔ GRANTS" if b.grants else "·"
                role_note = "" if b.role_state == "ok" else f" [{b.role_state}: grants nothing]"
                perm = "includes" if b.role_has_permission else "does not include"
                lines.append(f"    {mark} bindings[{b.index}] {b.role}{role_note}: role {perm} {self.permission}")
                if b.matched_member:
                    via = f" via {' → '.join(b.membership)}" if len(b.membership) > 1 else ""
                    lines.append(f"        member {b.matched_member} matches{via}")
                else:
                    lines.append(f"        no member matches {self.principal}")
                if b.condition:
                    lines.append(f"        {b.condition}")
        return "\n".join(lines)
