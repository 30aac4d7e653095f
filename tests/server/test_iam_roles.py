"""IAM v1 roles and permissions against a live server, driven by Google's discovery client.

Each request builds its client afresh: `keycard serve` closes idle keep-alive connections after
uvicorn's default 5 seconds, and httplib2 does not retry a request on a connection closed under it.

google.cloud.iam_admin_v1.IAMClient is gRPC-only (API.md §2.3), so only the discovery client is used here.
The custom-role limit and the 7-day undelete window are tested in-process, with a clock the test moves.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import google.oauth2.credentials
import pytest
from googleapiclient.discovery import build
from googleapiclient.errors import HttpError

from conftest import Server
from keycard.errors import FailedPrecondition
from keycard.runtime import Runtime
from keycard.server import init_installation
from keycard.services import iam_roles
from keycard.services import resourcemanager as crm_svc
from keycard.services.common import Caller, Services
from keycard.store.sql import open_store

ALICE = "alice@example.com"
PROJECT = "roles-proj-1"
MODEL_PERMS = ["ml.models.get", "ml.models.list", "ml.models.delete"]


_TOKENS: dict[tuple[str, str], str] = {}


def _creds(server: Server, user: str) -> google.oauth2.credentials.Credentials:
    key = (server.url, user)
    if key not in _TOKENS:
        _TOKENS[key] = server.token(user)
    return google.oauth2.credentials.Credentials(token=_TOKENS[key])


def iam(server: Server, user: str = ALICE) -> Any:
    return build("iam", "v1", credentials=_creds(server, user), static_discovery=True,
                 client_options={"api_endpoint": server.url})


def crm(server: Server, user: str = ALICE) -> Any:
    return build("cloudresourcemanager", "v3", credentials=_creds(server, user), static_discovery=True,
                 client_options={"api_endpoint": server.url})


def error(err: pytest.ExceptionInfo[HttpError]) -> tuple[int, str, dict[str, Any]]:
    details = err.value.error_details if isinstance(err.value.error_details, list) else []
    meta = details[0].get("metadata", {}) if details else {}
    return err.value.status_code, str(err.value), meta


def bob_can(server: Server, permissions: list[str], project: str = PROJECT) -> list[str]:
    got = crm(server, "bob@example.com").projects().testIamPermissions(
        resource=f"projects/{project}", body={"permissions": permissions}).execute()
    return list(got.get("permissions", []))


def grant(server: Server, resource: str, role: str, member: str) -> None:
    api = crm(server)
    coll = api.organizations() if resource.startswith("organizations/") else api.projects()
    pol = coll.getIamPolicy(resource=resource, body={"options": {"requestedPolicyVersion": 3}}).execute()
    pol.setdefault("bindings", []).append({"role": role, "members": [member]})
    coll.setIamPolicy(resource=resource, body={"policy": pol}).execute()


@pytest.fixture(scope="module")
def project(server: Server) -> str:
    op = crm(server).projects().create(body={"projectId": PROJECT, "parent": server.organization}).execute()
    assert op["done"]
    return PROJECT


# ------------------------------------------------------------------------------------ predefined

def test_predefined_roles_list_and_get(server: Server) -> None:
    def api() -> Any:                               # no permission needed for predefined roles
        return iam(server, "nobody@example.com")
    basic = api().roles().list(pageSize=1000).execute()["roles"]
    assert basic and all("includedPermissions" not in r for r in basic)
    assert [r["name"] for r in basic] == sorted(r["name"] for r in basic)
    full = api().roles().list(view="FULL", pageSize=1000).execute()["roles"]
    dev = next(r for r in full if r["name"] == "roles/ml.developer")
    assert "ml.models.create" in dev["includedPermissions"] and dev["stage"] == "GA" and dev["title"]
    # paging visits every role once
    seen: list[str] = []
    token = None
    while True:
        page = api().roles().list(pageSize=7, pageToken=token).execute()
        seen += [r["name"] for r in page["roles"]]
        token = page.get("nextPageToken")
        if not token:
            break
    assert seen == [r["name"] for r in basic]
    got = api().roles().get(name="roles/ml.developer").execute()
    assert got["includedPermissions"] == dev["includedPermissions"] and got["etag"]
    with pytest.raises(HttpError) as err:
        api().roles().get(name="roles/no.suchRole").execute()
    assert err.value.status_code == 404
    r = server.client().get("/v1/roles", params={"view": "EVERYTHING"})    # the client checks enums itself
    assert r.status_code == 400 and r.json()["error"]["details"][0]["metadata"]["field"] == "view"


# ---------------------------------------------------------------------------------- custom roles

def test_project_custom_role_lifecycle_and_grants(server: Server, project: str) -> None:
    def roles() -> Any:
        return iam(server).projects().roles()
    parent = f"projects/{project}"
    created = roles().create(parent=parent, body={"roleId": "modelReader", "role": {
        "title": "Model reader", "description": "Reads models", "includedPermissions": MODEL_PERMS[:2],
        "stage": "GA"}}).execute()
    name = f"{parent}/roles/modelReader"
    assert created["name"] == name and created["includedPermissions"] == ["ml.models.get", "ml.models.list"]
    assert created["etag"] and "deleted" not in created
    assert roles().get(name=name).execute() == created
    listed = roles().list(parent=parent).execute()["roles"]
    assert [r["name"] for r in listed] == [name] and "includedPermissions" not in listed[0]
    assert roles().list(parent=parent, view="FULL").execute()["roles"][0]["includedPermissions"]
    # the same roles through roles.list?parent=
    assert [r["name"] for r in iam(server).roles().list(parent=parent).execute()["roles"]] == [name]

    grant(server, parent, name, "user:bob@example.com")
    assert bob_can(server, MODEL_PERMS) == ["ml.models.get", "ml.models.list"]

    # patch with the current etag: bob gains the permission at once
    patched = roles().patch(name=name, updateMask="includedPermissions", body={
        "includedPermissions": MODEL_PERMS, "etag": created["etag"], "title": "ignored"}).execute()
    assert patched["includedPermissions"] == sorted(MODEL_PERMS) and patched["title"] == "Model reader"
    assert patched["etag"] != created["etag"]
    assert bob_can(server, MODEL_PERMS) == MODEL_PERMS
    # stale etag: 409 ABORTED, nothing written
    with pytest.raises(HttpError) as err:
        roles().patch(name=name, updateMask="title", body={"title": "x", "etag": created["etag"]}).execute()
    assert err.value.status_code == 409 and "concurrent policy changes" in str(err.value)
    assert roles().get(name=name).execute()["title"] == "Model reader"

    # delete: the grant stops at once; the role stays readable and listable with showDeleted
    deleted = roles().delete(name=name).execute()
    assert deleted["deleted"] is True and deleted["name"] == name
    assert bob_can(server, MODEL_PERMS) == []
    assert roles().get(name=name).execute()["deleted"] is True
    assert "roles" not in roles().list(parent=parent).execute()
    assert [r["name"] for r in roles().list(parent=parent, showDeleted=True).execute()["roles"]] == [name]
    with pytest.raises(HttpError) as err:
        roles().patch(name=name, body={"title": "x"}).execute()
    assert err.value.status_code == 400
    # a deleted role's id is still taken
    with pytest.raises(HttpError) as err:
        roles().create(parent=parent, body={"roleId": "modelReader", "role": {"includedPermissions": []}}).execute()
    assert err.value.status_code == 409

    # undelete: it grants again
    restored = roles().undelete(name=name, body={}).execute()
    assert "deleted" not in restored and restored["includedPermissions"] == sorted(MODEL_PERMS)
    assert bob_can(server, MODEL_PERMS) == MODEL_PERMS
    with pytest.raises(HttpError) as err:
        roles().undelete(name=name, body={}).execute()
    assert err.value.status_code == 400 and "FAILED_PRECONDITION" in err.value.content.decode()

    # DISABLED grants nothing either
    roles().patch(name=name, updateMask="stage", body={"stage": "DISABLED"}).execute()
    assert bob_can(server, MODEL_PERMS) == []
    roles().patch(name=name, updateMask="stage", body={"stage": "GA"}).execute()
    assert bob_can(server, MODEL_PERMS) == MODEL_PERMS


def test_organization_custom_role_is_inherited(server: Server, project: str) -> None:
    def roles() -> Any:
        return iam(server).organizations().roles()
    created = roles().create(parent=server.organization, body={"roleId": "org.jobRunner", "role": {
        "title": "Job runner", "includedPermissions": ["ml.jobs.create", "ml.jobs.get"]}}).execute()
    name = f"{server.organization}/roles/org.jobRunner"
    assert created["name"] == name and "stage" not in created      # ALPHA, the default, is left out
    assert roles().get(name=name).execute()["title"] == "Job runner"
    grant(server, server.organization, name, "user:bob@example.com")
    assert bob_can(server, ["ml.jobs.create", "ml.jobs.cancel"]) == ["ml.jobs.create"]
    assert [r["name"] for r in roles().list(parent=server.organization).execute()["roles"]] == [name]


def test_create_validation(server: Server, project: str) -> None:
    def roles() -> Any:
        return iam(server).projects().roles()
    parent = f"projects/{project}"
    cases: list[tuple[dict[str, Any], str]] = [
        ({"roleId": "bad1", "role": {"includedPermissions": ["ml.models.get", "ml.models.fly"]}},
         "role.includedPermissions"),
        ({"roleId": "ab", "role": {}}, "roleId"),
        ({"roleId": "has-dash", "role": {}}, "roleId"),
        ({"roleId": "bad2", "role": {"stage": "SOON"}}, "role.stage"),
        ({"roleId": "bad3", "role": {"title": "t" * 101}}, "role.title"),
        ({"roleId": "bad4", "role": {"description": "d" * 257}}, "role.description"),
        ({"roleId": "bad5", "role": {"includedPermissions": ["not a permission"]}}, "role.includedPermissions[0]"),
    ]
    for body, field in cases:
        with pytest.raises(HttpError) as err:
            roles().create(parent=parent, body=body).execute()
        code, text, meta = error(err)
        assert code == 400 and meta["field"] == field and field in text, (body, text)
    with pytest.raises(HttpError) as err:
        roles().create(parent=parent, body=cases[0][0]).execute()
    assert "ml.models.fly" in str(err.value)
    roles().create(parent=parent, body={"roleId": "dup_role", "role": {"title": "one"}}).execute()
    with pytest.raises(HttpError) as err:
        roles().create(parent=parent, body={"roleId": "dup_role", "role": {"title": "two"}}).execute()
    assert err.value.status_code == 409 and "ALREADY_EXISTS" in err.value.content.decode()
    with pytest.raises(HttpError) as err:
        roles().patch(name=f"{parent}/roles/dup_role", updateMask="name", body={"name": "x"}).execute()
    assert error(err)[0] == 400 and error(err)[2]["field"] == "updateMask"


def test_permission_checked_before_existence(server: Server, project: str) -> None:
    def eve() -> Any:
        return iam(server, "eve@example.com").projects().roles()
    with pytest.raises(HttpError) as err:
        eve().create(parent=f"projects/{project}", body={"roleId": "evil", "role": {}}).execute()
    code, text, meta = error(err)
    assert code == 403 and "iam.roles.create" in text and meta["permission"] == "iam.roles.create"
    for name in (f"projects/{project}/roles/modelReader", f"projects/{project}/roles/noSuchRole"):
        with pytest.raises(HttpError) as err:
            eve().get(name=name).execute()
        assert err.value.status_code == 403 and "iam.roles.get" in str(err.value)
    for call in (lambda: eve().list(parent=f"projects/{project}"),
                 lambda: eve().delete(name=f"projects/{project}/roles/modelReader"),
                 lambda: eve().undelete(name=f"projects/{project}/roles/modelReader", body={}),
                 lambda: eve().patch(name=f"projects/{project}/roles/modelReader", body={"title": "x"})):
        with pytest.raises(HttpError) as err:
            call().execute()
        assert err.value.status_code == 403
    # alice can, and learns that the role does not exist
    with pytest.raises(HttpError) as err:
        iam(server).projects().roles().get(name=f"projects/{project}/roles/noSuchRole").execute()
    assert err.value.status_code == 404


# --------------------------------------------------------------------- grantable / testable

def test_query_grantable_roles(server: Server, project: str) -> None:
    def api() -> Any:
        return iam(server).roles()
    on_project = api().queryGrantableRoles(body={
        "fullResourceName": f"//cloudresourcemanager.googleapis.com/projects/{project}",
        "pageSize": 1000}).execute()["roles"]
    names = {r["name"] for r in on_project}
    assert {"roles/owner", "roles/ml.developer", "roles/storage.admin", "roles/iam.roleAdmin",
            f"projects/{project}/roles/modelReader", f"{server.organization}/roles/org.jobRunner"} <= names
    assert "roles/resourcemanager.organizationViewer" not in names      # organization-only permissions
    assert all("includedPermissions" not in r for r in on_project)      # BASIC by default

    bucket = api().queryGrantableRoles(body={
        "fullResourceName": "//storage.googleapis.com/projects/_/buckets/my-bucket", "view": "FULL",
        "pageSize": 1000}).execute()["roles"]
    bnames = {r["name"] for r in bucket}
    assert {"roles/storage.objectViewer", "roles/storage.admin", "roles/storage.legacyBucketReader"} <= bnames
    assert not bnames & {"roles/owner", "roles/editor", "roles/viewer", "roles/ml.developer",
                         f"projects/{project}/roles/modelReader"}
    assert all(any(p.startswith("storage.") for p in r["includedPermissions"]) for r in bucket)

    # paging
    seen: list[str] = []
    token = None
    while True:
        page = api().queryGrantableRoles(body={"fullResourceName": f"//cloudresourcemanager.googleapis.com/projects/"
                                             f"{project}", "pageSize": 9, "pageToken": token}).execute()
        seen += [r["name"] for r in page["roles"]]
        token = page.get("nextPageToken")
        if not token:
            break
    assert seen == [r["name"] for r in on_project]

    for body in ({"fullResourceName": "not a name"}, {}):
        with pytest.raises(HttpError) as err:
            api().queryGrantableRoles(body=body).execute()
        assert error(err)[0] == 400 and error(err)[2]["field"] == "fullResourceName"


def test_query_testable_permissions(server: Server, project: str) -> None:
    def api() -> Any:
        return iam(server).permissions()
    full = f"//cloudresourcemanager.googleapis.com/projects/{project}"
    perms: list[dict[str, Any]] = []
    token = None
    while True:
        page = api().queryTestablePermissions(body={"fullResourceName": full, "pageToken": token}).execute()
        perms += page["permissions"]
        token = page.get("nextPageToken")
        if not token:
            break
    names = [p["name"] for p in perms]
    assert names == sorted(set(names)) and "ml.models.get" in names and "resourcemanager.projects.get" in names
    assert "resourcemanager.organizations.get" not in names
    one = next(p for p in perms if p["name"] == "ml.models.get")
    assert one["title"] and one["stage"] == "GA" and one["customRolesSupportLevel"] == "SUPPORTED"
    bucket = api().queryTestablePermissions(body={"fullResourceName": "//storage.googleapis.com/projects/_/buckets/b-1",
                                                "pageSize": 1000}).execute()["permissions"]
    assert bucket and all(p["name"].startswith("storage.") for p in bucket)
    assert "storage.objects.get" in {p["name"] for p in bucket}
    with pytest.raises(HttpError) as err:
        api().queryTestablePermissions(body={"fullResourceName": "//x"}).execute()
    assert error(err)[2]["field"] == "fullResourceName"


# ------------------------------------------------------------------ in-process: clock and limits

class Clock:
    def __init__(self) -> None:
        self.now = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now


@pytest.fixture()
def local(tmp_path: Path) -> Any:
    store = open_store(f"sqlite:///{tmp_path / 'k.db'}")
    store.migrate()
    inst = init_installation(store, domain="example.com", admins=[f"user:{ALICE}"])
    clock = Clock()
    runtime = Runtime(store, clock=clock)
    runtime.bootstrap()
    svc = Services(runtime, clock, "enforce", inst.organization)
    yield svc, clock, inst.organization.split("/", 3)[3]
    store.close()


def test_undelete_only_within_seven_days(local: Any) -> None:
    svc, clock, org = local
    org_id = org.split("/")[1]
    for rid in ("late", "early"):
        iam_roles.create_role(svc, Caller(f"user:{ALICE}"), "organizations", org_id, {"roleId": rid, "role": {
            "includedPermissions": ["ml.models.get"]}})
        iam_roles.delete_role(svc, Caller(f"user:{ALICE}"), "organizations", org_id, rid, None)
    clock.now += dt.timedelta(days=6, hours=23)
    assert "deleted" not in iam_roles.undelete_role(svc, Caller(f"user:{ALICE}"), "organizations", org_id, "early", {})
    clock.now += dt.timedelta(hours=2)
    with pytest.raises(FailedPrecondition, match="7 days"):
        iam_roles.undelete_role(svc, Caller(f"user:{ALICE}"), "organizations", org_id, "late", {})
    # every write left its Admin Activity audit entry
    logged = [e.entry["protoPayload"] for e in svc.runtime.store.audit(newest_first=True, limit=5)]
    assert [p["methodName"] for p in logged[:3]] == ["google.iam.admin.v1.UndeleteRole",
                                                     "google.iam.admin.v1.DeleteRole",
                                                     "google.iam.admin.v1.CreateRole"]
    assert logged[0]["serviceName"] == "iam.googleapis.com"
    assert logged[0]["resourceName"] == f"{org}/roles/early"
    assert logged[0]["authorizationInfo"][0]["permission"] == "iam.roles.undelete"


def test_custom_role_limit_counts_undeletable_roles(local: Any) -> None:
    svc, clock, org = local
    me = Caller(f"user:{ALICE}")
    crm_svc.create_project(svc, me, {"projectId": "limit-proj", "parent": org})
    for i in range(iam_roles.MAX_CUSTOM_ROLES):
        iam_roles.create_role(svc, me, "projects", "limit-proj", {"roleId": f"r{i:03d}", "role": {}})
    iam_roles.delete_role(svc, me, "projects", "limit-proj", "r000", None)
    with pytest.raises(FailedPrecondition, match="300") as err:
        iam_roles.create_role(svc, me, "projects", "limit-proj", {"roleId": "one_more", "role": {}})
    assert err.value.metadata["count"] == "300"
    clock.now += dt.timedelta(days=8)          # r000 can no longer be undeleted: it stops counting
    made = iam_roles.create_role(svc, me, "projects", "limit-proj", {"roleId": "one_more", "role": {}})
    assert made["name"] == "projects/limit-proj/roles/one_more"
    # the project's number names the same roles
    number = crm_svc.resolve_project(svc, "limit-proj").rsplit("/", 1)[1]
    got = iam_roles.get_custom_role(svc, me, "projects", number, "one_more")
    assert got["name"] == "projects/limit-proj/roles/one_more"
