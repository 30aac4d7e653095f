"""The one Cloud Logging filter implementation (keycard.audit): Google's query language over LogEntry JSON."""

from __future__ import annotations

import pytest

from keycard.audit import compile_filter, log_entry
from keycard.errors import InvalidArgument

ENTRY = log_entry({
    "logName": "organizations/1/logs/cloudaudit.googleapis.com%2Factivity",
    "timestamp": "2026-11-22T10:00:00.123456Z", "severity": "NOTICE",
    "labels": {"keycard.dev/enforcement": "dry-run"},
    "protoPayload": {"methodName": "SetIamPolicy", "authenticationInfo": {"principalEmail": "alice@example.com"},
                     "resourceName": "projects/p1",
                     "authorizationInfo": [{"permission": "resourcemanager.projects.setIamPolicy", "granted": True}]}})

CASES = {
    'protoPayload.methodName="SetIamPolicy"': True,
    "protoPayload.methodName = SetIamPolicy": True,
    'protoPayload.methodName="setIamPolicy"': False,
    "protoPayload.methodName:setiam": True,
    "NOT protoPayload.methodName:setiam": False,
    "-protoPayload.methodName:setiam": False,
    "severity>=NOTICE AND severity<ERROR": True,
    "severity=INFO": False,
    'severity>WARNING OR timestamp>="2026-11-22T09:00:00Z"': True,
    'timestamp<"2026-11-22T10:00:00Z"': False,
    'timestamp>="2026-11-22T11:00:00+01:00"': True,
    'resource.type=project resource.labels.project_id="p1"': True,
    "resource.labels.project_id=(p2 OR p1)": True,
    "resource.labels.project_id=(p2 OR p3)": False,
    'labels."keycard.dev/enforcement"="dry-run"': True,
    "protoPayload.authorizationInfo.granted=true": True,
    'protoPayload.authorizationInfo.permission=~"setIam.*"': True,
    'protoPayload.authorizationInfo.permission!~"setIam.*"': False,
    'logName="organizations/1/logs/cloudaudit.googleapis.com%2Factivity"': True,
    'logName:"data_access"': False,
    '"alice@example"': True,
    "bob": False,
    "protoPayload.request:*": False,
    "protoPayload.methodName:*": True,
    "missing.field=1": False,
    "NOT missing.field=1": True,
    "(a=1 OR severity=NOTICE) AND NOT b=2": True,
    "severity=NOTICE OR a=1 AND b=2": False,          # OR binds tighter than AND, as in Google's language
    'protoPayload.authenticationInfo.principalEmail="alice@example.com" AND '
    '(protoPayload.methodName="x" OR protoPayload.methodName="SetIamPolicy")': True,
    "": True,
}


@pytest.mark.parametrize(("expression", "expected"), list(CASES.items()))
def test_filter(expression: str, expected: bool) -> None:
    assert compile_filter(expression)(ENTRY) is expected


@pytest.mark.parametrize("expression", ["a=", "(a=1", 'timestamp>"yesterday"', 'a=~"("', "=x", "a=1)",
                                        '"unterminated', "a=(1 2)", "x" * 20_001])
def test_bad_filters_name_the_field(expression: str) -> None:
    with pytest.raises(InvalidArgument) as e:
        compile_filter(expression)
    assert e.value.field == "filter"


def test_log_entry_derives_the_monitored_resource() -> None:
    assert ENTRY["resource"] == {"type": "project", "labels": {"project_id": "p1"}}
    bucket = log_entry({"protoPayload": {"resourceName": "projects/_/buckets/b1"}})
    assert bucket["resource"] == {"type": "gcs_bucket", "labels": {"bucket_name": "b1"}}
