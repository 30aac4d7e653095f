"""Policy Troubleshooter v1 / v3: shapes, verdicts, relevance, validation, and parsing by Google's GAPIC types."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest

from keycard import Engine, InvalidArgument
from keycard.services.troubleshooter import parse_access_tuple, troubleshoot_v1, troubleshoot_v3

CRM = "//cloudresourcemanager.googleapis.com"
ORG, FOLDER, PROJ = f"{CRM}/organizations/1", f"{CRM}/folders/2", f"{CRM}/projects/123"
MODEL = "//ml.googleapis.com/projects/ml-proj/models/m1"
T = dt.datetime(2026, 3, 4, 10, 30, tzinfo=dt.UTC)
SA = "runner@ml-proj.iam.gserviceaccount.com"


def world(org: list[Any] | None = None, proj: list[Any] | None = None, model: list[Any] | None = None,
          **kw: Any) -> Engine:
    def rec(name: str, parent: str | None, bindings: list[Any] | None, atype: str,
            data: dict[str, Any] | None = None) -> dict[str, Any]:
        resource: dict[str, Any] = {"parent": parent} if parent else {}
        if data:
            resource["data"] = data
        r: dict[str, Any] = {"name": name, "assetType": atype, "resource": resource}
        if bindings:
            r["iamPolicy"] = {"version": 3, "bindings": bindings, "etag": "BwXhqDF2AaI="}
        return r
    assets = [rec(ORG, None, org, "cloudresourcemanager.googleapis.com/Organization"),
              rec(FOLDER, ORG, None, "cloudresourcemanager.googleapis.com/Folder"),
              rec(PROJ, FOLDER, proj, "cloudresourcemanager.googleapis.com/Project",
                  {"projectId": "ml-proj", "projectNumber": "123"}),
              rec(MODEL, None, model, "ml.googleapis.com/Model")]
    return Engine.load(assets, **kw)


def b(role: str, *members: str, cond: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"role": role, "members": list(members)}
    if cond:
        out["condition"] = {"title": "t", "description": "d", "expression": cond}
    return out


def req(principal: str, permission: str, resource: str = MODEL, **extra: Any) -> dict[str, Any]:
    return {"accessTuple": {"principal": principal, "fullResourceName": resource, "permission": permission,
                            **extra}}


DENY_DELETE = [{"attachmentPoint": "cloudresourcemanager.googleapis.com/organizations/1",
                "policy": {"name": "no-delete", "displayName": "No deletes", "rules": [{
                    "description": "nobody deletes models",
                    "denyRule": {"deniedPrincipals": ["principalSet://goog/public:all"],
                                 "exceptionPrincipals": ["principal://goog/subject/boss@x.com"],
                                 "deniedPermissions": ["ml.googleapis.com/models.delete"]}}]}}]


# ------------------------------------------------------------------------------------------------ GAPIC

def _v1_type() -> Any:
    mod = pytest.importorskip("google.cloud.policytroubleshooter_v1")
    return mod.TroubleshootIamPolicyResponse


def _v3_type() -> Any:
    """Google's iam v3 GAPIC types (package google-cloud-policytroubleshooter-iam), None when absent."""
    try:
        from google.cloud import policytroubleshooter_iam_v3  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        return None
    return policytroubleshooter_iam_v3.TroubleshootIamPolicyResponse


def test_v3_gapic_types_available() -> None:
    if _v3_type() is None:
        pytest.skip("google-cloud-policytroubleshooter-iam is not installed: v3 GAPIC parsing not checked")


def parse_v1(out: dict[str, Any]) -> Any:
    """Parse as GAPIC's REST transport does (ignore_unknown_fields) and strictly without the extension."""
    cls = _v1_type()
    msg = cls.from_json(json.dumps(out), ignore_unknown_fields=True)
    strict = {k: v for k, v in out.items() if k != "keycardDenyExplanation"}
    assert cls.from_json(json.dumps(strict)) == msg
    return msg


def parse_v3(out: dict[str, Any]) -> Any:
    """Parse strictly and as the REST transport does; None (checks skipped) without the v3 GAPIC package."""
    cls = _v3_type()
    if cls is None:
        return None
    msg = cls.from_json(json.dumps(out))
    assert cls.from_json(json.dumps(out), ignore_unknown_fields=True) == msg
    return msg


# ------------------------------------------------------------------------------------------------- v1

def test_v1_granted_through_group_on_ancestor() -> None:
    e = world(proj=[b("roles/ml.viewer", "group:eng@x.com", "user:other@x.com")],
              groups={"eng@x.com": ["user:alice@x.com"]})
    out = troubleshoot_v1(e, req("alice@x.com", "ml.models.get"), time=T)
    assert out["access"] == "GRANTED"
    [pol] = out["explainedPolicies"]
    assert pol["fullResourceName"] == PROJ and pol["access"] == "GRANTED" and pol["relevance"] == "HIGH"
    assert pol["policy"]["etag"] == "BwXhqDF2AaI=" and pol["policy"]["version"] == 3
    [be] = pol["bindingExplanations"]
    assert be["access"] == "GRANTED" and be["role"] == "roles/ml.viewer"
    assert be["rolePermission"] == "ROLE_PERMISSION_INCLUDED" and be["rolePermissionRelevance"] == "HIGH"
    assert be["memberships"] == {
        "group:eng@x.com": {"membership": "MEMBERSHIP_INCLUDED", "relevance": "HIGH"},
        "user:other@x.com": {"membership": "MEMBERSHIP_NOT_INCLUDED", "relevance": "NORMAL"}}
    assert "keycardDenyExplanation" not in out
    msg = parse_v1(out)
    assert msg.access.name == "GRANTED"
    assert msg.explained_policies[0].binding_explanations[0].memberships["group:eng@x.com"].membership.name \
        == "MEMBERSHIP_INCLUDED"


def test_v1_resource_first_then_ancestors_and_relevance() -> None:
    e = world(org=[b("roles/ml.admin", "user:bob@x.com")],          # role has it, member does not match
              proj=[b("roles/logging.viewer", "user:alice@x.com")],  # member matches, role lacks it
              model=[b("roles/iam.roleViewer", "user:z@x.com")])     # neither: NORMAL
    out = troubleshoot_v1(e, req("user:alice@x.com", "ml.models.get"), time=T)
    assert out["access"] == "NOT_GRANTED"
    assert [p["fullResourceName"] for p in out["explainedPolicies"]] == [MODEL, PROJ, ORG]
    model_b = out["explainedPolicies"][0]["bindingExplanations"][0]
    assert model_b["relevance"] == "NORMAL" and out["explainedPolicies"][0]["relevance"] == "NORMAL"
    proj_b = out["explainedPolicies"][1]["bindingExplanations"][0]
    assert proj_b["rolePermission"] == "ROLE_PERMISSION_NOT_INCLUDED"
    assert proj_b["relevance"] == "HIGH" and proj_b["rolePermissionRelevance"] == "HIGH"
    assert proj_b["memberships"]["user:alice@x.com"] == {"membership": "MEMBERSHIP_INCLUDED", "relevance": "NORMAL"}
    org_b = out["explainedPolicies"][2]["bindingExplanations"][0]
    assert org_b["rolePermission"] == "ROLE_PERMISSION_INCLUDED" and org_b["rolePermissionRelevance"] == "NORMAL"
    assert org_b["relevance"] == "HIGH"
    assert org_b["memberships"]["user:bob@x.com"] == {"membership": "MEMBERSHIP_NOT_INCLUDED", "relevance": "HIGH"}
    parse_v1(out)


def test_v1_service_account_email_and_domain_member() -> None:
    e = world(proj=[b("roles/ml.developer", f"serviceAccount:{SA}"), b("roles/ml.viewer", "domain:x.com")])
    out = troubleshoot_v1(e, req(SA, "ml.models.predict"), time=T)
    assert out["access"] == "GRANTED"
    bes = out["explainedPolicies"][0]["bindingExplanations"]
    assert bes[0]["memberships"][f"serviceAccount:{SA}"]["membership"] == "MEMBERSHIP_INCLUDED"
    out = troubleshoot_v1(e, req("carol@x.com", "ml.models.get"), time=T)
    assert out["access"] == "GRANTED"
    assert out["explainedPolicies"][0]["bindingExplanations"][1]["memberships"]["domain:x.com"]["membership"] \
        == "MEMBERSHIP_INCLUDED"
    parse_v1(out)


@pytest.mark.parametrize(("expr", "access"), [
    ('request.time < timestamp("2030-01-01T00:00:00Z")', "GRANTED"),
    ('request.time > timestamp("2030-01-01T00:00:00Z")', "NOT_GRANTED"),
    ('request.path == "/predict"', "UNKNOWN_CONDITIONAL"),        # no request.path: cannot be evaluated
])
def test_v1_conditions(expr: str, access: str) -> None:
    e = world(proj=[b("roles/ml.viewer", "user:a@x.com", cond=expr)])
    out = troubleshoot_v1(e, req("a@x.com", "ml.models.get"), time=T)
    assert out["access"] == access
    be = out["explainedPolicies"][0]["bindingExplanations"][0]
    assert be["access"] == access
    assert be["condition"] == {"expression": expr, "title": "t", "description": "d"}
    msg = parse_v1(out)
    assert msg.explained_policies[0].binding_explanations[0].condition.expression == expr


def test_v1_deny_wins_and_extension_is_ignored_by_gapic() -> None:
    e = world(proj=[b("roles/ml.admin", "user:o@x.com", "user:boss@x.com")], deny_policies=DENY_DELETE)
    out = troubleshoot_v1(e, req("o@x.com", "ml.models.delete"), time=T)
    assert out["access"] == "NOT_GRANTED"
    assert out["explainedPolicies"][0]["access"] == "GRANTED"       # allow alone would grant
    [rule] = out["keycardDenyExplanation"]
    assert rule["denyAccessState"] == "DENIED" and rule["policy"] == "no-delete"
    assert rule["attachmentPoint"] == "cloudresourcemanager.googleapis.com/organizations/1"
    assert rule["principalMatched"] == "allUsers"
    msg = parse_v1(out)
    assert msg.access.name == "NOT_GRANTED"
    out = troubleshoot_v1(e, req("boss@x.com", "ml.models.delete"), time=T)   # exception principal
    assert out["access"] == "GRANTED" and "keycardDenyExplanation" not in out


def test_v1_unknown_role_and_disabled_role() -> None:
    custom = {"name": "projects/ml-proj/roles/off", "title": "off", "stage": "DISABLED",
              "includedPermissions": ["ml.models.get"]}
    e = world(proj=[b("projects/ml-proj/roles/off", "user:a@x.com"), b("roles/nope.nope", "user:a@x.com")],
              roles=[custom], unknown_roles="ignore")
    out = troubleshoot_v1(e, req("a@x.com", "ml.models.get"), time=T)
    assert out["access"] == "NOT_GRANTED"
    bes = out["explainedPolicies"][0]["bindingExplanations"]
    assert bes[0]["rolePermission"] == "ROLE_PERMISSION_NOT_INCLUDED"
    assert bes[1]["rolePermission"] == "ROLE_PERMISSION_UNKNOWN_INFO_DENIED"
    parse_v1(out)


def test_v1_resource_without_policies() -> None:
    out = troubleshoot_v1(world(), req("a@x.com", "ml.models.get"), time=T)
    assert out == {"access": "NOT_GRANTED", "explainedPolicies": []}
    parse_v1(out)


@pytest.mark.parametrize(("body", "field"), [
    ({}, "accessTuple"),
    ({"accessTuple": "x"}, "accessTuple"),
    ({"accessTuple": {"fullResourceName": MODEL, "permission": "ml.models.get"}}, "accessTuple.principal"),
    (req("", "ml.models.get"), "accessTuple.principal"),
    (req("not-an-email", "ml.models.get"), "accessTuple.principal"),
    (req("domain:x.com", "ml.models.get"), "accessTuple.principal"),
    (req(7, "ml.models.get"), "accessTuple.principal"),                            # type: ignore[arg-type]
    (req("a@x.com", "ml.models.get", resource="no-slashes"), "accessTuple.fullResourceName"),
    ({"accessTuple": {"principal": "a@x.com", "permission": "ml.models.get"}}, "accessTuple.fullResourceName"),
    (req("a@x.com", "ml.models"), "accessTuple.permission"),
    (req("a@x.com", ""), "accessTuple.permission"),
    (req("a@x.com", "ml.models.get", conditionContext={}), "accessTuple.conditionContext"),
])
def test_v1_validation(body: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidArgument) as ei:
        troubleshoot_v1(world(), body, time=T)
    assert ei.value.field == field
    assert field in str(ei.value)


def test_principal_mapping() -> None:
    assert parse_access_tuple(req("Alice@X.com", "ml.models.get")).principal == "user:alice@x.com"
    assert parse_access_tuple(req(SA, "ml.models.get")).principal == f"serviceAccount:{SA}"
    assert parse_access_tuple(req(f"serviceAccount:{SA}", "ml.models.get")).principal == f"serviceAccount:{SA}"
    assert parse_access_tuple(req("group:g@x.com", "ml.models.get")).principal == "group:g@x.com"
    assert parse_access_tuple(req("user:a@x.com", "ml.models.get", resource="projects/ml-proj")).full_resource_name \
        == f"{CRM}/projects/ml-proj"


# ------------------------------------------------------------------------------------------------- v3

def test_v3_granted_shape() -> None:
    e = world(proj=[b("roles/ml.viewer", "group:eng@x.com")], groups={"eng@x.com": ["user:alice@x.com"]})
    out = troubleshoot_v3(e, req("alice@x.com", "ml.models.get"), time=T)
    assert out["overallAccessState"] == "CAN_ACCESS"
    assert out["accessTuple"] == {"principal": "alice@x.com", "fullResourceName": MODEL,
                                  "permission": "ml.models.get", "permissionFqdn": "ml.googleapis.com/models.get"}
    ape = out["allowPolicyExplanation"]
    assert ape["allowAccessState"] == "ALLOW_ACCESS_STATE_GRANTED" and ape["relevance"] == "HEURISTIC_RELEVANCE_HIGH"
    [pol] = ape["explainedPolicies"]
    [be] = pol["bindingExplanations"]
    assert be["combinedMembership"] == {"membership": "MEMBERSHIP_MATCHED", "relevance": "HEURISTIC_RELEVANCE_HIGH"}
    assert be["rolePermission"] == "ROLE_PERMISSION_INCLUDED"
    dpe = out["denyPolicyExplanation"]
    assert dpe["denyAccessState"] == "DENY_ACCESS_STATE_NOT_DENIED" and dpe["explainedResources"] == []
    assert dpe["permissionDeniable"] is True
    msg = parse_v3(out)
    if msg is not None:
        assert msg.overall_access_state.name == "CAN_ACCESS"
        assert msg.access_tuple.permission_fqdn == "ml.googleapis.com/models.get"


def test_v3_deny_explanation() -> None:
    e = world(proj=[b("roles/ml.admin", "user:o@x.com")], deny_policies=DENY_DELETE)
    out = troubleshoot_v3(e, req("o@x.com", "ml.googleapis.com/models.delete"), time=T)
    assert out["overallAccessState"] == "CANNOT_ACCESS"
    assert out["accessTuple"]["permissionFqdn"] == "ml.googleapis.com/models.delete"
    assert out["allowPolicyExplanation"]["allowAccessState"] == "ALLOW_ACCESS_STATE_GRANTED"
    assert out["allowPolicyExplanation"]["relevance"] == "HEURISTIC_RELEVANCE_NORMAL"
    dpe = out["denyPolicyExplanation"]
    assert dpe["denyAccessState"] == "DENY_ACCESS_STATE_DENIED" and dpe["relevance"] == "HEURISTIC_RELEVANCE_HIGH"
    [res] = dpe["explainedResources"]
    assert res["fullResourceName"] == ORG and res["denyAccessState"] == "DENY_ACCESS_STATE_DENIED"
    [pol] = res["explainedPolicies"]
    assert pol["policy"]["name"] == \
        "policies/cloudresourcemanager.googleapis.com%2Forganizations%2F1/denypolicies/no-delete"
    assert pol["policy"]["displayName"] == "No deletes"
    [rule] = pol["ruleExplanations"]
    assert rule["denyAccessState"] == "DENY_ACCESS_STATE_DENIED"
    assert rule["deniedPrincipals"]["principalSet://goog/public:all"]["membership"] == "MEMBERSHIP_MATCHED"
    assert rule["exceptionPrincipals"]["principal://goog/subject/boss@x.com"]["membership"] \
        == "MEMBERSHIP_NOT_MATCHED"
    assert rule["deniedPermissions"]["ml.googleapis.com/models.delete"]["permissionMatchingState"] \
        == "PERMISSION_PATTERN_MATCHED"
    assert rule["combinedDeniedPermission"]["permissionMatchingState"] == "PERMISSION_PATTERN_MATCHED"
    msg = parse_v3(out)
    if msg is not None:
        assert msg.deny_policy_explanation.explained_resources[0].explained_policies[0].policy.rules[0] \
            .deny_rule.denied_permissions == ["ml.googleapis.com/models.delete"]
    out = troubleshoot_v3(e, req("o@x.com", "ml.models.get"), time=T)     # other permission: not denied
    assert out["denyPolicyExplanation"]["denyAccessState"] == "DENY_ACCESS_STATE_NOT_DENIED"
    rule = out["denyPolicyExplanation"]["explainedResources"][0]["explainedPolicies"][0]["ruleExplanations"][0]
    assert rule["denyAccessState"] == "DENY_ACCESS_STATE_NOT_DENIED"
    assert rule["combinedDeniedPermission"]["permissionMatchingState"] == "PERMISSION_PATTERN_NOT_MATCHED"
    assert rule["relevance"] == "HEURISTIC_RELEVANCE_HIGH"             # principal matched: other half
    parse_v3(out)


def test_v3_denial_condition_explanation() -> None:
    deny = [{"attachmentPoint": "cloudresourcemanager.googleapis.com/projects/123",
             "policy": {"name": "after-2030", "rules": [{"denyRule": {
                 "deniedPrincipals": ["principal://goog/subject/o@x.com"],
                 "deniedPermissions": ["ml.googleapis.com/models.*"],
                 "denialCondition": {"expression": 'request.time > timestamp("2030-01-01T00:00:00Z")'}}}]}}]
    e = world(proj=[b("roles/ml.admin", "user:o@x.com")], deny_policies=deny)
    out = troubleshoot_v3(e, req("o@x.com", "ml.models.get"), time=T)
    assert out["overallAccessState"] == "CAN_ACCESS"
    rule = out["denyPolicyExplanation"]["explainedResources"][0]["explainedPolicies"][0]["ruleExplanations"][0]
    assert rule["conditionExplanation"] == {"value": False}
    assert rule["condition"]["expression"].startswith("request.time")
    parse_v3(out)
    late = {"request": {"receiveTime": "2031-05-01T00:00:00.123456789Z"}}
    out = troubleshoot_v3(e, req("o@x.com", "ml.models.get", conditionContext=late), time=T)
    assert out["overallAccessState"] == "CANNOT_ACCESS"
    assert out["accessTuple"]["conditionContext"] == late
    rule = out["denyPolicyExplanation"]["explainedResources"][0]["explainedPolicies"][0]["ruleExplanations"][0]
    assert rule["conditionExplanation"] == {"value": True}
    msg = parse_v3(out)
    if msg is not None:
        assert msg.access_tuple.condition_context.request.receive_time.year == 2031


def test_v3_binding_condition_explanation() -> None:
    e = world(proj=[b("roles/ml.viewer", "user:a@x.com", cond='request.time > timestamp("2030-01-01T00:00:00Z")')])
    out = troubleshoot_v3(e, req("a@x.com", "ml.models.get"), time=T)
    assert out["overallAccessState"] == "CANNOT_ACCESS"
    be = out["allowPolicyExplanation"]["explainedPolicies"][0]["bindingExplanations"][0]
    assert be["allowAccessState"] == "ALLOW_ACCESS_STATE_NOT_GRANTED"
    assert be["conditionExplanation"] == {"value": False}
    assert be["relevance"] == "HEURISTIC_RELEVANCE_HIGH"
    parse_v3(out)


def test_v3_unknown_conditional() -> None:
    e = world(proj=[b("roles/ml.viewer", "user:a@x.com", cond='request.path == "/predict"')])
    out = troubleshoot_v3(e, req("a@x.com", "ml.models.get"), time=T)
    assert out["overallAccessState"] == "UNKNOWN_CONDITIONAL"
    assert out["allowPolicyExplanation"]["allowAccessState"] == "ALLOW_ACCESS_STATE_UNKNOWN_CONDITIONAL"
    cexp = out["allowPolicyExplanation"]["explainedPolicies"][0]["bindingExplanations"][0]["conditionExplanation"]
    assert cexp["value"] is None and cexp["errors"][0]["code"] == 3 and "request.path" in cexp["errors"][0]["message"]
    msg = parse_v3(out)
    if msg is not None:
        assert msg.overall_access_state.name == "UNKNOWN_CONDITIONAL"


@pytest.mark.parametrize(("ctx", "field"), [
    ("x", "accessTuple.conditionContext"),
    ({"bogus": {}}, "accessTuple.conditionContext.bogus"),
    ({"request": {"receiveTime": "yesterday"}}, "accessTuple.conditionContext.request.receiveTime"),
    ({"request": {"receiveTime": "2030-01-01T00:00:00"}}, "accessTuple.conditionContext.request.receiveTime"),
    ({"destination": {"port": 70000}}, "accessTuple.conditionContext.destination.port"),
    ({"resource": {"name": 5}}, "accessTuple.conditionContext.resource.name"),
])
def test_v3_condition_context_validation(ctx: Any, field: str) -> None:
    with pytest.raises(InvalidArgument) as ei:
        troubleshoot_v3(world(), req("a@x.com", "ml.models.get", conditionContext=ctx), time=T)
    assert ei.value.field == field


def test_v3_rejects_permission_groups() -> None:
    with pytest.raises(InvalidArgument) as ei:
        troubleshoot_v3(world(), req("a@x.com", "ml.googleapis.com/models.*"), time=T)
    assert ei.value.field == "accessTuple.permission"


def test_v3_resourcemanager_fqdn() -> None:
    out = troubleshoot_v3(world(), req("a@x.com", "resourcemanager.projects.get", resource=PROJ), time=T)
    assert out["accessTuple"]["permissionFqdn"] == "cloudresourcemanager.googleapis.com/projects.get"
    assert out["overallAccessState"] == "CANNOT_ACCESS"
    parse_v3(out)


def test_pure_no_mutation() -> None:
    e = world(proj=[b("roles/ml.viewer", "user:a@x.com")], deny_policies=DENY_DELETE)
    before = (e.revision, sorted(e.resources()))
    troubleshoot_v1(e, req("a@x.com", "ml.models.get", resource="//ml.googleapis.com/projects/ml-proj/models/new"),
                    time=T)
    troubleshoot_v3(e, req("a@x.com", "ml.models.delete", resource=f"{CRM}/projects/other-proj"), time=T)
    assert (e.revision, sorted(e.resources())) == before
