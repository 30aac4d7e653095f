"""The in-memory engine kept current from the store's change feed.

At start-up every record is scanned into a fresh Engine; after that the runtime applies the
store's changes in revision order. A write on this replica catches up before it answers, so
the very next request sees it; a follower thread applies other replicas' writes, woken by the
store's ``wait`` (LISTEN/NOTIFY on PostgreSQL). ``ensure(revision)`` blocks a request that
carries a consistency token until this replica has applied at least that revision.
"""

from __future__ import annotations

import base64
import binascii
import logging
import threading
import time as _time
from collections.abc import Callable, Mapping
from typing import Any

from keycard import hugepages
from keycard.engine.engine import Engine
from keycard.errors import InvalidArgument, KeycardError, Unavailable
from keycard.identity.registry import IDENTITY_KINDS, Registry
from keycard.store.base import Change, Record, Store
from keycard.workers import SharedRevisions

__all__ = ["KINDS", "Runtime", "etag_for", "revision_from_etag"]

log = logging.getLogger("keycard.runtime")

# kinds of records the engine mirrors
KINDS = ("resource", "iam_policy", "role", "group", "deny_policy", "org_policy", *IDENTITY_KINDS)


def etag_for(revision: int) -> str:
    """Canonical padded standard base64 (GAPIC round-trips these unchanged)."""
    return base64.b64encode(b"kc" + revision.to_bytes(8, "big")).decode()


def revision_from_etag(etag: str, field: str = "etag") -> int:
    try:
        raw = base64.b64decode(etag, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidArgument(f"Invalid {field} {etag!r}: not an etag this server issued; read the resource "
                              "again and send its etag.", field=field) from None
    if len(raw) != 10 or not raw.startswith(b"kc"):
        raise InvalidArgument(f"Invalid {field} {etag!r}: not an etag this server issued; read the resource "
                              "again and send its etag.", field=field)
    return int.from_bytes(raw[2:], "big")


class Runtime:
    def __init__(self, store: Store, *, clock: Callable[[], Any] | None = None) -> None:
        self.store = store
        self.engine = Engine(clock=clock)
        self.applied = 0
        self._group_emails: dict[str, str] = {}      # group record name → email, to undo hard deletes
        self.org_policies: dict[str, Mapping[str, Any]] = {}   # org policy name → its JSON (mirrored)
        self.identities = Registry()          # service accounts, keys, federation (mirrored)
        self._project_ids: dict[str, str] = {}   # project full name (by number) → project id
        self._project_names: dict[str, str] = {}  # project id → project full name (by number)
        self._basic: dict[str, dict[str, tuple[str, ...]]] = {}   # project id → convenience value → members
        self._conv_policies: dict[str, Mapping[str, Any]] = {}    # policies naming convenience values
        self._project_policies: dict[str, Mapping[str, Any]] = {}  # project-level policies (raw)
        self._apply_lock = threading.Lock()
        self._stop = threading.Event()
        self._follower: threading.Thread | None = None
        # (kind, name) → (data, its already-parsed form) of a record this replica is writing (set by
        # Services.commit around its commit and catch-up): applying a record with that data need not parse it
        self.parsed: dict[tuple[str, str], tuple[Mapping[str, Any], Any]] = {}
        # resource records hot read paths serve from memory (projects, ML models and versions: see mirrors())
        self._records: dict[str, Record] = {}
        # every iam_policy record as of ``applied`` (getIamPolicy and setIamPolicy's read: see iam_policy())
        self._policies: dict[str, Record] = {}
        # keycard serve --workers: the revisions the server's workers have committed (see keycard.workers)
        self.peers: SharedRevisions | None = None

    def wanted(self, token: int = 0) -> int:
        """The revision to reach before answering a request: the client's consistency token, or the newest
        revision another worker of this server has committed; 0 when this replica is there already."""
        if self.peers is not None:
            token = max(token, self.peers.latest())
        return token if token > self.applied else 0

    # -------------------------------------------------------------------------------- loading
    def bootstrap(self) -> None:
        head = self.store.head()
        records = list(self.store.scan(KINDS))
        order = {"role": 0, "resource": 1, "service_account": 2, "group": 3, "iam_policy": 4, "deny_policy": 5}
        resources = [r for r in records if r.kind == "resource"]
        with self._apply_lock:
            for r in sorted((r for r in records if r.kind == "role"), key=lambda r: r.name):
                self._apply_record(r)
            # parents before children
            by_name = {r.name: r for r in resources}
            done: set[str] = set()

            def add(r: Record) -> None:
                if r.name in done:
                    return
                done.add(r.name)
                if r.parent and r.parent in by_name:
                    add(by_name[r.parent])
                self._apply_record(r)
            for r in resources:
                add(r)
            for r in sorted((r for r in records if r.kind not in ("role", "resource")),
                            key=lambda r: order.get(r.kind, 9)):
                self._apply_record(r)
            self.applied = head
        self.catch_up()

    def catch_up(self) -> int:
        """Apply every committed change not yet applied; return the applied revision."""
        with self._apply_lock:
            while True:
                changes = self.store.changes(self.applied, limit=5000)
                for ch in changes:
                    self._apply_change(ch)
                    self.applied = ch.revision
                if len(changes) < 5000:        # a short page is the end of the feed: no second query
                    return self.applied

    def ensure(self, revision: int, timeout: float = 5.0) -> None:
        """Block until this replica has applied ``revision`` (a consistency token)."""
        deadline = _time.monotonic() + timeout
        while self.applied < revision:
            self.catch_up()
            if self.applied >= revision:
                return
            left = deadline - _time.monotonic()
            if left <= 0:
                raise Unavailable(f"This replica has not yet caught up to revision {revision} "
                                  f"(at {self.applied}); retry.", reason="REVISION_NOT_YET_VISIBLE")
            self.store.wait(self.applied, min(left, 0.5))

    def start_following(self) -> None:
        if self._follower is not None:
            return
        self._stop.clear()
        self._follower = threading.Thread(target=self._follow, name="keycard-follower", daemon=True)
        self._follower.start()
        # projects' merged indexes, built in the background rather than by each project's first request
        threading.Thread(target=self._warm, name="keycard-warm", daemon=True).start()

    def _warm(self) -> None:
        """Merged project indexes, then the heap on huge pages (see keycard.hugepages)."""
        self.engine.warm(pause=lambda: _time.sleep(0.002))
        if self.engine.binding_count >= hugepages.WORTH_FROM:
            done = hugepages.collapse()
            if done is not None:
                log.info("engine heap: %s", done)

    def stop(self) -> None:
        self._stop.set()
        if self._follower is not None:
            self._follower.join(timeout=2)
            self._follower = None

    def _follow(self) -> None:
        while not self._stop.is_set():
            try:
                self.store.wait(self.applied, 0.5)
                self.catch_up()
            except Exception:  # keep following; the next wake-up retries
                log.exception("change-feed follower failed; retrying")
                _time.sleep(0.2)

    # -------------------------------------------------------------------------------- mirrored records
    @staticmethod
    def mirrors(name: str) -> bool:
        """Is the ``resource`` record ``name`` kept in memory? Projects, ML models and versions (the
        records online prediction reads on every request); not operations or jobs, which pile up."""
        return name.startswith(_PROJECTS) or (name.startswith(_ML_PROJECTS) and "/models/" in name)

    def resource(self, name: str) -> Record | None:
        """The mirrored ``resource`` record ``name`` as of ``applied`` (for a name ``mirrors`` accepts)."""
        return self._records.get(name)

    def iam_policy(self, name: str) -> Record | None:
        """The ``iam_policy`` record ``name`` as of ``applied`` (None: none then), as ``store.get`` gave it at
        that revision. Its data is shared: copy before changing it. Behind the store by what this replica
        has not applied yet; a write built on it must carry the record's revision as its precondition."""
        return self._policies.get(name)

    # -------------------------------------------------------------------------------- applying
    def _apply_change(self, ch: Change) -> None:
        if ch.kind not in KINDS:
            return
        if ch.op == "delete" or ch.record is None:
            self._apply_delete(ch.kind, ch.name)
        else:
            self._apply_record(ch.record)

    def _apply_record(self, r: Record) -> None:
        e = self.engine
        d: Mapping[str, Any] = r.data
        try:
            if r.kind == "resource":
                if self.mirrors(r.name):
                    self._records[r.name] = r
                e.add_resource(r.name, r.parent)
                pid = d.get("projectId")
                if isinstance(pid, str) and r.name.startswith("//cloudresourcemanager.googleapis.com/projects/"):
                    e.set_project_id(r.name, pid)
                    self._project_ids[r.name] = pid
                    self._project_names[pid] = r.name
                    self._convenience(r.name, self._project_policies.get(r.name, {}))
            elif r.kind == "iam_policy":
                self._policies[r.name] = r
                if _has_convenience(d):
                    self._conv_policies[r.name] = d
                    e.set_iam_policy(r.name, self._expanded(d), unknown_roles="ignore")
                else:
                    self._conv_policies.pop(r.name, None)
                    ready = self.parsed.get((r.kind, r.name))
                    e.set_iam_policy(r.name, ready[1] if ready is not None and ready[0] == d else _strip_etag(d),
                                     unknown_roles="ignore")
                self._convenience(r.name, d)
            elif r.kind == "role":
                e.put_role({**_role_json(d), "deleted": bool(d.get("deleted")) or r.deleted})
            elif r.kind == "group":
                email = str(d.get("groupKey", {}).get("id", ""))
                members = [] if r.deleted else [str(m) for m in d.get("keycardMembers", [])]
                if email:
                    self._group_emails[r.name] = email
                    e.set_group_members(email, members)
            elif r.kind in IDENTITY_KINDS:
                self.identities.put(r.kind, r.name, d, r.deleted)
                if r.kind == "service_account":
                    acct = self.identities.accounts[r.name]
                    e.add_resource(acct.resource, r.parent)
            elif r.kind == "org_policy":
                if r.deleted:
                    self.org_policies.pop(r.name, None)
                else:
                    self.org_policies[r.name] = r.data
            elif r.kind == "deny_policy":
                if r.deleted:
                    self._apply_delete(r.kind, r.name)
                else:
                    e.set_deny_policy(str(d["attachmentPoint"]), {**d, "name": r.name})
        except KeycardError:
            # A record the engine cannot take (written by a newer version?) must not stop the feed.
            log.exception("cannot apply %s %s at revision %s", r.kind, r.name, r.revision)

    def _convenience(self, name: str, policy: Mapping[str, Any]) -> None:
        if name.startswith(_PROJECTS):
            if policy:
                self._project_policies[name] = policy
            else:
                self._project_policies.pop(name, None)
        # Cloud Storage's convenience values (projectOwner:P, projectEditor:P, projectViewer:P) stand for
        # the members of the project's own unconditional basic-role bindings. Policies that name them
        # (bucket policies) reach the engine with the values expanded into those members — the caller's
        # identity stays small — and are applied again whenever the project's basic-role members change.
        pid = self._project_ids.get(name)
        if pid is None:
            return
        if not self._conv_policies:         # no policy names a convenience value: computed when one does
            self._basic.pop(pid, None)
            return
        members = _basic_sets(policy)
        if self._basic.get(pid) == members:
            return
        self._basic[pid] = members
        for other, data in list(self._conv_policies.items()):
            wanted = {f"{prefix}:{pid}" for prefix in ("projectOwner", "projectEditor", "projectViewer")}
            if any(m in wanted for b in data.get("bindings", []) or [] if isinstance(b, Mapping)
                   for m in b.get("members", []) or []):
                self.engine.set_iam_policy(other, self._expanded(data), unknown_roles="ignore")

    def _expanded(self, policy: Mapping[str, Any]) -> dict[str, Any]:
        out = _strip_etag(policy)
        bindings = []
        for b in policy.get("bindings", []) or []:
            if not isinstance(b, Mapping):
                bindings.append(b)
                continue
            members: list[str] = []
            for m in b.get("members", []) or []:
                members.append(m)
                prefix, _, pid = str(m).partition(":")
                if prefix in ("projectOwner", "projectEditor", "projectViewer"):
                    members.extend(self._basic_of(pid).get(prefix, ()))
            bindings.append({**b, "members": list(dict.fromkeys(members))})
        out["bindings"] = bindings
        return out

    def _basic_of(self, pid: str) -> dict[str, tuple[str, ...]]:
        """Convenience value → members of project ``pid``'s basic-role bindings (cached per project)."""
        members = self._basic.get(pid)
        if members is None:
            project = self._project_names.get(pid, "")
            members = self._basic[pid] = _basic_sets(self._project_policies.get(project, {}))
        return members

    def _apply_delete(self, kind: str, name: str) -> None:
        e = self.engine
        try:
            if kind == "resource":
                self._records.pop(name, None)
                e.remove_resource(name)
            elif kind == "iam_policy":
                self._policies.pop(name, None)
                e.set_iam_policy(name, {"bindings": []}, unknown_roles="ignore")
                self._conv_policies.pop(name, None)
                self._convenience(name, {})
            elif kind == "role":
                if e.get_role(name) is not None:
                    e.delete_role(name)
            elif kind in IDENTITY_KINDS:
                acct = self.identities.accounts.get(name) if kind == "service_account" else None
                self.identities.remove(kind, name)
                if acct is not None:
                    e.remove_resource(acct.resource)
            elif kind == "org_policy":
                self.org_policies.pop(name, None)
            elif kind == "group":
                email = self._group_emails.pop(name, None)
                if email:
                    e.set_group_members(email, [])
            elif kind == "deny_policy":
                attachment = name.split("/denypolicies/")[0][len("policies/"):]
                for p in e.deny_policies(attachment):
                    if p.name == name:
                        e.delete_deny_policy(attachment, name)
        except KeycardError:
            log.exception("cannot apply deletion of %s %s", kind, name)


_CONVENIENCE = (("roles/owner", "projectOwner"), ("roles/editor", "projectEditor"), ("roles/viewer", "projectViewer"))
_CONVENIENCE_OF = dict(_CONVENIENCE)


_PROJECTS = "//cloudresourcemanager.googleapis.com/projects/"
_ML_PROJECTS = "//ml.googleapis.com/projects/"


def _has_convenience(policy: Mapping[str, Any]) -> bool:
    return any(str(m).startswith(("projectOwner:", "projectEditor:", "projectViewer:"))
               for b in policy.get("bindings", []) or [] if isinstance(b, Mapping) for m in b.get("members", []) or [])


def _basic_sets(policy: Mapping[str, Any]) -> dict[str, tuple[str, ...]]:
    """projectOwner/projectEditor/projectViewer → the members of the policy's unconditional owner/editor/viewer
    bindings, in one pass over the bindings."""
    found: dict[str, list[str]] = {prefix: [] for _, prefix in _CONVENIENCE}
    for b in policy.get("bindings", []) or []:
        if isinstance(b, Mapping) and not b.get("condition"):
            prefix = _CONVENIENCE_OF.get(str(b.get("role")))
            if prefix is not None:
                found[prefix].extend(str(m) for m in b.get("members", []) or [])
    return {prefix: tuple(members) for prefix, members in found.items()}


def _strip_etag(d: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k != "etag"}


def _role_json(d: Mapping[str, Any]) -> dict[str, Any]:
    return {k: d[k] for k in ("name", "title", "description", "stage", "includedPermissions") if k in d}
