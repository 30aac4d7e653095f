"""Who a principal is, for matching policy members: itself, its domain, the public
sets, and every group it belongs to, transitively.

``Identity.keys`` is the tuple of member keys that match the principal — the
only thing the hot path needs; ``Identity.via`` remembers how each group was
reached so a Decision can print the chain ``user → group → group``.

Groups nest to any depth. Writes that would create a cycle are rejected
(:meth:`GroupGraph.set_members`); a cycle that reached the graph anyway is
harmless: the walk visits each group once.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from keycard import names
from keycard.errors import InvalidArgument

__all__ = ["ANONYMOUS", "GroupGraph", "Identity"]

ANONYMOUS = "allUsers"
_POOL_SUBJECT = "/subject/"


@dataclass(slots=True, eq=False)
class Identity:
    principal: str                    # canonical member key of the caller ("allUsers" when anonymous)
    keys: tuple[str, ...]             # every member key that matches the caller
    via: Mapping[str, str]            # group key → the key through which it was reached
    authenticated: bool
    # The engine's memo of the roles ``keys`` hold in the index of the top of the hierarchy (the one
    # index every check reaches when nothing nearer grants): (that index, the roles). Valid while that
    # very index object is the top's: every policy write there installs a new one.
    top: tuple[object, frozenset[object]] | None = field(default=None, repr=False)

    def chain(self, key: str) -> list[str]:
        """principal → … → key, the membership path that makes ``key`` match."""
        path = [key]
        seen = {key}
        while path[-1] in self.via:
            nxt = self.via[path[-1]]
            if nxt in seen:
                break
            seen.add(nxt)
            path.append(nxt)
        path.reverse()
        if path[0] != self.principal and key != self.principal:
            path.insert(0, self.principal)
        return path


class GroupGraph:
    """Group memberships: group key → direct member keys, and the reverse."""

    def __init__(self) -> None:
        self._members: dict[str, tuple[str, ...]] = {}
        self._parents: dict[str, set[str]] = {}
        self._cache: dict[str, Identity] = {}
        # (principal, the request's extra member keys) → identity: a federated or IdP caller's sets
        self._extra_cache: dict[tuple[str, frozenset[str]], Identity] = {}

    # ----------------------------------------------------------------------------------- writes
    def set_members(self, group: object, members: object, *, check_cycles: bool = True) -> None:
        if not isinstance(group, str):
            raise InvalidArgument(f"Invalid group {group!r}: expected a group email.", field="group")
        gkey = names.parse_member(group if group.startswith("group:") else f"group:{group}", "group")
        if not gkey.startswith("group:"):
            raise InvalidArgument(f"Invalid group {group!r}: expected a group email.", field="group")
        if not isinstance(members, Iterable) or isinstance(members, str | bytes | Mapping):
            raise InvalidArgument(f"Invalid groups[{gkey[6:]}]: expected a list of members.",
                                  field=f"groups[{gkey[6:]}]")
        new = tuple(dict.fromkeys(names.parse_member(m, f"groups[{gkey[6:]}][{i}]") for i, m in enumerate(members)))
        if check_cycles:
            self._reject_cycle(gkey, new)
        for old in self._members.get(gkey, ()):
            ps = self._parents.get(old)
            if ps is not None:
                ps.discard(gkey)
        self._members[gkey] = new
        for m in new:
            self._parents.setdefault(m, set()).add(gkey)
        self._cache.clear()
        self._extra_cache.clear()

    def load(self, groups: Mapping[str, Sequence[str]]) -> None:
        if not isinstance(groups, Mapping):
            raise InvalidArgument("Invalid groups: expected an object {group email: [members]}.", field="groups")
        for g, ms in groups.items():
            self.set_members(g, ms, check_cycles=False)
        for g in list(self._members):
            self._reject_cycle(g, self._members[g], loading=True)

    def _reject_cycle(self, gkey: str, members: Sequence[str], *, loading: bool = False) -> None:
        # A cycle exists iff gkey is reachable from one of its new member groups.
        stack = [m for m in members if m.startswith("group:")]
        seen: set[str] = set()
        while stack:
            g = stack.pop()
            if g == gkey:
                if loading:
                    self._members.clear()
                    self._parents.clear()
                raise InvalidArgument(f"Invalid groups[{gkey[6:]}]: the membership would make the group a "
                                      "member of itself (a group cycle); remove the nested group that leads "
                                      "back to it.", field=f"groups[{gkey[6:]}]", reason="GROUP_CYCLE")
            if g in seen:
                continue
            seen.add(g)
            stack.extend(m for m in self._members.get(g, ()) if m.startswith("group:"))

    # ------------------------------------------------------------------------------------ reads
    def members(self, group: str) -> tuple[str, ...]:
        return self._members.get(group, ())

    def groups(self) -> list[str]:
        return list(self._members)

    def identity(self, principal: str | None, extra: frozenset[str] | None = None) -> Identity:
        """The member keys matching ``principal`` (cached until the next group write).

        ``extra``: member keys this request's credential puts the caller in beyond what its name says —
        a federated token's ``principalSet://…/group/G`` and ``…/attribute.NAME/VALUE`` sets, the
        ``group:`` keys an OIDC identity provider's ID token maps to. They count for this call only
        (like group memberships, and the groups they belong to count too); nothing is recorded
        about the principal."""
        key = principal or ANONYMOUS
        if extra:
            xkey = (key, extra)
            ident = self._extra_cache.get(xkey)
            if ident is None:
                ident = self._expand(key, _extra_keys(extra))
                if len(self._extra_cache) > 20_000:
                    self._extra_cache.clear()
                self._extra_cache[xkey] = ident
            return ident
        ident = self._cache.get(key)
        if ident is None:
            ident = self._expand(key)
            if len(self._cache) > 200_000:
                self._cache.clear()
            self._cache[key] = ident
        return ident

    def _expand(self, raw: str, extra: Sequence[str] = ()) -> Identity:
        if raw == ANONYMOUS:
            return Identity(ANONYMOUS, (ANONYMOUS,), {}, False)
        p = names.parse_member(raw, "principal")
        base = [p]
        if p.startswith("user:"):
            base.append("domain:" + p.rsplit("@", 1)[1])
        elif p.startswith("principal://") and _POOL_SUBJECT in p:
            base.append(p.replace("principal://", "principalSet://", 1).split(_POOL_SUBJECT, 1)[0] + "/*")
        authenticated = not p.startswith(("group:", "domain:", "deleted:")) and p != "allAuthenticatedUsers"
        via: dict[str, str] = {}
        seen = set(base)
        order = list(base)
        frontier = list(base)
        for k in extra:                  # the request's sets: reached from the principal itself
            if k not in seen:
                seen.add(k)
                via[k] = p
                order.append(k)
                frontier.append(k)
        if authenticated:
            frontier.append("allAuthenticatedUsers")
        while frontier:
            nxt = []
            for k in frontier:
                for g in self._parents.get(k, ()):
                    if g not in seen:
                        seen.add(g)
                        via[g] = k
                        order.append(g)
                        nxt.append(g)
            frontier = nxt
        if authenticated:
            order.append("allAuthenticatedUsers")
        order.append(ANONYMOUS)
        # interned, as the policy indexes' keys are: a hit compares pointers, not characters
        return Identity(p, tuple(map(sys.intern, order)), via, authenticated)

    def expand_members(self, group: str) -> list[tuple[str, list[str]]]:
        """Every non-group member of ``group`` transitively, with the group path that reaches it."""
        out: list[tuple[str, list[str]]] = []
        seen = {group}
        stack: list[tuple[str, list[str]]] = [(group, [group])]
        while stack:
            g, path = stack.pop()
            for m in self._members.get(g, ()):
                if m.startswith("group:"):
                    if m not in seen:
                        seen.add(m)
                        stack.append((m, [*path, m]))
                else:
                    out.append((m, path))
        return out


def _extra_keys(extra: frozenset[str]) -> tuple[str, ...]:
    """A request's extra member keys, canonical and in a stable order. Only sets can be extra — a
    ``group:`` or a ``principalSet://`` key — never another principal, so a credential cannot name its
    way into someone else's grants."""
    out = []
    for s in sorted(extra):
        k = names.parse_member(s, "extra_members")
        if not k.startswith(("group:", "principalSet://")) or k == "principalSet://goog/public:all":
            raise InvalidArgument(f"Invalid extra_members {s!r}: expected a group: or principalSet:// member.",
                                  field="extra_members")
        out.append(k)
    return tuple(out)
