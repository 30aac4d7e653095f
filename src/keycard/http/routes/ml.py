"""AI Platform Training & Prediction (ml v1) routes: paths and methods as in ml.v1.json."""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool

from keycard.errors import InvalidArgument
from keycard.http.app import App, RequestContext
from keycard.http.routing import Route, Router
from keycard.services import iam_policy
from keycard.services import ml_jobs as jobs
from keycard.services import ml_models as models
from keycard.services import ml_versions as versions

_P = "/v1/projects/{project}"
_M = _P + "/models/{model}"
_V = _M + "/versions/{version}"
_J = _P + "/jobs/{job}"


def _predict_body(ctx: RequestContext) -> Any:
    length = ctx.headers.get("content-length", "")
    if length.isdigit() and int(length) > versions.MAX_PREDICT_BYTES:
        raise InvalidArgument(f"Request of {length} bytes is over the online prediction limit of "
                              f"{versions.MAX_PREDICT_BYTES} bytes; use a batch prediction job.", field="instances",
                              reason="REQUEST_TOO_LARGE")
    return ctx.body


def _predict(app: App, ctx: RequestContext, project: str, model: str, version: str | None = None) -> Any:
    """projects.predict on the event loop (routed inline): checks and lookups are in memory, and a loaded
    model answers a small request faster than a threadpool round trip; loading a model or a large request
    goes to a worker thread."""
    job = versions.prepare_predict(app.services, ctx.caller, project, model, version, _predict_body(ctx))
    return job() if job.cheap else run_in_threadpool(job)


def iam_routes(router: Router, kind: str, base: str) -> None:
    """getIamPolicy (GET + query), setIamPolicy, testIamPermissions on models or jobs (``{model}`` = the id)."""
    def add(method: str, template: str, handler: Any, op: str, permission: str = "", **kw: Any) -> None:
        router.add(Route(method, template, handler, f"ml.projects.{op}", permission, **kw))

    add("GET", base + ":getIamPolicy", lambda app, ctx, project, model: models.get_policy(
        app.services, ctx.caller, project, kind, model,
        iam_policy.requested_version(ctx.query.get("options.requestedPolicyVersion"))),
        f"{kind}.getIamPolicy", f"ml.{kind}.getIamPolicy", query=("options.requestedPolicyVersion",))
    add("POST", base + ":setIamPolicy", lambda app, ctx, project, model: models.set_policy(
        app.services, ctx.caller, project, kind, model, ctx.body, ctx.allow_lockout),
        f"{kind}.setIamPolicy", f"ml.{kind}.setIamPolicy", body=True)
    add("POST", base + ":testIamPermissions", lambda app, ctx, project, model: models.test_permissions(
        app.services, ctx.caller, project, kind, model, ctx.body), f"{kind}.testIamPermissions", body=True)


def register(router: Router) -> None:
    def add(method: str, template: str, handler: Any, op: str, permission: str = "", **kw: Any) -> None:
        router.add(Route(method, template, handler, f"ml.projects.{op}", permission, **kw))

    add("GET", _P + ":getConfig", lambda app, ctx, project: models.get_config(app.services, ctx.caller, project),
        "getConfig", "ml.projects.getConfig")
    # --------------------------------------------------------------------------------- models
    add("POST", _P + "/models", lambda app, ctx, project: models.create_model(app.services, ctx.caller, project,
                                                                              ctx.body),
        "models.create", "ml.models.create", body=True)
    add("GET", _P + "/models", lambda app, ctx, project: models.list_models(app.services, ctx.caller, project,
                                                                            ctx.query),
        "models.list", "ml.models.list", query=("filter", "pageSize", "pageToken"))
    add("GET", _M, lambda app, ctx, project, model: models.get_model(app.services, ctx.caller, project, model),
        "models.get", "ml.models.get")
    add("PATCH", _M, lambda app, ctx, project, model: models.patch_model(
        app.services, ctx.caller, project, model, ctx.body, ctx.query.get("updateMask")),
        "models.patch", "ml.models.update", body=True, query=("updateMask",))
    add("DELETE", _M, lambda app, ctx, project, model: models.delete_model(app.services, ctx.caller, project, model),
        "models.delete", "ml.models.delete")
    iam_routes(router, "models", _M)
    # ------------------------------------------------------------------------------- versions
    add("POST", _M + "/versions", lambda app, ctx, project, model: versions.create_version(
        app.services, ctx.caller, project, model, ctx.body), "models.versions.create", "ml.versions.create", body=True)
    add("GET", _M + "/versions", lambda app, ctx, project, model: versions.list_versions(
        app.services, ctx.caller, project, model, ctx.query), "models.versions.list", "ml.versions.list",
        query=("filter", "pageSize", "pageToken"))
    add("GET", _V, lambda app, ctx, project, model, version: versions.get_version(
        app.services, ctx.caller, project, model, version), "models.versions.get", "ml.versions.get")
    add("PATCH", _V, lambda app, ctx, project, model, version: versions.patch_version(
        app.services, ctx.caller, project, model, version, ctx.body, ctx.query.get("updateMask")),
        "models.versions.patch", "ml.versions.update", body=True, query=("updateMask",))
    add("DELETE", _V, lambda app, ctx, project, model, version: versions.delete_version(
        app.services, ctx.caller, project, model, version), "models.versions.delete", "ml.versions.delete")
    add("POST", _V + ":setDefault", lambda app, ctx, project, model, version: versions.set_default(
        app.services, ctx.caller, project, model, version), "models.versions.setDefault", "ml.models.update",
        body=True)
    # -------------------------------------------------------------------------------- predict
    add("POST", _M + ":predict", _predict, "predict", "ml.models.predict", body=True, read_log="DATA_READ",
        inline=True)
    add("POST", _V + ":predict", _predict, "versions.predict", "ml.versions.predict", body=True,
        read_log="DATA_READ", inline=True)
    # ----------------------------------------------------------------------------- operations
    add("GET", _P + "/operations", lambda app, ctx, project: models.list_operations(
        app.services, ctx.caller, project, ctx.query), "operations.list", "ml.operations.list",
        query=("filter", "pageSize", "pageToken"))
    add("GET", _P + "/operations/{op}", lambda app, ctx, project, op: models.get_operation(
        app.services, ctx.caller, project, op), "operations.get", "ml.operations.get")
    add("POST", _P + "/operations/{op}:cancel", lambda app, ctx, project, op: models.cancel_operation(
        app.services, ctx.caller, project, op), "operations.cancel", "ml.operations.cancel", body=True)
    # ----------------------------------------------------------------------------------- jobs
    add("POST", _P + "/jobs", lambda app, ctx, project: jobs.create_job(
        app.services, ctx.caller, project, ctx.body, keys=app.keys,
        base_url=app.base_url or str(ctx.request.base_url)), "jobs.create", "ml.jobs.create", body=True)
    add("GET", _P + "/jobs", lambda app, ctx, project: jobs.list_jobs(app.services, ctx.caller, project, ctx.query),
        "jobs.list", "ml.jobs.list", query=("filter", "pageSize", "pageToken"))
    add("GET", _J, lambda app, ctx, project, job: jobs.get_job(app.services, ctx.caller, project, job),
        "jobs.get", "ml.jobs.get")
    add("PATCH", _J, lambda app, ctx, project, job: jobs.patch_job(
        app.services, ctx.caller, project, job, ctx.body, ctx.query.get("updateMask")),
        "jobs.patch", "ml.jobs.update", body=True, query=("updateMask",))
    add("POST", _J + ":cancel", lambda app, ctx, project, job: jobs.cancel_job(app.services, ctx.caller, project, job),
        "jobs.cancel", "ml.jobs.cancel", body=True)
    add("GET", _J + ":keycardLogs", lambda app, ctx, project, job: jobs.job_logs(
        app.services, ctx.caller, project, job), "jobs.keycardLogs", "ml.jobs.get",
        summary="A training job's output lines as Cloud Logging LogEntries (keycard extension).")
    iam_routes(router, "jobs", _P + "/jobs/{model}")
