"""IAM v1 service-account keys: create, upload, list, get, disable, enable, delete.

``keys.create`` generates an RSA key pair, returns the private half once (as Google's key-file JSON
whose ``token_uri`` is this server's token endpoint) and stores only the public half, as an X.509
certificate. Records: kind ``sa_key`` named by the 40-hex key id (the key file's
``private_key_id``, the ``kid`` of every JWT signed with it). Org-policy constraints apply:
``iam.disableServiceAccountKeyCreation``, ``iam.disableServiceAccountKeyUpload`` and
``iam.serviceAccountKeyExpiryHours`` (lifetime of new keys).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import logging
import secrets
from collections.abc import Callable, Mapping
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from keycard.errors import Aborted, FailedPrecondition, InvalidArgument, KeycardError, NotFound
from keycard.identity.registry import FAR_FUTURE, AccountKey, ServiceAccount
from keycard.services.common import Caller, Services
from keycard.services.service_accounts import SERVICE, resolve
from keycard.store.base import Delete, Expect, Put, Record

__all__ = ["MAX_KEYS", "create_key", "key_json", "list_keys", "public_key_formats", "record_key_use"]

log = logging.getLogger("keycard.sa_keys")

MAX_KEYS = 10
_ALGORITHMS = {"KEY_ALG_RSA_2048": 2048, "KEY_ALG_RSA_1024": 1024, "KEY_ALG_UNSPECIFIED": 2048}
_PRIVATE_TYPES = ("TYPE_GOOGLE_CREDENTIALS_FILE", "TYPE_UNSPECIFIED")
_PUBLIC_TYPES = ("TYPE_X509_PEM_FILE", "TYPE_RAW_PUBLIC_KEY", "TYPE_NONE")


def _ts(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def key_json(acct: ServiceAccount, key: AccountKey, public_type: str = "TYPE_NONE") -> dict[str, Any]:
    d = key.data
    out: dict[str, Any] = {"name": f"{acct.relative}/keys/{key.key_id}",
                           "validAfterTime": _ts(key.valid_after), "validBeforeTime": _ts(key.valid_before),
                           "keyAlgorithm": d.get("keyAlgorithm", "KEY_ALG_RSA_2048"),
                           "keyOrigin": d.get("keyOrigin", "GOOGLE_PROVIDED"), "keyType": key.key_type}
    if key.disabled:
        out["disabled"] = True
    if d.get("keycardLastUsedTime"):
        out["keycardLastUsedTime"] = d["keycardLastUsedTime"]
    if public_type != "TYPE_NONE":
        out.update(public_key_formats(key, public_type))
    return out


def record_key_use(svc: Services, key_id: str, now: dt.datetime) -> None:
    """Write ``keycardLastUsedTime`` on the key's record: the token endpoint's JWT-bearer grant and a
    self-signed JWT used as a bearer call this at most once a minute per key (the Authenticator's
    ``key_use`` throttle). Best effort: a failed or conflicting write (the key was just disabled or
    deleted) is logged and never fails the request that used the key."""
    store = svc.runtime.store
    try:
        rec = store.get("sa_key", key_id)
        if rec is None or rec.deleted:
            return
        data = dict(rec.data)
        data["keycardLastUsedTime"] = _ts(now)
        store.commit([Put("sa_key", key_id, data, parent=rec.parent)],
                     expect=[Expect("sa_key", key_id, rec.revision)])
        svc.runtime.catch_up()
    except KeycardError as e:
        log.info("key %s: last use not recorded (%s)", key_id, e.status)
    except Exception:
        log.exception("key %s: last use not recorded", key_id)


def public_key_formats(key: AccountKey, public_type: str) -> dict[str, Any]:
    if public_type == "TYPE_X509_PEM_FILE":
        pem = str(key.data.get("keycardCertificatePem") or key.public_pem)
        return {"publicKeyData": base64.b64encode(pem.encode()).decode()}
    if public_type == "TYPE_RAW_PUBLIC_KEY":
        pub = serialization.load_pem_public_key(key.public_pem.encode())
        der = pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        return {"publicKeyData": base64.b64encode(der).decode()}
    return {}


def _key_of(svc: Services, acct: ServiceAccount, key_id: str) -> AccountKey:
    key = svc.runtime.identities.keys.get(key_id)
    if key is None or key.email != acct.email or key.unique_id != acct.unique_id:
        raise NotFound(f"Service account key {acct.relative}/keys/{key_id} not found.", field="name",
                       reason="KEY_NOT_FOUND")
    return key


def _user_managed(key: AccountKey, verb: str) -> None:
    if key.key_type == "SYSTEM_MANAGED":
        raise FailedPrecondition(f"Google-managed (SYSTEM_MANAGED) key {key.key_id} cannot be {verb}: keycard "
                                 "rotates it itself.", reason="SYSTEM_MANAGED_KEY")


def _user_keys(svc: Services, acct: ServiceAccount) -> list[AccountKey]:
    return [k for k in svc.runtime.identities.keys_of(acct.email)
            if k.unique_id == acct.unique_id and k.key_type == "USER_MANAGED"]


def _org_policy_enforced(svc: Services, constraint: str, acct: ServiceAccount) -> bool:
    from keycard.services.orgpolicy_api import effective
    return effective(svc, constraint, acct.resource).enforced


def _expiry(svc: Services, acct: ServiceAccount, now: dt.datetime) -> dt.datetime:
    """Lifetime of a new key from ``iam.serviceAccountKeyExpiryHours`` (the shortest allowed value)."""
    from keycard.services.orgpolicy import KEY_EXPIRY_VALUES
    from keycard.services.orgpolicy_api import effective
    eff = effective(svc, "iam.serviceAccountKeyExpiryHours", acct.resource)
    if not eff.restricts:
        return FAR_FUTURE
    hours = [int(v[:-1]) for v in KEY_EXPIRY_VALUES if eff.allows(v)]
    if not hours:
        raise FailedPrecondition("Key creation is not allowed on this service account: the organization policy "
                                 "iam.serviceAccountKeyExpiryHours allows no key lifetime.",
                                 reason="ORG_POLICY_CONSTRAINT_VIOLATED",
                                 metadata={"constraint": "constraints/iam.serviceAccountKeyExpiryHours"})
    return now + dt.timedelta(hours=min(hours))


def _commit_key(svc: Services, caller: Caller, acct: ServiceAccount, key_id: str, data: dict[str, Any],
                method: str) -> None:
    if len(_user_keys(svc, acct)) >= MAX_KEYS:
        raise FailedPrecondition(f"Service account {acct.email} already has {MAX_KEYS} user-managed keys, the most "
                                 "an account may hold; delete an unused key first.", reason="KEY_LIMIT_REACHED")
    acct_rec = svc.runtime.store.get("service_account", acct.email)
    assert acct_rec is not None
    svc.commit(caller, puts=[Put("sa_key", key_id, data, parent=acct.email)],
               expect=[Expect("sa_key", key_id, None), Expect("service_account", acct.email, acct_rec.revision)],
               method=method, service=SERVICE, resource_name=f"{acct.relative}/keys/{key_id}",
               request={"name": acct.relative})


def _base_record(acct: ServiceAccount, key_id: str, public_pem: str, cert_pem: str, after: dt.datetime,
                 before: dt.datetime, algorithm: str, origin: str) -> dict[str, Any]:
    return {"name": f"{acct.relative}/keys/{key_id}", "keyAlgorithm": algorithm, "keyOrigin": origin,
            "keyType": "USER_MANAGED", "validAfterTime": _ts(after), "validBeforeTime": _ts(before),
            "keycardEmail": acct.email, "keycardUniqueId": acct.unique_id, "keycardPublicKeyPem": public_pem,
            "keycardCertificatePem": cert_pem}


def create_key(svc: Services, caller: Caller, project: str, account: str, body: object, *, token_uri: str
               ) -> dict[str, Any]:
    acct = resolve(svc, caller, project, account, "iam.serviceAccountKeys.create")
    body = body if isinstance(body, Mapping) else {}
    algorithm = str(body.get("keyAlgorithm") or "KEY_ALG_RSA_2048")
    private_type = str(body.get("privateKeyType") or "TYPE_GOOGLE_CREDENTIALS_FILE")
    if algorithm not in _ALGORITHMS:
        raise InvalidArgument(f"Invalid keyAlgorithm {algorithm!r}: use KEY_ALG_RSA_2048.", field="keyAlgorithm")
    if private_type not in _PRIVATE_TYPES:
        raise InvalidArgument(f"Invalid privateKeyType {private_type!r}: keycard issues "
                              "TYPE_GOOGLE_CREDENTIALS_FILE key files (PKCS#12 is not supported).",
                              field="privateKeyType")
    if _org_policy_enforced(svc, "iam.disableServiceAccountKeyCreation", acct):
        raise FailedPrecondition("Key creation is not allowed on this service account: the organization policy "
                                 "constraint iam.disableServiceAccountKeyCreation is enforced. Use short-lived "
                                 "credentials (impersonation, workload identity federation) instead.",
                                 reason="ORG_POLICY_CONSTRAINT_VIOLATED",
                                 metadata={"constraint": "constraints/iam.disableServiceAccountKeyCreation"})
    now = svc.clock().replace(microsecond=0)
    before = _expiry(svc, acct, now)
    private = rsa.generate_private_key(public_exponent=65537, key_size=_ALGORITHMS[algorithm])
    key_id = secrets.token_hex(20)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, key_id)])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(private.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(min(before, dt.datetime(9999, 12, 31, 23, 59, 59,
                                                                         tzinfo=dt.UTC)))
            .sign(private, hashes.SHA256()))
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    public_pem = private.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    data = _base_record(acct, key_id, public_pem, cert_pem, now, before, "KEY_ALG_RSA_2048"
                        if algorithm == "KEY_ALG_UNSPECIFIED" else algorithm, "GOOGLE_PROVIDED")
    _commit_key(svc, caller, acct, key_id, data, "google.iam.admin.v1.CreateServiceAccountKey")
    private_pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()).decode()
    key_file = {"type": "service_account", "project_id": acct.project_id, "private_key_id": key_id,
                "private_key": private_pem, "client_email": acct.email, "client_id": acct.unique_id,
                "auth_uri": "https://accounts.google.com/o/oauth2/auth", "token_uri": token_uri,
                "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
                "client_x509_cert_url": "https://www.googleapis.com/robot/v1/metadata/x509/"
                                        + acct.email.replace("@", "%40"),
                "universe_domain": "googleapis.com"}
    key = svc.runtime.identities.keys[key_id]
    out = key_json(acct, key)
    out["privateKeyType"] = "TYPE_GOOGLE_CREDENTIALS_FILE"
    out["privateKeyData"] = base64.b64encode(json.dumps(key_file, indent=2).encode()).decode()
    return out


def upload_key(svc: Services, caller: Caller, project: str, account: str, body: object) -> dict[str, Any]:
    acct = resolve(svc, caller, project, account, "iam.serviceAccountKeys.create")
    raw = body.get("publicKeyData") if isinstance(body, Mapping) else None
    if not isinstance(raw, str) or not raw:
        raise InvalidArgument("Invalid publicKeyData: expected the base64 of an X.509 PEM certificate holding an "
                              "RSA public key.", field="publicKeyData")
    try:
        pem = base64.b64decode(raw, validate=True)
        cert = x509.load_pem_x509_certificate(pem)
        public = cert.public_key()
    except (binascii.Error, ValueError):
        raise InvalidArgument("Invalid publicKeyData: expected the base64 of an X.509 PEM certificate holding an "
                              "RSA public key.", field="publicKeyData") from None
    if not isinstance(public, rsa.RSAPublicKey) or public.key_size < 2048:
        raise InvalidArgument("Invalid publicKeyData: the certificate must hold an RSA key of at least 2048 bits.",
                              field="publicKeyData")
    if _org_policy_enforced(svc, "iam.disableServiceAccountKeyUpload", acct):
        raise FailedPrecondition("Key upload is not allowed on this service account: the organization policy "
                                 "constraint iam.disableServiceAccountKeyUpload is enforced.",
                                 reason="ORG_POLICY_CONSTRAINT_VIOLATED",
                                 metadata={"constraint": "constraints/iam.disableServiceAccountKeyUpload"})
    public_pem = public.public_bytes(serialization.Encoding.PEM,
                                     serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    for k in svc.runtime.identities.keys_of(acct.email):
        if k.public_pem == public_pem:
            raise FailedPrecondition("This public key is already registered on the account.",
                                     reason="KEY_ALREADY_EXISTS")
    now = svc.clock()
    before = min(cert.not_valid_after_utc, _expiry(svc, acct, now.replace(microsecond=0)))
    key_id = secrets.token_hex(20)
    data = _base_record(acct, key_id, public_pem, pem.decode(), cert.not_valid_before_utc, before,
                        "KEY_ALG_RSA_2048", "USER_PROVIDED")
    _commit_key(svc, caller, acct, key_id, data, "google.iam.admin.v1.UploadServiceAccountKey")
    return key_json(acct, svc.runtime.identities.keys[key_id])


def list_keys(svc: Services, caller: Caller, project: str, account: str, key_types: list[str]) -> dict[str, Any]:
    acct = resolve(svc, caller, project, account, "iam.serviceAccountKeys.list")
    wanted = set(key_types)
    bad = wanted - {"USER_MANAGED", "SYSTEM_MANAGED", "KEY_TYPE_UNSPECIFIED"}
    if bad:
        raise InvalidArgument(f"Invalid keyTypes {sorted(bad)}: use USER_MANAGED and/or SYSTEM_MANAGED.",
                              field="keyTypes")
    wanted.discard("KEY_TYPE_UNSPECIFIED")
    keys = [key_json(acct, k) for k in svc.runtime.identities.keys_of(acct.email)
            if k.unique_id == acct.unique_id and (not wanted or k.key_type in wanted)]
    return {"keys": keys} if keys else {}


def get_key(svc: Services, caller: Caller, project: str, account: str, key_id: str, public_type: str
            ) -> dict[str, Any]:
    acct = resolve(svc, caller, project, account, "iam.serviceAccountKeys.get")
    public_type = public_type or "TYPE_NONE"
    if public_type not in _PUBLIC_TYPES:
        raise InvalidArgument(f"Invalid publicKeyType {public_type!r}: use TYPE_X509_PEM_FILE or "
                              "TYPE_RAW_PUBLIC_KEY.", field="publicKeyType")
    return key_json(acct, _key_of(svc, acct, key_id), public_type)


def set_key_disabled(svc: Services, caller: Caller, project: str, account: str, key_id: str, disabled: bool
                     ) -> dict[str, Any]:
    verb = "disable" if disabled else "enable"
    acct = resolve(svc, caller, project, account, f"iam.serviceAccountKeys.{verb}")
    key = _key_of(svc, acct, key_id)
    _user_managed(key, f"{verb}d")
    if key.disabled == disabled:
        return {}

    def write(rec: Record) -> None:
        data = dict(rec.data)
        data["disabled"] = disabled
        if disabled:
            data["disableReason"] = "SERVICE_ACCOUNT_KEY_DISABLE_REASON_USER_INITIATED"
        else:
            data.pop("disableReason", None)
        svc.commit(caller, puts=[Put("sa_key", key_id, data, parent=rec.parent)],
                   expect=[Expect("sa_key", key_id, rec.revision)],
                   method=f"google.iam.admin.v1.{verb.capitalize()}ServiceAccountKey", service=SERVICE,
                   resource_name=f"{acct.relative}/keys/{key_id}")

    _write_key(svc, acct, key_id, write)
    return {}


def _write_key(svc: Services, acct: ServiceAccount, key_id: str, write: Callable[[Record], object]) -> None:
    """``write`` on the key's current record. The record also takes last-use writes (:func:`record_key_use`,
    off the request path) at any moment: an admin write that loses that race is retried on the fresh
    record — at most three times — instead of answering the caller 409."""
    for attempt in range(3):
        rec = svc.runtime.store.get("sa_key", key_id)
        if rec is None or rec.deleted:
            raise NotFound(f"Service account key {acct.relative}/keys/{key_id} not found.", field="name",
                           reason="KEY_NOT_FOUND")
        try:
            write(rec)
            return
        except Aborted:
            if attempt == 2:
                raise


def delete_key(svc: Services, caller: Caller, project: str, account: str, key_id: str) -> dict[str, Any]:
    acct = resolve(svc, caller, project, account, "iam.serviceAccountKeys.delete")
    _user_managed(_key_of(svc, acct, key_id), "deleted")
    _write_key(svc, acct, key_id, lambda rec: svc.commit(
        caller, deletes=[Delete("sa_key", key_id)], expect=[Expect("sa_key", key_id, rec.revision)],
        method="google.iam.admin.v1.DeleteServiceAccountKey", service=SERVICE,
        resource_name=f"{acct.relative}/keys/{key_id}"))
    return {}
