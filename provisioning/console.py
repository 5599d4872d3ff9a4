"""How the CLI shows plans, results, live progress and tables (rich)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from provisioning.envelope import WorkflowResult
from provisioning.events import (
    OperationCompleted,
    OperationFailed,
    OperationRetried,
    OperationStarted,
    SystemEvent,
    bus,
)
from provisioning.extensions import Contribution, ExtensionInfo
from provisioning.plan import Plan
from provisioning.spec import Workflow

STATUS_STYLE = {
    "succeeded": "green",
    "completed": "green",
    "cached": "green",
    "running": "cyan",
    "retrying": "yellow",
    "pending": "dim",
    "failed": "red",
    "not_run": "magenta",
    "rolled_back": "yellow",
}


def styled(status: str) -> Text:
    return Text(status, style=STATUS_STYLE.get(status, ""))


def plan_table(plan: Plan) -> Table:
    table = Table(title=f"{plan.name} ({plan.workflow_id}): {plan.operation_count} operations")
    for column in ("wave", "operation", "kind", "will", "waits for", "on rollback"):
        table.add_column(column)
    for index, wave in enumerate(plan.waves, start=1):
        for step in wave:
            table.add_row(
                str(index),
                step.id,
                step.kind + (f" ({step.provider})" if step.provider else ""),
                step.action,
                ", ".join(step.waits_for) or "-",
                step.rollback or Text("irreversible", style="yellow"),
            )
    return table


def result_table(result: WorkflowResult) -> Table:
    outcome = result.result
    table = Table(title=f"{outcome.name} ({outcome.workflow_id}): {result.status}")
    for column in ("operation", "kind", "status", "tries", "time", "detail"):
        table.add_column(column)
    for operation in outcome.operations:
        duration = operation.duration_s
        detail = operation.error.message if operation.error else _detail(operation.output)
        if operation.reused:
            detail = "reused stored result" + (f"; {detail}" if detail else "")
        table.add_row(
            operation.id,
            operation.kind,
            styled(operation.status),
            str(operation.attempts),
            f"{duration:.2f}s" if duration is not None else "-",
            detail,
        )
    return table


def _detail(output: dict[str, Any]) -> str:
    server = output.get("server")
    if isinstance(server, dict):
        return f"server {server.get('id')} {server.get('state')}"
    for key in ("path", "file", "deleted"):
        if output.get(key):
            return f"{key} {output[key]}"
    return ""


def print_result(console: Console, result: WorkflowResult) -> None:
    console.print(result_table(result))
    if result.result.rollback:
        rollback = Table(title="rolled back (newest first)")
        for column in ("operation", "action", "status", "error"):
            rollback.add_column(column)
        for step in result.result.rollback:
            rollback.add_row(step.operation_id, step.action, styled(step.status), step.error or "")
        console.print(rollback)
    if result.error is not None:
        console.print(f"[red]error[/red] {result.error.code}: {result.error.message}")
    else:
        console.print(
            f"[green]success[/green] {len(result.result.operations)} operations, "
            f"{len(result.result.resources)} resources, {result.result.duration_s:.2f}s"
        )


def extensions_table(rows: list[tuple[ExtensionInfo, Contribution | None]]) -> Table:
    """One row per extension found, with what it adds when active (``provision extensions
    list``)."""
    table = Table(title=f"extensions: {len(rows)}")
    for column in ("name", "version", "type", "valid", "compatible", "provides", "problems"):
        table.add_column(column)
    for info, provides in rows:
        manifest = info.manifest
        table.add_row(
            info.name,
            manifest.version if manifest else "",
            manifest.type if manifest else "",
            "yes" if info.valid else Text("no", style="red"),
            "yes" if info.compatible else Text("no", style="red"),
            _provides(provides),
            Text("; ".join(info.problems)),  # text, not markup: a path may hold "[...]"
        )
    return table


def _provides(provides: Contribution | None) -> str:
    if provides is None:
        return "-"  # not active: it adds nothing
    parts = [f"provider {provides.provider}"] if provides.provider else []
    if provides.workflows:
        parts.append("workflows " + ", ".join(sorted(provides.workflows)))
    return "; ".join(parts) or "-"


class ProgressView:
    """Live table of operation states, fed by the event bus from the run's worker threads."""

    def __init__(self, workflow: Workflow) -> None:
        self.workflow = workflow
        self.lock = threading.Lock()
        self.states = {operation.id: "pending" for operation in workflow.operations}
        self.notes: dict[str, str] = {}
        self.started: dict[str, datetime] = {}

    def update(self, event: SystemEvent) -> None:
        if not isinstance(
            event, OperationStarted | OperationCompleted | OperationFailed | OperationRetried
        ):
            return
        with self.lock:
            if isinstance(event, OperationStarted):
                self.states[event.operation_id] = "running"
                self.started.setdefault(event.operation_id, event.occurred)
            elif isinstance(event, OperationCompleted):
                self.states[event.operation_id] = event.status
            elif isinstance(event, OperationFailed):
                self.states[event.operation_id] = "failed"
                self.notes[event.operation_id] = event.error
            else:
                self.states[event.operation_id] = "retrying"
                self.notes[event.operation_id] = (
                    f"try {event.attempt} failed, retry in {event.delay_s:.1f}s: {event.error}"
                )

    def __rich__(self) -> Group:
        with self.lock:
            done = sum(s in {"completed", "cached", "failed"} for s in self.states.values())
            table = Table(title=f"{self.workflow.name}: {done}/{len(self.states)} done")
            for column in ("operation", "kind", "state", "elapsed", "note"):
                table.add_column(column)
            now = datetime.now(UTC)
            for operation in self.workflow.operations:
                started = self.started.get(operation.id)
                elapsed = f"{(now - started).total_seconds():.1f}s" if started else ""
                table.add_row(
                    operation.id,
                    operation.kind,
                    styled(self.states[operation.id]),
                    elapsed,
                    self.notes.get(operation.id, ""),
                )
        return Group(table)


@contextmanager
def _console_logs_at_warning() -> Iterator[None]:
    """Log lines written to the terminal behind rich's back tear a live view apart, and the view
    already says what Prefect's INFO lines would; warnings and errors still print, and the
    Prefect API (the UI) still receives every line."""
    handlers = [
        handler
        for handler in logging.getLogger().handlers
        if isinstance(handler, logging.StreamHandler) and handler.level < logging.WARNING
    ]
    levels = [handler.level for handler in handlers]
    for handler in handlers:
        handler.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for handler, level in zip(handlers, levels, strict=True):
            handler.setLevel(level)


@contextmanager
def live_progress(console: Console, workflow: Workflow) -> Iterator[ProgressView]:
    view = ProgressView(workflow)
    subscription = bus.subscribe(None, view.update, workflow_id=workflow.workflow_id)
    try:
        with (
            _console_logs_at_warning(),
            Live(view, console=console, refresh_per_second=8, transient=True),
        ):
            yield view
    finally:
        subscription.close()


@contextmanager
def event_log(console: Console, workflow_id: str) -> Iterator[None]:
    """Print every event of the workflow as one line (``provision run --events``)."""

    def show(event: SystemEvent) -> None:
        payload = event.to_payload()
        details = " ".join(
            f"{key}={value}"
            for key, value in payload.items()
            if key not in {"kind", "workflow_id", "flow_run_id", "event_id", "occurred"}
            and value is not None
        )
        console.print(
            f"{event.occurred:%H:%M:%S.%f}"[:-3] + f" {event.prefect_event_name} {details}",
            highlight=False,
            markup=False,
        )

    subscription = bus.subscribe(None, show, workflow_id=workflow_id)
    try:
        yield
    finally:
        subscription.flush()
        subscription.close()
