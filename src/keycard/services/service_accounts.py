"""IAM v1 service accounts: create/get/list/patch/disable/enable/delete/undelete, their own IAM
policy, and actAs.

A service account is a record of kind ``service_account`` named by its email; the runtime mirrors
it into the identity registry and adds the node ``//iam.googleapis.com/projects/ID/serviceAccounts/
EMAIL`` under its project to the hierarchy (the account's own allow policy lives there). Deleting
moves the record to kind ``service_account_deleted`` named by its uniqueId, together with its
policy, for 30 days: ``undelete`` (by uniqueId) puts both back if no new account took the email.
Tokens of a deleted or disabled account stop working at the next request.
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
import shlex
from collections.abc import Mapping
from typing import Any

from keycard.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from keycard.identity.registry import ServiceAccount, parse_time
from keycard.runtime import etag_for
from keycard.services import iam_policy
from keycard.services.common import Caller, Services, parse_page_size, rfc3339
from keycard.store.base import Delete, Expect, Put

__all__ = ["SERVICE", "account_json", "act_as_grant_command", "create_service_account", "require_act_as", "resolve"]

SERVICE = "iam.googleapis.com"
UNDELETE_DAYS = 30
_ACCOUNT_ID = re.compile(r"^[a-z](?:[-a-z0-9]{4,28}[a-z0-9])$")
_DISPLAY_MAX = 100
_DESCRIPTION_MAX = 256
_EMAIL_SUFFIX = ".iam.gserviceaccount.com"


# ------------------------------------------------------------------------------------ helpers

def account_json(acct: ServiceAccount, revision: int | None = None) -> dict[str, Any]:
    d = acct.data
    out: dict[str, Any] = {"name": acct.relative, "projectId": acct.project_id, "uniqueId": acct.unique_id,
                           "email": acct.email}
    for k in ("displayName", "description"):
        if d.get(k):
            out[k] = d[k]
    out["oauth2ClientId"] = acct.unique_id
    if acct.disabled:
        out["disabled"] = True
    if revision is not None:
        out["etag"] = etag_for(revision)
    return out


def _project(svc: Services, project: str) -> tuple[str, str, str]:
    """``PROJECT_ID|NUMBER`` → (full name by number, project id, number); 404 if absent."""
    from keycard.services.resourcemanager import resolve_project
    fn = resolve_project(svc, project)
    rec = svc.runtime.store.get("resource", fn)
    if rec is None or rec.data.get("state") != "ACTIVE":
        raise NotFound(f"Project projects/{project} not found.", field="name")
    return fn, str(rec.data["projectId"]), fn.rsplit("/", 1)[1]


def _shown(project: str, account: str) -> str:
    return f"//{SERVICE}/projects/{project}/serviceAccounts/{account}"


def resolve(svc: Services, caller: Caller, project: str, account: str, permission: str, *,
            allow_disabled: bool = True) -> ServiceAccount:
    """The account named ``projects/PROJECT/serviceAccounts/EMAIL_OR_UNIQUE_ID`` (PROJECT may be ``-``).

    The permission is checked first, on the account if it exists (inherited from its project), so
    a caller without it gets the same 403 whether or not the account exists.
    """
    if not account:
        raise InvalidArgument("Invalid name: expected projects/PROJECT/serviceAccounts/EMAIL_OR_UNIQUE_ID.",
                              field="name")
    acct = svc.runtime.identities.account(account)
    if acct is not None and (acct.deleted or (project != "-" and project not in (acct.project_id,
                                                                                 acct.project_number))):
        acct = None
    # a missing account under project '-' names no node: only the caller's own grants there could match
    target = acct.resource if acct is not None else _shown(project, account)
    svc.authorize(caller, permission, target, service=SERVICE, shown=_shown(project, account))
    if acct is None:
        raise NotFound(f"Service account projects/{project}/serviceAccounts/{account} not found.", field="name",
                       reason="SERVICE_ACCOUNT_NOT_FOUND")
    return acct


def act_as_grant_command(account: str, project: str, member: str) -> str:
    """The command granting ``member`` roles/iam.serviceAccountUser (which holds actAs) on service account
    ``account`` (its email), of project ``project`` when known."""
    return (f"keycard iam service-accounts add-iam-policy-binding {account}"
            + (f" --project={project}" if project else "")
            + f" --member={shlex.quote(member)} --role=roles/iam.serviceAccountUser")


def require_act_as(svc: Services, caller: Caller, email: str, *, what: str) -> ServiceAccount:
    """``iam.serviceAccounts.actAs`` on the account ``email``, for anything that will run as it."""
    acct = svc.runtime.identities.account(email)
    if acct is None or acct.deleted:
        raise InvalidArgument(f"Invalid service account {email}: it does not exist.", field="serviceAccount",
                              reason="SERVICE_ACCOUNT_NOT_FOUND")
    if svc.allowed(caller, "iam.serviceAccounts.actAs", acct.resource):
        svc.authorize(caller, "iam.serviceAccounts.actAs", acct.resource, service=SERVICE)
        return acct
    who = caller.principal or "the caller"
    grant = act_as_grant_command(acct.email, acct.project_id, who)
    caller.authorizations.append({"resource": acct.relative, "permission": "iam.serviceAccounts.actAs",
                                  "granted": False})
    if svc.enforcement == "dry-run":
        caller.would_deny.append(f"iam.serviceAccounts.actAs on {acct.relative}")
        return acct
    raise PermissionDenied(
        f"Caller {who} is missing permission 'iam.serviceAccounts.actAs' on service account {acct.email}, "
        f"needed to {what} that runs as it. Grant it with: {grant}",
        reason="IAM_PERMISSION_DENIED",
        metadata={"permission": "iam.serviceAccounts.actAs", "resource": acct.relative, "domain": SERVICE,
                  "principal": who})


def _text(body: Mapping[str, Any], key: str, limit: int, fld: str) -> str | None:
    v = body.get(key)
    if v is None:
        return None
    if not isinstance(v, str) or len(v) > limit:
        raise InvalidArgument(f"Invalid {fld}: a string of at most {limit} characters.", field=fld)
    return v


def _new_unique_id(svc: Services) -> str:
    while True:
        uid = "1" + "".join(str(secrets.randbelow(10)) for _ in range(20))
        if svc.runtime.identities.account(uid) is None:
            return uid


def _record(acct: ServiceAccount, **changes: Any) -> dict[str, Any]:
    data = dict(acct.data)
    data.update(changes)
    return data


# ---------------------------------------------------------------------- Google-managed accounts

def compute_default_email(number: str) -> str:
    return f"{number}-compute@developer.gserviceaccount.com"


def ml_service_agent_email(number: str) -> str:
    return f"service-{number}@cloud-ml.google.com.iam.gserviceaccount.com"


def managed_accounts(svc: Services, project_full: str, parent: str, pid: str, number: str
                     ) -> tuple[list[Put], list[dict[str, Any]]]:
    """What a new project gets, as in Google: the default compute service account (listed in the
    project) and the AI Platform service agent (not listed; reported by ml projects.getConfig).

    Returns the records to write and the bindings to add to the project's policy: the service
    agent gets roles/ml.serviceAgent; the compute account gets roles/editor only when the org
    policy iam.automaticIamGrantsForDefaultServiceAccounts is not enforced (``keycard init``
    enforces it).
    """
    from keycard.services.orgpolicy_api import effective
    now = rfc3339(svc.clock())
    puts: list[Put] = []
    taken: set[str] = set()
    for email, display, agent in ((compute_default_email(number), "Compute Engine default service account", False),
                                  (ml_service_agent_email(number), "AI Platform Service Agent", True)):
        uid = _new_unique_id(svc)
        while uid in taken:
            uid = _new_unique_id(svc)
        taken.add(uid)
        data: dict[str, Any] = {"name": f"projects/{pid}/serviceAccounts/{email}", "projectId": pid,
                                "uniqueId": uid, "email": email, "oauth2ClientId": uid, "displayName": display,
                                "keycardProjectNumber": number, "createTime": now, "keycardManaged": True}
        if agent:
            data["keycardServiceAgent"] = True
        puts.append(Put("service_account", email, data, parent=project_full))
    bindings: list[dict[str, Any]] = [{"role": "roles/ml.serviceAgent",
                                       "members": [f"serviceAccount:{ml_service_agent_email(number)}"]}]
    if not effective(svc, "iam.automaticIamGrantsForDefaultServiceAccounts", parent).enforced:
        bindings.append({"role": "roles/editor", "members": [f"serviceAccount:{compute_default_email(number)}"]})
    return puts, bindings


# ----------------------------------------------------------------------------------- methods

def create_service_account(svc: Services, caller: Caller, project: str, body: object, *,
                           managed_email: str | None = None, audit: bool = True) -> dict[str, Any]:
    if not isinstance(body, Mapping):
        raise InvalidArgument("Invalid request body: expected {\"accountId\": ..., \"serviceAccount\": {...}}.",
                              field="accountId")
    from keycard.services.resourcemanager import resolve_project, shown_project
    fn = resolve_project(svc, project)
    svc.authorize(caller, "iam.serviceAccounts.create", fn, service=SERVICE, shown=shown_project(project))
    fn, pid, number = _project(svc, project)
    account_id = body.get("accountId")
    if managed_email is None and (not isinstance(account_id, str) or not _ACCOUNT_ID.match(account_id)):
        raise InvalidArgument(f"Invalid accountId {account_id!r}: 6-30 characters, lower-case letters, digits and "
                              "hyphens, starting with a letter and not ending with a hyphen.", field="accountId")
    sa = body.get("serviceAccount")
    sa = {} if sa is None else sa
    if not isinstance(sa, Mapping):
        raise InvalidArgument("Invalid serviceAccount: expected an object.", field="serviceAccount")
    display = _text(sa, "displayName", _DISPLAY_MAX, "serviceAccount.displayName")
    description = _text(sa, "description", _DESCRIPTION_MAX, "serviceAccount.description")
    email = managed_email or f"{account_id}@{pid}{_EMAIL_SUFFIX}"
    if svc.runtime.store.get("service_account", email) is not None:
        raise AlreadyExists(f"Service account {email} already exists within project projects/{pid}.",
                            field="accountId", reason="SERVICE_ACCOUNT_EXISTS")
    uid = _new_unique_id(svc)
    data: dict[str, Any] = {"name": f"projects/{pid}/serviceAccounts/{email}", "projectId": pid, "uniqueId": uid,
                            "email": email, "oauth2ClientId": uid, "keycardProjectNumber": number,
                            "createTime": rfc3339(svc.clock())}
    if display:
        data["displayName"] = display
    if description:
        data["description"] = description
    svc.commit(caller, puts=[Put("service_account", email, data, parent=fn)],
               expect=[Expect("service_account", email, None)],
               method="google.iam.admin.v1.CreateServiceAccount", service=SERVICE,
               resource_name=data["name"], request=dict(body))
    acct = svc.runtime.identities.accounts[email]
    return account_json(acct, svc.runtime.store.get("service_account", email).revision  # type: ignore[union-attr]
                        )


def get_service_account(svc: Services, caller: Caller, project: str, account: str) -> dict[str, Any]:
    acct = resolve(svc, caller, project, account, "iam.serviceAccounts.get")
    rec = svc.runtime.store.get("service_account", acct.email)
    return account_json(acct, rec.revision if rec else None)


def list_service_accounts(svc: Services, caller: Caller, project: str, query: Mapping[str, str]
                          ) -> dict[str, Any]:
    from keycard.services.resourcemanager import resolve_project, shown_project
    fn = resolve_project(svc, project)
    svc.authorize(caller, "iam.serviceAccounts.list", fn, service=SERVICE, shown=shown_project(project))
    fn, _pid, _number = _project(svc, project)
    size = parse_page_size(query.get("pageSize"), 100)
    page = svc.runtime.store.list("service_account", parent=fn, page_size=size,
                                  page_token=query.get("pageToken", ""))
    out: list[dict[str, Any]] = []
    for rec in page.records:
        acct = svc.runtime.identities.accounts.get(rec.name)
        if acct is not None and not acct.deleted and not acct.data.get("keycardServiceAgent"):
            out.append(account_json(acct, rec.revision))
    result: dict[str, Any] = {"accounts": out} if out else {}
    if page.next_token:
        result["nextPageToken"] = page.next_token
    return result


def patch_service_account(svc: Services, caller: Caller, project: str, account: str, body: object
                          ) -> dict[str, Any]:
    acct = resolve(svc, caller, project, account, "iam.serviceAccounts.update")
    if not isinstance(body, Mapping) or not isinstance(body.get("serviceAccount", {}), Mapping):
        raise InvalidArgument("Invalid request body: expected {\"serviceAccount\": {...}, \"updateMask\": ...}.",
                              field="serviceAccount")
    sa: Mapping[str, Any] = body.get("serviceAccount") or {}
    mask_raw = body.get("updateMask")
    if mask_raw is None:
        fields = {k for k in ("displayName", "description") if k in sa}
    elif isinstance(mask_raw, str):
        fields = {f.strip() for f in mask_raw.split(",") if f.strip()}
    else:
        raise InvalidArgument("Invalid updateMask: a comma-separated list of field names.", field="updateMask")
    fields = {"displayName" if f == "display_name" else f for f in fields}
    if not fields or fields - {"displayName", "description"}:
        raise InvalidArgument("Invalid updateMask: displayName and description can be updated on a service account.",
                              field="updateMask")
    rec = svc.runtime.store.get("service_account", acct.email)
    assert rec is not None
    etag = sa.get("etag")
    if etag:
        from keycard.runtime import revision_from_etag
        if revision_from_etag(str(etag), "serviceAccount.etag") != rec.revision:
            from keycard.errors import Aborted
            raise Aborted("The service account changed since it was read; read it again and retry.",
                          reason="ETAG_MISMATCH")
    changes: dict[str, Any] = {}
    echoed: dict[str, Any] = {"name": acct.relative}
    if "displayName" in fields:
        changes["displayName"] = _text(sa, "displayName", _DISPLAY_MAX, "serviceAccount.displayName") or ""
        echoed["displayName"] = changes["displayName"]
    if "description" in fields:
        changes["description"] = _text(sa, "description", _DESCRIPTION_MAX, "serviceAccount.description") or ""
        echoed["description"] = changes["description"]
    revision = svc.commit(caller, puts=[Put("service_account", acct.email, _record(acct, **changes),
                                            parent=rec.parent)],
                          expect=[Expect("service_account", acct.email, rec.revision)],
                          method="google.iam.admin.v1.PatchServiceAccount", service=SERVICE,
                          resource_name=acct.relative, request=dict(body))
    echoed["etag"] = etag_for(revision)
    return echoed


def set_disabled(svc: Services, caller: Caller, project: str, account: str, disabled: bool) -> dict[str, Any]:
    verb = "disable" if disabled else "enable"
    acct = resolve(svc, caller, project, account, f"iam.serviceAccounts.{verb}")
    rec = svc.runtime.store.get("service_account", acct.email)
    assert rec is not None
    if acct.disabled == disabled:
        return {}
    svc.commit(caller, puts=[Put("service_account", acct.email, _record(acct, disabled=disabled), parent=rec.parent)],
               expect=[Expect("service_account", acct.email, rec.revision)],
               method=f"google.iam.admin.v1.{verb.capitalize()}ServiceAccount", service=SERVICE,
               resource_name=acct.relative)
    return {}


def _rewrite_member(svc: Services, old: str, new: str, skip: str) -> tuple[list[Put], list[Expect]]:
    """Every allow policy that names ``old`` as a member, rewritten to name ``new`` instead.

    Google does this when an account is deleted (members become ``deleted:serviceAccount:EMAIL?uid=N``,
    so a new account that reuses the email inherits nothing) and back when it is undeleted. A scan of
    the policies: deletion is rare and this keeps the engine free of a reverse index.
    """
    puts: list[Put] = []
    expect: list[Expect] = []
    for rec in svc.runtime.store.scan(["iam_policy"]):
        if rec.name == skip or rec.deleted:
            continue
        bindings = rec.data.get("bindings") or []
        if not any(old in (b.get("members") or []) for b in bindings if isinstance(b, Mapping)):
            continue
        changed = [{**b, "members": [new if m == old else m for m in (b.get("members") or [])]}
                   if isinstance(b, Mapping) else b for b in bindings]
        puts.append(Put("iam_policy", rec.name, {**rec.data, "bindings": changed}, parent=rec.parent))
        expect.append(Expect("iam_policy", rec.name, rec.revision))
    return puts, expect


def delete_service_account(svc: Services, caller: Caller, project: str, account: str) -> dict[str, Any]:
    acct = resolve(svc, caller, project, account, "iam.serviceAccounts.delete")
    store = svc.runtime.store
    rec = store.get("service_account", acct.email)
    assert rec is not None
    policy = store.get("iam_policy", acct.resource)
    tomb = {**rec.data, "deleteTime": rfc3339(svc.clock()), "keycardParent": rec.parent,
            "keycardPolicy": dict(policy.data) if policy else None}
    deletes = [Delete("service_account", acct.email)]
    expect = [Expect("service_account", acct.email, rec.revision)]
    if policy is not None:
        deletes.append(Delete("iam_policy", acct.resource))
        expect.append(Expect("iam_policy", acct.resource, policy.revision))
    rewrites, rewrite_expect = _rewrite_member(svc, acct.member, f"deleted:{acct.member}?uid={acct.unique_id}",
                                               skip=acct.resource)
    svc.commit(caller, puts=[Put("service_account_deleted", acct.unique_id, tomb, parent=rec.parent), *rewrites],
               deletes=deletes, expect=[*expect, *rewrite_expect], method="google.iam.admin.v1.DeleteServiceAccount",
               service=SERVICE, resource_name=acct.relative)
    return {}


def undelete_service_account(svc: Services, caller: Caller, project: str, account: str) -> dict[str, Any]:
    from keycard.services.resourcemanager import resolve_project, shown_project
    fn = resolve_project(svc, project) if project != "-" else None
    store = svc.runtime.store
    tomb = store.get("service_account_deleted", account) if account.isdigit() else None
    parent = fn or (str(tomb.data.get("keycardParent")) if tomb is not None else None)
    if parent is None:
        raise PermissionDenied("Permission 'iam.serviceAccounts.undelete' denied on resource (or it may not exist).",
                               reason="IAM_PERMISSION_DENIED",
                               metadata={"permission": "iam.serviceAccounts.undelete", "domain": SERVICE})
    svc.authorize(caller, "iam.serviceAccounts.undelete", parent, service=SERVICE,
                  shown=shown_project(project) if fn else None)
    if tomb is None or (fn is not None and tomb.parent != fn):
        raise NotFound(f"Deleted service account with unique id {account} not found; undelete takes the "
                       "account's numeric uniqueId.", field="name", reason="SERVICE_ACCOUNT_NOT_FOUND")
    deleted_at = parse_time(tomb.data.get("deleteTime"))
    if deleted_at is not None and svc.clock() - deleted_at > dt.timedelta(days=UNDELETE_DAYS):
        raise FailedPrecondition(f"Service account {tomb.data.get('email')} was deleted more than "
                                 f"{UNDELETE_DAYS} days ago and can no longer be restored.", reason="TOO_LATE")
    email = str(tomb.data["email"])
    if store.get("service_account", email) is not None:
        raise FailedPrecondition(f"Cannot undelete {email}: a new service account now has this email. Delete or "
                                 "rename it first.", reason="EMAIL_TAKEN")
    if store.get("resource", str(tomb.parent)) is None:
        raise FailedPrecondition(f"Cannot undelete {email}: its project no longer exists.", reason="NO_PROJECT")
    data = {k: v for k, v in tomb.data.items() if k not in ("deleteTime", "keycardParent", "keycardPolicy")}
    puts = [Put("service_account", email, data, parent=tomb.parent)]
    policy = tomb.data.get("keycardPolicy")
    resource = f"//{SERVICE}/projects/{data['projectId']}/serviceAccounts/{email}"
    if isinstance(policy, Mapping):
        puts.append(Put("iam_policy", resource, policy))
    member = f"serviceAccount:{email}"
    rewrites, rewrite_expect = _rewrite_member(svc, f"deleted:{member}?uid={account}", member, skip=resource)
    svc.commit(caller, puts=[*puts, *rewrites], deletes=[Delete("service_account_deleted", account)],
               expect=[Expect("service_account_deleted", account, tomb.revision),
                       Expect("service_account", email, None), *rewrite_expect],
               method="google.iam.admin.v1.UndeleteServiceAccount", service=SERVICE,
               resource_name=str(data["name"]))
    acct = svc.runtime.identities.accounts[email]
    return {"restoredAccount": account_json(acct)}


# -------------------------------------------------------------------------- the account's policy

def get_iam_policy(svc: Services, caller: Caller, project: str, account: str, version: int) -> dict[str, Any]:
    acct = resolve(svc, caller, project, account, "iam.serviceAccounts.getIamPolicy")
    return iam_policy.get_iam_policy(svc, caller, acct.resource, permission="iam.serviceAccounts.getIamPolicy",
                                     service=SERVICE, version=version)


def set_iam_policy(svc: Services, caller: Caller, project: str, account: str, body: object,
                   allow_lockout: bool) -> dict[str, Any]:
    acct = resolve(svc, caller, project, account, "iam.serviceAccounts.setIamPolicy")
    return iam_policy.set_iam_policy(svc, caller, acct.resource, body if isinstance(body, Mapping) else {},
                                     permission="iam.serviceAccounts.setIamPolicy", service=SERVICE,
                                     method="google.iam.admin.v1.SetIAMPolicy", allow_lockout=allow_lockout)


def test_iam_permissions(svc: Services, caller: Caller, project: str, account: str, body: object
                         ) -> dict[str, Any]:
    acct = svc.runtime.identities.account(account)
    target = acct.resource if acct is not None and not acct.deleted else _shown(project, account)
    return iam_policy.test_iam_permissions(svc, caller, target, body if isinstance(body, Mapping) else {})
