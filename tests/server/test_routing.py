"""The router's candidate index finds exactly what trying every route in order finds."""

from __future__ import annotations

import re
from urllib.parse import unquote

from keycard.http import routes
from keycard.http.routing import Route, Router


def _router() -> Router:
    router = Router()
    routes.register(router)
    return router


def _linear(router: Router, method: str, path: str) -> tuple[Route | None, dict[str, str], bool]:
    hit = False
    for r in router.routes:
        m = r.regex.match(path)
        if m is None:
            continue
        if r.method != method:
            hit = True
            continue
        return r, {k: unquote(v) for k, v in m.groupdict().items()}, False
    return None, {}, hit


def _paths(template: str) -> list[str]:
    def fill(value: str, many: str) -> str:
        return re.sub(r"\{[a-zA-Z_]+(=\*\*)?\}", lambda m: many if m.group(1) else value, template)
    return [fill("x1", "a/b"), fill("p%40x.iam.gserviceaccount.com", "projects/_/buckets/b"), fill("-", "z")]


def test_indexed_match_equals_trying_every_route() -> None:
    router = _router()
    odd = ["/", "", "/v1", "/v1/", "/v3/projects", "/v3/projects/", "/storage/v1/b", "/nothing/here", "//x",
           "/v1/projects/p/models/m:predict:predict", "/v1/projects/p/serviceAccounts/a:b:getIamPolicy"]
    checked = 0
    for route in router.routes:
        for path in [*_paths(route.template), *odd]:
            for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
                assert router.match(method, path) == _linear(router, method, path), (method, path)
                checked += 1
    assert checked > 1000


def test_each_route_is_reachable_by_its_own_path() -> None:
    router = _router()
    for route in router.routes:
        path = _paths(route.template)[0]
        found, _, _ = router.match(route.method, path)
        assert found is not None, route.template
        # an earlier route may legitimately claim the same concrete path; it must then be the linear answer too
        assert found is _linear(router, route.method, path)[0]


def test_candidate_cache_is_bounded() -> None:
    router = _router()
    for i in range(6000):
        router.match("GET", f"/junk{i}/x/y")
    assert len(router._candidates) <= 4096
    assert router.match("POST", "/v3/projects/p1:testIamPermissions")[0] is not None
