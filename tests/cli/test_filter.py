"""--filter (gcloud-like simple filters) and --condition parsing, without a server."""

from __future__ import annotations

import pytest

from keycard.cli.policy import parse_condition
from keycard.cli.remote import apply_filter
from keycard.client import ApiError

ITEMS = [
    {"projectId": "ml-prod", "state": "ACTIVE", "labels": {"team": "ml"}, "tags": ["a", "b"], "n": 3},
    {"projectId": "ml-dev", "state": "DELETE_REQUESTED", "labels": {"team": "ml"}, "tags": [], "n": 4},
    {"projectId": "web", "state": "ACTIVE", "labels": {"team": "web"}, "bindings": [{"role": "roles/viewer"}]},
]


def ids(expr: str | None) -> list[str]:
    return [i["projectId"] for i in apply_filter(ITEMS, expr)]


@pytest.mark.parametrize(("expr", "want"), [
    (None, ["ml-prod", "ml-dev", "web"]),
    ("", ["ml-prod", "ml-dev", "web"]),
    ("state=ACTIVE", ["ml-prod", "web"]),
    ("state!=ACTIVE", ["ml-dev"]),
    ("projectId:ML", ["ml-prod", "ml-dev"]),                    # substring, case-insensitive
    ("state=ACTIVE AND labels.team=ml", ["ml-prod"]),
    ("state=ACTIVE labels.team=ml", ["ml-prod"]),               # spaces join terms too
    ("projectId~^ml-(dev|qa)$", ["ml-dev"]),
    ("tags=b", ["ml-prod"]),                                    # a list matches if any element does
    ("bindings.role=roles/viewer", ["web"]),                    # through lists of objects
    ("n=4", ["ml-dev"]),
    ('projectId="web"', ["web"]),
    ("missing=x", []),
])
def test_filter(expr: str | None, want: list[str]) -> None:
    assert ids(expr) == want


@pytest.mark.parametrize("expr", ["nonsense", "=x", "projectId~("])
def test_bad_filter_is_an_error_naming_the_term(expr: str) -> None:
    with pytest.raises(ApiError) as e:
        apply_filter(ITEMS, expr)
    assert e.value.status == "INVALID_ARGUMENT"


def test_condition_flags() -> None:
    assert parse_condition(None) is None and parse_condition("None") is None
    assert parse_condition("expression=request.time < timestamp('2030-01-01T00:00:00Z'),title=until 2030") == {
        "expression": "request.time < timestamp('2030-01-01T00:00:00Z')", "title": "until 2030"}
    # commas inside the expression stay there; only ",title=" / ",description=" split
    got = parse_condition('expression=resource.name in ["a", "b"],title=t,description=d, with comma')
    assert got == {"expression": 'resource.name in ["a", "b"]', "title": "t", "description": "d, with comma"}
    with pytest.raises(ApiError):
        parse_condition("title=only a title")
    with pytest.raises(ApiError):
        parse_condition("expr=x")
