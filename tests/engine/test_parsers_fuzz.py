"""Fuzzing the parsers: whatever comes in, a parser returns or raises InvalidArgument naming
a field under the one it was given — never TypeError, KeyError, AttributeError, RecursionError…"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from keycard import names
from keycard.engine.members import GroupGraph
from keycard.engine.model import parse_allow_policy, parse_deny_policy, parse_role
from keycard.errors import InvalidArgument

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --------------------------------------------------------------------------------------- strategies

# Characters the grammar cares about, plus a few it must reject.
ALPHABET = "abcmz019AZ-_./:@*?=#+ \n\t²١é"
# Pieces of valid names: prefixes, separators, services, ids.
PIECES = [
    "//", "/", ":", ".", "@", "?uid=", "*",
    "cloudresourcemanager.googleapis.com", "ml.googleapis.com", "storage.googleapis.com", "iam.googleapis.com",
    "compute.googleapis.com", "googleapis.com", "goog",
    "projects", "folders", "organizations", "models", "versions", "jobs", "operations", "buckets", "objects",
    "serviceAccounts", "keys", "roles", "locations", "global", "workloadIdentityPools", "workforcePools",
    "subject", "group", "attribute.repo", "public:all", "type", "ServiceAccount", "cloudIdentityCustomerId",
    "user:", "group:", "serviceAccount:", "domain:", "deleted:", "allUsers", "allAuthenticatedUsers",
    "principal://", "principalSet://", "projectOwner:",
    "my-project", "p1-abc", "123", "_", "-", "m1", "v1", "my-bucket", "a@b.com", "Alice@Example.COM", "example.com",
    "pool-1", "C01abc", "viewer", "myRole", "get", "create", "ml", "resourcemanager",
]

VALID_NAMES = [
    "organizations/123", "folders/456", "projects/my-project", "projects/123456",
    "//cloudresourcemanager.googleapis.com/projects/my-project",
    "//ml.googleapis.com/projects/p1-abc/models/m1/versions/v1",
    "//storage.googleapis.com/projects/_/buckets/my-bucket/objects/path/to/file.txt",
    "//storage.googleapis.com/my-bucket",
    "//iam.googleapis.com/projects/-/serviceAccounts/sa@p1-abc.iam.gserviceaccount.com",
    "//compute.googleapis.com/projects/p1-abc/zones/z/instances/i",
    "user:alice@example.com", "group:g@example.com", "serviceAccount:sa@p1-abc.iam.gserviceaccount.com",
    "domain:example.com", "allUsers", "allAuthenticatedUsers", "deleted:user:bob@example.com?uid=123",
    "principal://iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/pool-1/subject/sub",
    "principalSet://iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/pool-1/*",
    "principalSet://iam.googleapis.com/locations/global/workforcePools/pool-1/attribute.repo/x",
    "principal://goog/subject/a@b.com", "principalSet://goog/group/g@b.com", "principalSet://goog/public:all",
    "deleted:principal://goog/subject/a@b.com?uid=1",
    "ml.models.get", "resourcemanager.projects.get", "iam.googleapis.com/workloadIdentityPools.get",
    "ml.googleapis.com/models.get", "iam.googleapis.com/roles.*", "iam.googleapis.com/*",
    "roles/viewer", "projects/my-project/roles/myRole", "organizations/123/roles/my_role",
]


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[str]) -> str:
    """A string near ``base``: a few characters inserted, deleted, replaced or swapped."""
    s = draw(base)
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["insert", "delete", "replace", "case", "piece"]))
        i = draw(st.integers(0, len(s)))
        if op == "insert":
            s = s[:i] + draw(st.sampled_from(ALPHABET)) + s[i:]
        elif op == "delete" and s:
            s = s[:i] + s[i + 1:]
        elif op == "replace" and i < len(s):
            s = s[:i] + draw(st.sampled_from(ALPHABET)) + s[i + 1:]
        elif op == "case":
            s = s.swapcase()
        else:
            s = s[:i] + draw(st.sampled_from(PIECES)) + s[i:]
    return s


REGEXES = [
    r"(organizations|folders|projects)/[a-z0-9_-]{0,32}",
    r"//[a-z.-]{0,30}/projects/[a-z0-9_-]{1,10}(/[a-zA-Z0-9._@-]{1,10}){0,5}",
    r"(user|group|serviceAccount|domain|deleted|bogus)?:[a-zA-Z0-9.@+_-]{0,20}(\?uid=[0-9a-z]{0,4})?",
    r"principal(Set)?://(goog|iam\.googleapis\.com)/[a-zA-Z0-9/._:*@-]{0,80}",
    r"[a-zA-Z0-9.-]{0,25}(/[a-zA-Z*]{0,10})?\.[a-zA-Z*_]{0,10}(\.[a-z]{0,5})?",
    r"((projects|organizations)/[a-z0-9-]{0,10}/)?roles/[a-zA-Z0-9_.-]{0,70}",
]

name_like = st.one_of(
    st.text(max_size=200),
    st.text(alphabet=ALPHABET, max_size=80),
    st.lists(st.sampled_from(PIECES), max_size=12).map("".join),
    mutated(st.sampled_from(VALID_NAMES)),
    mutated(st.one_of(*(st.from_regex(r, fullmatch=True) for r in REGEXES))),
)

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40), name_like,
)

POLICY_KEYS = [
    "version", "bindings", "role", "members", "condition", "expression", "title", "description", "etag",
    "auditConfigs", "audit_configs", "name", "displayName", "display_name", "rules", "denyRule", "deny_rule",
    "deniedPrincipals", "denied_principals", "exceptionPrincipals", "deniedPermissions", "exceptionPermissions",
    "denialCondition", "denial_condition", "includedPermissions", "included_permissions", "stage", "deleted",
]

json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(st.one_of(st.sampled_from(POLICY_KEYS), st.text(max_size=10)), children, max_size=5),
    ),
    max_leaves=25,
)


def _is_error_for(err: InvalidArgument, fld: str) -> bool:
    return err.field is not None and (err.field == fld or err.field.startswith((f"{fld}.", f"{fld}["))) \
        and err.field in err.message


def call(fn: Callable[..., Any], value: object, fld: str, **kwargs: Any) -> Any:
    """``fn(value, fld)``; an InvalidArgument must name a field at or under ``fld``. Returns None on error."""
    try:
        return fn(value, fld, **kwargs)
    except InvalidArgument as err:
        assert _is_error_for(err, fld), (err.field, err.message)
        assert "\n" not in err.message
        return None


# ------------------------------------------------------------------------------------ name parsers

@FUZZ
@given(name_like)
@example("//storage.googleapis.com/projects/_/buckets/:/objects/x")   # an object in an invalid bucket: rejected
def test_parse_resource_returns_or_rejects(text: str) -> None:
    rn = call(names.parse_resource, text, "resource")
    if rn is not None:
        assert rn.full == f"//{rn.service}/{rn.relative}"
        assert names.parse_resource(rn.full) == rn
        assert not any(c.isspace() for c in rn.full)
        if rn.parent is not None:
            names.parse_resource(rn.parent)  # a derived parent always parses
        if rn.is_container:
            assert rn.parent is None


@FUZZ
@given(name_like)
def test_parse_member_returns_or_rejects(text: str) -> None:
    key = call(names.parse_member, text, "members[0]")
    if key is not None:
        assert names.parse_member(key) == key
        assert not any(c.isspace() for c in key)
        email = names.member_email(key)
        if email is not None:
            assert email == email.lower()


@FUZZ
@given(name_like)
def test_parse_deny_principal_returns_or_rejects(text: str) -> None:
    key = call(names.parse_deny_principal, text, "deniedPrincipals[0]")
    if key is not None:
        assert names.parse_member(key) == key  # a deny principal maps onto an allow-policy member key


@FUZZ
@given(name_like)
def test_parse_permission_returns_or_rejects(text: str) -> None:
    perm = call(names.parse_permission, text, "includedPermissions[0]")
    if perm is not None:
        assert perm == text
        assert not any(c.isspace() for c in perm)


@FUZZ
@given(name_like)
def test_parse_deny_permission_returns_or_rejects(text: str) -> None:
    parsed = call(names.parse_deny_permission, text, "deniedPermissions[0]")
    if parsed is not None:
        prefix, resource, verb = parsed
        assert prefix and resource and verb
        assert not any(c.isspace() for c in prefix + resource + verb)


@FUZZ
@given(name_like)
def test_parse_role_name_returns_or_rejects(text: str) -> None:
    role = call(names.parse_role_name, text, "role")
    if role is not None:
        assert role == text
        scope = names.role_scope(role)
        if scope is not None:
            assert names.parse_resource(scope).is_container


@FUZZ
@given(json_values)
def test_name_parsers_reject_non_strings(value: object) -> None:
    for fn in (names.parse_resource, names.parse_member, names.parse_deny_principal, names.parse_permission,
               names.parse_deny_permission, names.parse_role_name):
        call(fn, value, "x")


# ------------------------------------------------------------------------------------- json parsers

@FUZZ
@given(json_values, st.booleans())
def test_parse_allow_policy_returns_or_rejects(value: object, lenient: bool) -> None:
    call(parse_allow_policy, value, "policy", lenient_version=lenient)


@FUZZ
@given(json_values)
def test_parse_deny_policy_returns_or_rejects(value: object) -> None:
    call(parse_deny_policy, value, "policy")


@FUZZ
@given(json_values)
def test_parse_role_returns_or_rejects(value: object) -> None:
    call(parse_role, value, "role")
    call(parse_role, value, "role", known_permissions=frozenset({"ml.models.get"}))


# ---------------------------------------------------------------------------- near-valid structures

VALID_ALLOW = {
    "version": 3,
    "etag": "BwXhqDYsA8E=",
    "bindings": [
        {"role": "roles/viewer", "members": ["user:alice@example.com", "group:g@example.com"]},
        {
            "role": "projects/my-project/roles/myRole",
            "members": ["serviceAccount:sa@p1-abc.iam.gserviceaccount.com", "allUsers"],
            "condition": {
                "title": "expires",
                "description": "until 2030",
                "expression": 'request.time < timestamp("2030-01-01T00:00:00Z")',
            },
        },
    ],
    "auditConfigs": [{"service": "allServices", "auditLogConfigs": [{"logType": "DATA_READ"}]}],
}

VALID_DENY = {
    "name": "policies/cloudresourcemanager.googleapis.com%2Fprojects%2Fmy-project/denypolicies/p",
    "displayName": "no deletes",
    "etag": "abc",
    "rules": [
        {
            "description": "nobody deletes models",
            "denyRule": {
                "deniedPrincipals": ["principalSet://goog/public:all"],
                "exceptionPrincipals": ["principalSet://goog/group/admins@example.com"],
                "deniedPermissions": ["ml.googleapis.com/models.delete", "iam.googleapis.com/roles.*"],
                "exceptionPermissions": ["ml.googleapis.com/models.get"],
                "denialCondition": {"expression": 'resource.name.startsWith("projects/my-project/models/")'},
            },
        },
    ],
}

VALID_ROLE = {
    "name": "projects/my-project/roles/myRole",
    "title": "My role",
    "description": "Reads models",
    "stage": "GA",
    "includedPermissions": ["ml.models.get", "ml.models.list"],
    "etag": "BwW=",
}

CEL_LIKE = st.one_of(
    st.text(max_size=60),
    st.sampled_from([
        "true", "1", "request.time", 'resource.name.startsWith("projects/")', "resource.nope == 1",
        'resource.name.extract("projects/{p}/") == "x"', "((((", "a &&", "'unterminated", "null",
        'request.time.getHours("Mars/Olympus") > 1', "resource.type in ['a', 'b']", "size(resource.name) > 3",
    ]),
    mutated(st.just('request.time < timestamp("2030-01-01T00:00:00Z")')),
)


def _paths(obj: object, prefix: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """Every path into a JSON structure (keys and indices), the root excluded."""
    out: list[tuple[object, ...]] = []
    items: list[tuple[object, object]] = []
    if isinstance(obj, dict):
        items = list(obj.items())
    elif isinstance(obj, list):
        items = list(enumerate(obj))
    for k, v in items:
        out.append((*prefix, k))
        out.extend(_paths(v, (*prefix, k)))
    return out


@st.composite
def near_valid(draw: st.DrawFn, base: dict[str, Any]) -> dict[str, Any]:
    """``base`` with one field replaced (by a random value, a near-miss string or a CEL-ish text) or removed."""
    obj = copy.deepcopy(base)
    path = draw(st.sampled_from(_paths(obj)))
    parent: Any = obj
    for k in path[:-1]:
        parent = parent[k]
    key = path[-1]
    old = parent[key]
    action = draw(st.sampled_from(["replace", "replace", "mutate", "remove", "cel"]))
    if action == "remove" and isinstance(parent, dict):
        del parent[key]
    elif action == "mutate" and isinstance(old, str):
        parent[key] = draw(mutated(st.just(old)))
    elif action == "cel":
        parent[key] = draw(CEL_LIKE)
    else:
        parent[key] = draw(json_values)
    if draw(st.booleans()):  # sometimes an extra unknown or snake_case field too
        obj[draw(st.sampled_from(POLICY_KEYS))] = draw(json_values)
    return obj


def test_the_valid_bases_are_valid() -> None:
    pol = parse_allow_policy(VALID_ALLOW)
    assert pol.version == 3 and len(pol.bindings) == 2 and pol.bindings[1].condition is not None
    deny = parse_deny_policy(VALID_DENY)
    assert len(deny.rules) == 1 and deny.rules[0].condition is not None
    assert parse_role(VALID_ROLE).permissions == {"ml.models.get", "ml.models.list"}


@FUZZ
@given(near_valid(VALID_ALLOW), st.booleans())
def test_near_valid_allow_policies(value: dict[str, Any], lenient: bool) -> None:
    pol = call(parse_allow_policy, value, "policy", lenient_version=lenient)
    if pol is not None:
        assert pol.version in (1, 3)
        assert all(b.members for b in pol.bindings)
        if any(b.condition is not None for b in pol.bindings):
            assert pol.version == 3
        assert parse_allow_policy(pol.to_json()) == pol  # round trip


@FUZZ
@given(near_valid(VALID_DENY))
def test_near_valid_deny_policies(value: dict[str, Any]) -> None:
    pol = call(parse_deny_policy, value, "policy")
    if pol is not None:
        for rule in pol.rules:
            assert rule.denied_principals and rule.denied_permissions


@FUZZ
@given(near_valid(VALID_ROLE))
def test_near_valid_roles(value: dict[str, Any]) -> None:
    role = call(parse_role, value, "role")
    if role is not None:
        assert parse_role(role.to_json()) == role  # round trip


@FUZZ
@given(CEL_LIKE, st.sampled_from([None, "t", 3]))
def test_conditions_in_policies_return_or_reject(expression: str, title: object) -> None:
    allow = copy.deepcopy(VALID_ALLOW)
    allow["bindings"][1]["condition"] = {"expression": expression, "title": title}
    deny = copy.deepcopy(VALID_DENY)
    deny["rules"][0]["denyRule"]["denialCondition"] = {"expression": expression, "title": title}
    call(parse_allow_policy, allow, "policy")
    call(parse_deny_policy, deny, "policy")


# ------------------------------------------------------------------------------------------ groups

@FUZZ
@given(name_like, st.lists(st.one_of(json_values, name_like), max_size=6))
def test_group_graph_set_members_returns_or_rejects(group: str, members: list[object]) -> None:
    g = GroupGraph()
    g.set_members("group:parent@example.com", ["group:child@example.com"])
    try:
        g.set_members(group, members)  # type: ignore[arg-type]
    except InvalidArgument as err:
        assert err.field is not None and err.field in err.message
        return
    gkey = names.parse_member(group if group.startswith("group:") else f"group:{group}")
    assert all(names.parse_member(m) == m for m in g.members(gkey))


@FUZZ
@given(st.dictionaries(st.one_of(name_like, st.sampled_from(["a@example.com", "b@example.com"])),
                       st.lists(st.one_of(name_like, st.sampled_from(["group:a@example.com",
                                                                          "group:b@example.com",
                                                                          "user:u@example.com"])),
                                max_size=4),
                       max_size=4),
       name_like)
def test_group_graph_load_and_identity(groups: dict[str, list[str]], principal: str) -> None:
    g = GroupGraph()
    try:
        g.load(groups)
    except InvalidArgument as err:
        assert err.field is not None and err.field in err.message
    try:
        ident = g.identity(principal)
    except InvalidArgument as err:
        assert err.field == "principal"
        return
    assert ident.keys[-1] == "allUsers"
    for key in ident.keys:
        assert ident.chain(key)[-1] == key


@pytest.mark.parametrize("members", [["group:parent@example.com"], ["group:child@example.com"]])
def test_group_cycles_are_invalid_arguments(members: list[str]) -> None:
    g = GroupGraph()
    g.set_members("parent@example.com", ["group:child@example.com"])
    g.set_members("child@example.com", ["user:u@example.com"])
    if members == ["group:child@example.com"]:
        g.set_members("grandchild@example.com", members)  # no cycle: fine
        return
    with pytest.raises(InvalidArgument) as exc_info:
        g.set_members("child@example.com", members)
    assert exc_info.value.reason == "GROUP_CYCLE"
