"""The Engine: Google Cloud IAM's decision, pure and in memory.

Decision policy (Google Cloud IAM):
1. Deny first. Every deny rule attached to the resource or an ancestor is
   tried; a rule denies when the principal is listed (directly, via a group,
   or ``principalSet://goog/public:all``), is not an exception, the permission
   is listed (exactly or by a permission group) and not excepted, and its
   denialCondition — if any — is true. A denialCondition that errors denies
   (fail closed) and the Decision records the error.
2. Then allow: the union of every binding on the resource and all its
   ancestors. A binding grants when its role is defined, not DISABLED, not
   deleted, usable where it is bound (custom roles only inside the
   project/organization that defines them), contains the permission, one of its
   members matches the principal (itself, a group it belongs to transitively,
   ``domain:`` of a user, ``allAuthenticatedUsers`` for any authenticated
   principal, ``allUsers`` for everyone), and its condition — if any — is true.
   A condition that errors grants nothing and the Decision records why.
3. Otherwise: denied.

The engine reads no clock or file on its own: ``time`` is passed per check or
taken from the injected ``clock``; ``Engine.load`` reads a path only when given one.
"""

from __future__ import annotations

import datetime as dt
import gc
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from keycard import names
from keycard.engine.assets import read_assets
from keycard.engine.conditions import CompiledCondition, ConditionContext, ConditionError
from keycard.engine.explain import (
    NOT_CHECKED,
    BindingExplanation,
    ConditionResult,
    Decision,
    DenyReason,
    DenyRuleExplanation,
    Explanation,
    NodeExplanation,
)
from keycard.engine.hierarchy import STALE, Grant, Hierarchy, Node, permission_covered, permission_parts
from keycard.engine.members import ANONYMOUS, GroupGraph, Identity
from keycard.engine.model import (
    AllowPolicy,
    DenyPolicy,
    DenyRule,
    Role,
    parse_allow_policy,
    parse_deny_policy,
    parse_role,
)
from keycard.engine.roles import RoleCatalog
from keycard.errors import InvalidArgument, NotFound

__all__ = ["Access", "Engine"]

Clock = Callable[[], dt.datetime]
_UTC = dt.UTC


_NO_HOLDERS: frozenset[object] = frozenset()


def _system_clock() -> dt.datetime:
    return dt.datetime.now(_UTC)


@dataclass(frozen=True, slots=True)
class Access:
    """One way a principal holds a permission (who-has / what-can answers)."""

    principal: str                 # member key (user:…, group:…, domain:…, allUsers …)
    permission: str
    resource: str                  # node whose policy grants it
    role: str
    binding_index: int
    conditional: bool              # the grant depends on an IAM Condition
    via: tuple[str, ...] = ()      # groups through which the principal holds it


class Engine:
    """Policies, roles, groups and hierarchy in memory; answers checks in microseconds."""

    def __init__(self, *, catalog: Iterable[Mapping[str, Any]] | str | os.PathLike[str] | None = None,
                 builtin_roles: bool = True, clock: Clock | None = None) -> None:
        self._roles = RoleCatalog()
        self._h = Hierarchy(self._roles)
        self._groups = GroupGraph()
        self._deny: dict[str, dict[str, DenyPolicy]] = {}     # attachment node name → policy name → policy
        self._clock = clock or _system_clock
        self._virtual: dict[str, tuple[int, Node | None, tuple[Node, ...]]] = {}
        # the role sets memoized on identities (check), one object per distinct set: most callers hold the
        # same few at the top (through allAuthenticatedUsers and their domain)
        self._held: dict[frozenset[object], frozenset[object]] = {}
        self.revision = 0
        if builtin_roles:
            from keycard.catalog import builtin_roles as _builtin
            self._roles.put_many(parse_role(r, f"catalog[{r.get('name')}]") for r in _builtin())
        if catalog is not None:
            self.load_catalog(catalog)

    # ====================================================================================== loading
    @classmethod
    def load(cls, assets: str | os.PathLike[str] | Iterable[Mapping[str, Any]], *,
             groups: Mapping[str, Sequence[str]] | None = None,
             roles: Iterable[Mapping[str, Any]] | None = None,
             deny_policies: Iterable[Mapping[str, Any]] | None = None,
             catalog: Iterable[Mapping[str, Any]] | str | os.PathLike[str] | None = None,
             unknown_roles: Literal["error", "ignore"] = "error",
             clock: Clock | None = None) -> Engine:
        """Build an engine from a Cloud Asset Inventory export.

        ``assets``: a path to newline-delimited JSON (as ``gcloud asset export`` writes) or an
        iterable of its records. ``groups``: ``{group email: [member, …]}``. ``roles``: custom roles
        in IAM v1 JSON. ``deny_policies``: ``[{"attachmentPoint": "cloudresourcemanager.googleapis.com/
        projects/…", "policy": {IAM v2 Policy}}]``. ``catalog``: extra predefined roles in gcloud's
        role JSON (a list, or a path to a JSON array), e.g. Google's full catalog.
        ``unknown_roles="ignore"`` accepts bindings of roles no catalog defines (they grant nothing).

        Loading allocates millions of small objects and no garbage cycles: the cyclic garbage
        collector is paused while it runs, and the loaded objects are then moved to the permanent
        generation (``gc.freeze()``) so later collections do not rescan them on every check.
        """
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            eng = cls._load(assets, groups=groups, roles=roles, deny_policies=deny_policies, catalog=catalog,
                            unknown_roles=unknown_roles, clock=clock)
        finally:
            if was_enabled:
                gc.enable()
        gc.freeze()
        return eng

    @classmethod
    def _load(cls, assets: str | os.PathLike[str] | Iterable[Mapping[str, Any]], *,
              groups: Mapping[str, Sequence[str]] | None, roles: Iterable[Mapping[str, Any]] | None,
              deny_policies: Iterable[Mapping[str, Any]] | None,
              catalog: Iterable[Mapping[str, Any]] | str | os.PathLike[str] | None,
              unknown_roles: Literal["error", "ignore"], clock: Clock | None) -> Engine:
        eng = cls(catalog=catalog, clock=clock)
        if roles is not None:
            for i, r in enumerate(roles):
                eng._roles.put(parse_role(r, f"roles[{i}]"))
        records: Iterable[object]
        if isinstance(assets, str | os.PathLike):
            records = _read_ndjson(assets)
        else:
            records = assets
        rows = read_assets(records)
        h = eng._h
        for row in rows.values():
            h.node(row.name, row.type)
            if row.project_id and row.project_number:
                num = f"//{names.CRM}/projects/{row.project_number}"
                alias = f"//{names.CRM}/projects/{row.project_id}"
                other = alias if row.name == num else num
                h.aliases[other] = row.name
                h.project_alias[row.project_id] = row.project_number
                h.project_alias[row.project_number] = row.project_id
        for row in rows.values():            # containers named only as ancestors still exist
            for a in (row.own_ancestor, row.up_ancestor):
                if a is not None and a not in h.nodes:
                    rn = names.parse_resource(a)
                    if eng._lookup(rn.full) is None:
                        h.node(rn.full, rn.type)
        for row in rows.values():
            node = h.nodes[row.name]
            parent = eng._parent_for(row.name, row.parent, row.own_ancestor, row.up_ancestor)
            if parent is not None:
                h.set_parent(node, parent)
        for row in rows.values():
            if row.policy is not None:
                eng._check_roles(row.policy, h.nodes[row.name], row.policy_field, unknown_roles)
                h.set_policy(h.nodes[row.name], row.policy)
        del rows
        if groups:
            eng._groups.load(groups)
        for i, d in enumerate(deny_policies or ()):
            if not isinstance(d, Mapping):
                raise InvalidArgument(f"Invalid deny_policies[{i}]: expected an object with attachmentPoint "
                                      "and policy.", field=f"deny_policies[{i}]")
            eng.set_deny_policy(d.get("attachmentPoint") or d.get("attachment_point"), d.get("policy"),
                                field=f"deny_policies[{i}]")
        return eng

    def load_catalog(self, catalog: Iterable[Mapping[str, Any]] | str | os.PathLike[str]) -> int:
        """Add predefined roles in gcloud's role JSON shape (e.g. all of Google's roles)."""
        if isinstance(catalog, str | os.PathLike):
            with open(catalog, encoding="utf-8") as f:
                catalog = json.load(f)
            if not isinstance(catalog, list):
                raise InvalidArgument("Invalid catalog: expected a JSON array of roles.", field="catalog")
        roles = [parse_role(r, f"catalog[{i}]") for i, r in enumerate(catalog)]
        self._roles.put_many(roles)
        return len(roles)

    def _parent_for(self, name: str, explicit: str | None, own: str | None, up: str | None) -> Node | None:
        h = self._h
        if explicit:
            return self._lookup(explicit) or h.node(explicit, names.parse_resource(explicit).type)
        rn = names.parse_resource(name)
        if rn.parent is not None:
            derived = self._lookup(rn.parent)
            if derived is not None:
                return derived
        if own is not None:
            # a container's ancestors start with itself; a child resource's with its project
            self_listed = rn.is_container or self._lookup(f"//{names.CRM}/{own}") is h.nodes.get(name)
            target = up if self_listed else own
            if target is not None:
                return self._lookup(f"//{names.CRM}/{target}")
        if rn.parent is not None:
            return self._ensure(rn.parent)
        return None

    # ================================================================================ name handling
    def _lookup(self, full: str) -> Node | None:
        """Find a node by any of its names (project id or number, CAI or canonical form)."""
        h = self._h
        n = h.nodes.get(full)
        if n is not None:
            return n
        canon = h.aliases.get(full)
        if canon is not None:
            return h.nodes.get(canon)
        # child resources may name their project by id or by number
        svc_end = full.find("/", 2)
        rel = full[svc_end + 1:]
        if rel.startswith("projects/"):
            pid, sep, rest = rel[9:].partition("/")
            other = self._h.project_alias.get(pid)
            if other is not None:
                alt = f"{full[:svc_end]}/projects/{other}{sep}{rest}"
                return h.nodes.get(alt) or h.nodes.get(h.aliases.get(alt, ""))
        return None

    def _ensure(self, name: str, parent: str | None = None) -> Node:
        """The node for ``name``, created (with its parent derived from the name) if absent."""
        rn = names.parse_resource(name)
        node = self._lookup(rn.full)
        if node is None:
            node = self._h.node(rn.full, rn.type)
            pname = parent or rn.parent
            if pname is not None:
                self._h.set_parent(node, self._ensure(pname))
            self._h.gen += 1
        elif parent is not None:
            self.move_resource(rn.full, parent)
        return node

    def _resolve(self, resource: str) -> tuple[Node | None, tuple[Node, ...]]:
        """Node (or None for an unregistered resource) and the chain of known nodes above it."""
        h = self._h
        node = h.nodes.get(resource)
        if node is not None:
            return node, (node._chain if node._gen == h.gen else h.chain(node))
        hit = self._virtual.get(resource)
        if hit is not None and hit[0] == h.gen:
            return hit[1], hit[2]
        rn = names.parse_resource(resource)
        node = self._lookup(rn.full)
        if node is not None:
            out: tuple[Node | None, tuple[Node, ...]] = (node, h.chain(node))
        else:
            chain: tuple[Node, ...] = ()
            parent = rn.parent
            while parent is not None:
                pn = self._lookup(parent)
                if pn is not None:
                    chain = h.chain(pn)
                    break
                parent = names.parse_resource(parent).parent
            out = (None, chain)
        if len(self._virtual) > 100_000:
            self._virtual.clear()
        self._virtual[resource] = (h.gen, out[0], out[1])
        return out

    # ======================================================================================== checks
    def check(self, principal: str | None, permission: str, resource: str, *,
              extra_members: frozenset[str] | None = None,
              time: dt.datetime | None = None, attributes: Mapping[str, str] | None = None) -> Decision:
        """May ``principal`` use ``permission`` on ``resource`` (a full resource name)?

        ``principal``: ``user:EMAIL``, ``serviceAccount:EMAIL``, ``principal://…``, or ``None`` /
        ``"allUsers"`` for an unauthenticated caller. ``time``: request.time for IAM Conditions
        (default: the engine's clock, read only if a condition needs it). ``attributes``: the
        request's other condition attributes, e.g. ``{"request.path": "/predict", "request.host":
        "api.example.com"}`` (what IAP exposes); a condition reading one that is absent errors.

        ``extra_members``: the sets this request's credential puts the caller in (a federated token's
        ``principalSet://…/group/G`` and ``…/attribute.NAME/VALUE``, an OIDC ID token's ``group:``
        keys); they count for this check only — the engine records nothing about callers.
        """
        groups = self._groups
        if extra_members is not None:          # an identity test: free for the callers without sets
            ident = groups.identity(principal, extra_members)
        else:
            ident = groups._cache.get(principal or ANONYMOUS) or groups.identity(principal)
        h = self._h
        node = h.nodes.get(resource)
        if node is None:
            chain = self._resolve(resource)[1]
            node = chain[0] if chain else None
        if node is None:
            hot: tuple[Node, ...] = ()
            denies: tuple[Node, ...] = ()
        elif node._gen == h.gen:
            hot = node._hot
            denies = node._denies
        else:
            h.chain(node)
            hot = node._hot
            denies = node._denies
        keys = ident.keys
        holders = self._roles.holders.get(permission, _NO_HOLDERS)   # the role handles granting it
        # Allow first, deny second: the deny rules only matter when something grants. A decision
        # that nothing grants is NOT_GRANTED either way; its deny reason is computed if asked for.
        # Each probed index is one node's (first grant found wins: nearest node, then identity key
        # order, then binding order) or a project's merged one (the else branch below).
        pending: list[tuple[Grant, str]] | None = None
        found: tuple[Grant, str, Identity, ConditionResult | None] | None = None
        top = hot[-1] if hot else None
        for n in hot:
            idx = n.probe
            if idx is None:
                continue
            if idx is STALE:
                idx = h.merged(n)
                if idx is None:
                    continue
            if n is top:
                # The top of the hierarchy: one index every check reaches that nothing nearer grants,
                # often with many of the caller's keys and grants in it. The roles the caller holds
                # there are memoized on its identity; when none of them can grant the permission (a
                # set-to-set test on stored hashes) the index is not read at all.
                held = ident.top
                if held is None or held[0] is not idx:
                    held = ident.top = (idx, self._top_roles(idx, keys))
                if holders.isdisjoint(held[1]):
                    continue
            elif idx.keys().isdisjoint(keys):
                continue
            single = idx is n.allow                 # one node's index, or a project's merged one
            if single:
                for k in keys:
                    grants = idx.get(k)
                    if grants is None:
                        continue
                    for g in grants:
                        if g.role in holders:
                            if g.cond is None and g.role.scope is None:
                                found = (g, k, ident, None)
                                break
                            if pending is None:
                                pending = []
                            pending.append((g, k))
                    if found is not None:
                        break
            else:
                # A project's merged index (several nodes). Each key's grants are listed nearest node
                # first, so its first unconditional grant is its best; across keys the nearest node
                # wins, then the earlier key — what a node-by-node walk would find first.
                near: Node | None = None
                more: list[tuple[Grant, str]] | None = None
                for k in keys:
                    grants = idx.get(k)
                    if grants is None:
                        continue
                    for g in grants:
                        if g.role in holders:
                            if g.cond is None and g.role.scope is None:
                                if near is None or (g.node is not near
                                                    and len(h.chain(g.node)) > len(h.chain(near))):
                                    found = (g, k, ident, None)
                                    near = g.node
                                break
                            if more is None:
                                more = []
                            more.append((g, k))
                if found is None and more is not None:
                    pending = self._walk_order(more, keys, pending)
            if found is not None:
                break
        conds: tuple[ConditionResult, ...] = ()
        if found is None:
            if pending is None:
                if extra_members is not None:
                    return self._not_granted(ident, permission, resource, (), time, extra_members)
                return Decision(False, ident.principal, permission, resource, None, NOT_CHECKED, (), self, time)
            if time is None:
                time = self._clock()
            found, conds = self._check_pending(ident, resource, time, pending, attributes)
            if found is None:
                if extra_members is not None:
                    return self._not_granted(ident, permission, resource, conds, time, extra_members)
                return Decision(False, ident.principal, permission, resource, None, NOT_CHECKED, conds, self,
                                time)
        for n in denies:
            dn = n.deny                             # DenyIndex.may_deny, inlined
            if dn is None or dn.principals.isdisjoint(keys):
                continue
            if permission in dn.exact or (dn.wild_prefixes and permission_parts(permission)[0] in dn.wild_prefixes):
                reason, dconds = self._deny_on(n, ident, permission, resource, time, attributes)
                if reason is not None:
                    return Decision(False, ident.principal, permission, resource, None, reason, conds + dconds,
                                    self, time)
                conds += dconds
        return Decision(True, ident.principal, permission, resource, found, None, conds, self, time)

    def _top_roles(self, idx: Mapping[str, Sequence[Grant]], keys: tuple[str, ...]) -> frozenset[object]:
        """The roles bound in ``idx`` to any of ``keys`` (conditional and custom ones too), as the one shared
        object for that set."""
        roles = frozenset(g.role for k in keys for g in idx.get(k, ()))
        shared = self._held
        if len(shared) > 100_000:
            shared.clear()
        return shared.setdefault(roles, roles)

    def _not_granted(self, ident: Identity, permission: str, resource: str, conds: tuple[ConditionResult, ...],
                     time: dt.datetime | None, extra_members: frozenset[str]) -> Decision:
        """A not-granted decision for a caller with request sets: its deny reason is found now (a Decision
        computes it lazily from the principal alone, which would miss a deny rule naming one of the sets)."""
        reason, dconds = self.deny_reason(ident.principal, permission, resource, time=time,
                                          extra_members=extra_members)
        return Decision(False, ident.principal, permission, resource, None, reason, conds + dconds, self, time)

    def _walk_order(self, more: list[tuple[Grant, str]], keys: tuple[str, ...],
                    pending: list[tuple[Grant, str]] | None) -> list[tuple[Grant, str]]:
        """``pending`` extended with a merged index's grants in node-by-node walk order: nearest node,
        then identity key, then binding."""
        chain = self._h.chain
        more.sort(key=lambda gk: (-len(chain(gk[0].node)), keys.index(gk[1]), gk[0].index))
        return more if pending is None else pending + more

    def deny_reason(self, principal: str | None, permission: str, resource: str, *,
                    extra_members: frozenset[str] | None = None,
                    time: dt.datetime | None = None) -> tuple[DenyReason | None, tuple[ConditionResult, ...]]:
        """The deny rule on the resource's ancestry that denies this request, if any."""
        ident = self._groups.identity(principal, extra_members)
        chain = self._resolve(resource)[1]
        conds: tuple[ConditionResult, ...] = ()
        for n in chain:
            dn = n.deny
            if dn is not None and dn.may_deny(ident.keys, permission):
                reason, dconds = self._deny_on(n, ident, permission, resource, time)
                conds += dconds
                if reason is not None:
                    return reason, conds
        return None, conds

    def _check_pending(self, ident: Identity, resource: str, time: dt.datetime, pending: list[tuple[Grant, str]],
                       attributes: Mapping[str, str] | None = None
                       ) -> tuple[tuple[Grant, str, Identity, ConditionResult | None] | None,
                                  tuple[ConditionResult, ...]]:
        """Grants that need more than a set probe: custom-role scope and IAM Conditions."""
        results: list[ConditionResult] = []
        ctx: ConditionContext | None = None
        for g, k in pending:
            if g.role.scope is not None and not self._in_scope(g):
                continue
            if g.cond is None:
                return (g, k, ident, None), tuple(results)
            if ctx is None:
                ctx = self._context(resource, time, attributes)
            res = _evaluate(g.cond, ctx, g.node.name, f"bindings[{g.index}]")
            results.append(res)
            if res.value:
                return (g, k, ident, res), tuple(results)
        return None, tuple(results)

    def _in_scope(self, g: Grant) -> bool:
        scope = g.role.scope
        if scope is None:
            return True
        if g.scope_gen != self._h.gen:
            target = self._lookup(scope)
            g.scope_ok = target is not None and target in self._h.chain(g.node)
            g.scope_gen = self._h.gen
        return g.scope_ok

    def _context(self, resource: str, time: dt.datetime,
                 attributes: Mapping[str, str] | None = None) -> ConditionContext:
        node = self._h.nodes.get(resource)          # the check just looked it up: a cached read
        if node is not None:
            attrs = node._attrs
            if attrs is None:
                attrs = node._attrs = self._attributes(resource)
        else:
            attrs = self._attributes(resource)
        if attributes:
            return ConditionContext(time, *attrs, attributes)
        return ConditionContext(time, *attrs)

    def _attributes(self, resource: str) -> tuple[str, str, str]:
        """resource.name (relative), resource.type and resource.service of a full resource name."""
        rn = names.parse_resource(resource)
        node = self._lookup(rn.full)
        rtype = node.type if node is not None and rn.type.endswith("/Unknown") else rn.type
        return rn.relative, rtype, rn.service

    def _deny_on(self, n: Node, ident: Identity, permission: str, resource: str, time: dt.datetime | None,
                 attributes: Mapping[str, str] | None = None) -> tuple[DenyReason | None, tuple[ConditionResult, ...]]:
        assert n.deny is not None
        conds: list[ConditionResult] = []
        for pol, i, rule in n.deny.candidates(permission):
            matched = _denied_principal(rule, ident)
            if matched is None:
                continue
            if rule.exception_permissions and permission_covered(rule.exception_permissions,
                                                                  permission_parts(permission)):
                continue
            res = None
            if rule.condition is not None and rule.condition.compiled is not None:
                res = _evaluate(rule.condition.compiled, self._context(resource, time or self._clock(), attributes),
                                n.name, f"{pol.name} rules[{i}]")
                conds.append(res)
                if res.value is False:
                    continue            # an erroring denialCondition denies: fail closed
            return DenyReason(n.name, pol.name, i, matched, tuple(ident.chain(matched)), res), tuple(conds)
        return None, tuple(conds)

    def check_many(self, queries: Iterable[tuple[str | None, str, str]], *,
                   time: dt.datetime | None = None,
                   extra_members: Mapping[str | None, frozenset[str]] | None = None) -> list[Decision]:
        """Check many (principal, permission, resource) triples at one request.time.

        ``extra_members``: principal → the sets its credential puts it in (see :meth:`check`)."""
        if time is None:
            time = self._clock()
        check = self.check
        if not extra_members:
            return [check(p, perm, r, time=time) for p, perm, r in queries]
        return [check(p, perm, r, time=time, extra_members=extra_members.get(p)) for p, perm, r in queries]

    def test_iam_permissions(self, principal: str | None, resource: str, permissions: Iterable[str], *,
                             time: dt.datetime | None = None,
                             extra_members: frozenset[str] | None = None) -> list[str]:
        """The subset of ``permissions`` the principal holds on ``resource`` (testIamPermissions)."""
        perms = [names.parse_permission(p, f"permissions[{i}]") for i, p in enumerate(permissions)]
        return [p for p in dict.fromkeys(perms)
                if self.check(principal, p, resource, time=time, extra_members=extra_members).allowed]

    # =================================================================================== explaining
    def explain(self, principal: str | None, permission: str, resource: str, *,
                extra_members: frozenset[str] | None = None,
                time: dt.datetime | None = None) -> Explanation:
        """Every policy on the ancestry, every relevant binding and deny rule, with its verdict."""
        names.parse_permission(permission)
        time = time or self._clock()
        ident = self._groups.identity(principal, extra_members)
        node, chain = self._resolve(resource)
        notes = []
        ancestry = [n.name for n in chain]
        if node is None:
            rn = names.parse_resource(resource)
            ancestry.insert(0, rn.full)
            if not chain:
                notes.append(f"{rn.full} is not in the resource hierarchy and its name names no known parent")
        ctx = self._context(resource, time)
        parts = permission_parts(permission)
        deny_ex: list[DenyRuleExplanation] = []
        denied = False
        for n in chain:
            if n.deny is None:
                continue
            for pol in n.deny.policies.values():
                for i, rule in enumerate(pol.rules):
                    listed = permission_covered(rule.denied_permissions, parts)
                    excepted = listed and permission_covered(rule.exception_permissions, parts)
                    matched = _denied_principal(rule, ident, ignore_exceptions=True)
                    exc = next((k for k in ident.keys if k in rule.exception_principals), None)
                    cres = None
                    if rule.condition is not None and rule.condition.compiled is not None and listed and matched:
                        cres = _evaluate(rule.condition.compiled, ctx, n.name, f"{pol.name} rules[{i}]")
                    denies = bool(listed and not excepted and matched and not exc
                                  and (cres is None or cres.value is not False))
                    denied = denied or denies
                    deny_ex.append(DenyRuleExplanation(
                        n.name, pol.name, i, listed, excepted, matched,
                        tuple(ident.chain(matched)) if matched else (), exc, cres, denies))
        node_ex: list[NodeExplanation] = []
        granted = False
        keyset = set(ident.keys)
        for n in chain:
            apol = n.policy
            if apol is None or not apol.bindings:
                node_ex.append(NodeExplanation(n.name, apol is not None, apol.etag if apol else "", ()))
                continue
            bex = []
            for i, b in enumerate(apol.bindings):
                handle = self._roles.handle(b.role)
                state = handle.state
                g = (n.allow or {}).get(b.members[0], [None])[0] if n.allow else None
                if state == "ok" and handle.scope is not None:
                    grant = next((x for x in (n.allow or {}).get(b.members[0], []) if x.index == i), g)
                    if grant is not None and not self._in_scope(grant):
                        state = "out-of-scope"
                has_perm = permission in (handle.role.permissions if handle.role else ())
                matched = next((m for m in b.members if m in keyset), None)
                cres = None
                if b.condition is not None and b.condition.compiled is not None and has_perm and matched:
                    cres = _evaluate(b.condition.compiled, ctx, n.name, f"bindings[{i}]")
                grants = bool(state == "ok" and has_perm and matched and (cres is None or cres.value))
                granted = granted or grants
                bex.append(BindingExplanation(i, b.role, state, has_perm, b.members, matched,
                                              tuple(ident.chain(matched)) if matched else (), cres, grants))
            node_ex.append(NodeExplanation(n.name, True, apol.etag, tuple(bex)))
        return Explanation(ident.principal, permission, resource, granted and not denied, time,
                           tuple(ancestry), tuple(deny_ex), tuple(node_ex), tuple(notes))

    # ====================================================================================== queries
    def who_has(self, permission: str, resource: str, *, expand_groups: bool = True,
                time: dt.datetime | None = None) -> list[Access]:
        """Who holds ``permission`` on ``resource``: members of granting bindings, groups expanded
        to their members, conditional grants flagged, principals that a deny rule stops left out."""
        names.parse_permission(permission)
        _, chain = self._resolve(resource)
        out: dict[tuple[str, str, int, str], Access] = {}
        for n in chain:
            if n.policy is None:
                continue
            for i, b in enumerate(n.policy.bindings):
                handle = self._roles.handle(b.role)
                if permission not in handle.perms:
                    continue
                grant = next((g for g in (n.allow or {}).get(b.members[0], []) if g.index == i), None)
                if grant is not None and not self._in_scope(grant):
                    continue
                cond = b.condition is not None
                for m in b.members:
                    found = [(m, ())] if not (expand_groups and m.startswith("group:")) else \
                        [(m, ()), *((x, tuple(path)) for x, path in self._groups.expand_members(m))]
                    for who, via in found:
                        key = (who, n.name, i, ",".join(via))
                        out.setdefault(key, Access(who, permission, n.name, b.role, i, cond, via))
        result = []
        for a in out.values():
            if a.principal.startswith(("user:", "serviceAccount:", "principal://")):
                d = self.check(a.principal, permission, resource, time=time)
                if d.deny is not None:
                    continue
            result.append(a)
        result.sort(key=lambda a: (a.principal, a.resource, a.binding_index))
        return result

    def what_can(self, principal: str | None, resource: str, *, extra_members: frozenset[str] | None = None,
                 time: dt.datetime | None = None) -> dict[str, list[Access]]:
        """Every permission ``principal`` holds on ``resource``, with the grants that give it."""
        ident = self._groups.identity(principal, extra_members)
        _, chain = self._resolve(resource)
        found: dict[str, list[Access]] = {}
        for n in chain:
            if n.allow is None:
                continue
            for k in ident.keys:
                for g in n.allow.get(k, ()):
                    if not g.role.perms or not self._in_scope(g):
                        continue
                    via = tuple(ident.chain(k)[1:])
                    for p in g.role.perms:
                        found.setdefault(p, []).append(Access(k, p, n.name, g.binding.role, g.index,
                                                              g.cond is not None, via))
        out = {}
        for p in sorted(found):
            if self._h.deny_nodes and self.check(principal, p, resource, time=time,
                                                 extra_members=extra_members).deny is not None:
                continue
            out[p] = found[p]
        return out

    def find_roles(self, permissions: Iterable[str], *, resource: str | None = None,
                   predefined_only: bool = False) -> list[Role]:
        """Roles holding every permission, smallest first; with ``resource``, custom roles usable there."""
        perms = [names.parse_permission(p, f"permissions[{i}]") for i, p in enumerate(permissions)]
        scopes: list[str] = []
        if resource is not None:
            scopes = [n.name for n in self._resolve(resource)[1]]
            scopes += [a for a, c in self._h.aliases.items() if c in scopes]
        return self._roles.find(perms, predefined_only=predefined_only, scopes=scopes)

    # ======================================================================================= writes
    def set_iam_policy(self, resource: str, policy: Mapping[str, Any] | AllowPolicy, *,
                       unknown_roles: Literal["error", "ignore"] = "error") -> AllowPolicy:
        """Replace the allow policy of ``resource`` (created in the hierarchy if new)."""
        pol = policy if isinstance(policy, AllowPolicy) else parse_allow_policy(policy)
        node = self._ensure(resource)
        self._check_roles(pol, node, "policy", unknown_roles)
        self._h.set_policy(node, pol)
        self.revision += 1
        return pol

    def check_with_policy(self, principal: str | None, permission: str, resource: str, *, at: str,
                          extra_members: frozenset[str] | None = None,
                          policy: AllowPolicy, time: dt.datetime | None = None) -> bool:
        """Would ``principal`` hold ``permission`` on ``resource`` if ``at`` had ``policy``? (what-if)"""
        ident = self._groups.identity(principal, extra_members)
        target = self._lookup(names.parse_resource(at).full)
        _, chain = self._resolve(resource)
        if self._h.deny_nodes:
            for n in chain:
                if n.deny is not None and self._deny_on(n, ident, permission, resource, time)[0] is not None:
                    return False
        pending: list[tuple[Grant, str]] = []
        for n in chain:
            allow = self._h.compile(n, policy) if n is target else n.allow
            if not allow:
                continue
            for k in ident.keys:
                for g in allow.get(k, ()):
                    if permission in g.role.perms:
                        pending.append((g, k))
        return bool(pending) and self._check_pending(ident, resource, time or self._clock(), pending)[0] is not None

    def get_iam_policy(self, resource: str) -> AllowPolicy | None:
        node = self._lookup(names.parse_resource(resource).full)
        return node.policy if node is not None else None

    def _check_roles(self, pol: AllowPolicy, node: Node, fld: str, unknown: str) -> None:
        for i, b in enumerate(pol.bindings):
            handle = self._roles.handle(b.role)
            if handle.role is None and unknown == "error":
                raise InvalidArgument(f"Invalid {fld}.bindings[{i}].role: role {b.role} does not exist; "
                                      "load its definition (a custom role, or catalog=… for Google's full "
                                      "catalog) first.", field=f"{fld}.bindings[{i}].role", reason="UNKNOWN_ROLE")
            if handle.scope is not None and unknown == "error":
                scope = self._lookup(handle.scope)
                if scope is None or scope not in self._h.chain(node):
                    raise InvalidArgument(f"Invalid {fld}.bindings[{i}].role: custom role {b.role} can only be "
                                          f"granted inside {handle.scope[len('//' + names.CRM) + 1:]}.",
                                          field=f"{fld}.bindings[{i}].role", reason="ROLE_OUT_OF_SCOPE")

    def set_project_id(self, project: str, project_id: str) -> None:
        """Make ``projects/PROJECT_ID`` name the project whose canonical name is ``project`` (by number)."""
        rn = names.parse_resource(project, "project")
        number = rn.relative.split("/", 1)[1]
        names.parse_resource(f"projects/{project_id}", "projectId")
        h = self._h
        h.aliases[f"//{names.CRM}/projects/{project_id}"] = rn.full
        h.project_alias[project_id] = number
        h.project_alias[number] = project_id
        self._virtual.clear()
        h.gen += 1

    def canonical_name(self, resource: str) -> str:
        """The name the hierarchy stores ``resource`` under (project numbers for projects)."""
        rn = names.parse_resource(resource)
        node = self._lookup(rn.full)
        return node.name if node is not None else rn.full

    def add_resource(self, resource: str, parent: str | None = None) -> None:
        """Add a resource (or move it, if it exists) under ``parent`` (default: derived from its name)."""
        self._ensure(resource, parent)
        self.revision += 1

    def move_resource(self, resource: str, new_parent: str) -> None:
        node = self._lookup(names.parse_resource(resource).full)
        if node is None:
            raise NotFound(f"Resource {resource} is not in the hierarchy.", field="resource")
        parent = self._ensure(new_parent)
        try:
            self._h.set_parent(node, parent)
        except ValueError as e:
            raise InvalidArgument(f"Invalid parent {new_parent}: {e}.", field="parent") from None
        self.revision += 1

    def remove_resource(self, resource: str) -> None:
        """Remove a resource with no children, its policy and its deny policies."""
        node = self._lookup(names.parse_resource(resource).full)
        if node is None:
            return
        if node.nchildren:
            raise InvalidArgument(f"Invalid resource {resource}: it still has {node.nchildren} child "
                                  "resource(s); remove or move them first.", field="resource")
        self._h.set_policy(node, None)
        self._h.set_deny(node, {})
        self._deny.pop(node.name, None)
        self._h.set_parent(node, None)
        del self._h.nodes[node.name]
        for alias in [a for a, c in self._h.aliases.items() if c == node.name]:
            del self._h.aliases[alias]
        self._h.gen += 1
        self.revision += 1

    def set_deny_policy(self, attachment: object, policy: object, *,
                        field: str = "policy") -> DenyPolicy:
        """Create or replace a deny policy at an attachment point (organization, folder or project).

        ``attachment``: ``cloudresourcemanager.googleapis.com/projects/P`` (IAM v2's form, also
        URL-encoded), a full resource name, or ``projects/P``.
        """
        node = self._attachment(attachment, f"{field}.attachmentPoint")
        pfield = f"{field}.policy" if field != "policy" else field
        pol = policy if isinstance(policy, DenyPolicy) else parse_deny_policy(policy, pfield)
        if not pol.name:
            pol = DenyPolicy(f"deny-{len(self._deny.get(node.name, {})) + 1}", pol.rules, pol.display_name,
                             pol.etag, pol.raw)
        current = dict(self._deny.get(node.name, {}))
        current[pol.name] = pol
        self._deny[node.name] = current
        self._h.set_deny(node, current)
        self.revision += 1
        return pol

    def delete_deny_policy(self, attachment: object, name: str) -> None:
        node = self._attachment(attachment, "attachmentPoint")
        current = dict(self._deny.get(node.name, {}))
        if current.pop(name, None) is None:
            raise NotFound(f"Deny policy {name} is not attached to {node.name}.", field="name")
        self._deny[node.name] = current
        self._h.set_deny(node, current)
        self.revision += 1

    def deny_policies(self, attachment: object) -> list[DenyPolicy]:
        node = self._attachment(attachment, "attachmentPoint")
        return list(self._deny.get(node.name, {}).values())

    def _attachment(self, attachment: object, fld: str) -> Node:
        if not isinstance(attachment, str) or not attachment:
            raise InvalidArgument(f"Invalid {fld}: expected e.g. 'cloudresourcemanager.googleapis.com/"
                                  "projects/my-project'.", field=fld)
        from urllib.parse import unquote
        text = attachment
        for _ in range(3):                       # %252F → %2F → /
            text = unquote(text)
        if text.startswith(names.CRM + "/"):
            text = "//" + text
        rn = names.parse_resource(text, fld)
        if not rn.is_container:
            raise InvalidArgument(f"Invalid {fld} {attachment!r}: deny policies attach to an organization, "
                                  "folder or project.", field=fld)
        return self._ensure(rn.full)

    def put_role(self, role: Mapping[str, Any] | Role) -> Role:
        """Define or replace a role (custom roles: ``projects/P/roles/R``, ``organizations/O/roles/R``)."""
        r = role if isinstance(role, Role) else parse_role(role)
        self._roles.put(r)
        self.revision += 1
        return r

    def delete_role(self, name: str) -> Role:
        """Mark a role deleted: it stays visible but grants nothing."""
        r = self._roles.get(names.parse_role_name(name, "name"))
        if r is None:
            raise NotFound(f"Role {name} does not exist.", field="name")
        return self.put_role(Role(r.name, r.permissions, r.title, r.description, r.stage, True, r.etag))

    def get_role(self, name: str) -> Role | None:
        return self._roles.get(name)

    def roles(self) -> list[Role]:
        return self._roles.roles()

    def set_group_members(self, group: str, members: Iterable[str]) -> None:
        """Replace a group's direct members. A write that would make a cycle is rejected."""
        self._groups.set_members(group, list(members))
        self._virtual.clear()
        self.revision += 1

    def group_members(self, group: str) -> tuple[str, ...]:
        return self._groups.members(names.parse_member(group if ":" in group else f"group:{group}", "group"))

    def identity_keys(self, principal: str | None, extra_members: frozenset[str] | None = None
                      ) -> tuple[str, ...]:
        """Every member key that matches ``principal``: itself, domain, groups (transitively), public sets,
        and the request's ``extra_members`` with the groups they belong to."""
        return self._groups.identity(principal, extra_members).keys

    def warm(self, *, batch: int = 50, pause: Callable[[], object] | None = None) -> int:
        """Build every project's merged index now instead of on its first check (each first check of a
        project would otherwise pay for it); ``pause`` runs between batches so a server can let requests
        in. Returns the number of indexes built. Pure: it only does what checks would do lazily."""
        built = 0
        for i, node in enumerate(self._h.stale_projects()):
            self._h.merged(node)
            built += 1
            if pause is not None and i % batch == batch - 1:
                pause()
        return built

    # ====================================================================================== introspection
    @property
    def binding_count(self) -> int:
        return self._h.binding_count

    @property
    def resource_count(self) -> int:
        return len(self._h.nodes)

    def ancestry(self, resource: str) -> list[str]:
        node, chain = self._resolve(resource)
        out = [n.name for n in chain]
        if node is None:
            out.insert(0, names.parse_resource(resource).full)
        return out

    def resources(self) -> Iterator[str]:
        return iter(list(self._h.nodes))


def _denied_principal(rule: DenyRule, ident: Identity, *, ignore_exceptions: bool = False) -> str | None:
    denied = rule.denied_principals
    matched = None
    for k in ident.keys:
        if k in denied:
            matched = k
            break
    if matched is None:
        return None
    if not ignore_exceptions and rule.exception_principals:
        exc = rule.exception_principals
        for k in ident.keys:
            if k in exc:
                return None
    return matched


def _evaluate(cond: CompiledCondition, ctx: ConditionContext, resource: str, where: str) -> ConditionResult:
    try:
        return ConditionResult(resource, where, cond.expression, cond.evaluate(ctx))
    except ConditionError as e:
        return ConditionResult(resource, where, cond.expression, None, str(e))


def _read_ndjson(path: str | os.PathLike[str]) -> Iterator[object]:
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as e:
                raise InvalidArgument(f"Invalid assets file {os.fspath(path)} line {lineno}: not JSON ({e.msg}).",
                                      field="assets") from None
