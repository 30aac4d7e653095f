"""Optional gRPC listener for ``google.iam.admin.v1.IAM``: google-cloud-iam's ``IAMClient`` has no REST transport.

Every RPC translates its protobuf request into the JSON body / query the REST route would have
received (``json_format.MessageToDict``: camelCase names, enums as names, bytes as base64), calls
the same service function as the REST route, and parses the JSON answer back into the response
message (base64 → bytes, so a key's ``privateKeyData`` arrives as the key file itself). No second
implementation: authorization, validation, audit entries and commits are the services'.

Authentication: ``authorization: Bearer TOKEN`` metadata, verified by the HTTP app's own
Authenticator (same process, same Services/Runtime). By default the listener uses
``grpc.local_server_credentials(LOCAL_TCP)`` on 127.0.0.1 — plaintext loopback over which gRPC
clients still send call credentials. Errors: a KeycardError becomes its gRPC status code with the
message and a ``google.rpc.Status`` (with ``ErrorInfo``) in ``grpc-status-details-bin``; anything
else is logged and answered INTERNAL. Each answer carries ``x-keycard-revision`` trailing metadata,
and a request may send ``x-keycard-revision`` to read its own writes on a follower.

Not served (UNIMPLEMENTED): UpdateServiceAccount (deprecated PUT), SignBlob/SignJwt (deprecated;
use IAM Credentials), LintPolicy, QueryAuditableServices.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc  # type: ignore[import-untyped]
from google.cloud.iam_admin_v1 import types as T
from google.iam.v1 import iam_policy_pb2, policy_pb2  # type: ignore[import-untyped]
from google.protobuf import empty_pb2, json_format  # type: ignore[import-untyped]
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]

from keycard.errors import InvalidArgument, KeycardError, Unauthenticated
from keycard.identity.authn import Authenticator
from keycard.identity.tokens import AccessToken
from keycard.services import iam_policy
from keycard.services import iam_roles as roles
from keycard.services import sa_keys as keys
from keycard.services import service_accounts as sa
from keycard.services.common import Caller, Services

__all__ = ["GRPC_SERVICE", "IamGrpc", "start_grpc_server"]

log = logging.getLogger("keycard.grpc")
GRPC_SERVICE = "google.iam.admin.v1.IAM"
_DOMAIN = "iam.googleapis.com"
_EMPTY: dict[str, Any] = {}

Json = dict[str, Any]
Impl = Callable[[Json, Caller], Json]


# ---------------------------------------------------------------------------------- resource names

def _parts(name: object, fld: str, shape: str, n: int, fixed: Mapping[int, str]) -> list[str]:
    segs = name.split("/") if isinstance(name, str) else []
    if len(segs) != n or any(not s for s in segs) or any(segs[i] != v for i, v in fixed.items()):
        raise InvalidArgument(f"Invalid {fld} {name!r}: expected {shape}.", field=fld)
    return segs


def _project(name: object, fld: str = "name") -> str:
    return _parts(name, fld, "projects/PROJECT", 2, {0: "projects"})[1]


def _account(name: object, fld: str = "name") -> tuple[str, str]:
    s = _parts(name, fld, "projects/PROJECT/serviceAccounts/EMAIL_OR_UNIQUE_ID", 4,
               {0: "projects", 2: "serviceAccounts"})
    return s[1], s[3]


def _key(name: object) -> tuple[str, str, str]:
    s = _parts(name, "name", "projects/PROJECT/serviceAccounts/EMAIL/keys/KEY_ID", 6,
               {0: "projects", 2: "serviceAccounts", 4: "keys"})
    return s[1], s[3], s[5]


def _parent(name: object, fld: str = "parent") -> tuple[str, str]:
    segs = name.split("/") if isinstance(name, str) else []
    if len(segs) != 2 or segs[0] not in ("projects", "organizations") or not segs[1]:
        raise InvalidArgument(f"Invalid {fld} {name!r}: expected projects/PROJECT or organizations/NUMBER.",
                              field=fld)
    return segs[0], segs[1]


def _custom_role(name: object) -> tuple[str, str, str]:
    """``projects/P/roles/R`` or ``organizations/O/roles/R`` → (kind, ident, role id)."""
    segs = name.split("/") if isinstance(name, str) else []
    if len(segs) == 2 and segs[0] == "roles":
        raise InvalidArgument(f"Invalid name {name!r}: predefined roles cannot be changed; name a custom role, "
                              "projects/PROJECT/roles/ROLE or organizations/NUMBER/roles/ROLE.", field="name")
    if len(segs) != 4 or segs[2] != "roles" or not segs[3]:
        raise InvalidArgument(f"Invalid name {name!r}: expected projects/PROJECT/roles/ROLE or "
                              "organizations/NUMBER/roles/ROLE.", field="name")
    kind, ident = _parent("/".join(segs[:2]), "name")
    return kind, ident, segs[3]


def _query(req: Json, *keys_: str) -> dict[str, str]:
    """Request fields as the string query parameters of the REST route (booleans as ``true``)."""
    out: dict[str, str] = {}
    for k in keys_:
        v = req.get(k)
        if v not in (None, "", 0, False):
            out[k] = "true" if v is True else str(v)
    return out


# ------------------------------------------------------------------------------------ the methods

class IamGrpc:
    """The ``google.iam.admin.v1.IAM`` methods over keycard's services."""

    def __init__(self, services: Services, authn: Authenticator, *, base_url: str) -> None:
        self.svc = services
        self.authn = authn
        self.token_uri = base_url.rstrip("/") + "/token"

    # -------------------------------------------------------------------- service accounts
    def list_service_accounts(self, r: Json, c: Caller) -> Json:
        return sa.list_service_accounts(self.svc, c, _project(r.get("name")), _query(r, "pageSize", "pageToken"))

    def get_service_account(self, r: Json, c: Caller) -> Json:
        return sa.get_service_account(self.svc, c, *_account(r.get("name")))

    def create_service_account(self, r: Json, c: Caller) -> Json:
        body = {k: r[k] for k in ("accountId", "serviceAccount") if k in r}
        return sa.create_service_account(self.svc, c, _project(r.get("name")), body)

    def patch_service_account(self, r: Json, c: Caller) -> Json:
        account = r.get("serviceAccount") or {}
        return sa.patch_service_account(self.svc, c, *_account(account.get("name"), "serviceAccount.name"), r)

    def delete_service_account(self, r: Json, c: Caller) -> Json:
        return sa.delete_service_account(self.svc, c, *_account(r.get("name")))

    def undelete_service_account(self, r: Json, c: Caller) -> Json:
        return sa.undelete_service_account(self.svc, c, *_account(r.get("name")))

    def enable_service_account(self, r: Json, c: Caller) -> Json:
        return sa.set_disabled(self.svc, c, *_account(r.get("name")), False)

    def disable_service_account(self, r: Json, c: Caller) -> Json:
        return sa.set_disabled(self.svc, c, *_account(r.get("name")), True)

    # ---------------------------------------------------------------------------------- keys
    def list_keys(self, r: Json, c: Caller) -> Json:
        return keys.list_keys(self.svc, c, *_account(r.get("name")), [str(t) for t in r.get("keyTypes", [])])

    def get_key(self, r: Json, c: Caller) -> Json:
        return keys.get_key(self.svc, c, *_key(r.get("name")), str(r.get("publicKeyType") or ""))

    def create_key(self, r: Json, c: Caller) -> Json:
        body = {k: r[k] for k in ("privateKeyType", "keyAlgorithm") if k in r}
        return keys.create_key(self.svc, c, *_account(r.get("name")), body, token_uri=self.token_uri)

    def upload_key(self, r: Json, c: Caller) -> Json:
        return keys.upload_key(self.svc, c, *_account(r.get("name")), {"publicKeyData": r.get("publicKeyData")})

    def delete_key(self, r: Json, c: Caller) -> Json:
        return keys.delete_key(self.svc, c, *_key(r.get("name")))

    def disable_key(self, r: Json, c: Caller) -> Json:
        return keys.set_key_disabled(self.svc, c, *_key(r.get("name")), True)

    def enable_key(self, r: Json, c: Caller) -> Json:
        return keys.set_key_disabled(self.svc, c, *_key(r.get("name")), False)

    # ------------------------------------------------------------------- the account's policy
    def get_iam_policy(self, r: Json, c: Caller) -> Json:
        version = iam_policy.requested_version((r.get("options") or {}).get("requestedPolicyVersion"))
        return sa.get_iam_policy(self.svc, c, *_account(r.get("resource"), "resource"), version)

    def set_iam_policy(self, r: Json, c: Caller, allow_lockout: bool = False) -> Json:
        body = {k: r[k] for k in ("policy", "updateMask") if k in r}
        return sa.set_iam_policy(self.svc, c, *_account(r.get("resource"), "resource"), body, allow_lockout)

    def test_iam_permissions(self, r: Json, c: Caller) -> Json:
        body = {"permissions": list(r.get("permissions", []))}
        return sa.test_iam_permissions(self.svc, c, *_account(r.get("resource"), "resource"), body)

    # ---------------------------------------------------------------------------------- roles
    def list_roles(self, r: Json, c: Caller) -> Json:
        return roles.list_roles(self.svc, c, _query(r, "parent", "pageSize", "pageToken", "view", "showDeleted"))

    def get_role(self, r: Json, c: Caller) -> Json:
        name = r.get("name")
        segs = name.split("/") if isinstance(name, str) else []
        if len(segs) == 2 and segs[0] == "roles" and segs[1]:
            return roles.get_predefined_role(self.svc, c, segs[1])
        return roles.get_custom_role(self.svc, c, *_custom_role(name))

    def create_role(self, r: Json, c: Caller) -> Json:
        kind, ident = _parent(r.get("parent"))
        return roles.create_role(self.svc, c, kind, ident, {k: r[k] for k in ("roleId", "role") if k in r})

    def update_role(self, r: Json, c: Caller) -> Json:
        mask = r.get("updateMask")
        return roles.patch_role(self.svc, c, *_custom_role(r.get("name")), r.get("role") or {},
                                mask if isinstance(mask, str) and mask else None)

    def delete_role(self, r: Json, c: Caller) -> Json:
        return roles.delete_role(self.svc, c, *_custom_role(r.get("name")), r.get("etag") or None)

    def undelete_role(self, r: Json, c: Caller) -> Json:
        return roles.undelete_role(self.svc, c, *_custom_role(r.get("name")), {"etag": r.get("etag") or None})

    def query_grantable_roles(self, r: Json, c: Caller) -> Json:
        return roles.query_grantable_roles(self.svc, c, r)

    def query_testable_permissions(self, r: Json, c: Caller) -> Json:
        return roles.query_testable_permissions(self.svc, c, r)


# ------------------------------------------------------------------------------------- the wiring

@dataclass(frozen=True, slots=True)
class _Method:
    request: Any          # protobuf message class
    response: Any
    impl: str             # IamGrpc attribute
    read: bool = False    # a read: Data Access (ADMIN_READ) audit entry when auditConfigs ask for one


_METHODS: dict[str, _Method] = {
    "ListServiceAccounts": _Method(T.ListServiceAccountsRequest.pb(), T.ListServiceAccountsResponse.pb(),
                                   "list_service_accounts", True),
    "GetServiceAccount": _Method(T.GetServiceAccountRequest.pb(), T.ServiceAccount.pb(), "get_service_account", True),
    "CreateServiceAccount": _Method(T.CreateServiceAccountRequest.pb(), T.ServiceAccount.pb(),
                                    "create_service_account"),
    "PatchServiceAccount": _Method(T.PatchServiceAccountRequest.pb(), T.ServiceAccount.pb(), "patch_service_account"),
    "DeleteServiceAccount": _Method(T.DeleteServiceAccountRequest.pb(), empty_pb2.Empty, "delete_service_account"),
    "UndeleteServiceAccount": _Method(T.UndeleteServiceAccountRequest.pb(), T.UndeleteServiceAccountResponse.pb(),
                                      "undelete_service_account"),
    "EnableServiceAccount": _Method(T.EnableServiceAccountRequest.pb(), empty_pb2.Empty, "enable_service_account"),
    "DisableServiceAccount": _Method(T.DisableServiceAccountRequest.pb(), empty_pb2.Empty, "disable_service_account"),
    "ListServiceAccountKeys": _Method(T.ListServiceAccountKeysRequest.pb(), T.ListServiceAccountKeysResponse.pb(),
                                      "list_keys", True),
    "GetServiceAccountKey": _Method(T.GetServiceAccountKeyRequest.pb(), T.ServiceAccountKey.pb(), "get_key", True),
    "CreateServiceAccountKey": _Method(T.CreateServiceAccountKeyRequest.pb(), T.ServiceAccountKey.pb(), "create_key"),
    "UploadServiceAccountKey": _Method(T.UploadServiceAccountKeyRequest.pb(), T.ServiceAccountKey.pb(), "upload_key"),
    "DeleteServiceAccountKey": _Method(T.DeleteServiceAccountKeyRequest.pb(), empty_pb2.Empty, "delete_key"),
    "DisableServiceAccountKey": _Method(T.DisableServiceAccountKeyRequest.pb(), empty_pb2.Empty, "disable_key"),
    "EnableServiceAccountKey": _Method(T.EnableServiceAccountKeyRequest.pb(), empty_pb2.Empty, "enable_key"),
    "GetIamPolicy": _Method(iam_policy_pb2.GetIamPolicyRequest, policy_pb2.Policy, "get_iam_policy", True),
    "SetIamPolicy": _Method(iam_policy_pb2.SetIamPolicyRequest, policy_pb2.Policy, "set_iam_policy"),
    "TestIamPermissions": _Method(iam_policy_pb2.TestIamPermissionsRequest, iam_policy_pb2.TestIamPermissionsResponse,
                                  "test_iam_permissions", True),
    "ListRoles": _Method(T.ListRolesRequest.pb(), T.ListRolesResponse.pb(), "list_roles", True),
    "GetRole": _Method(T.GetRoleRequest.pb(), T.Role.pb(), "get_role", True),
    "CreateRole": _Method(T.CreateRoleRequest.pb(), T.Role.pb(), "create_role"),
    "UpdateRole": _Method(T.UpdateRoleRequest.pb(), T.Role.pb(), "update_role"),
    "DeleteRole": _Method(T.DeleteRoleRequest.pb(), T.Role.pb(), "delete_role"),
    "UndeleteRole": _Method(T.UndeleteRoleRequest.pb(), T.Role.pb(), "undelete_role"),
    "QueryGrantableRoles": _Method(T.QueryGrantableRolesRequest.pb(), T.QueryGrantableRolesResponse.pb(),
                                   "query_grantable_roles", True),
    "QueryTestablePermissions": _Method(T.QueryTestablePermissionsRequest.pb(),
                                        T.QueryTestablePermissionsResponse.pb(), "query_testable_permissions", True),
}


def _authenticate(authn: Authenticator, metadata: Mapping[str, str]) -> AccessToken:
    header = metadata.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if not header:
        raise Unauthenticated("Request is missing required authentication credential. Expected an OAuth 2 access "
                              "token in the 'authorization: Bearer TOKEN' metadata.", reason="CREDENTIALS_MISSING")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("Request had invalid authentication credentials. Expected 'authorization: Bearer "
                              "TOKEN' metadata.", reason="ACCESS_TOKEN_TYPE_UNSUPPORTED")
    return authn.authenticate(token.strip())


def _status_details(e: KeycardError, code: Any) -> bytes:
    status = status_pb2.Status(code=code.value[0], message=e.message)
    info = error_details_pb2.ErrorInfo(reason=e.reason, domain=_DOMAIN, metadata=e.metadata)
    status.details.add().Pack(info)
    return bytes(status.SerializeToString())


class _Handler:
    def __init__(self, api: IamGrpc) -> None:
        self.api = api

    def unary(self, name: str, m: _Method) -> Callable[[bytes, Any], bytes]:
        svc = self.api.svc
        impl: Callable[..., Json] = getattr(self.api, m.impl)

        def call(raw: bytes, context: Any) -> bytes:
            caller = Caller(None)
            trailing: list[tuple[str, str | bytes]] = []
            failure: tuple[Any, str] | None = None
            try:
                metadata = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
                token = metadata.get("x-keycard-revision")
                if token and not token.isdigit():
                    raise InvalidArgument("Invalid x-keycard-revision metadata: expected the integer revision "
                                          "a write returned.", field="x-keycard-revision")
                wanted = svc.runtime.wanted(int(token) if token else 0)   # or another worker's newest commit
                if wanted:
                    svc.runtime.ensure(wanted)
                at = _authenticate(self.api.authn, metadata)
                caller.principal, caller.claims, caller.extra_members = at.principal, at.claims, at.extra_members
                try:
                    request = json_format.MessageToDict(m.request.FromString(raw))
                except DecodeError:
                    raise InvalidArgument(f"Invalid {name} request: not a serialized "
                                          f"{m.request.DESCRIPTOR.full_name}.", field="request") from None
                if name == "SetIamPolicy":
                    lockout = metadata.get("x-keycard-allow-lockout", "").lower() == "true"
                    result = impl(request, caller, lockout)
                else:
                    result = impl(request, caller)
                answer = json_format.ParseDict(result or _EMPTY, m.response(), ignore_unknown_fields=True)
                if m.read:
                    svc.audit_read(caller, method=f"google.iam.admin.v1.{name}", service=_DOMAIN,
                                   log_type="ADMIN_READ")
                out: bytes = answer.SerializeToString()
            except KeycardError as e:
                code = getattr(grpc.StatusCode, e.status, grpc.StatusCode.INTERNAL)
                trailing.append(("grpc-status-details-bin", _status_details(e, code)))
                failure = (code, e.message)
            except Exception:
                log.exception("internal error on %s/%s", GRPC_SERVICE, name)
                failure = (grpc.StatusCode.INTERNAL, "Internal error; the server log has details.")
            revision = caller.revision if caller.revision is not None else svc.runtime.applied
            trailing.append(("x-keycard-revision", str(revision)))
            if caller.would_deny:
                trailing.append(("x-keycard-would-deny", "; ".join(caller.would_deny)[:2000]))
            context.set_trailing_metadata(tuple(trailing))
            if failure is not None:
                context.abort(*failure)      # raises: gRPC answers with the status and the trailing metadata
            return out

        return call

    def generic(self) -> Any:
        return grpc.method_handlers_generic_handler(GRPC_SERVICE, {
            name: grpc.unary_unary_rpc_method_handler(self.unary(name, m)) for name, m in _METHODS.items()})


def start_grpc_server(services: Services, authn: Authenticator, *, port: int, base_url: str,
                      host: str = "127.0.0.1", insecure: bool = False, workers: int = 16) -> tuple[Any, int]:
    """Start the listener; returns (grpc.Server, bound port). Stop it with ``server.stop(grace)``.

    Default: local credentials (loopback peers only; clients use ``grpc.local_channel_credentials``
    and may attach call credentials). ``insecure``: a plain port on ``host`` (clients send the
    bearer token as per-call metadata).
    """
    server = grpc.server(ThreadPoolExecutor(max_workers=workers, thread_name_prefix="keycard-grpc"))
    server.add_generic_rpc_handlers((_Handler(IamGrpc(services, authn, base_url=base_url)).generic(),))
    address = f"{host}:{port}"
    try:
        if insecure:
            bound = server.add_insecure_port(address)
        else:
            bound = server.add_secure_port(address, grpc.local_server_credentials(grpc.LocalConnectionType.LOCAL_TCP))
    except RuntimeError as e:
        raise KeycardError(f"Cannot listen for gRPC on {address}: {e}.") from None
    if not bound:
        raise KeycardError(f"Cannot listen for gRPC on {address}: the port is in use or not allowed.")
    server.start()
    return server, int(bound)
