"""Schemathesis against the live server's /openapi.json: no operation answers 5xx, whatever it is sent.

Every operation in the document is fuzzed as the admin (so requests get past authorization into the
validators) with schema-conforming data and with data that breaks the schema, and each response goes
through schemathesis' ``not_a_server_error`` check. The number of examples per operation is bounded so
the whole run stays well under two minutes.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.core.result import Ok

from conftest import Server

EXAMPLES = {schemathesis.GenerationMode.POSITIVE: 25, schemathesis.GenerationMode.NEGATIVE: 10}


def _fuzz(server: Server, session: requests.Session, headers: dict[str, str], operation: Any,
          mode: schemathesis.GenerationMode, failures: list[str]) -> int:
    """Send up to EXAMPLES[mode] generated requests to ``operation``; record failed checks; return the count."""
    calls = 0

    @settings(max_examples=EXAMPLES[mode], deadline=None, database=None, derandomize=True,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def fuzz(case: Any) -> None:
        nonlocal calls
        response = case.call(base_url=server.url, session=session, headers=headers, timeout=30)
        calls += 1
        problem = ""
        try:
            case.validate_response(response, checks=[not_a_server_error], headers=headers)
        except (Failure, FailureGroup) as e:  # record it and keep fuzzing
            problem = str(e)
        if response.status_code >= 500 and not problem:
            problem = "5xx not reported by not_a_server_error"
        if problem and len(failures) < 50:
            failures.append(f"{operation.label} ({mode}): {response.status_code} {response.text[:200]!r}\n"
                            f"  {case.as_curl_command(headers)}\n  {problem}")

    try:
        fuzz()
    except Unsatisfiable:      # nothing in this operation can be made to break the schema
        assert mode is schemathesis.GenerationMode.NEGATIVE, operation.label
    return calls


def test_no_operation_answers_a_server_error(server: Server) -> None:
    headers = {"Authorization": f"Bearer {server.token()}"}
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json", headers=headers)
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), f"/openapi.json has an invalid operation: {result.err()}"
        operations.append(result.ok())
    assert len(operations) >= 80, len(operations)
    failures: list[str] = []
    calls = 0
    started = time.monotonic()
    with requests.Session() as session:
        for operation in operations:
            for mode in EXAMPLES:
                calls += _fuzz(server, session, headers, operation, mode, failures)
    elapsed = time.monotonic() - started
    print(f"\nschemathesis: {len(operations)} operations, {calls} requests, {elapsed:.1f}s")
    assert server.process.poll() is None, "the server died"
    assert failures == [], "\n".join(failures)


@pytest.fixture(autouse=True)
def _server_log_has_no_internal_errors(server: Server) -> Any:
    yield
    log = server.log.read_text(errors="replace")
    assert "internal error on" not in log, log[-4000:]
