"""Audit entries for minting credentials, in Cloud Audit Logs' shape (Data Access log):

- STS ``ExchangeToken`` (``sts.googleapis.com``, ``google.identity.sts.v1.SecurityTokenService.
  ExchangeToken``): the principal is the federated principal the token was minted for
  (``authenticationInfo.principalSubject``), the resource the provider, ``metadata.mapAttributes`` what
  the provider's attributeMapping gave (subject, groups, attributes);
- IAM Credentials ``GenerateAccessToken`` / ``GenerateIdToken`` / ``SignJwt`` / ``SignBlob``
  (``iamcredentials.googleapis.com``): the caller, the target account
  (``projects/-/serviceAccounts/UNIQUE_ID``), the permission checks of every hop
  (``authorizationInfo``) and ``metadata.identityDelegationChain``.

Unlike Google, where these are Data Access logs an administrator must first turn on, keycard always
writes them: minting a credential is what an investigation needs to see. The request is rebuilt from
an allow-list of fields (never copied), so no subject token, access token, ID token, signed JWT,
signature, payload or private key can reach the log. The entry is written before the credential is
returned: if the audit log cannot be written, no credential leaves the server.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from keycard.identity.registry import ServiceAccount
from keycard.services.common import Caller, Services

__all__ = ["audit_iam_credentials", "audit_sts_exchange"]

STS_SERVICE = "sts.googleapis.com"
STS_METHOD = "google.identity.sts.v1.SecurityTokenService.ExchangeToken"
IAMCREDENTIALS = "iamcredentials.googleapis.com"
_STS_REQUEST_FIELDS = {"grant_type": "grantType", "audience": "audience", "scope": "scope",
                       "requested_token_type": "requestedTokenType", "subject_token_type": "subjectTokenType"}
_CREDENTIALS_REQUEST_FIELDS = ("scope", "lifetime", "audience", "includeEmail", "organizationNumberIncluded")


def _write(svc: Services, caller: Caller, *, method: str, service: str, resource_name: str,
           request: Mapping[str, Any], metadata: Mapping[str, Any],
           authentication: Mapping[str, Any] | None = None) -> None:
    entry = svc.audit_entry(caller, method=method, service=service, resource_name=resource_name, request=request,
                            response=None, service_data=None, log="data_access")
    payload = entry["protoPayload"]
    if authentication is None and caller.principal is not None and caller.principal.startswith("principal://"):
        authentication = {"principalSubject": caller.principal}          # a federated caller, as Google shows it
    if authentication is not None:
        payload["authenticationInfo"] = dict(authentication)
    payload["metadata"] = dict(metadata)
    svc.runtime.store.append_audit([entry])


def audit_sts_exchange(svc: Services, *, principal: str, provider: str, request: Mapping[str, str], subject: str,
                       groups: Sequence[str], attributes: Mapping[str, Any], lifetime: int) -> None:
    """One STS token exchange that minted a token for ``principal`` through ``provider``
    (``projects/N/locations/global/workloadIdentityPools/P/providers/Q``)."""
    req: dict[str, Any] = {"@type": "type.googleapis.com/google.identity.sts.v1.ExchangeTokenRequest"}
    for snake, camel in _STS_REQUEST_FIELDS.items():
        if request.get(snake):
            req[camel] = request[snake]
    mapped: dict[str, Any] = {"google.subject": subject}
    if groups:
        mapped["google.groups"] = list(groups)
    mapped.update({f"attribute.{k}": v for k, v in attributes.items()})
    caller = Caller(principal)
    _write(svc, caller, method=STS_METHOD, service=STS_SERVICE, resource_name=provider, request=req,
           metadata={"mapAttributes": mapped, "expiresInSeconds": lifetime},
           authentication={"principalSubject": principal})


def audit_iam_credentials(svc: Services, caller: Caller, *, method: str, target: ServiceAccount,
                          delegates: Sequence[ServiceAccount], body: Mapping[str, Any], key_id: str | None = None,
                          service: str = IAMCREDENTIALS) -> None:
    """One IAM Credentials call (``method``: GenerateAccessToken, GenerateIdToken, SignJwt, SignBlob) that
    minted or signed for ``target`` through ``delegates``."""
    name = f"projects/-/serviceAccounts/{target.unique_id}"
    req: dict[str, Any] = {"@type": f"type.googleapis.com/google.iam.credentials.v1.{method}Request", "name": name}
    if delegates:
        req["delegates"] = [f"projects/-/serviceAccounts/{d.email}" for d in delegates]
    for f in _CREDENTIALS_REQUEST_FIELDS:
        if f in body and isinstance(body[f], str | bool | list):
            req[f] = body[f]
    chain = [f"projects/-/serviceAccounts/{a.email}" for a in (*delegates, target)]
    metadata: dict[str, Any] = {"identityDelegationChain": chain}
    if key_id is not None:
        metadata["keyId"] = key_id
    _write(svc, caller, method=method, service=service, resource_name=name, request=req, metadata=metadata)
