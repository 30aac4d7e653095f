"""Federated principals' group and attribute sets (Engine.set_principal_sets)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

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


def engine(*bindings: dict[str, Any], groups: dict[str, list[str]] | None = None) -> Engine:
    return Engine.load([{"name": PROJ, "assetType": "cloudresourcemanager.googleapis.com/Project",
                         "resource": {"data": {"projectId": "ml-proj", "projectNumber": "123"}},
                         "iamPolicy": {"version": 3, "bindings": list(bindings)}}], groups=groups or {})


def test_group_set_matches_only_after_it_is_recorded_and_only_for_that_principal() -> None:
    e = engine({"role": "roles/viewer", "members": [DEPLOYERS]})
    assert not e.check(ALICE, "resourcemanager.projects.get", PROJ, time=T).allowed   # cached: not a member
    e.set_principal_sets(ALICE, [DEPLOYERS])
    d = e.check(ALICE, "resourcemanager.projects.get", PROJ, time=T)
    assert d.allowed and d.grant is not None and d.grant.membership == (ALICE, DEPLOYERS)
    assert not e.check(BOB, "resourcemanager.projects.get", PROJ, time=T).allowed


def test_attribute_set_matches_and_sets_are_replaced_not_merged() -> None:
    e = engine({"role": "roles/viewer", "members": [PROD]}, {"role": "roles/editor", "members": [DEPLOYERS]})
    e.set_principal_sets(ALICE, [PROD, DEPLOYERS])
    assert e.check(ALICE, "resourcemanager.projects.update", PROJ, time=T).allowed
    e.set_principal_sets(ALICE, [PROD])
    assert not e.check(ALICE, "resourcemanager.projects.update", PROJ, time=T).allowed
    assert e.check(ALICE, "resourcemanager.projects.get", PROJ, time=T).allowed
    e.set_principal_sets(ALICE, [])
    assert not e.check(ALICE, "resourcemanager.projects.get", PROJ, time=T).allowed


def test_set_of_another_pool_does_not_match() -> None:
    e = engine({"role": "roles/viewer", "members": [OTHER_POOL_GROUP]})
    e.set_principal_sets(ALICE, [DEPLOYERS])
    assert not e.check(ALICE, "resourcemanager.projects.get", PROJ, time=T).allowed


def test_pool_wide_set_still_matches_alongside_recorded_sets() -> None:
    e = engine({"role": "roles/viewer", "members": [f"principalSet://{POOL}/*"]})
    e.set_principal_sets(ALICE, [DEPLOYERS])
    assert e.check(ALICE, "resourcemanager.projects.get", PROJ, time=T).allowed


def test_unchanged_sets_do_not_bump_the_revision_changed_ones_do() -> None:
    e = engine()
    r0 = e.revision
    e.set_principal_sets(ALICE, [DEPLOYERS])
    r1 = e.revision
    e.set_principal_sets(ALICE, [DEPLOYERS])
    assert r1 == r0 + 1 and e.revision == r1
    e.set_principal_sets(ALICE, [PROD])
    assert e.revision == r1 + 1
    assert DEPLOYERS not in e.identity_keys(ALICE) and PROD in e.identity_keys(ALICE)


def test_group_memberships_survive_set_changes() -> None:
    e = engine({"role": "roles/viewer", "members": ["group:ci@example.com"]}, groups={"ci@example.com": [ALICE]})
    e.set_principal_sets(ALICE, [DEPLOYERS])
    e.set_principal_sets(ALICE, [])
    assert e.check(ALICE, "resourcemanager.projects.get", PROJ, time=T).allowed


def test_invalid_set_is_rejected_naming_the_field() -> None:
    e = engine()
    with pytest.raises(InvalidArgument, match="principalSets"):
        e.set_principal_sets(ALICE, ["principalSet://nowhere/group/x"])
