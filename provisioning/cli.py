"""``provision``: the command line. Thin commands over the core, the flows and the console.

Exit codes: 0 success, 1 the workflow (or a provider) failed, 2 bad input. Every expected error
prints as ``error CODE: where: what`` on one or two lines, never as a traceback. Commands that only
read or validate (``plan``, ``config show``, ``version``) never import Prefect, so they answer in
well under a second.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from provisioning import __version__
from provisioning.config import Config, load_config
from provisioning.errors import ProvisioningError

app = typer.Typer(
    name="provision",
    help="Infrastructure provisioning as Prefect flows.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Show the layered configuration.", no_args_is_help=True)
servers_app = typer.Typer(help="Servers at a provider.", no_args_is_help=True)
extensions_app = typer.Typer(help="Extensions found in the extension directories.")
app.add_typer(config_app, name="config")
app.add_typer(servers_app, name="servers")
app.add_typer(extensions_app, name="extensions")

console = Console()
errors = Console(stderr=True)
#: Piped output has no terminal width and rich would cut table cells at 80 columns.
PIPED_WIDTH = 160

F = TypeVar("F", bound=Callable[..., Any])

SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a setting for this run: section.key=value (repeatable)."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]
SpecArgument = Annotated[
    str,
    typer.Argument(
        metavar="SPEC",
        help="A workflow file, or EXTENSION:WORKFLOW offered by an active extension.",
        show_default=False,
    ),
]


def reports_errors(command: F) -> F:
    """Turn expected errors into one-line messages and the right exit code."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except ProvisioningError as error:
            # Escaped: a path like ``[prod]/web.toml`` is text, not markup. Soft-wrapped: a
            # message is never broken across lines when the output is piped or captured.
            errors.print(
                f"[red]error[/red] {error.code}: {escape(str(error))}",
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(error.exit_code) from None

    return wrapper  # type: ignore[return-value]


def _config(overrides: list[str] | None = None, env: str | None = None) -> Config:
    """The layered configuration, with the configured extensions activated."""
    from provisioning.extensions import activate_configured

    config = load_config(env=env, overrides=overrides or [])
    activate_configured(config)
    return config


def _spec_file(spec: str) -> Path:
    """The file ``spec`` names: itself, or the one an active extension offers as ``EXT:NAME``.

    A file of that name wins, so no existing path changes meaning.
    """
    from provisioning.extensions import is_workflow_reference, resolve_workflow

    path = Path(spec)
    if path.exists() or not is_workflow_reference(spec):
        return path
    return resolve_workflow(spec)


def _prefect(config: Config, *, require_standing: bool = False) -> None:
    from provisioning.runtime import prepare_prefect

    prepare_prefect(config, require_standing=require_standing)


def _print_json(data: Any) -> None:
    """Machine-readable output, written as is: rich's ``print_json`` re-parses and lays out the
    document, which cost 0.3 s on a 100-operation result."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


@app.command()
@reports_errors
def version() -> None:
    """Print the version of provisioning and of Prefect."""
    from importlib.metadata import version as package_version

    console.print(f"provisioning {__version__} (prefect {package_version('prefect')})")


@app.command()
@reports_errors
def plan(spec: SpecArgument, as_json: JsonOption = False) -> None:
    """Validate a workflow and show its waves and what each operation will do."""
    from providers.registry import load_workflow
    from provisioning.console import plan_table
    from provisioning.plan import make_plan

    _config()
    planned = make_plan(load_workflow(_spec_file(spec)))
    if as_json:
        _print_json(planned.model_dump(mode="json"))
        return
    console.print(plan_table(planned))
    console.print(f"{planned.operation_count} operations in {len(planned.waves)} waves; valid.")


@app.command()
@reports_errors
def run(
    spec: SpecArgument,
    parallelism: Annotated[
        int | None, typer.Option(min=1, help="Operations at once (overrides the spec).")
    ] = None,
    set_: SetOption = None,
    events: Annotated[
        bool, typer.Option("--events", help="Print every event as it happens.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Run a workflow as a Prefect flow, with live progress and a final table."""
    from providers.registry import load_workflow

    config = _config(set_)
    workflow = load_workflow(_spec_file(spec))
    _prefect(config)
    from flows.run import run_workflow
    from provisioning.console import event_log, live_progress, print_result

    if events:
        with event_log(console, workflow.workflow_id):
            result = run_workflow(workflow, overrides=set_ or [], parallelism=parallelism)
    elif as_json or not console.is_terminal:
        result = run_workflow(workflow, overrides=set_ or [], parallelism=parallelism)
    else:
        with live_progress(console, workflow):
            result = run_workflow(workflow, overrides=set_ or [], parallelism=parallelism)
    if as_json:
        _print_json(result.model_dump(mode="json"))
    else:
        print_result(console, result)
    raise typer.Exit(0 if result.ok else 1)


@app.command()
@reports_errors
def resume(workflow_id: str, set_: SetOption = None, as_json: JsonOption = False) -> None:
    """Finish a workflow after a crash; nothing already created is created again."""
    _prefect(_config(set_))
    from flows.common import without_heartbeat
    from flows.resume import resume_workflow_flow
    from flows.run import state_result
    from provisioning.console import print_result

    with without_heartbeat():
        state = resume_workflow_flow(workflow_id, set_ or [], return_state=True)
    result = state_result(state)
    if as_json:
        _print_json(result.model_dump(mode="json"))
    else:
        print_result(console, result)
    raise typer.Exit(0 if result.ok else 1)


def _undo(kind: str, workflow_id: str, set_: list[str] | None, as_json: bool) -> None:
    _prefect(_config(set_))
    from flows.common import without_heartbeat
    from flows.destroy import destroy_workflow_flow
    from flows.rollback import rollback_workflow_flow
    from provisioning.console import styled

    chosen = rollback_workflow_flow if kind == "rollback" else destroy_workflow_flow
    with without_heartbeat():
        report = chosen(workflow_id, set_ or [])
    if as_json:
        _print_json(report.model_dump(mode="json"))
    else:
        table = Table(title=f"{kind} {workflow_id}")
        for column in ("operation", "action", "status", "error"):
            table.add_column(column)
        for step in report.steps:
            table.add_row(step.operation_id, step.action, styled(step.status), step.error or "")
        console.print(table)
        if report.adopted:
            console.print(f"adopted from a killed run: {', '.join(report.adopted)}")
        console.print(f"{len(report.steps)} actions, {'all done' if report.ok else 'some failed'}")
    raise typer.Exit(0 if report.ok else 1)


@app.command()
@reports_errors
def rollback(workflow_id: str, set_: SetOption = None, as_json: JsonOption = False) -> None:
    """Undo what a workflow did, newest first (also after a crash)."""
    _undo("rollback", workflow_id, set_, as_json)


@app.command()
@reports_errors
def destroy(workflow_id: str, set_: SetOption = None, as_json: JsonOption = False) -> None:
    """Delete every resource the journal says the workflow owns."""
    _undo("destroy", workflow_id, set_, as_json)


@app.command()
@reports_errors
def status(
    workflow_id: str,
    prefect: Annotated[
        bool, typer.Option(help="Also read each operation's task-run state from Prefect.")
    ] = True,
    as_json: JsonOption = False,
) -> None:
    """Operations (journal and Prefect states), resources and the rollback stack."""
    from provisioning.status import read_status

    config = _config()
    if prefect:
        _prefect(config)
    report = read_status(config, workflow_id, with_prefect=prefect)
    if as_json:
        _print_json(report.model_dump(mode="json"))
        return
    from provisioning.status import print_status

    print_status(console, report)


@app.command()
@reports_errors
def checkpoint(workflow_id: str) -> None:
    """The workflow's checkpoint in the seed's JSON shape."""
    from provisioning.journal import Journal

    journal = Journal.from_config(_config())
    _print_json(journal.checkpoint(workflow_id).model_dump(mode="json"))


@config_app.command("show")
@reports_errors
def config_show(
    sources: Annotated[
        bool, typer.Option("--sources", help="Show where each value came from.")
    ] = False,
    set_: SetOption = None,
    env: Annotated[
        str | None, typer.Option(help="Environment file to layer (PROVISIONING_ENV).")
    ] = None,
) -> None:
    """The merged configuration, secrets masked."""
    from provisioning.secrets import mask_secrets

    config = _config(set_, env)
    if not sources:
        _print_json(config.masked())
        return
    table = Table(title="configuration")
    for column in ("key", "value", "source"):
        table.add_column(column)
    for key in sorted(config.sources):
        value = mask_secrets(key, config.get(key))
        table.add_row(key, json.dumps(value, default=str), config.sources[key])
    console.print(table)


@app.command()
@reports_errors
def providers(as_json: JsonOption = False) -> None:
    """Every provider, its configuration (secrets masked) and whether it is reachable."""
    from providers.registry import get_provider, provider_names
    from provisioning.secrets import mask_secrets

    config = _config()
    rows = []
    for name in provider_names():
        settings = config.provider(name)
        try:
            status = get_provider(name, settings).check()
            reachable, message = status.reachable, status.message
        except ProvisioningError as error:
            reachable, message = False, str(error)
        rows.append(
            {
                "name": name,
                "reachable": reachable,
                "message": message,
                "config": mask_secrets(f"providers.{name}", settings),
            }
        )
    if as_json:
        _print_json(rows)
        return
    table = Table(title="providers")
    for column in ("provider", "reachable", "config", "message"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row["name"],
            "[green]yes[/green]" if row["reachable"] else "[red]no[/red]",
            ", ".join(f"{k}={v}" for k, v in row["config"].items()),
            row["message"],
        )
    console.print(table)


@servers_app.command("list")
@reports_errors
def servers_list(
    provider: Annotated[str, typer.Option("--provider", "-p", help="Provider name.")],
    as_json: JsonOption = False,
) -> None:
    """Servers visible at one provider."""
    from providers.registry import get_provider

    servers = get_provider(provider, _config().provider(provider)).list_servers()
    if as_json:
        _print_json([server.model_dump(mode="json", exclude={"raw"}) for server in servers])
        return
    table = Table(title=f"{provider}: {len(servers)} servers")
    for column in ("id", "name", "state", "addresses", "key"):
        table.add_column(column)
    for server in servers:
        table.add_row(
            server.id,
            server.name,
            server.state.value,
            ", ".join(server.addresses),
            server.key or "",
        )
    console.print(table)


@app.command()
@reports_errors
def sweep(
    provider: Annotated[
        list[str] | None, typer.Option("--provider", "-p", help="Only these providers.")
    ] = None,
    delete: Annotated[bool, typer.Option("--delete", help="Delete the orphans found.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Servers carrying our labels that no journal entry owns (orphans)."""
    from provisioning.sweep import find_orphans

    config = _config()
    report = find_orphans(config, provider or None, delete=delete)
    if as_json:
        _print_json(report.model_dump(mode="json"))
    else:
        table = Table(title=f"orphans: {len(report.orphans)}")
        for column in ("provider", "id", "name", "key", "deleted"):
            table.add_column(column)
        for orphan in report.orphans:
            table.add_row(
                orphan.provider,
                orphan.id,
                orphan.name,
                orphan.key or "",
                "yes" if orphan.deleted else (f"no: {orphan.error}" if orphan.error else ""),
            )
        console.print(table)
        for name, problem in report.unreachable.items():
            errors.print(f"[yellow]skipped[/yellow] {name}: {problem}")
    raise typer.Exit(0)


@extensions_app.command("list")
@reports_errors
def extensions_list(as_json: JsonOption = False) -> None:
    """Extensions found: name, version, type, valid, compatible, why not, and what each adds."""
    from provisioning.console import extensions_table
    from provisioning.extensions import contribution, discover

    config = _config()
    found = discover([Path(str(path)) for path in config.get("extensions.paths", [])])
    rows = [(info, contribution(info)) for info in found]
    if as_json:
        _print_json(
            [
                {
                    **info.model_dump(mode="json"),
                    "provides": provides.model_dump(mode="json") if provides else None,
                }
                for info, provides in rows
            ]
        )
        return
    console.print(extensions_table(rows))


@app.command()
@reports_errors
def api(
    host: Annotated[
        str | None,
        typer.Option(help="Address to bind (loopback unless a token is set) [default: api.host]."),
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on [default: api.port].")] = None,
    set_: SetOption = None,
) -> None:
    """The REST API (needs a standing Prefect server: `provision up` starts everything)."""
    from provisioning.api.server import serve

    serve(_config(set_), host, port)


@app.command()
@reports_errors
def up(set_: SetOption = None) -> None:
    """Prefect server, a runner serving the deployments and the API, stopped with Ctrl-C."""
    from provisioning.embedded import up as embedded_up

    embedded_up(_config(set_), report=console.print)


@app.command()
@reports_errors
def demo() -> None:
    """Run the demo workflow on local stand-ins for AWS, UpCloud and Docker."""
    config = _config()
    _prefect(config)
    from provisioning.demo import run_demo

    raise typer.Exit(run_demo(console, config))


def main() -> None:
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = PIPED_WIDTH
    app()


if __name__ == "__main__":
    main()
