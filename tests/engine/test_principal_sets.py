"""A request's principal sets: a federated token's ``principalSet://…/group/G`` and
``…/attribute.NAME/VALUE`` sets, an OIDC ID token's groups — passed per call as ``extra_members``.

The engine records nothing about callers: two credentials of the same principal with different sets,
used at the same moment, each get exactly their own grants.
"""

from __future__ import annotations

import datetime as dt
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent))
from reference import Reference

from keycard import Engine, InvalidArgument

CRM = "//cloudresourcemanager.googleapis.com"
PROJ = f"{CRM}/projects/123"
T = dt.datetime(2026, 3, 4, 10, 30, tzinfo=dt.UTC)
POOL = "iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/ci-pool"
ALICE = f"principal://{POOL}/subject/alice"
BOB = f"principal://{POOL}/subject/bob"
DEPLOYERS = f"principalSet://{POOL}/group/deployers"
PROD = f"principalSet://{POOL}/attribute.env/prod"
OTHER_POOL_GROUP = "principalSet://iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/x-pool/" \
                   "group/deployers"
GET, UPDATE = "resourcemanager.projects.get", "resourcemanager.projects.update"


def engine(*bindings: dict[str, Any], groups: dict[str, list[str]] | None = None,
           deny: list[dict[str, Any]] | None = None) -> Engine:
    return Engine.load([{"name": PROJ, "assetType": "cloudresourcemanager.googleapis.com/Project",
                         "resource": {"data": {"projectId": "ml-proj", "projectNumber": "123"}},
                         "iamPolicy": {"version": 3, "bindings": list(bindings)}}], groups=groups or {},
                       deny_policies=deny)


def test_a_set_matches_only_in_the_call_that_carries_it() -> None:
    e = engine({"role": "roles/viewer", "members": [DEPLOYERS]})
    assert not e.check(ALICE, GET, PROJ, time=T).allowed
    d = e.check(ALICE, GET, PROJ, time=T, extra_members=frozenset({DEPLOYERS}))
    assert d.allowed and d.grant is not None and d.grant.membership == (ALICE, DEPLOYERS)
    assert not e.check(ALICE, GET, PROJ, time=T).allowed            # nothing was recorded about alice
    assert not e.check(BOB, GET, PROJ, time=T).allowed
    assert DEPLOYERS not in e.identity_keys(ALICE)
    assert DEPLOYERS in e.identity_keys(ALICE, frozenset({DEPLOYERS}))


def test_two_credentials_of_one_principal_see_only_their_own_sets() -> None:
    e = engine({"role": "roles/viewer", "members": [PROD]}, {"role": "roles/editor", "members": [DEPLOYERS]})
    both, prod_only, none = frozenset({PROD, DEPLOYERS}), frozenset({PROD}), frozenset[str]()
    r0 = e.revision
    for _ in range(3):                                   # interleaved, in any order: no state carries over
        assert e.check(ALICE, UPDATE, PROJ, time=T, extra_members=both).allowed
        assert not e.check(ALICE, UPDATE, PROJ, time=T, extra_members=prod_only).allowed
        assert e.check(ALICE, GET, PROJ, time=T, extra_members=prod_only).allowed
        assert not e.check(ALICE, GET, PROJ, time=T, extra_members=none).allowed
    assert e.revision == r0                              # checks never write


def test_concurrent_callers_with_different_sets() -> None:
    e = engine({"role": "roles/editor", "members": [DEPLOYERS]})
    wrong: list[str] = []

    def run(sets: frozenset[str], want: bool) -> None:
        for _ in range(2000):
            if e.check(ALICE, UPDATE, PROJ, time=T, extra_members=sets).allowed != want:
                wrong.append(f"{sorted(sets)} → {not want}")
                return

    threads = [threading.Thread(target=run, args=(frozenset({DEPLOYERS}), True)),
               threading.Thread(target=run, args=(frozenset({PROD}), False)),
               threading.Thread(target=run, args=(frozenset[str](), False))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []


def test_set_of_another_pool_does_not_match() -> None:
    e = engine({"role": "roles/viewer", "members": [OTHER_POOL_GROUP]})
    assert not e.check(ALICE, GET, PROJ, time=T, extra_members=frozenset({DEPLOYERS})).allowed


def test_pool_wide_set_still_matches_alongside_request_sets() -> None:
    e = engine({"role": "roles/viewer", "members": [f"principalSet://{POOL}/*"]})
    assert e.check(ALICE, GET, PROJ, time=T, extra_members=frozenset({DEPLOYERS})).allowed
    assert e.check(ALICE, GET, PROJ, time=T).allowed


def test_group_memberships_and_groups_of_a_set() -> None:
    e = engine({"role": "roles/viewer", "members": ["group:ci@example.com"]},
               {"role": "roles/editor", "members": ["group:release@example.com"]},
               groups={"ci@example.com": [ALICE], "release@example.com": [DEPLOYERS]})
    assert e.check(ALICE, GET, PROJ, time=T, extra_members=frozenset({PROD})).allowed
    d = e.check(ALICE, UPDATE, PROJ, time=T, extra_members=frozenset({DEPLOYERS}))
    assert d.allowed and d.grant is not None
    assert d.grant.membership == (ALICE, DEPLOYERS, "group:release@example.com")
    assert not e.check(ALICE, UPDATE, PROJ, time=T).allowed


def test_idp_groups_are_request_sets_too() -> None:
    e = engine({"role": "roles/viewer", "members": ["group:eng@example.com"]})
    user = "user:dana@example.com"
    assert e.check(user, GET, PROJ, time=T, extra_members=frozenset({"group:eng@example.com"})).allowed
    assert not e.check(user, GET, PROJ, time=T).allowed


def test_every_entry_point_takes_the_sets() -> None:
    e = engine({"role": "roles/editor", "members": [DEPLOYERS]})
    sets = frozenset({DEPLOYERS})
    assert e.test_iam_permissions(ALICE, PROJ, [GET, UPDATE], time=T, extra_members=sets) == [GET, UPDATE]
    assert e.test_iam_permissions(ALICE, PROJ, [GET, UPDATE], time=T) == []
    assert e.explain(ALICE, UPDATE, PROJ, time=T, extra_members=sets).allowed
    assert not e.explain(ALICE, UPDATE, PROJ, time=T).allowed
    assert UPDATE in e.what_can(ALICE, PROJ, time=T, extra_members=sets)
    assert UPDATE not in e.what_can(ALICE, PROJ, time=T)
    many = e.check_many([(ALICE, UPDATE, PROJ), (BOB, UPDATE, PROJ)], time=T, extra_members={ALICE: sets})
    assert [d.allowed for d in many] == [True, False]


def test_a_deny_rule_naming_a_set_denies_only_its_holders() -> None:
    deny = [{"attachmentPoint": "cloudresourcemanager.googleapis.com/projects/123",
             "policy": {"name": "no-prod", "rules": [{"denyRule": {
                 "deniedPrincipals": [PROD],
                 "deniedPermissions": ["cloudresourcemanager.googleapis.com/projects.update"]}}]}}]
    e = engine({"role": "roles/editor", "members": [f"principalSet://{POOL}/*"]}, deny=deny)
    d = e.check(ALICE, UPDATE, PROJ, time=T, extra_members=frozenset({PROD}))
    assert not d.allowed and d.deny is not None and d.deny.principal == PROD
    assert e.check(ALICE, UPDATE, PROJ, time=T).allowed
    # not granted at all: the deny reason is still found with the request's sets
    e2 = engine(deny=deny)
    d2 = e2.check(ALICE, UPDATE, PROJ, time=T, extra_members=frozenset({PROD}))
    assert d2.outcome == "DENIED_BY_DENY_POLICY"


def test_only_sets_can_be_extra_members() -> None:
    e = engine({"role": "roles/owner", "members": ["user:admin@example.com"]})
    for bad in ("user:admin@example.com", "serviceAccount:a@p.iam.gserviceaccount.com", "allUsers",
                "principalSet://nowhere/group/x"):
        with pytest.raises(InvalidArgument, match="extra_members"):
            e.check(ALICE, GET, PROJ, time=T, extra_members=frozenset({bad}))


def test_engine_keeps_no_per_principal_set_api() -> None:
    assert not hasattr(Engine, "set_principal_sets")


# ------------------------------------------------------------------- agreement with the reference
SUBJECTS = [ALICE, BOB, "user:ann@a.com"]
SETS = [DEPLOYERS, PROD, f"principalSet://{POOL}/attribute.env/dev", "group:idp@a.com"]
MEMBERS = [*SETS, *SUBJECTS, f"principalSet://{POOL}/*", OTHER_POOL_GROUP, "group:g1@a.com", "domain:a.com",
           "allAuthenticatedUsers"]
PERMS = [GET, UPDATE, "resourcemanager.projects.delete"]
ROLES = {"roles/r.viewer": [GET], "roles/r.editor": [GET, UPDATE], "roles/r.owner": PERMS}
V2_PERMS = ["cloudresourcemanager.googleapis.com/projects.update", "cloudresourcemanager.googleapis.com/projects.*"]


@st.composite
def worlds(draw: st.DrawFn) -> dict[str, Any]:
    bindings = [{"role": draw(st.sampled_from(list(ROLES))),
                 "members": draw(st.lists(st.sampled_from(MEMBERS), min_size=1, max_size=3, unique=True))}
                for _ in range(draw(st.integers(0, 4)))]
    groups = {"g1@a.com": draw(st.lists(st.sampled_from([*SETS, *SUBJECTS]), max_size=2, unique=True))}
    deny = []
    if draw(st.booleans()):
        rule = {"deniedPrincipals": draw(st.lists(st.sampled_from([DEPLOYERS, PROD, ALICE]), min_size=1,
                                                  max_size=2, unique=True)),
                "deniedPermissions": draw(st.lists(st.sampled_from(V2_PERMS), min_size=1, max_size=1))}
        deny.append({"attachmentPoint": "cloudresourcemanager.googleapis.com/projects/123",
                     "policy": {"name": "d", "rules": [{"denyRule": rule}]}})
    queries = draw(st.lists(st.tuples(st.sampled_from(SUBJECTS), st.sampled_from(PERMS),
                                      st.frozensets(st.sampled_from(SETS), max_size=3)), min_size=1, max_size=12))
    return {"bindings": bindings, "groups": groups, "deny": deny, "queries": queries}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(worlds())
def test_request_sets_agree_with_the_reference(w: dict[str, Any]) -> None:
    catalog = [{"name": n, "includedPermissions": p} for n, p in ROLES.items()]
    asset = {"name": PROJ, "iamPolicy": {"version": 3, "bindings": w["bindings"]}}
    e = Engine.load([asset], groups=w["groups"], deny_policies=w["deny"], catalog=catalog)
    ref = Reference([asset], {g: list(ms) for g, ms in w["groups"].items()},
                    {n: {"name": n, "includedPermissions": p} for n, p in ROLES.items()}, w["deny"])
    for principal, perm, sets in w["queries"]:
        got = e.check(principal, perm, PROJ, time=T, extra_members=sets)
        want = ref.check(principal, perm, PROJ, T, sets)
        assert got.allowed == want, f"{principal} {sorted(sets)} {perm}\n{got}"
        assert e.explain(principal, perm, PROJ, time=T, extra_members=sets).allowed == want
        # the same principal without the sets: what its name alone gives, untouched by the call before
        assert e.check(principal, perm, PROJ, time=T).allowed == ref.check(principal, perm, PROJ, T)
