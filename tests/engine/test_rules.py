"""Table tests: one per rule of Google Cloud IAM's evaluation, on the built-in catalog."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from keycard import Engine, InvalidArgument

CRM = "//cloudresourcemanager.googleapis.com"
ORG, FOLDER, PROJ = f"{CRM}/organizations/1", f"{CRM}/folders/2", f"{CRM}/projects/123"
MODEL = "//ml.googleapis.com/projects/ml-proj/models/m1"
BUCKET = "//storage.googleapis.com/projects/_/buckets/data-b"
OTHER_BUCKET = "//storage.googleapis.com/projects/_/buckets/other-b"
T = dt.datetime(2026, 3, 4, 10, 30, tzinfo=dt.UTC)   # a Wednesday, 10:30 UTC


def world(org: list[Any] | None = None, proj: list[Any] | None = None, model: list[Any] | None = None,
          bucket: list[Any] | None = None, **kw: Any) -> Engine:
    def rec(name: str, parent: str | None, bindings: list[Any] | None, atype: str) -> dict[str, Any]:
        r: dict[str, Any] = {"name": name, "assetType": atype, "resource": {"parent": parent} if parent else {}}
        if bindings:
            r["iamPolicy"] = {"version": 3, "bindings": bindings}
        return r
    assets = [rec(ORG, None, org, "cloudresourcemanager.googleapis.com/Organization"),
              rec(FOLDER, ORG, None, "cloudresourcemanager.googleapis.com/Folder"),
              {**rec(PROJ, FOLDER, proj, "cloudresourcemanager.googleapis.com/Project"),
               "resource": {"parent": FOLDER, "data": {"projectId": "ml-proj", "projectNumber": "123"}}},
              rec(MODEL, None, model, "ml.googleapis.com/Model"),
              rec(BUCKET, PROJ, bucket, "storage.googleapis.com/Bucket"),
              rec(OTHER_BUCKET, PROJ, None, "storage.googleapis.com/Bucket")]
    return Engine.load(assets, **kw)


def b(role: str, *members: str, cond: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"role": role, "members": list(members)}
    if cond:
        out["condition"] = {"title": "t", "expression": cond}
    return out


def test_viewer_on_project_plus_owner_on_bucket_is_owner_on_that_bucket_only() -> None:
    e = world(proj=[b("roles/viewer", "user:v@x.com")], bucket=[b("roles/storage.admin", "user:v@x.com")])
    assert e.check("user:v@x.com", "storage.buckets.delete", BUCKET, time=T).allowed
    assert not e.check("user:v@x.com", "storage.buckets.delete", OTHER_BUCKET, time=T).allowed
    assert e.check("user:v@x.com", "resourcemanager.projects.get", OTHER_BUCKET, time=T).allowed


def test_role_held_directly_and_through_group_is_the_union() -> None:
    e = world(proj=[b("roles/ml.viewer", "user:a@x.com"), b("roles/storage.objectViewer", "group:g@x.com")],
              groups={"g@x.com": ["user:a@x.com"]})
    assert e.check("user:a@x.com", "ml.models.list", PROJ, time=T).allowed
    d = e.check("user:a@x.com", "storage.objects.get", BUCKET, time=T)
    assert d.allowed and d.grant is not None and d.grant.membership == ("user:a@x.com", "group:g@x.com")


def test_deny_beats_any_allow() -> None:
    deny = [{"attachmentPoint": "cloudresourcemanager.googleapis.com/organizations/1",
             "policy": {"name": "no-delete", "rules": [{"denyRule": {
                 "deniedPrincipals": ["principalSet://goog/public:all"],
                 "exceptionPrincipals": ["principal://goog/subject/boss@x.com"],
                 "deniedPermissions": ["ml.googleapis.com/models.delete"]}}]}}]
    e = world(proj=[b("roles/owner", "user:o@x.com", "user:boss@x.com")], deny_policies=deny)
    d = e.check("user:o@x.com", "ml.models.delete", MODEL, time=T)
    assert not d.allowed and d.outcome == "DENIED_BY_DENY_POLICY"
    assert d.deny is not None and d.deny.policy == "no-delete" and d.deny.attachment == ORG
    assert e.check("user:boss@x.com", "ml.models.delete", MODEL, time=T).allowed      # exception honoured
    assert e.check("user:o@x.com", "ml.models.get", MODEL, time=T).allowed           # other permissions untouched


def test_deny_permission_groups_and_exception_permissions() -> None:
    deny = [{"attachmentPoint": "cloudresourcemanager.googleapis.com%2Fprojects%2F123",
             "policy": {"name": "d", "rules": [{"denyRule": {
                 "deniedPrincipals": ["principalSet://goog/group/contractors@x.com"],
                 "deniedPermissions": ["ml.googleapis.com/models.*"],
                 "exceptionPermissions": ["ml.googleapis.com/models.get"]}}]}}]
    e = world(proj=[b("roles/ml.admin", "group:contractors@x.com")], deny_policies=deny,
              groups={"contractors@x.com": ["group:inner@x.com"], "inner@x.com": ["user:c@y.com"]})
    assert not e.check("user:c@y.com", "ml.models.delete", MODEL, time=T).allowed
    assert e.check("user:c@y.com", "ml.models.get", MODEL, time=T).allowed
    assert e.check("user:c@y.com", "ml.jobs.cancel", PROJ, time=T).allowed


def test_all_authenticated_users_matches_other_domains_but_not_anonymous() -> None:
    e = world(bucket=[b("roles/storage.objectViewer", "allAuthenticatedUsers")])
    assert e.check("user:stranger@elsewhere.org", "storage.objects.get", BUCKET, time=T).allowed
    assert not e.check(None, "storage.objects.get", BUCKET, time=T).allowed
    e = world(bucket=[b("roles/storage.objectViewer", "allUsers")])
    assert e.check(None, "storage.objects.get", BUCKET + "/objects/a.txt", time=T).allowed
    assert e.check("allUsers", "storage.objects.get", BUCKET, time=T).allowed


def test_domain_member_matches_users_of_that_domain_only() -> None:
    e = world(org=[b("roles/browser", "domain:x.com")])
    assert e.check("user:Someone@X.com", "resourcemanager.projects.get", PROJ, time=T).allowed
    assert not e.check("user:someone@y.com", "resourcemanager.projects.get", PROJ, time=T).allowed
    assert not e.check("serviceAccount:s@x.com", "resourcemanager.projects.get", PROJ, time=T).allowed


def test_ml_developer_creates_and_lists_jobs_but_cancels_only_with_job_owner() -> None:
    job = "//ml.googleapis.com/projects/ml-proj/jobs/train_1"
    e = world(proj=[b("roles/ml.developer", "user:dev@x.com")])
    assert e.check("user:dev@x.com", "ml.jobs.create", PROJ, time=T).allowed
    assert e.check("user:dev@x.com", "ml.jobs.list", PROJ, time=T).allowed
    assert e.check("user:dev@x.com", "ml.jobs.get", job, time=T).allowed
    assert not e.check("user:dev@x.com", "ml.jobs.cancel", job, time=T).allowed
    e.set_iam_policy(job, {"bindings": [b("roles/ml.jobOwner", "user:dev@x.com")]})
    assert e.check("user:dev@x.com", "ml.jobs.cancel", job, time=T).allowed
    other = "//ml.googleapis.com/projects/123/jobs/other"
    assert not e.check("user:dev@x.com", "ml.jobs.cancel", other, time=T).allowed


def test_project_id_and_number_name_the_same_project() -> None:
    e = world(proj=[b("roles/viewer", "user:v@x.com")], model=[b("roles/ml.modelOwner", "user:o@x.com")])
    for name in (PROJ, f"{CRM}/projects/ml-proj", "projects/ml-proj", "projects/123"):
        assert e.check("user:v@x.com", "resourcemanager.projects.get", name, time=T).allowed
    assert e.check("user:o@x.com", "ml.models.delete", "//ml.googleapis.com/projects/123/models/m1", time=T).allowed


@pytest.mark.parametrize(("expr", "allowed"), [
    ('request.time < timestamp("2027-01-01T00:00:00Z")', True),
    ('request.time > timestamp("2027-01-01T00:00:00Z")', False),
    ('request.time.getHours("Europe/Berlin") == 11', True),
    ('request.time.getDayOfWeek("UTC") == 3', True),
    ('resource.name.startsWith("projects/_/buckets/data-b")', True),
    ('resource.type == "storage.googleapis.com/Bucket" && resource.service == "storage.googleapis.com"', True),
    ('resource.name.startsWith("projects/_/buckets/other")', False),
])
def test_conditions_see_google_attributes(expr: str, allowed: bool) -> None:
    e = world(proj=[b("roles/storage.admin", "user:c@x.com", cond=expr)])
    d = e.check("user:c@x.com", "storage.buckets.get", BUCKET, time=T)
    assert d.allowed is allowed
    assert [c.expression for c in d.conditions] == [expr]


def test_condition_that_errors_grants_nothing_and_says_why() -> None:
    e = world(proj=[b("roles/storage.admin", "user:c@x.com", cond='request.path.startsWith("/a")')])
    d = e.check("user:c@x.com", "storage.buckets.get", BUCKET, time=T)
    assert not d.allowed
    assert d.conditions[0].value is None and d.conditions[0].error
    assert "error" in str(d)


def test_disabled_or_deleted_custom_role_grants_nothing() -> None:
    role = {"name": "organizations/1/roles/modelReader", "title": "r", "includedPermissions": ["ml.models.get"],
            "stage": "GA"}
    e = world(proj=[b("organizations/1/roles/modelReader", "user:r@x.com")], roles=[role])
    assert e.check("user:r@x.com", "ml.models.get", MODEL, time=T).allowed
    e.put_role({**role, "stage": "DISABLED"})
    d = e.check("user:r@x.com", "ml.models.get", MODEL, time=T)
    assert not d.allowed and "disabled" in str(d)
    e.put_role({**role, "stage": "GA"})
    assert e.check("user:r@x.com", "ml.models.get", MODEL, time=T).allowed
    e.delete_role(role["name"])
    assert not e.check("user:r@x.com", "ml.models.get", MODEL, time=T).allowed


def test_replacing_a_roles_permissions_is_seen_by_checks_and_the_role_finder() -> None:
    role = {"name": "organizations/1/roles/modelOps", "title": "r", "includedPermissions": ["ml.models.get"],
            "stage": "GA"}
    twin = {**role, "name": "organizations/1/roles/modelOpsTwin"}        # same permission, another handle
    e = world(proj=[b("organizations/1/roles/modelOps", "user:r@x.com"),
                    b("organizations/1/roles/modelOpsTwin", "user:t@x.com")], roles=[role, twin])
    assert e.check("user:r@x.com", "ml.models.get", MODEL, time=T).allowed
    assert not e.check("user:r@x.com", "ml.models.delete", MODEL, time=T).allowed
    e.put_role({**role, "includedPermissions": ["ml.models.delete"]})
    assert not e.check("user:r@x.com", "ml.models.get", MODEL, time=T).allowed
    assert e.check("user:r@x.com", "ml.models.delete", MODEL, time=T).allowed
    assert e.check("user:t@x.com", "ml.models.get", MODEL, time=T).allowed   # the twin still holds it
    found = [r.name for r in e.find_roles(["ml.models.get"], resource=MODEL)]
    assert "organizations/1/roles/modelOpsTwin" in found and "organizations/1/roles/modelOps" not in found
    e.put_role({**role, "includedPermissions": ["ml.models.get", "ml.models.delete"]})
    assert e.check("user:r@x.com", "ml.models.get", MODEL, time=T).allowed
    assert e.check("user:r@x.com", "ml.models.delete", MODEL, time=T).allowed


def test_custom_role_only_within_its_project() -> None:
    role = {"name": "projects/ml-proj/roles/reader", "includedPermissions": ["resourcemanager.projects.get"]}
    e = world(roles=[role])
    e.set_iam_policy(PROJ, {"bindings": [b("projects/ml-proj/roles/reader", "user:r@x.com")]})
    assert e.check("user:r@x.com", "resourcemanager.projects.get", PROJ, time=T).allowed
    with pytest.raises(InvalidArgument) as err:
        e.set_iam_policy(ORG, {"bindings": [b("projects/ml-proj/roles/reader", "user:r@x.com")]})
    assert err.value.field == "policy.bindings[0].role"


def test_incremental_write_is_seen_by_the_next_check() -> None:
    e = world()
    assert not e.check("user:n@x.com", "ml.models.get", MODEL, time=T).allowed
    e.set_iam_policy(MODEL, {"bindings": [b("roles/ml.modelUser", "user:n@x.com")]})
    assert e.check("user:n@x.com", "ml.models.get", MODEL, time=T).allowed
    e.set_group_members("g@x.com", ["user:m@x.com"])
    e.set_iam_policy(PROJ, {"bindings": [b("roles/ml.viewer", "group:g@x.com")]})
    assert e.check("user:m@x.com", "ml.models.list", PROJ, time=T).allowed
    e.set_group_members("g@x.com", [])
    assert not e.check("user:m@x.com", "ml.models.list", PROJ, time=T).allowed
    e.move_resource(f"{CRM}/projects/123", ORG)
    assert e.ancestry(MODEL) == [MODEL, PROJ, ORG]


def test_writes_at_the_top_of_the_hierarchy_reach_a_caller_already_checked() -> None:
    # The roles a caller holds at the organization are memoized on its identity (engine.check):
    # a grant, a revocation, a role's new permission and a new group there must all be seen at once.
    role = {"name": "organizations/1/roles/ops", "title": "r", "includedPermissions": ["ml.models.get"],
            "stage": "GA"}
    e = world(org=[b("roles/browser", "user:u@x.com", "allAuthenticatedUsers")], roles=[role])
    u = "user:u@x.com"
    assert not e.check(u, "ml.models.get", MODEL, time=T).allowed
    e.set_iam_policy(ORG, {"bindings": [b("roles/browser", u), b("roles/ml.viewer", u)]})
    d = e.check(u, "ml.models.get", MODEL, time=T)
    assert d.allowed and d.grant is not None and (d.grant.resource, d.grant.role) == (ORG, "roles/ml.viewer")
    e.set_iam_policy(ORG, {"bindings": [b("roles/browser", u), b("organizations/1/roles/ops", "group:g@x.com")]})
    assert not e.check(u, "ml.models.get", MODEL, time=T).allowed
    e.set_group_members("g@x.com", [u])
    assert e.check(u, "ml.models.get", MODEL, time=T).allowed
    e.put_role({**role, "includedPermissions": ["ml.models.list"]})
    assert not e.check(u, "ml.models.get", MODEL, time=T).allowed
    assert e.check(u, "ml.models.list", MODEL, time=T).allowed
    e.set_iam_policy(ORG, {"bindings": [b("roles/ml.viewer", "user:other@x.com")]})
    assert not e.check(u, "ml.models.list", MODEL, time=T).allowed
    assert e.check("user:other@x.com", "ml.models.list", MODEL, time=T).allowed


def test_group_cycles_rejected_on_write_and_harmless_at_evaluation() -> None:
    e = world(proj=[b("roles/viewer", "group:a@x.com")], groups={"a@x.com": ["group:b@x.com"],
                                                                "b@x.com": ["user:u@x.com"]})
    with pytest.raises(InvalidArgument) as err:
        e.set_group_members("b@x.com", ["user:u@x.com", "group:a@x.com"])
    assert err.value.reason == "GROUP_CYCLE"
    assert e.check("user:u@x.com", "resourcemanager.projects.get", PROJ, time=T).allowed
    with pytest.raises(InvalidArgument):
        world(groups={"a@x.com": ["group:b@x.com"], "b@x.com": ["group:a@x.com"]})
    # a cycle that got in anyway (e.g. imported data) is harmless: each group is visited once
    e._groups.set_members("b@x.com", ["user:u@x.com", "group:a@x.com"], check_cycles=False)
    assert e.check("user:u@x.com", "resourcemanager.projects.get", PROJ, time=T).allowed
    assert not e.check("user:z@x.com", "resourcemanager.projects.get", PROJ, time=T).allowed


@pytest.mark.parametrize(("policy", "field"), [
    ({"bindings": [{"role": "roles/viewer", "members": ["user:a@x.com"], "condition": {"expression": "true"}}]},
     "policy.version"),
    ({"version": 3, "bindings": [{"role": "roles/viewer", "members": ["usr:a@x.com"]}]},
     "policy.bindings[0].members[0]"),
    ({"version": 3, "bindings": [{"role": "roles/nope", "members": ["user:a@x.com"]}]}, "policy.bindings[0].role"),
    ({"version": 3, "bindings": [{"role": "viewer", "members": ["user:a@x.com"]}]}, "policy.bindings[0].role"),
    ({"version": 3, "bindings": [{"role": "roles/viewer", "members": ["user:a@x.com"],
                                  "condition": {"expression": "request.time <"}}]},
     "policy.bindings[0].condition.expression"),
    ({"version": 2}, "policy.version"),
    ({"bindings": "x"}, "policy.bindings"),
])
def test_bad_policies_raise_invalid_argument_naming_the_field(policy: dict[str, Any], field: str) -> None:
    e = world()
    with pytest.raises(InvalidArgument) as err:
        e.set_iam_policy(PROJ, policy)
    assert err.value.field == field
    assert field in str(err.value)


def test_test_iam_permissions_returns_the_allowed_subset() -> None:
    e = world(proj=[b("roles/ml.viewer", "user:a@x.com")])
    got = e.test_iam_permissions("user:a@x.com", MODEL, ["ml.models.get", "ml.models.delete", "ml.versions.list"])
    assert got == ["ml.models.get", "ml.versions.list"]


def test_who_has_expands_groups_flags_conditions_and_drops_denied() -> None:
    deny = [{"attachmentPoint": f"{CRM[2:]}/projects/123", "policy": {"name": "d", "rules": [{"denyRule": {
        "deniedPrincipals": ["principal://goog/subject/blocked@x.com"],
        "deniedPermissions": ["ml.googleapis.com/models.get"]}}]}}]
    e = world(proj=[b("roles/ml.viewer", "group:g@x.com", "user:blocked@x.com"),
                    b("roles/ml.admin", "user:c@x.com", cond='request.time < timestamp("2030-01-01T00:00:00Z")')],
              groups={"g@x.com": ["user:m@x.com"]}, deny_policies=deny)
    who = {(a.principal, a.conditional, a.via) for a in e.who_has("ml.models.get", MODEL)}
    assert ("user:m@x.com", False, ("group:g@x.com",)) in who
    assert ("group:g@x.com", False, ()) in who
    assert ("user:c@x.com", True, ()) in who
    assert not any(p == "user:blocked@x.com" for p, _, _ in who)


def test_what_can_lists_every_permission_with_its_grant() -> None:
    e = world(proj=[b("roles/ml.modelUser", "user:a@x.com")])
    perms = e.what_can("user:a@x.com", MODEL)
    assert set(perms) == {"ml.models.get", "ml.models.predict", "ml.versions.get", "ml.versions.list",
                          "ml.versions.predict"}
    assert perms["ml.models.get"][0].role == "roles/ml.modelUser"


def test_role_finder_smallest_first() -> None:
    e = world()
    roles = [r.name for r in e.find_roles(["ml.jobs.cancel"])]
    assert roles[0] == "roles/ml.jobOwner"
    assert roles.index("roles/ml.admin") < roles.index("roles/owner")
    assert next(r.name for r in e.find_roles(["ml.models.predict", "ml.versions.predict"])) == "roles/ml.modelUser"


def test_decision_reads_like_troubleshooter() -> None:
    e = world(proj=[b("roles/ml.developer", "group:devs@x.com")], groups={"devs@x.com": ["user:d@x.com"]})
    text = str(e.check("user:d@x.com", "ml.jobs.cancel", "//ml.googleapis.com/projects/ml-proj/jobs/j", time=T))
    assert text.startswith("DENIED: user:d@x.com does not have ml.jobs.cancel")
    assert "roles/ml.developer: role does not include ml.jobs.cancel" in text
    assert "user:d@x.com → group:devs@x.com" in text
    ok = e.check("user:d@x.com", "ml.jobs.create", PROJ, time=T)
    assert ok.grant is not None and ok.grant.role == "roles/ml.developer" and ok.grant.resource == PROJ
    assert "✔ GRANTS" in str(ok)


def test_warm_builds_merged_indexes_ahead_and_writes_still_reach_them() -> None:
    e = world(org=[b("roles/browser", "user:o@x.com")], proj=[b("roles/viewer", "user:p@x.com")])
    e.set_iam_policy(FOLDER, {"bindings": [b("roles/ml.developer", "user:f@x.com")]})
    asks = [(p, perm, r) for p in ("user:o@x.com", "user:p@x.com", "user:f@x.com", "user:n@x.com")
            for perm in ("resourcemanager.projects.get", "ml.models.create", "storage.objects.get")
            for r in (PROJ, BUCKET)]
    before = [e.check(*a).allowed for a in asks]
    e.set_iam_policy(FOLDER, {"bindings": [b("roles/ml.developer", "user:f@x.com")]})   # stale again
    paused: list[int] = []
    assert e.warm(batch=1, pause=lambda: paused.append(1)) == 1 and paused == [1]
    assert e.warm() == 0
    assert [e.check(*a).allowed for a in asks] == before
    assert e.check("user:f@x.com", "ml.models.create", PROJ).allowed
    e.set_iam_policy(FOLDER, {"bindings": [b("roles/ml.viewer", "user:f@x.com")]})     # a write after warming
    assert not e.check("user:f@x.com", "ml.models.create", PROJ).allowed
    assert e.check("user:f@x.com", "ml.models.list", PROJ).allowed
