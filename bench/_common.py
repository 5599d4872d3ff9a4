"""What both benchmarks share: the standing Prefect server, quiet moments, tables.

Prefect must read its settings from the environment before it is first imported, so nothing here
imports Prefect: :func:`prefect_environment` is applied to ``os.environ`` (or a child's
environment) first, and the measuring code imports Prefect afterwards.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from provisioning.sandbox.prefect_server import PrefectServer

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def start_prefect_server(work: Path) -> PrefectServer:
    """One standing ``prefect server start`` (UI off) for every part of a benchmark run."""
    os.environ.setdefault("PREFECT_UI_ENABLED", "false")
    server = PrefectServer(work / "prefect-server")
    began = time.monotonic()
    server.start()
    note(f"prefect server {server.api_url} ready in {time.monotonic() - began:.1f} s")
    return server


def prefect_environment(api_url: str | None, home: Path, log_level: str) -> dict[str, str]:
    """Client settings: the standing server (or none: temporary), no analytics.

    The flow heartbeat is not set here: the product turns it off itself while it runs a flow,
    and the plain-Prefect baselines do the same with ``temporary_settings``.
    """
    environment = {
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": log_level,
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    }
    if api_url:
        environment["PREFECT_API_URL"] = api_url
    return environment


def child_environment(overrides: dict[str, str], drop: Sequence[str] = ()) -> dict[str, str]:
    environment = {**os.environ, **overrides}
    for name in drop:
        environment.pop(name, None)
    return environment


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def settle(
    pids: Sequence[int], limit: float = 0.10, window: float = 0.5, timeout: float = 30
) -> float:
    """Wait until these processes use under ``limit`` of a core; return the seconds waited.

    The Prefect server keeps ingesting a run's events for seconds after the flow returned; the
    next measurement would pay for that backlog, so each one starts on a quiet server.
    """
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        before = sum(_cpu_seconds(pid) for pid in pids)
        time.sleep(window)
        after = sum(_cpu_seconds(pid) for pid in pids)
        if (after - before) / window < limit:
            break
    return time.monotonic() - began


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"


def banner(name: str, started_load: str, log_level: str) -> str:
    """The first line of a benchmark's report: when, on what, under which load."""
    return (
        f"{name}  {datetime.now():%Y-%m-%d %H:%M}  python {sys.version.split()[0]}  "
        f"load average at start {started_load}, at end {load_average()}  "
        f"PREFECT_LOGGING_LEVEL={log_level}\n"
    )


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def note(message: str) -> None:
    """Progress on stderr, so stdout carries only the tables."""
    print(message, file=sys.stderr, flush=True)


def table(
    title: str, headers: Sequence[str], rows: Sequence[Sequence[str]], text_columns: int = 1
) -> str:
    """A plain-text table (pasteable into a README): text columns left, numbers right."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]
    rule = "  ".join("-" * width for width in widths)

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            str(cell).ljust(width) if index < text_columns else str(cell).rjust(width)
            for index, (cell, width) in enumerate(zip(cells, widths, strict=True))
        )

    return "\n".join([title, line(headers), rule, *(line(row) for row in rows)])
