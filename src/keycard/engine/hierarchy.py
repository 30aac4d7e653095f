"""The resource hierarchy and the compiled per-node indexes the hot path reads.

Each :class:`Node` holds its allow policy compiled into ``allow``: member key →
the :class:`Grant` s of the bindings that name it. A check therefore costs one
dict probe per (ancestor, identity key) — it grows with ancestry depth and
group nesting, never with the number of bindings elsewhere. A policy write
recompiles only that node.

Deny rules are compiled per attachment node into exact-permission buckets plus a
short list of wildcard rules.
"""

from __future__ import annotations

from collections.abc import Iterator

from keycard.engine.model import AllowPolicy, Binding, DenyPolicy, DenyRule
from keycard.engine.roles import RoleCatalog, RoleHandle

__all__ = ["DenyIndex", "Grant", "Hierarchy", "Node"]


class Grant:
    """One binding of one node, shared by all of its members' index entries."""

    __slots__ = ("binding", "cond", "index", "node", "role", "scope_gen", "scope_ok")

    def __init__(self, node: Node, index: int, binding: Binding, role: RoleHandle) -> None:
        self.node = node
        self.index = index
        self.binding = binding
        self.role = role
        self.cond = binding.condition.compiled if binding.condition is not None else None
        self.scope_gen = -1          # custom roles: is the binding inside the role's scope? cached per topology
        self.scope_ok = False


class DenyIndex:
    """Deny rules attached to one node: exact permissions bucketed, wildcards listed."""

    __slots__ = ("exact", "policies", "principals", "wild", "wild_prefixes")

    def __init__(self, policies: dict[str, DenyPolicy]) -> None:
        self.policies = policies
        self.exact: dict[str, list[tuple[DenyPolicy, int, DenyRule]]] = {}
        self.wild: list[tuple[DenyPolicy, int, DenyRule]] = []
        principals: set[str] = set()
        prefixes: set[str] = set()
        for pol in policies.values():
            for i, rule in enumerate(pol.rules):
                principals |= rule.denied_principals
                wildcard = False
                for prefix, res, verb in rule.denied_permissions:
                    if res == "*" or verb == "*":
                        wildcard = True
                        prefixes.add(prefix)
                    else:
                        self.exact.setdefault(f"{prefix}.{res}.{verb}", []).append((pol, i, rule))
                if wildcard:
                    self.wild.append((pol, i, rule))
        self.principals = frozenset(principals)     # quick reject: no listed principal among the caller's keys
        self.wild_prefixes = frozenset(prefixes)     # quick reject: no permission group of this service

    def may_deny(self, keys: tuple[str, ...], permission: str) -> bool:
        """Cheap test that lets most checks skip the rules entirely."""
        if self.principals.isdisjoint(keys):
            return False
        return permission in self.exact or (bool(self.wild_prefixes)
                                            and _split_permission(permission)[0] in self.wild_prefixes)

    def candidates(self, permission: str) -> Iterator[tuple[DenyPolicy, int, DenyRule]]:
        yield from self.exact.get(permission, ())
        if self.wild:
            parts = _split_permission(permission)
            for entry in self.wild:
                if permission_covered(entry[2].denied_permissions, parts):
                    yield entry


def _split_permission(permission: str) -> tuple[str, str, str]:
    head, _, verb = permission.rpartition(".")
    prefix, _, res = head.rpartition(".")
    if "/" in prefix:                     # FQDN-style permission names: fqdn/resource.verb
        prefix = prefix.split(".", 1)[0]
    return prefix, res, verb


def permission_covered(patterns: frozenset[tuple[str, str, str]], parts: tuple[str, str, str]) -> bool:
    prefix, res, verb = parts
    for p, r, v in patterns:
        if p == prefix and (r == "*" or r == res) and (v == "*" or v == verb):
            return True
    return False


def permission_parts(permission: str) -> tuple[str, str, str]:
    return _split_permission(permission)


class Node:
    """A resource in the hierarchy: organization, folder, project or a child resource."""

    __slots__ = ("_chain", "_gen", "allow", "children", "deny", "name", "parent", "policy", "type")

    def __init__(self, name: str, type_: str) -> None:
        self.name = name
        self.type = type_
        self.parent: Node | None = None
        self.children: set[Node] = set()
        self.policy: AllowPolicy | None = None
        self.allow: dict[str, list[Grant]] | None = None
        self.deny: DenyIndex | None = None
        self._chain: tuple[Node, ...] = ()
        self._gen = -1

    def __repr__(self) -> str:
        return f"Node({self.name!r})"


class Hierarchy:
    """Nodes by canonical full name, aliases (project id ↔ number), and ancestry chains."""

    def __init__(self, roles: RoleCatalog) -> None:
        self.roles = roles
        self.nodes: dict[str, Node] = {}
        self.aliases: dict[str, str] = {}           # alias full name → canonical full name
        self.project_alias: dict[str, str] = {}     # project id → number and number → id
        self.gen = 0                                # bumps on every topology change
        self.deny_nodes = 0                         # nodes with at least one deny policy
        self.binding_count = 0

    def node(self, name: str, type_: str) -> Node:
        n = self.nodes.get(name)
        if n is None:
            n = self.nodes[name] = Node(name, type_)
        elif type_ and not type_.endswith("/Unknown"):
            n.type = type_
        return n

    def set_parent(self, node: Node, parent: Node | None) -> None:
        if node.parent is parent:
            return
        p = parent
        while p is not None:
            if p is node:
                raise ValueError(f"{parent.name if parent else ''} is a descendant of {node.name}")
            p = p.parent
        if node.parent is not None:
            node.parent.children.discard(node)
        node.parent = parent
        if parent is not None:
            parent.children.add(node)
        self.gen += 1

    def chain(self, node: Node) -> tuple[Node, ...]:
        """The node and its ancestors, nearest first (cached per topology generation)."""
        if node._gen == self.gen:
            return node._chain
        out = []
        n: Node | None = node
        while n is not None:
            out.append(n)
            n = n.parent
        node._chain = tuple(out)
        node._gen = self.gen
        return node._chain

    def set_policy(self, node: Node, policy: AllowPolicy | None) -> None:
        """Install an allow policy on a node, recompiling only that node's index."""
        if node.policy is not None:
            self.binding_count -= len(node.policy.bindings)
        if policy is None or not policy.bindings:
            node.policy = policy
            node.allow = None
            return
        index = self.compile(node, policy)
        node.policy = policy
        node.allow = index          # one reference swap: readers see the old or the new index
        self.binding_count += len(policy.bindings)

    def compile(self, node: Node, policy: AllowPolicy) -> dict[str, list[Grant]]:
        """member key → the grants of the bindings that name it."""
        index: dict[str, list[Grant]] = {}
        for i, b in enumerate(policy.bindings):
            g = Grant(node, i, b, self.roles.handle(b.role))
            for m in b.members:
                lst = index.get(m)
                if lst is None:
                    index[m] = [g]
                else:
                    lst.append(g)
        return index

    def set_deny(self, node: Node, policies: dict[str, DenyPolicy]) -> None:
        had = node.deny is not None
        node.deny = DenyIndex(policies) if policies else None
        self.deny_nodes += (node.deny is not None) - had
