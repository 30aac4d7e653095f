"""Installation and process wiring: ``keycard init``, ``keycard serve``, local tokens.

``init`` bootstraps an installation in its database: an organization with a numeric id, the
server's signing key, and the first administrator's roles on the organization. It is
idempotent: run again, it changes nothing that is already there (and adds a missing admin).
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from keycard import names
from keycard.identity.tokens import KeySet, SigningKey, generate_key
from keycard.runtime import Runtime
from keycard.services.access_record import AccessRecorder
from keycard.services.common import Caller, Services
from keycard.storage.blobs import BlobStore
from keycard.store.base import Expect, Put
from keycard.store.sql import SqlStore, open_store

__all__ = ["ADMIN_ROLES", "Installation", "KeyRing", "default_database", "init_installation", "open_services"]

# What an organization's first administrator needs to do everything administrative out of the box.
# roles/owner alone lacks folder and project creation, org policy, deny policies, workload identity
# pools and storage object access, so the admin also gets these — and keycard's own groups admin role
# (Google governs Cloud Identity groups with Workspace admin roles, which keycard does not have).
ADMIN_ROLES = (
    "roles/owner",
    "roles/resourcemanager.organizationAdmin",
    "roles/resourcemanager.folderAdmin",
    "roles/resourcemanager.projectCreator",
    "roles/orgpolicy.policyAdmin",
    "roles/iam.organizationRoleAdmin",
    "roles/iam.denyAdmin",
    "roles/iam.workloadIdentityPoolAdmin",
    "roles/storage.admin",
    "roles/keycard.groupsAdmin",
)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def default_database(data_dir: str | os.PathLike[str] = ".keycard") -> str:
    path = Path(data_dir).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path / 'keycard.db'}"


@dataclass(frozen=True, slots=True)
class Installation:
    organization: str          # full name
    domain: str
    customer_id: str
    admins: tuple[str, ...]
    created: bool              # this call created it


def init_installation(store: SqlStore, *, domain: str, admins: list[str]) -> Installation:
    """Create (or complete) the installation. Safe to run any number of times."""
    domain = domain.strip().lower()
    names.parse_member(f"domain:{domain}", "organizationDomain")
    admin_keys = [names.parse_member(a, "admin") for a in admins]
    store.migrate()
    now = utcnow()
    stamp = now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    existing = store.get("installation", "default")
    created = existing is None
    if existing is None:
        number = str(100_000_000_000 + secrets.randbelow(899_999_999_999))
        customer = "C0" + secrets.token_hex(4)
        org = f"//{names.CRM}/organizations/{number}"
        key = generate_key(now)
        puts = [
            Put("installation", "default", {"organization": org, "domain": domain, "customerId": customer,
                                            "createTime": stamp}),
            Put("resource", org, {"name": f"organizations/{number}", "displayName": domain,
                                  "directoryCustomerId": customer, "state": "ACTIVE", "createTime": stamp,
                                  "updateTime": stamp}),
            Put("signing_key", key.kid, key.to_record()),
            Put("org_policy", f"organizations/{number}/policies/iam.automaticIamGrantsForDefaultServiceAccounts",
                {"name": f"organizations/{number}/policies/iam.automaticIamGrantsForDefaultServiceAccounts",
                 "spec": {"rules": [{"enforce": True}]}}, parent=org),
        ]
        store.commit(puts, expect=[Expect("installation", "default", None)],
                     audit=[_audit("keycard.Init", org, admin_keys)])
        existing = store.get("installation", "default")
        assert existing is not None
    org = str(existing.data["organization"])
    # make sure every admin holds every admin role (idempotent)
    rec = store.get("iam_policy", org)
    policy: dict[str, Any] = dict(rec.data) if rec else {"version": 1, "bindings": []}
    bindings = [dict(b) for b in policy.get("bindings", [])]
    changed = False
    for role in ADMIN_ROLES:
        b = next((b for b in bindings if b["role"] == role and not b.get("condition")), None)
        if b is None:
            b = {"role": role, "members": []}
            bindings.append(b)
        for a in admin_keys:
            if a not in b["members"]:
                b["members"] = [*b["members"], a]
                changed = True
    if changed:
        policy["bindings"] = bindings
        store.commit([Put("iam_policy", org, policy)],
                     expect=[Expect("iam_policy", org, rec.revision if rec else None)],
                     audit=[_audit("SetIamPolicy", org, admin_keys)])
    return Installation(org, str(existing.data["domain"]), str(existing.data["customerId"]), tuple(admin_keys),
                        created)


def _audit(method: str, org: str, admins: list[str]) -> dict[str, Any]:
    return {"logName": f"{org.split('/', 3)[3]}/logs/cloudaudit.googleapis.com%2Factivity",
            "insertId": secrets.token_hex(8), "severity": "NOTICE",
            "timestamp": utcnow().strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "protoPayload": {"@type": "type.googleapis.com/google.cloud.audit.AuditLog",
                             "authenticationInfo": {"principalEmail": "keycard-init"},
                             "methodName": method, "serviceName": "keycard", "resourceName": org.split("/", 3)[3],
                             "request": {"admins": admins}}}


class KeyRing:
    """The signing keys, reloaded from the store when they may have changed."""

    def __init__(self, store: SqlStore, max_age: float = 5.0) -> None:
        self._store = store
        self._max_age = max_age
        self._keys = KeySet([])
        self._version: tuple[tuple[str, int], ...] = ()
        self._loaded = 0.0
        self._lock = threading.Lock()

    def __call__(self) -> KeySet:
        if time.monotonic() - self._loaded > self._max_age:
            with self._lock:
                page = self._store.list("signing_key")
                version = tuple((r.name, r.revision) for r in page.records)
                if version != self._version:          # keep the KeySet (and its verified-token cache) if unchanged
                    self._keys = KeySet(SigningKey.from_record(r.data) for r in page.records)
                    self._version = version
                self._loaded = time.monotonic()
        return self._keys


def default_objects_dir(database: str) -> Path:
    """Where object data lives: beside an SQLite database file, else ``./.keycard/objects``."""
    if database.startswith("sqlite:///") and not database.endswith(":memory:"):
        return Path(database[len("sqlite:///"):]).resolve().parent / "objects"
    return Path(".keycard").resolve() / "objects"


def open_services(database: str, *, enforcement: str = "enforce", objects_dir: str | os.PathLike[str] | None = None
                  ) -> tuple[Services, KeyRing, SqlStore]:
    store = open_store(database)
    store.migrate()
    inst = store.get("installation", "default")
    runtime = Runtime(store, clock=utcnow)
    runtime.bootstrap()
    blobs = BlobStore(objects_dir if objects_dir is not None else default_objects_dir(database))
    services = Services(runtime, utcnow, enforcement, str(inst.data["organization"]) if inst else None, blobs)
    services.access = AccessRecorder(store, clock=utcnow)   # every authorization check, for recommender/simulator
    return services, KeyRing(store), store


def rotate_signing_key(database: str, *, retire_older: bool = False) -> tuple[str, list[str]]:
    """Add a new active signing key. Older keys keep verifying the tokens they signed until
    retired (``retire_older``: retire them now, which invalidates every token they signed)."""
    store = open_store(database)
    try:
        store.migrate()
        key = generate_key(utcnow())
        puts = [Put("signing_key", key.kid, key.to_record())]
        retired = []
        if retire_older:
            for rec in store.list("signing_key").records:
                old = SigningKey.from_record(rec.data)
                if not old.retired:
                    retired.append(old.kid)
                    puts.append(Put("signing_key", old.kid, {**old.to_record(), "retired": True}))
        store.commit(puts, expect=[Expect("signing_key", key.kid, None)],
                     audit=[{"logName": "keycard/logs/cloudaudit.googleapis.com%2Factivity",
                             "insertId": secrets.token_hex(8), "severity": "NOTICE",
                             "timestamp": utcnow().strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                             "protoPayload": {"@type": "type.googleapis.com/google.cloud.audit.AuditLog",
                                              "authenticationInfo": {"principalEmail": "keycard-local-admin"},
                                              "methodName": "keycard.RotateSigningKey", "serviceName": "keycard",
                                              "resourceName": f"signingKeys/{key.kid}",
                                              "request": {"retireOlder": retire_older, "retired": retired}}}])
        return key.kid, retired
    finally:
        store.close()


def mint_local_token(database: str, user: str, *, lifetime: int = 3600) -> str:
    """The local admin path: a short-lived user token minted with the server's key."""
    principal = names.parse_member(user if ":" in user else f"user:{user}", "user")
    store = open_store(database)
    try:
        keys = KeyRing(store)()
        return keys.mint(principal, now=utcnow(), lifetime=lifetime).token
    finally:
        store.close()


def seed_demo(database: str, admin: str) -> list[str]:
    """Fill a fresh installation with a small ML platform to explore (idempotent: skipped if present)."""
    from keycard.services import iam_policy
    from keycard.services import resourcemanager as crm
    services, _keys, store = open_services(database)
    try:
        if store.get("project_id", "ml-prod") is not None or services.organization is None:
            return []
        org = services.organization.split("/", 3)[3]
        op = crm.create_folder(services, Caller(admin), {"parent": org, "displayName": "ml-platform"})
        folder = op["response"]["name"]
        created = [folder]
        for pid, display in (("ml-prod", "ML production"), ("ml-dev", "ML development")):
            crm.create_project(services, Caller(admin), {"projectId": pid, "parent": folder, "displayName": display,
                                              "labels": {"team": "ml"}})
            created.append(f"projects/{pid}")
        project = crm.resolve_project(services, "ml-dev")
        policy = iam_policy.get_iam_policy(services, Caller(admin), project, service=crm.SERVICE, version=3,
                                           permission="resourcemanager.projects.getIamPolicy")
        policy["version"] = 3
        policy["bindings"] = [*policy.get("bindings", []),
                              {"role": "roles/ml.developer", "members": ["user:carol@example.com"]},
                              {"role": "roles/viewer", "members": ["user:auditor@partner.example"],
                               "condition": {"title": "until 2027",
                                             "expression": 'request.time < timestamp("2027-01-01T00:00:00Z")'}}]
        iam_policy.set_iam_policy(services, Caller(admin), project, {"policy": policy},
                                  permission="resourcemanager.projects.setIamPolicy", service=crm.SERVICE,
                                  method="SetIamPolicy")
        return created
    finally:
        services.runtime.stop()
        store.close()


def caller(principal: str | None) -> Caller:
    return Caller(principal)
