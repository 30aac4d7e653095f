"""OpenAPI 3 document generated from the route table: every endpoint keycard serves."""

from __future__ import annotations

import re
from typing import Any

from keycard.http.routing import Router

_ERROR = {"type": "object", "properties": {"error": {"type": "object", "properties": {
    "code": {"type": "integer"}, "message": {"type": "string"}, "status": {"type": "string"},
    "details": {"type": "array", "items": {"type": "object"}}}}}}


def build_openapi(router: Router) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for r in router.routes:
        template = re.sub(r"\{([a-zA-Z_]+)=\*\*\}", r"{\1}", r.template)
        params: list[dict[str, Any]] = [
            {"name": n, "in": "path", "required": True, "schema": {"type": "string", "pattern": "^[^/:]+$"}}
            for n in re.findall(r"\{([a-zA-Z_]+)(?:=\*\*)?\}", r.template)]
        params += [{"name": q, "in": "query", "required": False, "schema": {"type": "string"}} for q in r.query]
        op: dict[str, Any] = {
            "operationId": r.operation_id,
            "summary": r.summary or r.operation_id,
            "parameters": params,
            "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}},
                          "default": {"description": "Google JSON error",
                                      "content": {"application/json": {"schema": _ERROR}}}},
        }
        if r.permission:
            op["description"] = f"Requires the IAM permission `{r.permission}`."
            op["x-keycard-permission"] = r.permission
        if r.body:
            op["requestBody"] = {"required": False,
                                 "content": {"application/json": {"schema": {"type": "object"}}}}
        if not r.public:
            op["security"] = [{"bearer": []}]
        paths.setdefault(template, {})[r.method.lower()] = op
    return {"openapi": "3.0.3",
            "info": {"title": "keycard", "version": "0.1.0",
                     "description": "Google Cloud IAM, runnable anywhere: Google's REST APIs at Google's paths."},
            "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
            "paths": paths}
