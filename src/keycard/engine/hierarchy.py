"""The resource hierarchy and the compiled per-node indexes the hot path reads.

Each :class:`Node` holds its allow policy compiled into ``allow``: member key →
the :class:`Grant` s of the bindings that name it. A check therefore costs one
dict probe per (probed index, identity key) — it grows with ancestry depth and
group nesting, never with the number of bindings elsewhere. A policy write
recompiles only that node.

Fewer indexes are probed than there are ancestors: a project whose ancestors are
all folders/organizations carries (lazily, in ``probe``) one index merging its own
policy with those of its folders — everything above it but the top of its chain,
whose index stays separate (it is shared by every chain: merging it into every
project would copy it thousands of times, and writes to it invalidate nothing).
Each node caches, per topology generation, its chain (``_chain``), the nodes whose
``probe`` a check reads (``_hot``: the nodes below the first such project, that
project, the top) and the nodes holding deny policies (``_denies``). A policy write
to a folder marks the merged indexes of the projects below it stale; the next
check that needs one rebuilds it.

Deny rules are compiled per attachment node into exact-permission buckets plus a
short list of wildcard rules.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator, Mapping, Sequence

from keycard import names
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


Index = Mapping[str, Sequence[Grant]]


class _Key(str):
    __slots__ = ()


# Every index holds this key (a str subclass, so no caller's key equals it by identity or ever
# matches a member): CPython then keeps the hash of each key in the table, and a probe that lands
# on another key's slot compares hashes there instead of reading that key's string from memory.
_GENERAL: str = _Key("\0")
STALE: Index = {}          # a project's merged index that must be rebuilt (compared by identity)

_CRM_PREFIX = f"//{names.CRM}/"
_PROJECT_PREFIX = f"//{names.CRM}/projects/"


def _kind(name: str) -> int:
    """2 for a project, 1 for a folder or organization, 0 for any other resource (by its name)."""
    if name.startswith(_CRM_PREFIX) and name.count("/") == 4:
        return 2 if name.startswith(_PROJECT_PREFIX) else 1
    return 0


class Node:
    """A resource in the hierarchy: organization, folder, project or a child resource."""

    # the fields a check reads first, together (slots are laid out in this order)
    __slots__ = ("_gen", "_hot", "_denies", "probe", "allow", "deny", "kind",  # noqa: RUF023
                 "_attrs", "_chain", "cchildren", "nchildren", "name", "parent", "policy", "type")

    def __init__(self, name: str, type_: str) -> None:
        self.name = name
        self.type = type_
        self.kind = _kind(name)
        self.parent: Node | None = None
        self.nchildren = 0
        self.cchildren: set[Node] | None = None       # the children that are folders or projects
        self.policy: AllowPolicy | None = None
        self.allow: dict[str, tuple[Grant, ...]] | None = None
        # what a check probes: ``allow``, or for a project its merged index (STALE until built)
        self.probe: Index | None = STALE if self.kind == 2 else None
        self.deny: DenyIndex | None = None
        self._chain: tuple[Node, ...] = ()
        self._hot: tuple[Node, ...] = ()
        self._denies: tuple[Node, ...] = ()
        self._gen = -1
        # IAM Conditions' resource.name, resource.type, resource.service (built on first use)
        self._attrs: tuple[str, str, str] | None = None

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
        self._lock = threading.Lock()               # merged-index rebuilds vs. the writes that stale them
        self._shared: dict[tuple[Node, ...], tuple[Node, ...]] = {}

    def node(self, name: str, type_: str) -> Node:
        n = self.nodes.get(name)
        if n is None:
            n = self.nodes[name] = Node(name, type_)
        elif type_ and not type_.endswith("/Unknown") and n.type != type_:
            n.type = type_
            n._attrs = None
        return n

    def set_parent(self, node: Node, parent: Node | None) -> None:
        if node.parent is parent:
            return
        p = parent
        while p is not None:
            if p is node:
                raise ValueError(f"{parent.name if parent else ''} is a descendant of {node.name}")
            p = p.parent
        with self._lock:
            old = node.parent
            if old is not None:
                old.nchildren -= 1
                if old.cchildren is not None:
                    old.cchildren.discard(node)
            node.parent = parent
            if parent is not None:
                parent.nchildren += 1
                if node.kind:
                    if parent.cchildren is None:
                        parent.cchildren = set()
                    parent.cchildren.add(node)
            if node.kind:
                self._stale_below(node)
            self.gen += 1

    def chain(self, node: Node) -> tuple[Node, ...]:
        """The node and its ancestors, nearest first (cached per topology generation)."""
        if node._gen == self.gen:
            return node._chain
        gen = self.gen
        out = []
        n: Node | None = node
        while n is not None:
            out.append(n)
            n = n.parent
        chain = tuple(out)
        hot = []
        for i, n in enumerate(chain):
            hot.append(n)
            if n.kind == 2 and _merges(chain[i:]):
                hot.append(chain[-1])        # the project's index covers all between it and the top
                break
        node._chain = chain
        node._hot = tuple(hot)
        denies = tuple(n for n in chain if n.deny is not None)
        if denies:                  # one shared tuple per distinct list: siblings read the same object
            shared = self._shared
            if len(shared) > 100_000:
                shared.clear()
            denies = shared.setdefault(denies, denies)
        node._denies = denies
        node._gen = gen
        return chain

    def merged(self, project: Node) -> Index | None:
        """Rebuild a project's stale ``probe``: its index merged with its folders' (see the module doc).

        Values list grants nearest node first, each node's in binding order."""
        with self._lock:
            idx = project.probe
            if idx is not STALE:
                return idx
            chain = self.chain(project)
            if not _merges(chain) or len(chain) == 2:
                idx = project.allow
            else:
                m: dict[str, Sequence[Grant]] = {_GENERAL: ()}
                for n in chain[:-1]:
                    a = n.allow
                    if a:
                        for k, gs in a.items():
                            prev = m.get(k)
                            m[k] = gs if prev is None else (*prev, *gs)
                idx = m if len(m) > 1 else None
            project.probe = idx
            return idx

    def stale_projects(self) -> list[Node]:
        """Projects whose merged index is not built yet (``merged`` builds it on first use)."""
        return [n for n in list(self.nodes.values()) if n.kind == 2 and n.probe is STALE]

    def _stale_below(self, node: Node) -> None:
        """Mark stale the merged index of every project at or below ``node`` (through folders/projects)."""
        stack = [node]
        while stack:
            n = stack.pop()
            if n.kind == 2:
                n.probe = STALE
            if n.cchildren:
                stack.extend(n.cchildren)

    def set_policy(self, node: Node, policy: AllowPolicy | None) -> None:
        """Install an allow policy on a node, recompiling only that node's index."""
        index = self.compile(node, policy) if policy is not None and policy.bindings else None
        with self._lock:
            if node.policy is not None:
                self.binding_count -= len(node.policy.bindings)
            node.policy = policy
            node.allow = index      # one reference swap: readers see the old or the new index
            if index is not None:
                assert policy is not None
                self.binding_count += len(policy.bindings)
            if node.kind == 2:
                node.probe = STALE
            else:
                node.probe = index
            if node.kind and node.parent is not None:
                self._stale_below(node)     # merged indexes that include this node (the top is in none)

    def compile(self, node: Node, policy: AllowPolicy) -> dict[str, tuple[Grant, ...]]:
        """member key → the grants of the bindings that name it (tuples: one object fewer to read)."""
        index: dict[str, tuple[Grant, ...]] = {}
        intern = sys.intern         # identity keys are interned too: a probe that hits compares pointers
        for i, b in enumerate(policy.bindings):
            g = Grant(node, i, b, self.roles.handle(b.role))
            for m in b.members:
                m = intern(m)
                gs = index.get(m)
                index[m] = (g,) if gs is None else (*gs, g)
        index[_GENERAL] = ()
        return index

    def set_deny(self, node: Node, policies: dict[str, DenyPolicy]) -> None:
        had = node.deny is not None
        node.deny = DenyIndex(policies) if policies else None
        self.deny_nodes += (node.deny is not None) - had
        if had != (node.deny is not None):
            self.gen += 1               # the cached chains list the nodes holding deny policies


def _merges(chain: tuple[Node, ...]) -> bool:
    """Does the project ``chain[0]`` carry a merged index: is it below the top, with only
    folders/organizations above it?"""
    if len(chain) < 2:
        return False
    for n in chain:
        if not n.kind:
            return False
    return True
