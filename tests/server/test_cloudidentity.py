"""Cloud Identity v1 groups and memberships against a live server, driven by the discovery client."""

from __future__ import annotations

from typing import Any

import google.oauth2.credentials
import httpx
import pytest
from googleapiclient.discovery import build
from googleapiclient.errors import HttpError

from conftest import Server

ALICE = "alice@example.com"
DISCUSSION = {"cloudidentity.googleapis.com/groups.discussion_forum": ""}
PROJECT = "groups-proj-1"
PERM = "resourcemanager.projects.get"


def ci(server: Server, user: str = ALICE) -> Any:
    creds = google.oauth2.credentials.Credentials(token=server.token(user))
    return build("cloudidentity", "v1", credentials=creds, static_discovery=True,
                 client_options={"api_endpoint": server.url})


def http(server: Server, user: str = ALICE) -> httpx.Client:
    return server.client(user)


def can(server: Server, user: str, permission: str = PERM) -> bool:
    r = http(server, user).post(f"/v3/projects/{PROJECT}:testIamPermissions", json={"permissions": [permission]})
    assert r.status_code == 200, r.text
    return permission in r.json().get("permissions", [])


@pytest.fixture(scope="module")
def customer(server: Server) -> str:
    """Grant alice roles/keycard.groupsAdmin on the organization (until `keycard init` does) and
    make a project where group:team@example.com is viewer; the customer id."""
    c = http(server)
    org = server.organization
    pol = c.post(f"/v3/{org}:getIamPolicy", json={}).json()
    pol["bindings"].append({"role": "roles/keycard.groupsAdmin", "members": [f"user:{ALICE}"]})
    r = c.post(f"/v3/{org}:setIamPolicy", json={"policy": pol})
    assert r.status_code == 200, ("roles/keycard.groupsAdmin must be a built-in role "
                                  "(keycard/catalog ROLE_FILES needs keycard.yaml)", r.text)
    assert c.post("/v3/projects", json={"projectId": PROJECT, "parent": org}).status_code == 200
    pol = c.post(f"/v3/projects/{PROJECT}:getIamPolicy", json={}).json()
    pol["bindings"].append({"role": "roles/browser", "members": ["group:team@example.com"]})
    assert c.post(f"/v3/projects/{PROJECT}:setIamPolicy", json={"policy": pol}).status_code == 200
    return str(c.get(f"/v3/{org}").json()["directoryCustomerId"])


def make_group(server: Server, customer: str, email: str, *, config: str = "EMPTY", **extra: Any) -> str:
    op = ci(server).groups().create(initialGroupConfig=config, body={
        "groupKey": {"id": email}, "parent": f"customers/{customer}", "labels": DISCUSSION, **extra}).execute()
    assert op["done"] is True
    return str(op["response"]["name"])


def add(server: Server, group: str, email: str, roles: tuple[str, ...] = ("MEMBER",), user: str = ALICE
        ) -> dict[str, Any]:
    op = ci(server, user).groups().memberships().create(parent=group, body={
        "preferredMemberKey": {"id": email}, "roles": [{"name": r} for r in roles]}).execute()
    assert op["done"] is True
    return dict(op["response"])


def test_group_lifecycle(server: Server, customer: str) -> None:
    api = ci(server)
    op = api.groups().create(initialGroupConfig="WITH_INITIAL_OWNER", body={
        "groupKey": {"id": "Team@Example.com"}, "parent": f"customers/{customer}", "labels": DISCUSSION,
        "displayName": "Team", "description": "the team"}).execute()
    group = op["response"]
    assert op["done"] and group["@type"] == "type.googleapis.com/google.apps.cloudidentity.groups.v1.Group"
    assert group["name"].startswith("groups/") and group["groupKey"] == {"id": "team@example.com"}
    assert group["parent"] == f"customers/{customer}" and group["labels"] == DISCUSSION
    assert group["displayName"] == "Team" and group["createTime"] and group["updateTime"]
    name = group["name"]
    got = api.groups().get(name=name).execute()
    assert got["groupKey"]["id"] == "team@example.com" and not any(k.startswith("keycard") for k in got)
    assert api.groups().lookup(groupKey_id="team@example.com").execute() == {"name": name}
    listed = api.groups().list(parent=f"customers/{customer}").execute()
    assert name in [g["name"] for g in listed["groups"]]
    # the creator is the initial OWNER
    ms = api.groups().memberships().list(parent=name).execute()["memberships"]
    assert [(m["preferredMemberKey"]["id"], {r["name"] for r in m["roles"]}, m["type"]) for m in ms] == \
        [(ALICE, {"OWNER", "MEMBER"}, "USER")]
    # patch
    op = api.groups().patch(name=name, updateMask="displayName", body={"displayName": "The team"}).execute()
    assert op["done"] and op["response"]["displayName"] == "The team"
    assert op["response"]["description"] == "the team"
    # the same email twice
    with pytest.raises(HttpError) as err:
        make_group(server, customer, "team@example.com")
    assert err.value.status_code == 409
    # delete, then the email can be used again
    other = make_group(server, customer, "temp@example.com")
    assert api.groups().delete(name=other).execute()["done"] is True
    with pytest.raises(HttpError) as err:
        api.groups().get(name=other).execute()
    assert err.value.status_code == 404
    again = make_group(server, customer, "temp@example.com")
    assert again != other and api.groups().lookup(groupKey_id="temp@example.com").execute() == {"name": again}


def test_memberships_reach_the_engine_at_once(server: Server, customer: str) -> None:
    api = ci(server)
    team = api.groups().lookup(groupKey_id="team@example.com").execute()["name"]
    assert not can(server, "bob@example.com")
    m = add(server, team, "bob@example.com")
    assert m["@type"].endswith("v1.Membership") and m["name"].startswith(team + "/memberships/")
    assert m["type"] == "USER" and m["roles"] == [{"name": "MEMBER"}]
    assert can(server, "bob@example.com")
    looked = api.groups().memberships().lookup(parent=team, memberKey_id="bob@example.com").execute()
    assert looked == {"name": m["name"]}
    assert api.groups().memberships().get(name=m["name"]).execute()["preferredMemberKey"]["id"] == "bob@example.com"
    with pytest.raises(HttpError) as err:
        add(server, team, "bob@example.com")
    assert err.value.status_code == 409
    assert api.groups().memberships().delete(name=m["name"]).execute()["done"] is True
    assert not can(server, "bob@example.com")
    # nested groups: carol is in inner, inner is in team
    inner = make_group(server, customer, "inner@example.com")
    nested = add(server, team, "inner@example.com")
    assert nested["type"] == "GROUP"
    assert not can(server, "carol@example.com")
    add(server, inner, "carol@example.com")
    assert can(server, "carol@example.com")
    # a cycle is refused, naming the field
    for group, email in ((inner, "team@example.com"), (team, "team@example.com")):
        with pytest.raises(HttpError) as err:
            add(server, group, email)
        assert err.value.status_code == 400
        assert err.value.error_details[0]["metadata"]["field"] == "preferredMemberKey.id"
        assert err.value.error_details[0]["reason"] == "GROUP_CYCLE"
    # service accounts
    sa = add(server, team, "robot@my-proj.iam.gserviceaccount.com")
    assert sa["type"] == "SERVICE_ACCOUNT"
    # deleting inner empties it at once
    api.groups().delete(name=inner).execute()
    assert not can(server, "carol@example.com")


def test_group_roles_and_strangers(server: Server, customer: str) -> None:
    api = ci(server)
    team = api.groups().lookup(groupKey_id="team@example.com").execute()["name"]
    add(server, team, "dave@example.com", ("MANAGER",))
    add(server, team, "erin@example.com")
    # a member may read the group, not change it
    erin = ci(server, "erin@example.com")
    assert erin.groups().get(name=team).execute()["name"] == team
    assert erin.groups().memberships().list(parent=team).execute()["memberships"]
    with pytest.raises(HttpError) as err:
        add(server, team, "x@example.com", user="erin@example.com")
    assert err.value.status_code == 403
    # a MANAGER manages memberships, but not owners, and cannot delete the group
    m = add(server, team, "frank@example.com", user="dave@example.com")
    assert ci(server, "dave@example.com").groups().memberships().delete(name=m["name"]).execute()["done"]
    with pytest.raises(HttpError) as err:
        add(server, team, "x@example.com", ("OWNER",), user="dave@example.com")
    assert err.value.status_code == 400 and "OWNER" in str(err.value)
    with pytest.raises(HttpError) as err:
        ci(server, "dave@example.com").groups().delete(name=team).execute()
    assert err.value.status_code == 403
    # strangers: 403 whether or not the group exists, and no listing or creating
    eve = ci(server, "eve@example.com")
    for name in (team, "groups/0doesnotexist00"):
        with pytest.raises(HttpError) as err:
            eve.groups().get(name=name).execute()
        assert err.value.status_code == 403 and "cloudidentity.groups.get" in str(err.value)
    for call in (eve.groups().list(parent=f"customers/{customer}"),
                 eve.groups().lookup(groupKey_id="team@example.com"),
                 eve.groups().lookup(groupKey_id="nope@example.com"),
                 eve.groups().memberships().list(parent=team),
                 eve.groups().create(body={"groupKey": {"id": "eve@example.com"},
                                           "parent": f"customers/{customer}", "labels": DISCUSSION})):
        with pytest.raises(HttpError) as err:
            call.execute()
        assert err.value.status_code == 403


@pytest.mark.parametrize(("body", "query", "field"), [
    ({"groupKey": {"id": "not an email"}, "parent": "CUSTOMER", "labels": DISCUSSION}, {}, "groupKey.id"),
    ({"groupKey": {"id": "g1@example.com"}, "parent": "customers/C0other", "labels": DISCUSSION}, {}, "parent"),
    ({"groupKey": {"id": "g1@example.com"}, "parent": "CUSTOMER"}, {}, "labels"),
    ({"groupKey": {"id": "g1@example.com"}, "parent": "CUSTOMER", "labels": DISCUSSION},
     {"initialGroupConfig": "BOGUS"}, "initialGroupConfig"),
])
def test_bad_input_is_400_naming_the_field(server: Server, customer: str, body: dict[str, Any],
                                           query: dict[str, str], field: str) -> None:
    if body.get("parent") == "CUSTOMER":
        body = {**body, "parent": f"customers/{customer}"}
    r = http(server).post("/v1/groups", params=query, json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["details"][0]["metadata"]["field"] == field


def test_bad_memberships_and_garbage(server: Server, customer: str) -> None:
    c = http(server)
    team = c.get("/v1/groups:lookup", params={"groupKey.id": "team@example.com"}).json()["name"]
    for body, field in (({"preferredMemberKey": {"id": "nope"}}, "preferredMemberKey.id"),
                        ({"preferredMemberKey": {"id": "a@example.com"}, "roles": [{"name": "BOSS"}]},
                         "roles[0].name"),
                        ({}, "preferredMemberKey.id")):
        r = c.post(f"/v1/{team}/memberships", json=body)
        assert r.status_code == 400 and r.json()["error"]["details"][0]["metadata"]["field"] == field, r.text
    assert c.patch(f"/v1/{team}", params={"updateMask": "groupKey"}, json={}).status_code == 400
    assert c.get("/v1/groups", params={"parent": f"customers/{customer}", "pageToken": "!!"}).status_code == 400
    for path in ("/v1/groups/UPPER", "/v1/groups/%00", f"/v1/{team}/memberships/123"):
        assert c.get(path).status_code in (400, 404), path
    # paging over memberships
    seen: list[str] = []
    token = ""
    while True:
        page = c.get(f"/v1/{team}/memberships", params={"pageSize": 2, "pageToken": token}).json()
        seen += [m["name"] for m in page.get("memberships", [])]
        token = page.get("nextPageToken", "")
        if not token:
            break
    assert len(seen) == len(set(seen)) >= 4
