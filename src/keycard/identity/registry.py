"""The live state of non-human identities, mirrored from the store by the runtime.

Authentication consults it on every request (dict lookups, no I/O): a token of a service
account that has since been disabled or deleted, or that was minted from a key that has since
been disabled or deleted, stops working at the next request; so does a federated token whose
pool or provider was disabled or deleted.

Records it mirrors (kinds): ``service_account`` (named by email), ``sa_key`` (named by key id),
``wi_pool`` and ``wi_provider`` (named by their relative resource names), ``sa_attachment`` (a
metadata server's attachment to an account, named by its id: tokens minted through it carry its
id in the ``att`` claim and die with it).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["IDENTITY_KINDS", "AccountKey", "Registry", "ServiceAccount", "parse_time"]

IDENTITY_KINDS = ("service_account", "sa_key", "wi_pool", "wi_provider", "oidc_provider", "sa_attachment")
FAR_FUTURE = dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.UTC)


def parse_time(value: object, default: dt.datetime | None = None) -> dt.datetime | None:
    if not isinstance(value, str) or not value:
        return default
    try:
        t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return default
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


@dataclass(frozen=True, slots=True)
class ServiceAccount:
    email: str
    unique_id: str
    project_id: str
    project_number: str
    disabled: bool
    deleted: bool
    data: Mapping[str, Any]

    @property
    def member(self) -> str:
        return f"serviceAccount:{self.email}"

    @property
    def resource(self) -> str:
        """Full resource name: the node of the hierarchy that holds the account's own policy."""
        return f"//iam.googleapis.com/projects/{self.project_id}/serviceAccounts/{self.email}"

    @property
    def relative(self) -> str:
        return f"projects/{self.project_id}/serviceAccounts/{self.email}"

    @property
    def usable(self) -> bool:
        return not self.disabled and not self.deleted


@dataclass(frozen=True, slots=True)
class AccountKey:
    key_id: str
    email: str
    unique_id: str                 # of the account the key belongs to
    public_pem: str                # SubjectPublicKeyInfo PEM (the private half is never stored)
    valid_after: dt.datetime
    valid_before: dt.datetime
    disabled: bool
    key_type: str                  # USER_MANAGED | SYSTEM_MANAGED
    data: Mapping[str, Any]

    def usable_at(self, now: dt.datetime) -> bool:
        return not self.disabled and self.valid_after <= now < self.valid_before


class Registry:
    """Service accounts, their keys and federation configuration, by the keys authentication needs."""

    def __init__(self) -> None:
        self.accounts: dict[str, ServiceAccount] = {}      # email → account (deleted ones kept until purged)
        self.by_unique_id: dict[str, str] = {}             # uniqueId → email
        self.keys: dict[str, AccountKey] = {}              # key id → key
        self.pools: dict[str, Mapping[str, Any]] = {}      # pool name → pool JSON (with keycard fields)
        self.providers: dict[str, Mapping[str, Any]] = {}  # provider name → provider JSON
        self.oidc: dict[str, Mapping[str, Any]] = {}       # human-user IdP name → config
        self.attachments: dict[str, Mapping[str, Any]] = {}    # attachment id → record (metadata servers)

    # ------------------------------------------------------------------------------ applying
    def put(self, kind: str, name: str, data: Mapping[str, Any], deleted: bool) -> None:
        if kind == "service_account":
            old = self.accounts.get(name)
            if old is not None and self.by_unique_id.get(old.unique_id) == name:
                del self.by_unique_id[old.unique_id]
            acct = ServiceAccount(name, str(data.get("uniqueId", "")), str(data.get("projectId", "")),
                                  str(data.get("keycardProjectNumber", "")), bool(data.get("disabled")),
                                  deleted, data)
            self.accounts[name] = acct
            if acct.unique_id:
                self.by_unique_id[acct.unique_id] = name
        elif kind == "sa_key":
            if deleted:
                self.keys.pop(name, None)
                return
            self.keys[name] = AccountKey(
                name, str(data.get("keycardEmail", "")), str(data.get("keycardUniqueId", "")),
                str(data.get("keycardPublicKeyPem", "")),
                parse_time(data.get("validAfterTime")) or dt.datetime.min.replace(tzinfo=dt.UTC),
                parse_time(data.get("validBeforeTime")) or FAR_FUTURE, bool(data.get("disabled")),
                str(data.get("keyType", "USER_MANAGED")), data)
        elif kind == "sa_attachment":
            if deleted:
                self.attachments.pop(name, None)
            else:
                self.attachments[name] = data
        elif kind in ("wi_pool", "wi_provider", "oidc_provider"):
            table = self.pools if kind == "wi_pool" else self.providers if kind == "wi_provider" else self.oidc
            if deleted and kind == "oidc_provider":
                table.pop(name, None)
            else:
                table[name] = {**data, "keycardDeleted": deleted}

    def remove(self, kind: str, name: str) -> None:
        if kind == "service_account":
            old = self.accounts.pop(name, None)
            if old is not None and self.by_unique_id.get(old.unique_id) == name:
                del self.by_unique_id[old.unique_id]
        elif kind == "sa_key":
            self.keys.pop(name, None)
        elif kind == "wi_pool":
            self.pools.pop(name, None)
        elif kind == "wi_provider":
            self.providers.pop(name, None)
        elif kind == "oidc_provider":
            self.oidc.pop(name, None)
        elif kind == "sa_attachment":
            self.attachments.pop(name, None)

    # --------------------------------------------------------------------------------- reads
    def account(self, email_or_id: str) -> ServiceAccount | None:
        """By email (case-insensitive) or by uniqueId; deleted accounts included."""
        key = email_or_id.lower()
        acct = self.accounts.get(key)
        if acct is None and email_or_id.isdigit():
            email = self.by_unique_id.get(email_or_id)
            acct = self.accounts.get(email) if email else None
        return acct

    def keys_of(self, email: str) -> list[AccountKey]:
        return sorted((k for k in self.keys.values() if k.email == email), key=lambda k: k.key_id)

    def provider_live(self, name: str) -> bool:
        prov = self.providers.get(name)
        if prov is None or prov.get("keycardDeleted") or prov.get("disabled"):
            return False
        pool = self.pools.get(name.split("/providers/", 1)[0])
        return pool is not None and not pool.get("keycardDeleted") and not pool.get("disabled")
