"""google-cloud-iam's IAMClient (gRPC only, API.md §2.3) against `keycard serve --grpc-port`.

The client talks to the listener over plaintext loopback with local channel credentials plus call
credentials carrying a keycard bearer token, exactly as a user would wire it. Service accounts,
keys (including a key's JSON key file used as credentials over gRPC), the account's IAM policy and
custom roles are managed end to end; errors arrive as google.api_core exceptions.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from collections.abc import Iterator

import google.auth.credentials
import google.auth.jwt
import google.auth.transport.grpc
import google.auth.transport.requests
import google.oauth2.credentials
import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from google.api_core import exceptions as gexc
from google.cloud import iam_admin_v1
from google.cloud.iam_admin_v1 import types as T
from google.cloud.iam_admin_v1.services.iam.transports import IAMGrpcTransport
from google.iam.v1 import iam_policy_pb2, policy_pb2
from google.protobuf import field_mask_pb2

from conftest import KEYCARD, Server, free_port, start_server, stop_server

ALICE = "alice@example.com"
BOB = "bob@example.com"
PROJECT = "grpc-proj-1"
SERVED = ("ListServiceAccounts", "GetServiceAccount", "CreateServiceAccount", "PatchServiceAccount",
          "DeleteServiceAccount", "UndeleteServiceAccount", "EnableServiceAccount", "DisableServiceAccount",
          "ListServiceAccountKeys", "GetServiceAccountKey", "CreateServiceAccountKey", "UploadServiceAccountKey",
          "DeleteServiceAccountKey", "DisableServiceAccountKey", "EnableServiceAccountKey", "GetIamPolicy",
          "SetIamPolicy", "TestIamPermissions", "ListRoles", "GetRole", "CreateRole", "UpdateRole", "DeleteRole",
          "UndeleteRole", "QueryGrantableRoles", "QueryTestablePermissions")


@pytest.fixture(scope="module")
def grpc_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, int]]:
    d = tmp_path_factory.mktemp("kcgrpc")
    port = free_port()
    srv = start_server(f"sqlite:///{d / 'keycard.db'}", d / "server.log", extra_args=["--grpc-port", str(port)])
    with srv.client() as c:
        r = c.post("/v3/projects", json={"projectId": PROJECT, "parent": srv.organization})
        assert r.status_code == 200, r.text
    yield srv, port
    stop_server(srv)
    assert "Traceback" not in srv.log.read_text()


def client(port: int, creds: google.auth.credentials.Credentials | None) -> iam_admin_v1.IAMClient:
    channel_creds = grpc.local_channel_credentials(grpc.LocalConnectionType.LOCAL_TCP)
    if creds is not None:
        plugin = google.auth.transport.grpc.AuthMetadataPlugin(creds, google.auth.transport.requests.Request())
        channel_creds = grpc.composite_channel_credentials(channel_creds, grpc.metadata_call_credentials(plugin))
    channel = grpc.secure_channel(f"127.0.0.1:{port}", channel_creds)
    return iam_admin_v1.IAMClient(transport=IAMGrpcTransport(channel=channel))


def user_client(srv: Server, port: int, user: str = ALICE) -> iam_admin_v1.IAMClient:
    return client(port, google.oauth2.credentials.Credentials(token=srv.token(user)))


def test_service_account_lifecycle(grpc_server: tuple[Server, int]) -> None:
    srv, port = grpc_server
    c = user_client(srv, port)
    sa = c.create_service_account(name=f"projects/{PROJECT}", account_id="grpc-sa-one",
                                  service_account=T.ServiceAccount(display_name="One", description="d"))
    email = f"grpc-sa-one@{PROJECT}.iam.gserviceaccount.com"
    assert sa.email == email and sa.name == f"projects/{PROJECT}/serviceAccounts/{email}"
    assert sa.display_name == "One" and sa.unique_id.isdigit() and sa.oauth2_client_id == sa.unique_id
    assert c.get_service_account(name=f"projects/-/serviceAccounts/{sa.unique_id}").email == email
    assert email in [a.email for a in c.list_service_accounts(name=f"projects/{PROJECT}")]
    # the REST API sees the same account (one implementation)
    with srv.client() as h:
        assert h.get(f"/v1/{sa.name}").json()["displayName"] == "One"
    patched = c.patch_service_account(request=T.PatchServiceAccountRequest(
        service_account=T.ServiceAccount(name=sa.name, display_name="Renamed"),
        update_mask=field_mask_pb2.FieldMask(paths=["display_name"])))
    assert patched.display_name == "Renamed"
    assert c.get_service_account(name=sa.name).display_name == "Renamed"
    c.disable_service_account(request={"name": sa.name})
    assert c.get_service_account(name=sa.name).disabled is True
    c.enable_service_account(request={"name": sa.name})
    assert c.get_service_account(name=sa.name).disabled is False
    with pytest.raises(gexc.AlreadyExists):
        c.create_service_account(name=f"projects/{PROJECT}", account_id="grpc-sa-one")
    c.delete_service_account(name=sa.name)
    with pytest.raises(gexc.NotFound) as nf:
        c.get_service_account(name=sa.name)
    assert "not found" in nf.value.message
    restored = c.undelete_service_account(request={"name": f"projects/{PROJECT}/serviceAccounts/{sa.unique_id}"})
    assert restored.restored_account.email == email
    assert c.get_service_account(name=sa.name).display_name == "Renamed"


def test_keys_and_key_file_credentials(grpc_server: tuple[Server, int]) -> None:
    srv, port = grpc_server
    c = user_client(srv, port)
    sa = c.create_service_account(name=f"projects/{PROJECT}", account_id="grpc-key-sa")
    key = c.create_service_account_key(name=sa.name)
    info = json.loads(key.private_key_data)          # raw bytes of the key file, not base64
    key_id = key.name.rsplit("/", 1)[1]
    assert info["type"] == "service_account" and info["client_email"] == sa.email
    assert info["private_key_id"] == key_id and info["token_uri"] == f"{srv.url}/token"
    assert key.private_key_type == T.ServiceAccountPrivateKeyType.TYPE_GOOGLE_CREDENTIALS_FILE
    assert key.key_origin == T.ServiceAccountKeyOrigin.GOOGLE_PROVIDED
    listed = c.list_service_account_keys(name=sa.name, key_types=[
        T.ListServiceAccountKeysRequest.KeyType.USER_MANAGED]).keys
    assert [k.name for k in listed] == [key.name] and not listed[0].private_key_data
    pem = c.get_service_account_key(name=key.name, public_key_type=T.ServiceAccountPublicKeyType.TYPE_X509_PEM_FILE)
    assert pem.public_key_data.startswith(b"-----BEGIN CERTIFICATE-----")

    # the key file works as credentials over gRPC: a self-signed JWT, as GAPIC clients send them
    c.set_iam_policy(request=iam_policy_pb2.SetIamPolicyRequest(resource=sa.name, policy=policy_pb2.Policy(
        bindings=[policy_pb2.Binding(role="roles/iam.serviceAccountViewer", members=[f"serviceAccount:{sa.email}"])])))
    as_sa = client(port, google.auth.jwt.Credentials.from_service_account_info(
        info, audience="https://iam.googleapis.com/"))
    assert as_sa.get_service_account(name=sa.name).email == sa.email
    with pytest.raises(gexc.PermissionDenied):
        as_sa.create_service_account_key(name=sa.name)

    c.disable_service_account_key(name=key.name)
    assert c.get_service_account_key(name=key.name).disabled is True
    with pytest.raises(gexc.Unauthenticated):
        as_sa.get_service_account(name=sa.name)
    c.enable_service_account_key(name=key.name)
    assert as_sa.get_service_account(name=sa.name).email == sa.email
    c.delete_service_account_key(name=key.name)
    with pytest.raises(gexc.NotFound):
        c.get_service_account_key(name=key.name)
    with pytest.raises(gexc.Unauthenticated):
        as_sa.get_service_account(name=sa.name)
    assert not c.list_service_account_keys(name=sa.name).keys

    # the service wrote the audit entry (caller, key name), and no private key material
    out = subprocess.run([*KEYCARD, "logs", "read", 'protoPayload.methodName="google.iam.admin.v1.'
                          'CreateServiceAccountKey"', "--format", "json", "--database", srv.database],
                         check=True, capture_output=True, text=True).stdout
    entries = [e["protoPayload"] for e in json.loads(out)]
    assert [(e["resourceName"], e["authenticationInfo"]["principalEmail"]) for e in entries] == [(key.name, ALICE)]
    secret_line = info["private_key"].splitlines()[1]
    assert secret_line not in out and secret_line not in srv.log.read_text()


def test_upload_key_bytes(grpc_server: tuple[Server, int]) -> None:
    srv, port = grpc_server
    c = user_client(srv, port)
    sa = c.create_service_account(name=f"projects/{PROJECT}", account_id="grpc-upload-sa")
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "upload")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(private.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
            .sign(private, hashes.SHA256()))
    uploaded = c.upload_service_account_key(request=T.UploadServiceAccountKeyRequest(
        name=sa.name, public_key_data=cert.public_bytes(serialization.Encoding.PEM)))
    assert uploaded.key_origin == T.ServiceAccountKeyOrigin.USER_PROVIDED
    assert uploaded.name.startswith(sa.name + "/keys/")
    with pytest.raises(gexc.InvalidArgument) as bad:
        c.upload_service_account_key(request=T.UploadServiceAccountKeyRequest(name=sa.name,
                                                                              public_key_data=b"not a cert"))
    assert "publicKeyData" in bad.value.message


def test_account_iam_policy(grpc_server: tuple[Server, int]) -> None:
    srv, port = grpc_server
    c = user_client(srv, port)
    sa = c.create_service_account(name=f"projects/{PROJECT}", account_id="grpc-policy-sa")
    empty = c.get_iam_policy(request={"resource": sa.name})
    assert list(empty.bindings) == [] and empty.etag
    member = f"user:{BOB}"
    policy = policy_pb2.Policy(etag=empty.etag, bindings=[
        policy_pb2.Binding(role="roles/iam.serviceAccountUser", members=[member])])
    written = c.set_iam_policy(request=iam_policy_pb2.SetIamPolicyRequest(resource=sa.name, policy=policy))
    assert [(b.role, list(b.members)) for b in written.bindings] == [("roles/iam.serviceAccountUser", [member])]
    got = c.get_iam_policy(request={"resource": sa.name})
    assert got.etag == written.etag and got.bindings[0].members == [member]
    with pytest.raises(gexc.Aborted):            # stale etag
        c.set_iam_policy(request=iam_policy_pb2.SetIamPolicyRequest(resource=sa.name, policy=policy))
    tested = c.test_iam_permissions(request=iam_policy_pb2.TestIamPermissionsRequest(
        resource=sa.name, permissions=["iam.serviceAccounts.actAs", "iam.serviceAccounts.get"]))
    assert sorted(tested.permissions) == ["iam.serviceAccounts.actAs", "iam.serviceAccounts.get"]
    bob = user_client(srv, port, BOB)
    assert list(bob.test_iam_permissions(request=iam_policy_pb2.TestIamPermissionsRequest(
        resource=sa.name, permissions=["iam.serviceAccounts.actAs", "iam.serviceAccounts.delete"])).permissions) \
        == ["iam.serviceAccounts.actAs"]


def test_roles(grpc_server: tuple[Server, int]) -> None:
    srv, port = grpc_server
    c = user_client(srv, port)
    predefined = c.list_roles(request={"page_size": 50})
    names = [r.name for r in predefined.roles]
    assert names == sorted(names) and predefined.next_page_token and all(n.startswith("roles/") for n in names)
    viewer = c.get_role(request={"name": "roles/iam.serviceAccountViewer"})
    assert "iam.serviceAccounts.get" in viewer.included_permissions
    with pytest.raises(gexc.NotFound):
        c.get_role(request={"name": "roles/no.such.role"})

    parent = f"projects/{PROJECT}"
    role = c.create_role(request=T.CreateRoleRequest(parent=parent, role_id="grpcModelReader", role=T.Role(
        title="Model reader", included_permissions=["ml.models.get", "ml.models.list"],
        stage=T.Role.RoleLaunchStage.BETA)))
    assert role.name == f"{parent}/roles/grpcModelReader" and role.stage == T.Role.RoleLaunchStage.BETA
    assert list(role.included_permissions) == ["ml.models.get", "ml.models.list"] and role.etag
    got = c.get_role(request={"name": role.name})
    assert got.title == "Model reader" and got.etag == role.etag
    listed = c.list_roles(request=T.ListRolesRequest(parent=parent, view=T.RoleView.FULL))
    assert [(r.name, list(r.included_permissions)) for r in listed.roles] == [
        (role.name, ["ml.models.get", "ml.models.list"])]
    updated = c.update_role(request=T.UpdateRoleRequest(
        name=role.name, role=T.Role(title="Reader", etag=role.etag), update_mask=field_mask_pb2.FieldMask(
            paths=["title"])))
    assert updated.title == "Reader" and list(updated.included_permissions) == ["ml.models.get", "ml.models.list"]
    with pytest.raises(gexc.Aborted):
        c.update_role(request=T.UpdateRoleRequest(name=role.name, role=T.Role(title="x", etag=role.etag),
                                                  update_mask=field_mask_pb2.FieldMask(paths=["title"])))
    with pytest.raises(gexc.InvalidArgument) as bad:
        c.create_role(request=T.CreateRoleRequest(parent=parent, role_id="grpcBad",
                                                  role=T.Role(included_permissions=["no.such.permission"])))
    assert "includedPermissions" in bad.value.message
    deleted = c.delete_role(request=T.DeleteRoleRequest(name=role.name, etag=updated.etag))
    assert deleted.deleted is True
    assert c.list_roles(request=T.ListRolesRequest(parent=parent)).roles == []
    assert [r.name for r in c.list_roles(request=T.ListRolesRequest(parent=parent, show_deleted=True)).roles] \
        == [role.name]
    with pytest.raises(gexc.FailedPrecondition):
        c.delete_role(request=T.DeleteRoleRequest(name=role.name))
    restored = c.undelete_role(request=T.UndeleteRoleRequest(name=role.name, etag=deleted.etag))
    assert restored.deleted is False and restored.title == "Reader"
    with pytest.raises(gexc.InvalidArgument):
        c.update_role(request=T.UpdateRoleRequest(name="roles/viewer", role=T.Role(title="mine")))

    resource = f"//cloudresourcemanager.googleapis.com/projects/{PROJECT}"
    grantable = [r.name for r in c.query_grantable_roles(full_resource_name=resource)]   # the pager reads every page
    assert "roles/viewer" in grantable and role.name in grantable
    account = f"//iam.googleapis.com/projects/{PROJECT}/serviceAccounts/x@{PROJECT}.iam.gserviceaccount.com"
    sa_grantable = [r.name for r in c.query_grantable_roles(full_resource_name=account)]
    assert "roles/iam.serviceAccountUser" in sa_grantable and "roles/viewer" not in sa_grantable
    perms = list(c.query_testable_permissions(request={"full_resource_name": resource, "page_size": 1000}))
    assert "ml.models.get" in [p.name for p in perms]
    assert all(p.stage == T.Permission.PermissionLaunchStage.GA for p in perms)


def test_permission_denied_and_unauthenticated(grpc_server: tuple[Server, int]) -> None:
    srv, port = grpc_server
    bob = user_client(srv, port, BOB)
    with pytest.raises(gexc.PermissionDenied) as denied:
        bob.create_service_account(name=f"projects/{PROJECT}", account_id="bob-sa-xyz")
    assert "iam.serviceAccounts.create" in denied.value.message
    assert denied.value.reason == "IAM_PERMISSION_DENIED"      # ErrorInfo in grpc-status-details-bin
    with pytest.raises(gexc.PermissionDenied):
        bob.list_service_accounts(name=f"projects/{PROJECT}")
    with pytest.raises(gexc.PermissionDenied):
        bob.create_role(request=T.CreateRoleRequest(parent=f"projects/{PROJECT}", role_id="bobRole",
                                                    role=T.Role(included_permissions=["ml.models.get"])))
    anonymous = client(port, None)
    with pytest.raises(gexc.Unauthenticated) as missing:
        anonymous.list_roles(request={})
    assert missing.value.reason == "CREDENTIALS_MISSING"
    forged = client(port, google.oauth2.credentials.Credentials(token="kc1.not-a-token"))
    with pytest.raises(gexc.Unauthenticated):
        forged.get_role(request={"name": "roles/viewer"})


def test_bad_names_are_invalid_argument(grpc_server: tuple[Server, int]) -> None:
    srv, port = grpc_server
    c = user_client(srv, port)
    for call in (lambda: c.get_service_account(name="serviceAccounts/x"),
                 lambda: c.get_service_account_key(name=f"projects/{PROJECT}/serviceAccounts/a@b/nokeys/k"),
                 lambda: c.list_service_accounts(name="folders/1"),
                 lambda: c.create_role(request=T.CreateRoleRequest(parent="folders/1", role_id="abc")),
                 lambda: c.get_iam_policy(request={"resource": "projects/p"}),
                 lambda: c.list_roles(request={"parent": "folders/1"})):
        with pytest.raises(gexc.InvalidArgument):
            call()


def test_undecodable_request_and_unserved_method(grpc_server: tuple[Server, int]) -> None:
    srv, port = grpc_server
    plugin = google.auth.transport.grpc.AuthMetadataPlugin(
        google.oauth2.credentials.Credentials(token=srv.token()), google.auth.transport.requests.Request())
    creds = grpc.composite_channel_credentials(grpc.local_channel_credentials(grpc.LocalConnectionType.LOCAL_TCP),
                                               grpc.metadata_call_credentials(plugin))
    with grpc.secure_channel(f"127.0.0.1:{port}", creds) as channel:
        raw = channel.unary_unary("/google.iam.admin.v1.IAM/GetRole")
        with pytest.raises(grpc.RpcError) as e:
            raw(b"\xff\xff\xff", timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        answer, call = raw.with_call(T.GetRoleRequest.serialize(T.GetRoleRequest(name="roles/viewer")), timeout=10)
        assert T.Role.deserialize(answer).name == "roles/viewer"
        assert dict(call.trailing_metadata())["x-keycard-revision"].isdigit()
        with pytest.raises(grpc.RpcError) as e:
            channel.unary_unary("/google.iam.admin.v1.IAM/LintPolicy")(b"", timeout=10)
        assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
        # every served method, given an empty request (all fields default): a client error, never INTERNAL
        codes = {}
        for method in SERVED:
            try:
                channel.unary_unary(f"/google.iam.admin.v1.IAM/{method}")(b"", timeout=10)
                codes[method] = grpc.StatusCode.OK
            except grpc.RpcError as err:
                codes[method] = err.code()
        assert {m: c for m, c in codes.items() if c not in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OK)} \
            == {}
        assert codes["ListRoles"] == grpc.StatusCode.OK       # predefined roles need no argument


def test_insecure_port_with_per_call_metadata(tmp_path_factory: pytest.TempPathFactory) -> None:
    """`--grpc-insecure`: a plain port; the bearer token travels as per-call metadata, and is still required."""
    d = tmp_path_factory.mktemp("kcgrpc-insecure")
    port = free_port()
    srv = start_server(f"sqlite:///{d / 'keycard.db'}", d / "server.log",
                       extra_args=["--grpc-port", str(port), "--grpc-insecure"])
    try:
        c = iam_admin_v1.IAMClient(transport=IAMGrpcTransport(channel=grpc.insecure_channel(f"127.0.0.1:{port}")))
        auth = [("authorization", f"Bearer {srv.token()}")]
        assert c.get_role(request={"name": "roles/viewer"}, metadata=auth).name == "roles/viewer"
        with pytest.raises(gexc.Unauthenticated):
            c.get_role(request={"name": "roles/viewer"})
    finally:
        stop_server(srv)
    assert "Traceback" not in srv.log.read_text()
