"""Org Policy v2 for keycard's IAM constraints: validation, hierarchy evaluation, helpers."""

from __future__ import annotations

from typing import Any

import pytest

from keycard import InvalidArgument
from keycard.services.orgpolicy import (
    CONSTRAINTS,
    Effective,
    OrgPolicy,
    constraints,
    effective_policy,
    key_expiry_hours,
    member_domain_allowed,
    parse_policy,
)

DRS = "iam.allowedPolicyMemberDomains"
NOKEY = "iam.disableServiceAccountKeyCreation"
AUTO = "iam.automaticIamGrantsForDefaultServiceAccounts"
EXPIRY = "iam.serviceAccountKeyExpiryHours"
ORG, FOLDER, PROJ = "organizations/1", "folders/2", "projects/my-proj"


def pol(node: str, constraint: str, *rules: dict[str, Any], inherit: bool = False, reset: bool = False) -> OrgPolicy:
    spec: dict[str, Any] = {"rules": list(rules)}
    if inherit:
        spec["inheritFromParent"] = True
    if reset:
        spec["reset"] = True
    return parse_policy({"name": f"{node}/policies/{constraint}", "spec": spec})


def allow(*values: str) -> dict[str, Any]:
    return {"values": {"allowedValues": list(values)}}


def deny(*values: str) -> dict[str, Any]:
    return {"values": {"deniedValues": list(values)}}


def chain(proj: OrgPolicy | None = None, folder: OrgPolicy | None = None,
          org: OrgPolicy | None = None) -> list[tuple[str, OrgPolicy | None]]:
    return [(PROJ, proj), (FOLDER, folder), (ORG, org)]


# -------------------------------------------------------------------------------------------- parsing

def test_parse_round_trip() -> None:
    raw = {"name": "projects/my-proj/policies/iam.allowedPolicyMemberDomains", "etag": "e1",
           "spec": {"rules": [{"values": {"allowedValues": ["is:C0abc123", "Example.com"], "deniedValues": ["x.com"]}},
                              {"allowAll": True, "condition": {"expression": "resource.matchTag('1/env', 'dev')"}}],
                    "inheritFromParent": True}}
    p = parse_policy(raw)
    assert p.constraint == DRS and p.parent == PROJ and p.inherit_from_parent
    assert p.rules[0].allowed_values == ("C0abc123", "example.com") and p.rules[0].denied_values == ("x.com",)
    assert p.to_json() == {"name": raw["name"], "etag": "e1", "spec": {
        "rules": [{"values": {"allowedValues": ["C0abc123", "example.com"], "deniedValues": ["x.com"]}},
                  {"allowAll": True, "condition": {"expression": "resource.matchTag('1/env', 'dev')"}}],
        "inheritFromParent": True}}
    assert parse_policy(p.to_json()) == p


def test_parse_fills_name_from_request_path() -> None:
    p = parse_policy({"spec": {"rules": [{"enforce": True}]}}, parent="folders/2", constraint=f"constraints/{NOKEY}")
    assert p.name == f"folders/2/policies/{NOKEY}"
    p = parse_policy({"name": f"organizations/1/policies/{AUTO}", "spec": {"reset": True}})
    assert p.reset and p.rules == ()


@pytest.mark.parametrize(("value", "field"), [
    ("x", "policy"),
    ({"spec": {}}, "policy.name"),
    ({"name": "projects/p/policies/iam.nope", "spec": {}}, "policy.name"),
    ({"name": f"projects/my-proj/policy/{NOKEY}", "spec": {}}, "policy.name"),
    ({"name": f"buckets/b/policies/{NOKEY}", "spec": {}}, "policy.name"),
    ({"name": f"projects/BAD_ID/policies/{NOKEY}", "spec": {}}, "policy.name"),
    ({"name": f"projects/my-proj/policies/{NOKEY}"}, "policy.spec"),
    ({"name": f"projects/my-proj/policies/{NOKEY}", "spec": {}, "bogus": 1}, "policy.bogus"),
    ({"name": f"projects/my-proj/policies/{NOKEY}", "spec": "x"}, "policy.spec"),
    ({"name": f"projects/my-proj/policies/{NOKEY}", "spec": {"rules": {}}}, "policy.spec.rules"),
    ({"name": f"projects/my-proj/policies/{NOKEY}", "spec": {"rules": []}}, "policy.spec.rules"),
    ({"name": f"projects/my-proj/policies/{NOKEY}", "spec": {"rules": [{"enforce": "yes"}]}},
     "policy.spec.rules[0].enforce"),
    ({"name": f"projects/my-proj/policies/{NOKEY}", "spec": {"rules": [{"values": {"allowedValues": ["a"]}}]}},
     "policy.spec.rules[0].values"),
    ({"name": f"projects/my-proj/policies/{NOKEY}", "spec": {"rules": [{"allowAll": True}]}},
     "policy.spec.rules[0].allowAll"),
    ({"name": f"projects/my-proj/policies/{NOKEY}", "spec": {"rules": [{"enforce": True}],
                                                             "inheritFromParent": True}},
     "policy.spec.inheritFromParent"),
    ({"name": f"projects/my-proj/policies/{NOKEY}", "spec": {"rules": [{"enforce": True}, {"enforce": False}]}},
     "policy.spec.rules"),
    ({"name": f"projects/my-proj/policies/{NOKEY}", "spec": {"rules": [
        {"enforce": True}, {"enforce": True, "condition": {"expression": "resource.matchTag('1/a', 'b')"}}]}},
     "policy.spec.rules[1].enforce"),
    ({"name": f"projects/my-proj/policies/{NOKEY}", "spec": {"rules": [{"enforce": True, "condition": {}}]}},
     "policy.spec.rules[0].condition.expression"),
    ({"name": f"projects/my-proj/policies/{NOKEY}", "spec": {"rules": [{"enforce": True}], "reset": True}},
     "policy.spec.reset"),
    ({"name": f"projects/my-proj/policies/{DRS}", "spec": {"rules": [{"enforce": True}]}},
     "policy.spec.rules[0].enforce"),
    ({"name": f"projects/my-proj/policies/{DRS}", "spec": {"rules": [{"enforce": False}]}},
     "policy.spec.rules[0].enforce"),
    ({"name": f"projects/my-proj/policies/{DRS}", "spec": {"rules": [{}]}}, "policy.spec.rules[0]"),
    ({"name": f"projects/my-proj/policies/{DRS}", "spec": {"rules": [{"allowAll": True, "denyAll": True}]}},
     "policy.spec.rules[0]"),
    ({"name": f"projects/my-proj/policies/{DRS}", "spec": {"rules": [{"allowAll": True}, {"denyAll": True}]}},
     "policy.spec.rules"),
    ({"name": f"projects/my-proj/policies/{DRS}", "spec": {"rules": [{"values": {}}]}},
     "policy.spec.rules[0].values"),
    ({"name": f"projects/my-proj/policies/{DRS}", "spec": {"rules": [{"values": {"allowed": ["a.com"]}}]}},
     "policy.spec.rules[0].values.allowed"),
    ({"name": f"projects/my-proj/policies/{DRS}", "spec": {"rules": [allow("not a domain")]}},
     "policy.spec.rules[0].values.allowedValues[0]"),
    ({"name": f"projects/my-proj/policies/{DRS}", "spec": {"rules": [allow("under:folders/1")]}},
     "policy.spec.rules[0].values.allowedValues[0]"),
    ({"name": f"projects/my-proj/policies/{DRS}", "spec": {"rules": [{"values": {"deniedValues": "x.com"}}]}},
     "policy.spec.rules[0].values.deniedValues"),
    ({"name": f"projects/my-proj/policies/{DRS}", "spec": {"rules": [allow("a.com")], "reset": True}},
     "policy.spec.reset"),
    ({"name": f"projects/my-proj/policies/{DRS}", "spec": {"inheritFromParent": True, "reset": True}},
     "policy.spec.inheritFromParent"),
    ({"name": f"projects/my-proj/policies/{EXPIRY}", "spec": {"rules": [allow("2h")]}},
     "policy.spec.rules[0].values.allowedValues[0]"),
    ({"name": f"projects/my-proj/policies/{EXPIRY}", "spec": {"rules": [deny("8h")]}},
     "policy.spec.rules[0].values.deniedValues"),
    ({"name": f"projects/my-proj/policies/{EXPIRY}", "spec": {"rules": [{"denyAll": True}]}},
     "policy.spec.rules[0].denyAll"),
    ({"name": f"projects/my-proj/policies/{NOKEY}", "spec": {"rules": [{"enforce": True}]},
      "dryRunSpec": {"rules": [{"allowAll": True}]}}, "policy.dryRunSpec.rules[0].allowAll"),
])
def test_parse_validation(value: Any, field: str) -> None:
    with pytest.raises(InvalidArgument) as ei:
        parse_policy(value)
    assert ei.value.field == field
    assert field in str(ei.value)


def test_parse_disagreeing_path() -> None:
    raw = {"name": f"projects/my-proj/policies/{NOKEY}", "spec": {"rules": [{"enforce": True}]}}
    with pytest.raises(InvalidArgument, match=r"policy\.name"):
        parse_policy(raw, parent="projects/other-proj")
    with pytest.raises(InvalidArgument, match=r"policy\.name"):
        parse_policy(raw, constraint=AUTO)


# ------------------------------------------------------------------------------------ boolean evaluation

@pytest.mark.parametrize(("proj", "folder", "org", "enforced", "source"), [
    (None, None, None, False, None),                                           # default: not enforced
    (None, None, {"enforce": True}, True, ORG),                                # inherited from the org
    (None, {"enforce": False}, {"enforce": True}, False, FOLDER),              # nearest explicit wins
    ({"enforce": True}, {"enforce": False}, None, True, PROJ),
    ("reset", None, {"enforce": True}, False, PROJ),                           # reset → default
    (None, "reset", {"enforce": True}, False, FOLDER),
])
def test_boolean_hierarchy(proj: Any, folder: Any, org: Any, enforced: bool, source: str | None) -> None:
    def make(node: str, rule: Any) -> OrgPolicy | None:
        if rule is None:
            return None
        return pol(node, NOKEY, reset=True) if rule == "reset" else pol(node, NOKEY, rule)
    eff = effective_policy(NOKEY, chain(make(PROJ, proj), make(FOLDER, folder), make(ORG, org)))
    assert eff.type == "boolean" and eff.enforced is enforced and eff.source == source
    assert eff.to_json(PROJ) == {"name": f"{PROJ}/policies/{NOKEY}", "spec": {"rules": [{"enforce": enforced}]}}


def test_automatic_grants_default_not_enforced() -> None:
    assert effective_policy(AUTO, chain()).enforced is False
    assert effective_policy(f"constraints/{AUTO}", chain(org=pol(ORG, AUTO, {"enforce": True}))).enforced


def test_boolean_conditional_rules_are_skipped() -> None:
    tagged = {"enforce": True, "condition": {"expression": "resource.matchTag('1/a', 'b')"}}
    p = pol(PROJ, NOKEY, {"enforce": False}, tagged)
    eff = effective_policy(NOKEY, chain(p, org=pol(ORG, NOKEY, {"enforce": True})))
    assert eff.enforced is False and eff.skipped_conditional_rules == (f"{PROJ} rules[1]",)


# --------------------------------------------------------------------------------------- list evaluation

A, B, C, D = "a.com", "b.com", "c.com", "d.com"


@pytest.mark.parametrize(("name", "proj", "folder", "org", "allowed", "denied", "allow_all", "deny_all"), [
    ("default: all values", None, None, None, set(), set(), True, False),
    ("no policy inherits parent", None, None, allow(A, B), {A, B}, set(), False, False),
    ("inherit false replaces", allow(C), None, allow(A, B), {C}, set(), False, False),
    ("inherit true merges", ("inherit", allow(C)), None, allow(A, B), {A, B, C}, set(), False, False),
    ("inherit across levels", ("inherit", allow(D)), ("inherit", allow(C)), allow(A, B),
     {A, B, C, D}, set(), False, False),
    ("denied values win", ("inherit", deny(A)), None, allow(A, B), {A, B}, {A}, False, False),
    ("parent denial survives child allow", ("inherit", allow(A)), None, deny(A), set(), {A}, True, False),
    ("only denied: others allowed", deny(A), None, allow(B), set(), {A}, True, False),
    ("reset restores default", "reset", None, allow(A), set(), set(), True, False),
    ("inherit under reset starts fresh", ("inherit", allow(C)), "reset", allow(A), {C}, set(), False, False),
    ("allowAll replaces", {"allowAll": True}, None, allow(A), set(), set(), True, False),
    ("denyAll replaces", {"denyAll": True}, None, allow(A), set(), set(), False, True),
    ("inherit allowAll keeps parent denials", ("inherit", {"allowAll": True}), None, deny(A),
     set(), {A}, True, False),
    ("inherit under denyAll allows only own", ("inherit", allow(C)), None, {"denyAll": True},
     {C}, set(), False, False),
    ("inherit only denials under denyAll", ("inherit", deny(C)), None, {"denyAll": True},
     set(), {C}, False, True),
    ("inherit under allowAll stays open", ("inherit", allow(C)), None, {"allowAll": True}, set(), set(), True, False),
    ("inherit with no rules adds nothing", ("inherit", None), None, allow(A), {A}, set(), False, False),
    ("root inherit has nothing to merge", None, None, ("inherit", allow(A)), {A}, set(), False, False),
])
def test_list_hierarchy(name: str, proj: Any, folder: Any, org: Any, allowed: set[str], denied: set[str],
                        allow_all: bool, deny_all: bool) -> None:
    def make(node: str, spec: Any) -> OrgPolicy | None:
        if spec is None:
            return None
        if spec == "reset":
            return pol(node, DRS, reset=True)
        if isinstance(spec, tuple):
            return pol(node, DRS, *([spec[1]] if spec[1] else []), inherit=True)
        return pol(node, DRS, spec)
    eff = effective_policy(DRS, chain(make(PROJ, proj), make(FOLDER, folder), make(ORG, org)))
    assert (set(eff.allowed_values), set(eff.denied_values), eff.allow_all, eff.deny_all) == \
        (allowed, denied, allow_all, deny_all), name


def test_list_sources_and_effective_json() -> None:
    eff = effective_policy(DRS, chain(pol(PROJ, DRS, deny(A), inherit=True), None, pol(ORG, DRS, allow(A, B))))
    assert eff.source == PROJ and eff.sources == (PROJ, ORG) and not eff.is_default
    assert eff.allows(B) and not eff.allows(A) and not eff.allows(C)
    assert eff.to_json(PROJ) == {"name": f"{PROJ}/policies/{DRS}", "spec": {"rules": [
        {"values": {"allowedValues": [A, B], "deniedValues": [A]}}]}}
    eff = effective_policy(DRS, chain())
    assert eff.is_default and eff.source is None
    assert eff.to_json(ORG)["spec"] == {"rules": [{"allowAll": True}]}


def test_chain_with_other_constraint_is_rejected() -> None:
    with pytest.raises(InvalidArgument) as ei:
        effective_policy(DRS, chain(pol(PROJ, NOKEY, {"enforce": True})))
    assert ei.value.field == "chain"
    with pytest.raises(InvalidArgument) as ei:
        effective_policy("iam.nope", chain())
    assert ei.value.field == "constraint"


# -------------------------------------------------------------------------------------------- helpers

def _drs(*rules: dict[str, Any]) -> Effective:
    return effective_policy(DRS, chain(org=pol(ORG, DRS, *rules)))


@pytest.mark.parametrize(("member", "ok"), [
    ("user:alice@example.com", True),
    ("group:eng@example.com", True),
    ("domain:example.com", True),
    ("user:mallory@evil.com", False),
    ("domain:other.com", False),
    ("user:bob@corp.com", True),                          # corp.com → customer C0corp1 (allowed)
    ("serviceAccount:sa@p.iam.gserviceaccount.com", True),
    ("serviceAccount:sa@evil.com", False),               # explicitly denied domain
    ("allUsers", False),
    ("allAuthenticatedUsers", False),
    ("principalSet://goog/cloudIdentityCustomerId/C0corp1", True),
    ("principalSet://goog/cloudIdentityCustomerId/C0else9", False),
    ("deleted:user:old@example.com?uid=123", True),
    ("principal://iam.googleapis.com/locations/global/workforcePools/pool1/subject/x", True),
])
def test_member_domain_allowed(member: str, ok: bool) -> None:
    eff = _drs(allow("example.com", "C0corp1"), deny("evil.com"))
    assert member_domain_allowed(eff, member, customer_ids_by_domain={"Corp.com": "C0corp1"}) is ok


def test_member_domain_unrestricted_and_default() -> None:
    assert member_domain_allowed(effective_policy(DRS, chain()), "allUsers")
    assert member_domain_allowed(_drs({"allowAll": True}), "user:x@any.com")
    assert not member_domain_allowed(_drs({"denyAll": True}), "user:x@any.com")
    assert not member_domain_allowed(_drs(deny("evil.com")), "allUsers")    # restricted: public members out
    assert member_domain_allowed(_drs(deny("evil.com")), "user:x@any.com")
    with pytest.raises(InvalidArgument):
        member_domain_allowed(effective_policy(NOKEY, chain()), "user:x@any.com")


def test_key_expiry_hours() -> None:
    assert key_expiry_hours(effective_policy(EXPIRY, chain())) is None
    assert key_expiry_hours(effective_policy(EXPIRY, chain(org=pol(ORG, EXPIRY, allow("168h"))))) == 168
    merged = chain(pol(PROJ, EXPIRY, allow("24h"), inherit=True), None, pol(ORG, EXPIRY, allow("168h")))
    assert key_expiry_hours(effective_policy(EXPIRY, merged)) == 24          # the shortest allowed value
    assert key_expiry_hours(effective_policy(EXPIRY, chain(pol(PROJ, EXPIRY, {"allowAll": True})))) is None
    with pytest.raises(InvalidArgument):
        key_expiry_hours(effective_policy(DRS, chain()))


def test_constraints_listing() -> None:
    out = constraints("projects/my-proj")
    assert [c["name"] for c in out] == [f"projects/my-proj/constraints/{n}" for n in sorted(CONSTRAINTS)]
    by = {c["name"].rsplit("/", 1)[1]: c for c in out}
    assert by[DRS]["listConstraint"] == {"supportsIn": False, "supportsUnder": False}
    assert by[NOKEY]["booleanConstraint"] == {} and by[NOKEY]["constraintDefault"] == "ALLOW"
    assert by[AUTO]["displayName"] == "Disable Automatic IAM Grants for Default Service Accounts"
    assert constraints()[0]["name"].startswith("constraints/")
    assert set(CONSTRAINTS) == {DRS, NOKEY, AUTO, EXPIRY, "iam.disableServiceAccountKeyUpload",
                                "iam.allowServiceAccountCredentialLifetimeExtension"}
    assert by["iam.allowServiceAccountCredentialLifetimeExtension"]["constraintDefault"] == "DENY"


def test_constraint_json_matches_discovery_schema() -> None:
    import json
    import pathlib

    import googleapiclient  # type: ignore[import-untyped]
    doc = pathlib.Path(googleapiclient.__file__).parent / "discovery_cache/documents/orgpolicy.v2.json"
    if not doc.exists():
        pytest.skip("orgpolicy.v2 discovery document not shipped")
    schema = json.loads(doc.read_text())["schemas"]
    props = schema["GoogleCloudOrgpolicyV2Constraint"]["properties"]
    for c in constraints("organizations/1"):
        assert set(c) <= set(props)
        assert c["constraintDefault"] in props["constraintDefault"]["enum"]
    policy_props = schema["GoogleCloudOrgpolicyV2Policy"]["properties"]
    spec_props = schema["GoogleCloudOrgpolicyV2PolicySpec"]["properties"]
    rule_props = schema["GoogleCloudOrgpolicyV2PolicySpecPolicyRule"]["properties"]
    p = pol(PROJ, DRS, allow(A), {"denyAll": True, "condition": {"expression": "resource.matchTag('1/a', 'b')"}},
            inherit=True).to_json()
    assert set(p) <= set(policy_props) and set(p["spec"]) <= set(spec_props)
    assert all(set(r) <= set(rule_props) for r in p["spec"]["rules"])
