"""The role catalog: role name → permissions, custom-role scope, and the role finder.

Bindings hold a :class:`RoleHandle`, not a permission set, so replacing a role
(a new permission, DISABLED, deleted) is seen by every binding at once with no
re-indexing. A handle for a role nobody defined yet exists too: it grants
nothing and says so, and starts granting the moment the role is defined.

The catalog also keeps, live, permission → the handles that grant it (``holders``). A check asks
"is this grant's handle among the holders of the permission?": one probe into a small set that
stays in cache across checks of the same permission, instead of a probe into the role's own
permission set (thousands of entries for the basic roles; a cache miss per grant at scale).
"""

from __future__ import annotations

from collections.abc import Iterable

from keycard import names
from keycard.engine.model import Role

__all__ = ["RoleCatalog", "RoleHandle"]

_EMPTY: frozenset[str] = frozenset()


class RoleHandle:
    """The live definition of one role name."""

    __slots__ = ("name", "perms", "role", "scope")

    def __init__(self, name: str) -> None:
        self.name = name
        self.scope = names.role_scope(name)   # custom roles: the project/org that defines them
        self.role: Role | None = None
        self.perms: frozenset[str] = _EMPTY   # effective: empty unless defined and granting

    def set(self, role: Role | None, holders: dict[str, set[RoleHandle]]) -> None:
        """Install ``role`` (None: undefined), keeping ``holders`` (permission → granting handles) true."""
        old = self.perms
        new = role.permissions if role is not None and role.grants else _EMPTY
        for p in new - old if old else new:
            hs = holders.get(p)
            if hs is None:
                holders[p] = {self}
            else:
                hs.add(self)
        self.role = role
        self.perms = new
        for p in old - new if new else old:
            hs = holders.get(p)
            if hs is not None:
                hs.discard(self)

    @property
    def state(self) -> str:
        """'ok', 'unknown', 'disabled' or 'deleted' — why a role grants nothing."""
        if self.role is None:
            return "unknown"
        if self.role.deleted:
            return "deleted"
        if self.role.stage == "DISABLED":
            return "disabled"
        return "ok"


class RoleCatalog:
    def __init__(self) -> None:
        self._handles: dict[str, RoleHandle] = {}
        self.holders: dict[str, set[RoleHandle]] = {}      # permission → handles whose role grants it

    def handle(self, name: str) -> RoleHandle:
        h = self._handles.get(name)
        if h is None:
            h = self._handles[name] = RoleHandle(name)
        return h

    def put(self, role: Role) -> None:
        self.handle(role.name).set(role, self.holders)

    def put_many(self, roles: Iterable[Role]) -> None:
        holders = self.holders
        for r in roles:
            self.handle(r.name).set(r, holders)

    def get(self, name: str) -> Role | None:
        h = self._handles.get(name)
        return h.role if h is not None else None

    def roles(self) -> list[Role]:
        return [h.role for h in self._handles.values() if h.role is not None]

    def permissions(self) -> frozenset[str]:
        out: set[str] = set()
        for h in self._handles.values():
            if h.role is not None:
                out |= h.role.permissions
        return frozenset(out)

    def find(self, permissions: Iterable[str], *, predefined_only: bool = False,
             scopes: Iterable[str] = ()) -> list[Role]:
        """Granting roles that contain every permission, smallest first (the role finder).

        ``scopes``: full names of the project/folders/organization whose custom roles may be offered too.
        """
        wanted = list(dict.fromkeys(permissions))
        if not wanted:
            return []
        none: set[RoleHandle] = set()
        sets = sorted((self.holders.get(p, none) for p in wanted), key=len)
        found = set(sets[0]).intersection(*sets[1:])
        allowed_scopes = set(scopes)
        out = []
        for h in found:
            if h.role is None or (h.scope is not None and (predefined_only or h.scope not in allowed_scopes)):
                continue
            out.append(h.role)
        out.sort(key=lambda r: (len(r.permissions), r.stage != "GA", r.name))
        return out
