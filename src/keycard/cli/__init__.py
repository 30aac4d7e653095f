"""The ``keycard`` command line: local commands here, command groups in keycard/cli/<group>.py."""

from __future__ import annotations

import datetime as dt
import gc
import json
import os
import sys
from collections import deque
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from keycard.cli.output import (
    EXIT_BAD_INPUT,
    EXIT_DENIED,
    EXIT_OK,
    Format,
    FormatOpt,
    _emit,
    console,
    err,
)
from keycard.engine.engine import Engine
from keycard.errors import KeycardError

app = typer.Typer(help="keycard: Google Cloud IAM, runnable anywhere.", no_args_is_help=True,
                  pretty_exceptions_enable=False)

AssetsOpt = Annotated[Path | None, typer.Option("--assets", help="Cloud Asset Inventory export (NDJSON). "
                                                "Without it: the built-in demo organization.")]
GroupsOpt = Annotated[Path | None, typer.Option("--groups", help="JSON object {group email: [members]}.")]
DenyOpt = Annotated[Path | None, typer.Option("--deny-policies", help="JSON list of {attachmentPoint, policy}.")]
RolesOpt = Annotated[Path | None, typer.Option("--roles", help="JSON list of custom roles (IAM v1 JSON).")]
CatalogOpt = Annotated[Path | None, typer.Option("--catalog", help="Extra predefined roles (gcloud role JSON "
                                                 "array), e.g. Google's full catalog.")]
TimeOpt = Annotated[str | None, typer.Option("--time", help="request.time for IAM Conditions (RFC 3339).")]


def _read_json(path: Path | None) -> Any:
    if path is None:
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise KeycardError(f"Cannot read {path}: {e}. Pass a readable JSON file.") from None


def _engine(assets: Path | None, groups: Path | None, deny: Path | None, roles: Path | None,
            catalog: Path | None) -> Engine:
    if assets is None:
        from keycard.demo import demo_inputs
        inputs = demo_inputs()
        return Engine.load(inputs["assets"], groups=inputs["groups"], deny_policies=inputs["deny_policies"],
                           catalog=str(catalog) if catalog else None)
    return Engine.load(str(assets), groups=_read_json(groups), deny_policies=_read_json(deny),
                       roles=_read_json(roles), catalog=str(catalog) if catalog else None, unknown_roles="ignore")


def _time(value: str | None) -> dt.datetime | None:
    if value is None:
        return None
    try:
        t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise KeycardError(f"Invalid --time {value!r}: use RFC 3339, e.g. 2026-11-23T10:00:00Z.") from None
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


@app.command()
def demo(fmt: FormatOpt = Format.table) -> None:
    """Show troubleshooter-style decisions on the built-in demo organization."""
    from keycard.demo import DEMO_QUERIES, TIME, demo_engine
    eng = demo_engine()
    decisions = [eng.check(p, perm, r, time=TIME) for p, perm, r in DEMO_QUERIES]
    if fmt is not Format.table:
        _emit([d.to_json() for d in decisions], fmt)
        return
    console.print(f"[bold]keycard demo[/]: organization example.com — {eng.resource_count} resources, "
                  f"{eng.binding_count} bindings, request.time {TIME.isoformat()}\n")
    for d in decisions:
        colour = "green" if d.allowed else "red"
        console.rule(f"[{colour}]{d.outcome}[/] {d.principal} · {d.permission}")
        console.print(str(d), highlight=False)
        if not d.allowed and d.deny is None:
            roles = eng.find_roles([d.permission], predefined_only=True)[:1]
            if roles:
                target = d.resource
                console.print(f"[yellow]To grant it:[/] the smallest predefined role is [bold]{roles[0].name}[/] "
                              f"({len(roles[0].permissions)} permissions) on {target}", highlight=False)
        console.print()
    console.print("Try: [bold].venv/bin/keycard check user:carol@example.com ml.models.get "
                  f"{decisions[0].resource}[/]", highlight=False)


@app.command()
def check(principal: Annotated[str, typer.Argument(help="user:EMAIL, serviceAccount:EMAIL, ... or allUsers")],
          permission: Annotated[str, typer.Argument(help="e.g. ml.models.get")],
          resource: Annotated[str, typer.Argument(help="full resource name, e.g. //ml.googleapis.com/...")],
          assets: AssetsOpt = None, groups: GroupsOpt = None, deny_policies: DenyOpt = None,
          roles: RolesOpt = None, catalog: CatalogOpt = None, time: TimeOpt = None,
          fmt: FormatOpt = Format.table) -> None:
    """Decide one request and explain it. Exit code 0 = granted, 1 = denied, 2 = bad input."""
    eng = _engine(assets, groups, deny_policies, roles, catalog)
    d = eng.check(None if principal == "allUsers" else principal, permission, resource, time=_time(time))
    if fmt is Format.table:
        console.print(str(d), highlight=False)
    else:
        _emit(d.to_json(), fmt)
    raise typer.Exit(EXIT_OK if d.allowed else EXIT_DENIED)


DatabaseOpt = Annotated[str | None, typer.Option("--database", help="sqlite:///PATH or postgresql://... "
                                                 "(default: SQLite under --data-dir)")]
DataDirOpt = Annotated[Path, typer.Option("--data-dir", help="Where the embedded SQLite database lives.")]


def _database(database: str | None, data_dir: Path) -> str:
    from keycard.server import default_database
    return database or os.environ.get("KEYCARD_DATABASE") or default_database(data_dir)


@app.command()
def init(organization_domain: Annotated[str, typer.Option(help="The organization's domain, e.g. example.com")],
         admin: Annotated[list[str], typer.Option(help="First administrator, e.g. user:alice@example.com")],
         database: DatabaseOpt = None, data_dir: DataDirOpt = Path(".keycard"),
         demo_data: Annotated[bool, typer.Option("--demo", help="Also create a small demo ML platform "
                                                 "(folder, projects ml-prod and ml-dev, grants).")] = False,
         fmt: FormatOpt = Format.table) -> None:
    """Bootstrap an installation: organization, signing key, administrators. Idempotent."""
    from keycard.server import ADMIN_ROLES, init_installation, seed_demo
    from keycard.store.sql import open_store
    store = open_store(_database(database, data_dir))
    try:
        inst = init_installation(store, domain=organization_domain, admins=admin)
    finally:
        store.close()
    seeded = seed_demo(_database(database, data_dir), inst.admins[0]) if demo_data and inst.admins else []
    data = {"organization": inst.organization.split("/", 3)[3], "domain": inst.domain,
            "directoryCustomerId": inst.customer_id, "admins": list(inst.admins), "adminRoles": list(ADMIN_ROLES),
            "created": inst.created, "demo": seeded}
    if fmt is not Format.table:
        _emit(data, fmt)
        return
    verb = "Created" if inst.created else "Already initialised:"
    console.print(f"{verb} {data['organization']} ({inst.domain}); administrators {', '.join(inst.admins)} "
                  f"hold {', '.join(ADMIN_ROLES)} on it.", highlight=False)


@app.command()
def serve(host: Annotated[str, typer.Option(help="Address to listen on")] = "127.0.0.1",
          port: Annotated[int, typer.Option(help="Port to listen on")] = 8080,
          database: DatabaseOpt = None, data_dir: DataDirOpt = Path(".keycard"),
          enforcement: Annotated[str, typer.Option(help="enforce, or dry-run (allow, but record would-be "
                                                   "denials)")] = "enforce",
          log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "warning",
          grpc_port: Annotated[int, typer.Option(help="Also serve google.iam.admin.v1.IAM over gRPC on this port "
                                                 "(for google-cloud-iam's IAMClient); 0: off")] = 0,
          grpc_insecure: Annotated[bool, typer.Option(help="gRPC on a plain port on --host instead of local "
                                                      "credentials on 127.0.0.1")] = False,
          enable_training: Annotated[bool, typer.Option(help="Run ml training jobs (their code runs as this "
                                                        "server's OS user: only where that is acceptable)")]
          = False,
          workers: Annotated[int, typer.Option(help="Server processes sharing the port and the database, one core "
                                               "each (see docs/server.md)")] = 1) -> None:
    """Run the keycard server (Google's REST APIs at Google's paths)."""
    from keycard.server import open_services
    if enforcement not in ("enforce", "dry-run"):
        raise KeycardError(f"Invalid --enforcement {enforcement!r}: use enforce or dry-run.")
    if not 1 <= workers <= 64:
        raise KeycardError(f"Invalid --workers {workers}: between 1 and 64 (about one per core).")
    if grpc_port and not 0 < grpc_port < 65536:
        raise KeycardError(f"Invalid --grpc-port {grpc_port}: a port number (1-65535), or 0 for no gRPC listener.")
    if workers > 1 and not hasattr(os, "fork"):
        raise KeycardError("--workers above 1 needs os.fork (Linux or macOS); run one process per port instead.")
    url = _database(database, data_dir)
    services, keys, _store = open_services(url, enforcement=enforcement)
    if services.organization is None:
        raise KeycardError("This database has no installation yet: run `keycard init --organization-domain "
                           "example.com --admin user:you@example.com` first.")
    if enforcement != "enforce":
        err.print(f"[yellow]WARNING:[/] enforcement is {enforcement}: every request is allowed; would-be denials "
                  "are recorded in the audit log and the X-Keycard-Would-Deny header.", highlight=False)
    services.training_enabled = enable_training
    if workers > 1:
        from keycard import workers as forked
        try:
            sock = forked.bind(host, port)
        except OSError as e:
            raise KeycardError(f"Cannot listen on {host}:{port}: {e.strerror or e}. Is another server there? "
                               "Pick another --port.") from None
        peers = forked.SharedRevisions(workers)
        services.runtime.peers = peers
        _store.on_commit = peers.publish
    err.print(f"keycard serving {services.organization.split('/', 3)[3]} on http://{host}:{port} "
              f"({url.split('://')[0]}, revision {services.runtime.applied}"
              + (f", {workers} worker processes" if workers > 1 else "") + ")", highlight=False)
    db_opt = f" --database '{database}'" if database else ("" if data_dir == Path(".keycard") else
                                                          f" --data-dir '{data_dir}'")
    kc = "keycard" if (Path(sys.argv[0]).name == "keycard" and "/" not in sys.argv[0]) else sys.argv[0]
    err.print("Try it (in another terminal):\n"
              f"  curl -s -H \"Authorization: Bearer $({kc} auth print-access-token --user ADMIN_EMAIL{db_opt})\" "
              f"http://{host}:{port}/v3/organizations:search", highlight=False)
    if workers > 1:
        def worker(index: int) -> None:
            """One forked worker: its own connections and threads, then its listener on the shared port."""
            _store.after_fork()
            peers.after_fork(index)
            _run(services, keys, host, port, grpc_port if not index else 0, grpc_insecure, log_level,
                 sockets=[forked.listener(sock)], metrics_dir=os.environ[forked.METRICS_DIR])
        _store.before_fork()
        raise typer.Exit(forked.run_workers(workers, worker))
    _run(services, keys, host, port, grpc_port, grpc_insecure, log_level)


def _run(services: Any, keys: Any, host: str, port: int, grpc_port: int, grpc_insecure: bool, log_level: str, *,
         sockets: list[Any] | None = None, metrics_dir: str | None = None) -> None:
    """One serving process (the server, or one of its workers): follow the change feed, build the app
    (a worker's /metrics sums every worker's, in ``metrics_dir``), resume ml jobs, the optional gRPC
    listener, then uvicorn until stopped."""
    import uvicorn

    from keycard.http.app import create_app
    from keycard.ml.jobs import start_job_runner  # resumes (or ends) ml jobs a stopped server left running
    base_url = f"http://{host}:{port}"
    services.runtime.start_following()
    application = create_app(services, keys, base_url=base_url, metrics_dir=metrics_dir)
    start_job_runner(services, keys, base_url=base_url)
    grpc_server = _start_grpc(services, application, host, port, grpc_port, grpc_insecure) if grpc_port else None
    # What start-up loaded (the engine, every record, modules) lives as long as the process: out of the cyclic
    # collector's full passes, which would otherwise traverse it all and stall every request in flight; the few
    # cycles requests leave are collected every 20,000 net allocations rather than 700 (as keycard proxy does).
    gc.freeze()
    gc.set_threshold(20_000, *gc.get_threshold()[1:])
    # Google's discovery clients (httplib2) reuse idle connections without retrying: keep them open.
    # httptools + uvloop: the C HTTP parser and event loop (about 2x fewer µs per request than h11/asyncio).
    config = uvicorn.Config(application, host=host, port=port, log_level=log_level, access_log=False,
                            timeout_keep_alive=650, http="httptools", loop="uvloop")
    server = uvicorn.Server(config)
    try:
        server.run(sockets=sockets)
    except KeyboardInterrupt:       # uvicorn re-raises the Ctrl-C it finished serving on (as uvicorn.run does)
        pass
    finally:
        if grpc_server is not None:
            grpc_server.stop(2).wait()
    if not server.started:
        raise SystemExit(3)         # uvicorn's STARTUP_FAILURE, as uvicorn.run exits with


def _start_grpc(services: Any, application: Any, host: str, port: int, grpc_port: int, insecure: bool) -> Any:
    """The optional gRPC listener, sharing the HTTP app's services and authenticator."""
    try:
        from keycard.grpc_iam import start_grpc_server
    except ImportError as e:
        raise KeycardError(f"--grpc-port needs grpcio and google-cloud-iam ({e}): pip install 'keycard-iam[grpc]'."
                           ) from None
    server, bound = start_grpc_server(services, application.state.keycard.authn, port=grpc_port,
                                      base_url=f"http://{host}:{port}", host=host if insecure else "127.0.0.1",
                                      insecure=insecure)
    err.print(f"keycard serving google.iam.admin.v1.IAM over gRPC on {host if insecure else '127.0.0.1'}:{bound} "
              f"({'plaintext' if insecure else 'local credentials, loopback only'})", highlight=False)
    return server


auth_app = typer.Typer(help="Credentials for talking to a keycard server.", no_args_is_help=True)
app.add_typer(auth_app, name="auth")


@auth_app.command("print-access-token")
def print_access_token(user: Annotated[str, typer.Option(help="The user, e.g. alice@example.com")],
                       database: DatabaseOpt = None, data_dir: DataDirOpt = Path(".keycard"),
                       lifetime: Annotated[int, typer.Option(help="Seconds, at most 3600")] = 3600) -> None:
    """Mint a short-lived user token with the server's key (run on the server's host)."""
    from keycard.server import mint_local_token
    if not 60 <= lifetime <= 3600:
        raise KeycardError("Invalid --lifetime: between 60 and 3600 seconds.")
    sys.stdout.write(mint_local_token(_database(database, data_dir), user, lifetime=lifetime) + "\n")


@auth_app.command("rotate-signing-key")
def rotate_signing_key(retire_older: Annotated[bool, typer.Option(help="Retire the older keys now (their "
                                                                  "tokens stop working)")] = False,
                       database: DatabaseOpt = None, data_dir: DataDirOpt = Path(".keycard")) -> None:
    """Start signing tokens with a new key; JWKS publishes it (servers pick it up within 5 s)."""
    from keycard.server import rotate_signing_key as rotate
    kid, retired = rotate(_database(database, data_dir), retire_older=retire_older)
    console.print(f"New signing key {kid}." + (f" Retired: {', '.join(retired)}." if retired else
                                               " Older keys still verify the tokens they signed."),
                  highlight=False)


logs_app = typer.Typer(help="The audit log (Cloud Audit Logs shape, hash-chained).", no_args_is_help=True)
app.add_typer(logs_app, name="logs")


@logs_app.command("read")
def logs_read(filter_: Annotated[str, typer.Argument(metavar="[FILTER]", help='Cloud Logging filter, e.g. '
                                                     'protoPayload.methodName="SetIamPolicy"')] = "",
              limit: Annotated[int, typer.Option(help="At most this many entries (newest first)")] = 20,
              database: DatabaseOpt = None, data_dir: DataDirOpt = Path(".keycard"),
              endpoint: Annotated[str | None, typer.Option(help="Read from a keycard server over HTTP (Logging "
                                                           "v2 entries.list; default $KEYCARD_ENDPOINT when no "
                                                           "--database is given)")] = None,
              project: Annotated[str | None, typer.Option(help="Over HTTP: this project's audit logs")] = None,
              organization: Annotated[str | None, typer.Option(help="Over HTTP: this organization's")] = None,
              fmt: FormatOpt = Format.table) -> None:
    """Read audit entries, newest first (from the database, or from a server with --endpoint)."""
    if endpoint or (os.environ.get("KEYCARD_ENDPOINT") and database is None
                    and not os.environ.get("KEYCARD_DATABASE")):
        from keycard.cli.logs import read_remote
        from keycard.cli.remote import remote
        remote(lambda client: read_remote(client, filter_, limit, project, organization, fmt))(endpoint=endpoint)
        return
    from keycard.audit import compile_filter
    from keycard.store.sql import open_store
    pred = compile_filter(filter_)
    store = open_store(_database(database, data_dir))
    try:
        newest: deque[dict[str, Any]] = deque(maxlen=max(limit, 0))
        since = 0
        while True:
            batch = store.audit(since_seq=since, limit=2000)
            newest.extend({"seq": a.seq, **a.entry} for a in batch if pred(a.entry))
            if len(batch) < 2000:
                break
            since = batch[-1].seq
    finally:
        store.close()
    found = list(reversed(newest))
    if fmt is not Format.table:
        _emit(found, fmt)
        return
    table = Table("seq", "time", "principal", "method", "resource", "granted")
    for e in found:
        p = e.get("protoPayload", {})
        auths = p.get("authorizationInfo", [])
        denied = [a.get("permission", "") for a in auths if not a.get("granted")]
        granted = ("denied: " + ", ".join(denied)) if denied else ("yes" if auths else "-")
        table.add_row(str(e["seq"]), str(e.get("timestamp", ""))[:19], p.get("authenticationInfo", {}).get(
            "principalEmail", "-"), str(p.get("methodName", "")).rsplit(".", 1)[-1], p.get("resourceName", ""),
            granted)
    console.print(table)


@logs_app.command("verify")
def logs_verify(database: DatabaseOpt = None, data_dir: DataDirOpt = Path(".keycard")) -> None:
    """Recompute the audit log's hash chain; exit 1 naming the first broken record."""
    from keycard.store.sql import open_store
    store = open_store(_database(database, data_dir))
    try:
        ok, seq, message = store.verify_audit()
    finally:
        store.close()
    if ok:
        console.print(f"[green]OK[/]: {message}", highlight=False)
        return
    err.print(f"[red]BROKEN[/] at record {seq}: {message}", highlight=False)
    raise typer.Exit(1)


@app.command("metadata-server")
def metadata_server(
        service_account: Annotated[str, typer.Option(help="The account to attach, e.g. "
                                                     "runner@my-proj.iam.gserviceaccount.com")],
        endpoint: Annotated[str, typer.Option(envvar="KEYCARD_ENDPOINT",
                                              help="The keycard server's URL, e.g. http://127.0.0.1:8080")],
        port: Annotated[int, typer.Option(help="Port to listen on")] = 8089,
        host: Annotated[str, typer.Option(help="Address to listen on (keep it loopback)")] = "127.0.0.1",
        project: Annotated[str | None, typer.Option(help="project-id to report (default: the account's)")] = None,
        token: Annotated[str | None, typer.Option(envvar="KEYCARD_TOKEN", show_default=False,
                                                  help="A keycard token of the caller attaching (who needs "
                                                  "iam.serviceAccounts.actAs on the account)")] = None,
        credentials: Annotated[Path | None, typer.Option(help="Or: a service-account key file to attach "
                                                         "with")] = None,
        scopes: Annotated[list[str] | None, typer.Option("--scopes", help="Scopes of the 'instance' "
                                                         "(repeatable; default cloud-platform)")] = None,
        universe_domain: Annotated[str, typer.Option(help="What universe/universe-domain answers")] =
        "googleapis.com") -> None:
    """Serve GCE metadata (tokens of one service account) for google-auth; needs actAs on the account."""
    from keycard.identity.metadata import run_metadata_server
    run_metadata_server(service_account=service_account, endpoint=endpoint, host=host, port=port, project=project,
                        token=token, credentials=credentials, scopes=scopes or [], universe_domain=universe_domain,
                        log=lambda m: err.print(m, highlight=False, markup=False))


idp_app = typer.Typer(help="Company OpenID Connect identity providers whose users sign in with their ID tokens "
                      "(local admin path, on the server's host).", no_args_is_help=True)
app.add_typer(idp_app, name="idp")


def _idp_call(database: str | None, data_dir: Path, organization: str | None, call: Any) -> Any:
    from keycard.server import open_services
    from keycard.services.common import Caller
    services, _keys, store = open_services(_database(database, data_dir))
    try:
        org = organization or (services.organization or "").rsplit("/", 1)[-1]
        if not org:
            raise KeycardError("This database has no installation yet: run `keycard init` first.")
        return call(services, Caller(None), org.removeprefix("organizations/"))
    finally:
        services.runtime.stop()
        store.close()


OrgOpt = Annotated[str | None, typer.Option("--organization", help="Organization number (default: the "
                                            "installation's)")]


@idp_app.command("add")
def idp_add(provider_id: Annotated[str, typer.Argument(help="Provider id, e.g. corp-sso")],
            issuer: Annotated[str, typer.Option(help="The IdP's issuer URL (the iss of its ID tokens)")],
            client_id: Annotated[list[str], typer.Option(help="Accepted aud value (repeatable)")],
            jwks_file: Annotated[Path | None, typer.Option(help="The IdP's public keys (JWKS JSON file)")] = None,
            jwks_uri: Annotated[str | None, typer.Option(help="Or: where to fetch them")] = None,
            subject: Annotated[str, typer.Option(help="CEL for google.subject (the user's email)")] =
            "assertion.email",
            groups: Annotated[str, typer.Option(help="CEL for google.groups (group emails); '' for none")] =
            "assertion.groups",
            condition: Annotated[str | None, typer.Option(help="attributeCondition (CEL, must be true)")] = None,
            allowed_domain: Annotated[list[str] | None, typer.Option(help="Email domain its users may have "
                                                                     "(repeatable; default: the organization's)")]
            = None,
            require_email_verified: Annotated[bool, typer.Option(help="Require email_verified in the token")]
            = True,
            display_name: Annotated[str | None, typer.Option(help="At most 32 characters")] = None,
            organization: OrgOpt = None, database: DatabaseOpt = None, data_dir: DataDirOpt = Path(".keycard"),
            fmt: FormatOpt = Format.table) -> None:
    """Add an identity provider."""
    from keycard.services import identity_providers as idp
    oidc: dict[str, Any] = {"issuerUri": issuer, "clientIds": client_id}
    if jwks_file is not None:
        oidc["jwksJson"] = json.dumps(_read_json(jwks_file))
    if jwks_uri is not None:
        oidc["jwksUri"] = jwks_uri
    mapping = {"google.subject": subject, **({"google.groups": groups} if groups else {})}
    body: dict[str, Any] = {"oidc": oidc, "attributeMapping": mapping,
                            "requireEmailVerified": require_email_verified}
    if condition:
        body["attributeCondition"] = condition
    if allowed_domain:
        body["allowedDomains"] = allowed_domain
    if display_name:
        body["displayName"] = display_name
    out = _idp_call(database, data_dir, organization,
                    lambda svc, caller, org: idp.create_provider(svc, caller, org, provider_id, body, local=True))
    if fmt is not Format.table:
        _emit(out, fmt)
        return
    console.print(f"Added {out['name']}: users of {issuer} sign in as user:EMAIL in "
                  f"{', '.join(out['allowedDomains'])}.", highlight=False)


@idp_app.command("list")
def idp_list(organization: OrgOpt = None, database: DatabaseOpt = None, data_dir: DataDirOpt = Path(".keycard"),
             fmt: FormatOpt = Format.table) -> None:
    """List identity providers."""
    from keycard.services import identity_providers as idp
    out = _idp_call(database, data_dir, organization,
                    lambda svc, caller, org: idp.list_providers(svc, caller, org, {"pageSize": "1000"}, local=True))
    found = out.get("identityProviders", [])
    if fmt is not Format.table:
        _emit(found, fmt)
        return
    table = Table("name", "issuer", "client ids", "domains", "disabled")
    for p in found:
        o = p.get("oidc", {})
        table.add_row(p["name"], o.get("issuerUri", ""), ", ".join(o.get("clientIds", [])),
                      ", ".join(p.get("allowedDomains", [])), "yes" if p.get("disabled") else "no")
    console.print(table)


@idp_app.command("remove")
def idp_remove(provider_id: Annotated[str, typer.Argument(help="Provider id")], organization: OrgOpt = None,
               database: DatabaseOpt = None, data_dir: DataDirOpt = Path(".keycard")) -> None:
    """Remove an identity provider: its users' ID tokens stop working at once."""
    from keycard.services import identity_providers as idp
    _idp_call(database, data_dir, organization,
              lambda svc, caller, org: idp.delete_provider(svc, caller, org, provider_id, local=True))
    console.print(f"Removed identity provider {provider_id}.", highlight=False)


def _register_groups() -> None:
    """Command groups that live in their own modules under keycard/cli/ (one line each)."""
    from keycard.cli import config, iam, iam_roles, ml, organizations, projects, resource_manager, storage
    app.add_typer(config.app, name="config")
    app.add_typer(organizations.app, name="organizations")
    app.add_typer(resource_manager.app, name="resource-manager")
    app.add_typer(projects.app, name="projects")
    app.add_typer(iam.app, name="iam")
    app.add_typer(ml.app, name="ai-platform")
    app.add_typer(storage.app, name="storage")
    app.command("find-roles", help="Same as `keycard iam roles find`.")(iam_roles.find)
    __import__("keycard.cli.pac", fromlist=["register"]).register(app)  # plan, apply, export at top level
    app.command("proxy")(__import__("keycard.cli.proxy", fromlist=["proxy"]).proxy)  # keycard proxy (IAP)
    app.add_typer(__import__("keycard.cli.asset", fromlist=["app"]).app, name="asset")  # Cloud Asset Inventory
    app.command("import")(__import__("keycard.cli.asset", fromlist=["x"]).import_command)  # import --cai
    __import__("keycard.cli.iam_extras", fromlist=["attach"]).attach(app)  # iam recommend/simulate/lint (keep last)


_register_groups()


def main() -> None:
    try:
        app()
    except KeycardError as e:
        err.print(f"[red]error:[/] {e}", highlight=False)
        sys.exit(EXIT_BAD_INPUT)


if __name__ == "__main__":
    main()
