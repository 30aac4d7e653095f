"""``keycard storage …``: buckets, objects and ``cp`` (Cloud Storage JSON API in keycard's object store)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from keycard.cli.output import Format, FormatOpt, err
from keycard.cli.policy import PolicyTarget, add_policy_commands
from keycard.cli.remote import FilterOpt, LimitOpt, remote, show, show_list
from keycard.client import ApiError, Client, default_project

app = typer.Typer(help="Cloud Storage: buckets, objects, cp.", no_args_is_help=True)
buckets = typer.Typer(help="Buckets: create, list, describe, delete; their allow policies.", no_args_is_help=True)
objects = typer.Typer(help="Objects: list, describe, delete.", no_args_is_help=True)
app.add_typer(buckets, name="buckets")
app.add_typer(objects, name="objects")

BucketArg = Annotated[str, typer.Argument(metavar="gs://BUCKET")]
ObjectArg = Annotated[str, typer.Argument(metavar="gs://BUCKET/OBJECT")]
ProjectOpt = Annotated[str | None, typer.Option("--project", help="Project (default: $KEYCARD_PROJECT, config "
                                                "project)")]
BUCKET_COLUMNS = (("NAME", "name"), ("LOCATION", "location"), ("CREATED", "timeCreated"))
OBJECT_COLUMNS = (("NAME", "name"), ("SIZE", "size"), ("UPDATED", "updated"), ("GENERATION", "generation"))
CHUNK = 1 << 20


def split_url(url: str, *, need_object: bool = False) -> tuple[str, str]:
    """``gs://BUCKET[/OBJECT]`` (or a bare bucket name) → (bucket, object)."""
    rest = url.removeprefix("gs://")
    bucket, _, obj = rest.partition("/")
    if not bucket or (need_object and not obj):
        raise ApiError(0, "INVALID_ARGUMENT", f"Invalid Cloud Storage URL {url!r}.", reason="BAD_URL",
                       hint="Use gs://BUCKET/OBJECT" if need_object else "Use gs://BUCKET")
    return bucket, obj


def _obj_path(bucket: str, name: str) -> str:
    return f"/storage/v1/b/{bucket}/o/{quote(name, safe='')}"


def _progress() -> Progress:
    return Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                    TransferSpeedColumn(), console=err, transient=True)


# ------------------------------------------------------------------------------------------ buckets
@buckets.command("create")
@remote
def bucket_create(client: Client, bucket: BucketArg, project: ProjectOpt = None,
                  location: Annotated[str, typer.Option("--location")] = "US", fmt: FormatOpt = Format.table) -> None:
    """Create a bucket in a project."""
    name, _ = split_url(bucket)
    out = client.post("/storage/v1/b", {"name": name, "location": location}, project=default_project(project))
    show(out, fmt, f"Created bucket [gs://{name}].")


@buckets.command("list")
@remote
def bucket_list(client: Client, project: ProjectOpt = None, fmt: FormatOpt = Format.table,
                filter_: FilterOpt = None, limit: LimitOpt = None) -> None:
    """Buckets of a project."""
    show_list(client.pages("/storage/v1/b", "items", params={"project": default_project(project)}), fmt,
              BUCKET_COLUMNS, filter_, limit=limit)


@buckets.command("describe")
@remote
def bucket_describe(client: Client, bucket: BucketArg, fmt: FormatOpt = Format.table) -> None:
    """One bucket."""
    show(client.get(f"/storage/v1/b/{split_url(bucket)[0]}"), fmt)


@buckets.command("delete")
@remote
def bucket_delete(client: Client, bucket: BucketArg, fmt: FormatOpt = Format.table) -> None:
    """Delete an empty bucket."""
    name, _ = split_url(bucket)
    show(client.delete(f"/storage/v1/b/{name}"), fmt, f"Deleted bucket [gs://{name}].")


add_policy_commands(buckets, PolicyTarget("bucket", "gs://BUCKET", lambda b, _: f"/storage/v1/b/{split_url(b)[0]}",
                                          style="storage"))


# ------------------------------------------------------------------------------------------ objects
def _list_objects(client: Client, url: str) -> Iterator[dict[str, Any]]:
    bucket, prefix = split_url(url)
    return client.pages(f"/storage/v1/b/{bucket}/o", "items", params={"prefix": prefix or None})


@objects.command("list")
@remote
def object_list(client: Client, url: Annotated[str, typer.Argument(metavar="gs://BUCKET[/PREFIX]")],
                fmt: FormatOpt = Format.table, filter_: FilterOpt = None, limit: LimitOpt = None) -> None:
    """Objects of a bucket (under a prefix)."""
    show_list(_list_objects(client, url), fmt, OBJECT_COLUMNS, filter_, limit=limit)


@objects.command("describe")
@remote
def object_describe(client: Client, url: ObjectArg, fmt: FormatOpt = Format.table) -> None:
    """One object's metadata."""
    bucket, name = split_url(url, need_object=True)
    show(client.get(_obj_path(bucket, name)), fmt)


@objects.command("delete")
@remote
def object_delete(client: Client, url: ObjectArg, fmt: FormatOpt = Format.table) -> None:
    """Delete an object."""
    bucket, name = split_url(url, need_object=True)
    show(client.delete(_obj_path(bucket, name)), fmt, f"Removed [gs://{bucket}/{name}].")


app.command("ls", help="Objects of a bucket (same as `storage objects list`).")(object_list)
app.command("rm", help="Delete an object (same as `storage objects delete`).")(object_delete)


# ----------------------------------------------------------------------------------------------- cp
def _upload(client: Client, src: Path, bucket: str, name: str) -> dict[str, Any]:
    total = src.stat().st_size
    with _progress() as progress:
        task = progress.add_task(f"gs://{bucket}/{name}", total=total)

        def chunks() -> Iterator[bytes]:
            with src.open("rb") as fh:
                while block := fh.read(CHUNK):
                    progress.advance(task, len(block))
                    yield block

        out: dict[str, Any] = client.request(
            "POST", f"/upload/storage/v1/b/{bucket}/o", params={"uploadType": "media", "name": name},
            content=chunks(), headers={"Content-Type": "application/octet-stream", "Content-Length": str(total)})
    return out


def _download(client: Client, bucket: str, name: str, dest: Path) -> int:
    tmp = dest.with_name(f".{dest.name}.keycard-part")
    written = 0
    try:
        with _progress() as progress, tmp.open("wb") as fh:
            task = progress.add_task(f"gs://{bucket}/{name}", total=None)

            def sink(block: bytes) -> None:
                nonlocal written
                fh.write(block)
                written += len(block)
                progress.advance(task, len(block))

            client.download(f"/download/storage/v1/b/{bucket}/o/{quote(name, safe='')}", sink,
                            params={"alt": "media"}, size=lambda n: progress.update(task, total=n))
        tmp.replace(dest)
    finally:
        tmp.unlink(missing_ok=True)
    return written


@app.command("cp")
@remote
def cp(client: Client, src: Annotated[str, typer.Argument(metavar="SOURCE", help="Local file or gs://BUCKET/OBJECT")],
       dst: Annotated[str, typer.Argument(metavar="DESTINATION", help="gs://BUCKET[/OBJECT] or a local path")],
       fmt: FormatOpt = Format.table) -> None:
    """Copy a local file to the object store, or an object to a local file (with a progress bar)."""
    if src.startswith("gs://") == dst.startswith("gs://"):
        raise ApiError(0, "INVALID_ARGUMENT", "Copy between a local file and gs://…, one each.", reason="BAD_URL",
                       hint="keycard storage cp model.joblib gs://BUCKET/models/v1/model.joblib")
    if dst.startswith("gs://"):
        path = Path(src)
        if not path.is_file():
            raise ApiError(0, "INVALID_ARGUMENT", f"No such file: {src}.", reason="BAD_FILE")
        bucket, name = split_url(dst)
        if not name or name.endswith("/"):
            name = f"{name}{path.name}"
        out = _upload(client, path, bucket, name)
        show(out, fmt, f"Copied {src} to gs://{bucket}/{name} ({out.get('size', '?')} bytes).")
        return
    bucket, name = split_url(src, need_object=True)
    dest = Path(dst)
    if dest.is_dir():
        dest = dest / name.rsplit("/", 1)[-1]
    n = _download(client, bucket, name, dest)
    show({"source": src, "destination": str(dest), "bytes": n}, fmt, f"Copied {src} to {dest} ({n} bytes).")
