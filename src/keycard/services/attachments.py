"""Metadata-server attachments: keycard's equivalent of attaching a service account to a VM.

``keycard metadata-server --service-account EMAIL`` creates one when it starts and deletes it when
it stops; what the process then hands out are tokens of the account, minted here in exchange for
the attachment's secret.

    POST   /v1/projects/P/serviceAccounts/A/keycardAttachments       create (needs actAs on A)
    GET    /v1/projects/P/serviceAccounts/A/keycardAttachments       list (needs iam.serviceAccounts.get)
    DELETE /v1/projects/P/serviceAccounts/A/keycardAttachments/ID    revoke (needs actAs *or* update on A)
    POST   /v1/keycardAttachments/ID:generateAccessToken   {secret, scope}          public: the secret is the
    POST   /v1/keycardAttachments/ID:generateIdToken       {secret, audience, format}   credential
    POST   /v1/keycardAttachments/ID:check                 {secret}  is it still live (the metadata server
                                                                     asks before serving a cached token)
    POST   /v1/keycardAttachments/ID:detach                {secret}  the holder revokes its own attachment

Creating requires ``iam.serviceAccounts.actAs`` on the account, like attaching an account to a VM
in Google: whoever can start a metadata server can run code as the account. Revoking accepts
either ``iam.serviceAccounts.actAs`` (whoever may attach may detach, e.g. after a crash) or
``iam.serviceAccounts.update`` (the account's administrators, ``roles/iam.serviceAccountAdmin``,
who hold no actAs, must be able to cut a metadata server off). The secret (32 random bytes) is
returned once by create; only its SHA-256 is stored, and it never reaches the audit log.

Tokens minted through an attachment carry its id in the ``att`` claim (and the account's
uniqueId in ``uid``): the authenticator refuses them at the next request once the attachment is
deleted, or the account is disabled or deleted.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping
from typing import Any

from keycard.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied, Unauthenticated
from keycard.identity.registry import ServiceAccount
from keycard.identity.tokens import KeySet
from keycard.services.common import Caller, Services, rfc3339
from keycard.services.service_accounts import SERVICE, act_as_grant_command, require_act_as, resolve
from keycard.store.base import Delete, Expect, Put

__all__ = ["KIND", "MAX_ATTACHMENTS", "TOKEN_LIFETIME", "check", "create_attachment", "delete_attachment",
           "detach", "generate_access_token", "generate_id_token", "list_attachments"]

KIND = "sa_attachment"
ACT_AS = "iam.serviceAccounts.actAs"
WHAT = "attach a metadata server"
MAX_ATTACHMENTS = 100                 # per account
TOKEN_LIFETIME = 3600
DEFAULT_SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
_DISPLAY_MAX = 100
_MAX_SCOPES = 50
_AUDIENCE_MAX = 2048
_NO_SUCH_SECRET = hashlib.sha256(b"keycard: no such attachment").hexdigest()


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _shown(project: str, account: str) -> str:
    return f"//{SERVICE}/projects/{project}/serviceAccounts/{account}"


def attachment_json(acct_project: str, data: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"name": f"projects/{acct_project}/serviceAccounts/{data['serviceAccount']}"
                                   f"/keycardAttachments/{data['id']}",
                           "serviceAccount": data["serviceAccount"], "uniqueId": data["uniqueId"],
                           "creator": data.get("creator", ""), "createTime": data.get("createTime", "")}
    if data.get("displayName"):
        out["displayName"] = data["displayName"]
    return out


def _of(svc: Services, acct: ServiceAccount) -> list[Mapping[str, Any]]:
    return sorted((a for a in svc.runtime.identities.attachments.values() if a.get("uniqueId") == acct.unique_id),
                  key=lambda a: (str(a.get("createTime", "")), str(a.get("id", ""))))


# ------------------------------------------------------------------------------- authorization

def _act_as(svc: Services, caller: Caller, project: str, account: str) -> ServiceAccount:
    """actAs on the account, checked before its existence: a caller without it gets the same 403
    (naming the account as written and the grant command) whether or not the account exists."""
    acct = svc.runtime.identities.account(account)
    if acct is not None and (acct.deleted or (project != "-" and project not in (acct.project_id,
                                                                                 acct.project_number))):
        acct = None
    if acct is not None and (svc.allowed(caller, ACT_AS, acct.resource)
                             or (account.lower() == acct.email and project in ("-", acct.project_id))):
        return require_act_as(svc, caller, acct.email, what=WHAT)      # grants, or the 403 with the command
    shown = _shown(project, account)
    if acct is None and project != "-" and svc.allowed(caller, ACT_AS, shown):
        svc.authorize(caller, ACT_AS, shown, service=SERVICE)
        raise NotFound(f"Service account projects/{project}/serviceAccounts/{account} not found.", field="name",
                       reason="SERVICE_ACCOUNT_NOT_FOUND")
    who = caller.principal or "the caller"
    relative = f"projects/{project}/serviceAccounts/{account}"
    caller.authorizations.append({"resource": relative, "permission": ACT_AS, "granted": False})
    if svc.enforcement == "dry-run":
        caller.would_deny.append(f"{ACT_AS} on {relative}")
        if acct is None:
            raise NotFound(f"Service account {relative} not found.", field="name", reason="SERVICE_ACCOUNT_NOT_FOUND")
        return acct
    # the words of require_act_as, with the account as the caller named it
    pid = project if project != "-" else (account.split("@", 1)[1].split(".", 1)[0]
                                          if account.lower().endswith(".iam.gserviceaccount.com") else "")
    grant = act_as_grant_command(account, pid, who)
    raise PermissionDenied(
        f"Caller {who} is missing permission '{ACT_AS}' on service account {account}, needed to {WHAT} that "
        f"runs as it. Grant it with: {grant}",
        reason="IAM_PERMISSION_DENIED",
        metadata={"permission": ACT_AS, "resource": f"projects/{pid or project}/serviceAccounts/{account}",
                  "domain": SERVICE, "principal": who})


# ----------------------------------------------------------------------------- admin methods

def create_attachment(svc: Services, caller: Caller, project: str, account: str, body: object) -> dict[str, Any]:
    acct = _act_as(svc, caller, project, account)
    if body is None:
        body = {}
    if not isinstance(body, Mapping):
        raise InvalidArgument("Invalid request body: expected {\"displayName\": ...} or {}.", field="body")
    display = body.get("displayName")
    if display is not None and (not isinstance(display, str) or len(display) > _DISPLAY_MAX):
        raise InvalidArgument(f"Invalid displayName: a string of at most {_DISPLAY_MAX} characters.",
                              field="displayName")
    if not acct.usable:
        raise FailedPrecondition(f"Service account {acct.email} is disabled: enable it before attaching a metadata "
                                 "server to it.", reason="SERVICE_ACCOUNT_DISABLED")
    if len(_of(svc, acct)) >= MAX_ATTACHMENTS:
        raise FailedPrecondition(f"Service account {acct.email} already has {MAX_ATTACHMENTS} metadata-server "
                                 "attachments, the most an account may hold; delete stale ones first.",
                                 reason="ATTACHMENT_LIMIT_REACHED")
    acct_rec = svc.runtime.store.get("service_account", acct.email)
    if acct_rec is None:
        raise NotFound(f"Service account {acct.relative} not found.", field="name", reason="SERVICE_ACCOUNT_NOT_FOUND")
    attachment_id = secrets.token_hex(10)
    secret = secrets.token_urlsafe(32)
    data: dict[str, Any] = {"id": attachment_id, "serviceAccount": acct.email, "uniqueId": acct.unique_id,
                            "creator": caller.email, "createTime": rfc3339(svc.clock()),
                            "keycardSecretSha256": _digest(secret)}
    if display:
        data["displayName"] = display
    out = attachment_json(acct.project_id, data)
    svc.commit(caller, puts=[Put(KIND, attachment_id, data, parent=acct.email)],
               expect=[Expect(KIND, attachment_id, None), Expect("service_account", acct.email, acct_rec.revision)],
               method="keycard.iam.v1.CreateServiceAccountAttachment", service=SERVICE, resource_name=out["name"],
               request={"parent": acct.relative, **({"displayName": display} if display else {})})
    out["secret"] = secret
    out["projectId"] = acct.project_id
    out["projectNumber"] = acct.project_number
    return out


def list_attachments(svc: Services, caller: Caller, project: str, account: str) -> dict[str, Any]:
    acct = resolve(svc, caller, project, account, "iam.serviceAccounts.get")
    found = [attachment_json(acct.project_id, a) for a in _of(svc, acct)]
    return {"attachments": found} if found else {}


def delete_attachment(svc: Services, caller: Caller, project: str, account: str, attachment_id: str
                      ) -> dict[str, Any]:
    known = svc.runtime.identities.account(account)
    if known is not None and not known.deleted and svc.allowed(caller, "iam.serviceAccounts.update", known.resource):
        acct = resolve(svc, caller, project, account, "iam.serviceAccounts.update")
    else:
        acct = resolve(svc, caller, project, account, ACT_AS)
    rec = svc.runtime.store.get(KIND, attachment_id)
    if rec is None or rec.data.get("uniqueId") != acct.unique_id:
        raise NotFound(f"Attachment {acct.relative}/keycardAttachments/{attachment_id} not found.", field="name",
                       reason="ATTACHMENT_NOT_FOUND")
    svc.commit(caller, deletes=[Delete(KIND, attachment_id)], expect=[Expect(KIND, attachment_id, rec.revision)],
               method="keycard.iam.v1.DeleteServiceAccountAttachment", service=SERVICE,
               resource_name=f"{acct.relative}/keycardAttachments/{attachment_id}")
    return {}


# -------------------------------------------------------------- the attachment's own methods

def _authenticate(svc: Services, attachment_id: str, body: object) -> tuple[Mapping[str, Any], ServiceAccount]:
    """The attachment whose secret the body carries, and its (usable) account; 401 otherwise — the same
    401 whether the attachment does not exist or the secret is wrong."""
    if not isinstance(body, Mapping):
        raise InvalidArgument("Invalid request body: expected a JSON object with the attachment's secret.",
                              field="body")
    secret = body.get("secret")
    if not isinstance(secret, str) or not secret:
        raise Unauthenticated("Request is missing the attachment's secret (field \"secret\").",
                              reason="CREDENTIALS_MISSING")
    data = svc.runtime.identities.attachments.get(attachment_id)
    expected = str(data.get("keycardSecretSha256", "")) if data is not None else _NO_SUCH_SECRET
    if not hmac.compare_digest(_digest(secret), expected) or data is None:
        raise Unauthenticated(f"Invalid attachment credentials for keycardAttachments/{attachment_id}: the attachment "
                              "was deleted or the secret is wrong. Start the metadata server again to attach anew.",
                              reason="ATTACHMENT_CREDENTIALS_INVALID")
    acct = svc.runtime.identities.account(str(data.get("serviceAccount", "")))
    if acct is None or acct.deleted or acct.unique_id != data.get("uniqueId"):
        raise FailedPrecondition(f"Service account {data.get('serviceAccount')} of this attachment was deleted.",
                                 reason="SERVICE_ACCOUNT_DELETED")
    if acct.disabled:
        raise FailedPrecondition(f"Service account {acct.email} is disabled; enable it to get tokens for it.",
                                 reason="SERVICE_ACCOUNT_DISABLED")
    return data, acct


def _scopes(body: Mapping[str, Any]) -> list[str]:
    raw = body.get("scope")
    if raw is None or raw == [] or raw == "":
        return list(DEFAULT_SCOPES)
    if isinstance(raw, str):
        raw = raw.replace(",", " ").split()
    if not isinstance(raw, list) or len(raw) > _MAX_SCOPES or not all(isinstance(s, str) and s and " " not in s
                                                                       for s in raw):
        raise InvalidArgument(f"Invalid scope: a list of at most {_MAX_SCOPES} OAuth scopes, e.g. "
                              "[\"https://www.googleapis.com/auth/cloud-platform\"].", field="scope")
    return list(dict.fromkeys(raw))


def _audit(svc: Services, acct: ServiceAccount, method: str) -> None:
    """A Data Access entry when the account's (inherited) auditConfigs ask for iam.googleapis.com reads."""
    caller = Caller(acct.member, resource=acct.resource)
    svc.audit_read(caller, method=method, service=SERVICE, log_type="DATA_READ")


def generate_access_token(svc: Services, keys: KeySet, attachment_id: str, body: object) -> dict[str, Any]:
    _data, acct = _authenticate(svc, attachment_id, body)
    assert isinstance(body, Mapping)
    scopes = _scopes(body)
    at = keys.mint(acct.member, now=svc.clock(), lifetime=TOKEN_LIFETIME, scopes=scopes,
                   extra={"uid": acct.unique_id, "att": attachment_id})
    _audit(svc, acct, "keycard.iam.v1.GenerateAttachmentAccessToken")
    return {"accessToken": at.token, "expireTime": at.expires_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "expiresIn": TOKEN_LIFETIME, "scope": scopes}


def generate_id_token(svc: Services, keys: KeySet, attachment_id: str, body: object, *, issuer: str
                      ) -> dict[str, Any]:
    _data, acct = _authenticate(svc, attachment_id, body)
    assert isinstance(body, Mapping)
    audience = body.get("audience")
    if not isinstance(audience, str) or not audience.strip() or len(audience) > _AUDIENCE_MAX:
        raise InvalidArgument("Invalid audience: a non-empty string (the URL of the service that will receive the "
                              "token).", field="audience")
    fmt = body.get("format") or "standard"
    if fmt not in ("standard", "full"):
        raise InvalidArgument(f"Invalid format {fmt!r}: use standard or full.", field="format")
    extra: dict[str, Any] = {"azp": acct.unique_id}
    if fmt == "full":
        extra.update({"email": acct.email, "email_verified": True})
    token = keys.mint_id_token(issuer=issuer, subject=acct.unique_id, audience=audience, now=svc.clock(),
                               lifetime=TOKEN_LIFETIME, extra=extra)
    _audit(svc, acct, "keycard.iam.v1.GenerateAttachmentIdToken")
    return {"token": token}


def check(svc: Services, attachment_id: str, body: object) -> dict[str, Any]:
    data, acct = _authenticate(svc, attachment_id, body)
    return {**attachment_json(acct.project_id, data), "state": "ACTIVE"}


def detach(svc: Services, attachment_id: str, body: object) -> dict[str, Any]:
    """The holder of the secret revokes its own attachment (a metadata server's clean shutdown: its
    creator's token may have expired long before)."""
    if not isinstance(body, Mapping):
        raise InvalidArgument("Invalid request body: expected a JSON object with the attachment's secret.",
                              field="body")
    secret = body.get("secret")
    data = svc.runtime.identities.attachments.get(attachment_id)
    expected = str(data.get("keycardSecretSha256", "")) if data is not None else _NO_SUCH_SECRET
    if not isinstance(secret, str) or not hmac.compare_digest(_digest(secret), expected) or data is None:
        raise Unauthenticated(f"Invalid attachment credentials for keycardAttachments/{attachment_id}: the attachment "
                              "was deleted or the secret is wrong.", reason="ATTACHMENT_CREDENTIALS_INVALID")
    rec = svc.runtime.store.get(KIND, attachment_id)
    if rec is None:
        return {}
    acct = svc.runtime.identities.account(str(data.get("serviceAccount", "")))
    project = acct.project_id if acct is not None else "-"
    caller = Caller(None)
    svc.commit(caller, deletes=[Delete(KIND, attachment_id)], expect=[Expect(KIND, attachment_id, rec.revision)],
               method="keycard.iam.v1.DetachServiceAccountAttachment", service=SERVICE,
               resource_name=f"projects/{project}/serviceAccounts/{data.get('serviceAccount')}"
                             f"/keycardAttachments/{attachment_id}",
               service_data={"authenticatedBy": "the attachment's secret", "creator": data.get("creator", "")})
    return {}
