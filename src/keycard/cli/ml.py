"""``keycard ai-platform …``: models, versions, jobs, predict (AI Platform Prediction, ml v1)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from keycard.cli.output import Format, FormatOpt, err
from keycard.cli.policy import PolicyTarget, add_policy_commands
from keycard.cli.remote import FilterOpt, LimitOpt, remote, show, show_list
from keycard.client import ApiError, Client, default_project

app = typer.Typer(help="AI Platform Prediction: models, versions, jobs, online prediction.", no_args_is_help=True)
models = typer.Typer(help="Models: create, list, describe, delete; their allow policies.", no_args_is_help=True)
versions = typer.Typer(help="Versions of a model: create (deploy), list, describe, delete, set-default.",
                       no_args_is_help=True)
jobs = typer.Typer(help="Jobs: submit prediction, list, describe, cancel, stream-logs; their allow policies.",
                   no_args_is_help=True)
app.add_typer(models, name="models")
app.add_typer(versions, name="versions")
app.add_typer(jobs, name="jobs")

ProjectOpt = Annotated[str | None, typer.Option("--project", help="Project (default: $KEYCARD_PROJECT, config "
                                                "project)")]
ModelArg = Annotated[str, typer.Argument(metavar="MODEL")]
ModelOpt = Annotated[str, typer.Option("--model", help="The model")]
VersionArg = Annotated[str, typer.Argument(metavar="VERSION")]
JobArg = Annotated[str, typer.Argument(metavar="JOB")]
MODEL_COLUMNS = (("NAME", "name"), ("DEFAULT_VERSION_NAME", "defaultVersion.name"), ("REGIONS", "regions"))
VERSION_COLUMNS = (("NAME", "name"), ("DEPLOYMENT_URI", "deploymentUri"), ("FRAMEWORK", "framework"),
                   ("STATE", "state"), ("DEFAULT", "isDefault"))
JOB_COLUMNS = (("JOB_ID", "jobId"), ("STATUS", "state"), ("CREATED", "createTime"))


def _p(project: str | None) -> str:
    return f"/v1/projects/{default_project(project)}"


def wait_operation(client: Client, op: dict[str, Any], what: str, timeout: float = 600.0) -> dict[str, Any]:
    """Poll a long-running Operation until done, with a spinner; its response, or ApiError with its error."""
    if not op.get("done"):
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err,
                      transient=True) as progress:
            progress.add_task(what, total=None)
            deadline = time.monotonic() + timeout
            while not op.get("done") and time.monotonic() < deadline:
                time.sleep(0.5)
                op = client.get(f"/v1/{op['name']}")
    if not op.get("done"):
        raise ApiError(0, "DEADLINE_EXCEEDED", f"{what}: still running after {timeout:.0f} s ({op.get('name')}).",
                       hint="It goes on on the server: list the model's versions (or the jobs) again later.")
    if op.get("error"):
        e = op["error"]
        raise ApiError(0, "FAILED_PRECONDITION", f"{what} failed: {e.get('message', '')}", reason="OPERATION_FAILED")
    return op.get("response", op)  # type: ignore[no-any-return]


# ------------------------------------------------------------------------------------------- models
@models.command("create")
@remote
def model_create(client: Client, model: ModelArg, project: ProjectOpt = None,
                 description: Annotated[str | None, typer.Option("--description")] = None,
                 regions: Annotated[str | None, typer.Option("--regions")] = None,
                 fmt: FormatOpt = Format.table) -> None:
    """Create a model (you become its modelOwner)."""
    body: dict[str, Any] = {"name": model}
    if description:
        body["description"] = description
    if regions:
        body["regions"] = regions.split(",")
    show(client.post(f"{_p(project)}/models", body), fmt, f"Created ml model [{model}].")


@models.command("list")
@remote
def model_list(client: Client, project: ProjectOpt = None, fmt: FormatOpt = Format.table, filter_: FilterOpt = None,
               limit: LimitOpt = None) -> None:
    """Models of a project."""
    show_list(client.pages(f"{_p(project)}/models", "models"), fmt, MODEL_COLUMNS, filter_, limit=limit)


@models.command("describe")
@remote
def model_describe(client: Client, model: ModelArg, project: ProjectOpt = None, fmt: FormatOpt = Format.table) -> None:
    """One model."""
    show(client.get(f"{_p(project)}/models/{model}"), fmt)


@models.command("delete")
@remote
def model_delete(client: Client, model: ModelArg, project: ProjectOpt = None, fmt: FormatOpt = Format.table) -> None:
    """Delete a model (it must have no versions)."""
    out = wait_operation(client, client.delete(f"{_p(project)}/models/{model}"), f"Deleting model {model}")
    show(out, fmt, f"Deleted model [{model}].")


add_policy_commands(models, PolicyTarget("model", "MODEL", lambda m, p: f"{_p(p)}/models/{m}", style="ml",
                                         project=True))


# ----------------------------------------------------------------------------------------- versions
@versions.command("create")
@remote
def version_create(client: Client, version: VersionArg, model: ModelOpt,
                   origin: Annotated[str, typer.Option("--origin", help="gs://BUCKET/PATH/ of the model file")],
                   framework: Annotated[str, typer.Option("--framework", help="scikit-learn or onnx")] =
                   "scikit-learn",
                   runtime_version: Annotated[str, typer.Option("--runtime-version")] = "2.11",
                   service_account: Annotated[str | None, typer.Option("--service-account")] = None,
                   project: ProjectOpt = None, fmt: FormatOpt = Format.table) -> None:
    """Deploy a version of a model from the object store (waits for the operation)."""
    body: dict[str, Any] = {"name": version, "deploymentUri": origin, "runtimeVersion": runtime_version,
                            "framework": framework.upper().replace("-", "_")}
    if service_account:
        body["serviceAccount"] = service_account
    op = client.post(f"{_p(project)}/models/{model}/versions", body)
    out = wait_operation(client, op, f"Deploying {model}/{version}")
    show(out, fmt, f"Created version [{version}] of model [{model}].")


@versions.command("list")
@remote
def version_list(client: Client, model: ModelOpt, project: ProjectOpt = None, fmt: FormatOpt = Format.table,
                 filter_: FilterOpt = None, limit: LimitOpt = None) -> None:
    """Versions of a model."""
    show_list(client.pages(f"{_p(project)}/models/{model}/versions", "versions"), fmt, VERSION_COLUMNS, filter_,
              limit=limit)


@versions.command("describe")
@remote
def version_describe(client: Client, version: VersionArg, model: ModelOpt, project: ProjectOpt = None,
                     fmt: FormatOpt = Format.table) -> None:
    """One version."""
    show(client.get(f"{_p(project)}/models/{model}/versions/{version}"), fmt)


@versions.command("delete")
@remote
def version_delete(client: Client, version: VersionArg, model: ModelOpt, project: ProjectOpt = None,
                   fmt: FormatOpt = Format.table) -> None:
    """Delete a version."""
    op = client.delete(f"{_p(project)}/models/{model}/versions/{version}")
    show(wait_operation(client, op, f"Deleting {model}/{version}"), fmt, f"Deleted version [{version}].")


@versions.command("set-default")
@remote
def version_set_default(client: Client, version: VersionArg, model: ModelOpt, project: ProjectOpt = None,
                        fmt: FormatOpt = Format.table) -> None:
    """Make a version the model's default."""
    out = client.post(f"{_p(project)}/models/{model}/versions/{version}:setDefault")
    show(out, fmt, f"Version [{version}] is now the default of model [{model}].")


# ------------------------------------------------------------------------------------------ predict
def _instances(json_instances: Path | None, json_request: Path | None) -> list[Any]:
    try:
        if json_request is not None:
            data = json.loads(json_request.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or not isinstance(data.get("instances"), list):
                raise ValueError('expected {"instances": [...]}')
            return list(data["instances"])
        if json_instances is not None:
            return [json.loads(line) for line in json_instances.read_text(encoding="utf-8").splitlines()
                    if line.strip()]
    except (OSError, ValueError) as e:
        raise ApiError(0, "INVALID_ARGUMENT", f"Cannot read the instances: {e}.", reason="BAD_FILE") from None
    raise ApiError(0, "INVALID_ARGUMENT", "No instances.", reason="NO_INSTANCES",
                   hint="Pass --json-instances FILE (one JSON instance a line) or --json-request FILE.")


@app.command("predict")
@remote
def predict(client: Client, model: ModelOpt,
            version: Annotated[str | None, typer.Option("--version", help="Version (default: the model's "
                                                        "default)")] = None,
            json_instances: Annotated[Path | None, typer.Option("--json-instances", help="Newline-delimited "
                                                                "JSON instances")] = None,
            json_request: Annotated[Path | None, typer.Option("--json-request", help='{"instances": [...]}')]
            = None,
            project: ProjectOpt = None, fmt: FormatOpt = Format.json) -> None:
    """Online prediction: print the model's predictions."""
    target = f"{_p(project)}/models/{model}" + (f"/versions/{version}" if version else "")
    out = client.post(f"{target}:predict", {"instances": _instances(json_instances, json_request)})
    preds = out.get("predictions", out)
    if fmt is Format.table:
        show_list([{"instance": i, "prediction": p} for i, p in enumerate(preds)], fmt,
                  (("INSTANCE", "instance"), ("PREDICTION", "prediction")))
    else:
        show(out, fmt)


# --------------------------------------------------------------------------------------------- jobs
@jobs.command("submit-prediction")
@remote
def job_submit(client: Client, job: JobArg, input_paths: Annotated[str, typer.Option(
        "--input-paths", help="gs://… (comma-separated; a trailing * allowed)")],
        output_path: Annotated[str, typer.Option("--output-path", help="gs://BUCKET/PREFIX")],
        model: Annotated[str | None, typer.Option("--model")] = None,
        version: Annotated[str | None, typer.Option("--version")] = None,
        data_format: Annotated[str, typer.Option("--data-format")] = "JSON",
        region: Annotated[str, typer.Option("--region")] = "us-central1",
        wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Wait for the job to end")] = False,
        project: ProjectOpt = None, fmt: FormatOpt = Format.table) -> None:
    """Submit a batch prediction job (gcloud ai-platform jobs submit prediction)."""
    proj = default_project(project)
    pin: dict[str, Any] = {"dataFormat": data_format, "inputPaths": input_paths.split(","), "outputPath": output_path,
                           "region": region}
    if version and model:
        pin["versionName"] = f"projects/{proj}/models/{model}/versions/{version}"
    elif model:
        pin["modelName"] = f"projects/{proj}/models/{model}"
    else:
        raise ApiError(0, "INVALID_ARGUMENT", "Which model?", reason="NO_MODEL", hint="Pass --model [--version].")
    out = client.post(f"/v1/projects/{proj}/jobs", {"jobId": job, "predictionInput": pin})
    if wait:
        out = wait_job(client, proj, job)
    show(out, fmt, f"Job [{job}] is {out.get('state', 'submitted')}. Follow it with: keycard ai-platform jobs "
                   f"describe {job} --project {proj}")


def wait_job(client: Client, project: str, job: str, timeout: float = 900.0) -> dict[str, Any]:
    """Poll a job until it ends, with a spinner showing its state."""
    out: dict[str, Any] = client.get(f"/v1/projects/{project}/jobs/{job}")
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err,
                  transient=True) as progress:
        task = progress.add_task(f"job {job}: {out.get('state')}", total=None)
        deadline = time.monotonic() + timeout
        while out.get("state") in ("QUEUED", "PREPARING", "RUNNING", "CANCELLING") and time.monotonic() < deadline:
            time.sleep(1)
            out = client.get(f"/v1/projects/{project}/jobs/{job}")
            progress.update(task, description=f"job {job}: {out.get('state')}")
    return out


@jobs.command("list")
@remote
def job_list(client: Client, project: ProjectOpt = None, fmt: FormatOpt = Format.table, filter_: FilterOpt = None,
             limit: LimitOpt = None) -> None:
    """Jobs of a project."""
    show_list(client.pages(f"{_p(project)}/jobs", "jobs"), fmt, JOB_COLUMNS, filter_, limit=limit)


@jobs.command("describe")
@remote
def job_describe(client: Client, job: JobArg, project: ProjectOpt = None, fmt: FormatOpt = Format.table) -> None:
    """One job."""
    show(client.get(f"{_p(project)}/jobs/{job}"), fmt)


@jobs.command("cancel")
@remote
def job_cancel(client: Client, job: JobArg, project: ProjectOpt = None, fmt: FormatOpt = Format.table) -> None:
    """Cancel a job."""
    show(client.post(f"{_p(project)}/jobs/{job}:cancel"), fmt, f"Cancelled job [{job}].")


@jobs.command("stream-logs")
@remote
def job_logs(client: Client, job: JobArg, project: ProjectOpt = None, fmt: FormatOpt = Format.table) -> None:
    """A job's log lines."""
    out = client.get(f"{_p(project)}/jobs/{job}:keycardLogs")
    if fmt is not Format.table:
        show(out, fmt)
        return
    for entry in out.get("entries", []) if isinstance(out, dict) else []:
        text = entry.get("textPayload") if isinstance(entry, dict) else None
        typer.echo(f"{entry.get('timestamp', '')} {text}" if text is not None else json.dumps(entry))


add_policy_commands(jobs, PolicyTarget("job", "JOB", lambda j, p: f"{_p(p)}/jobs/{j}", style="ml", project=True))
