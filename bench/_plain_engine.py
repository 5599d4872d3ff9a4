"""Plain Prefect baselines for ``bench.engine``: the same shapes, no provisioning code.

Imported only after the environment points Prefect at the standing server.
"""

from __future__ import annotations

import subprocess
import time
from typing import Any

from prefect import flow, task
from prefect.futures import PrefectFuture
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
from prefect.task_runners import ThreadPoolTaskRunner

Span = tuple[float, float]


@task
def nothing(index: int) -> None:
    """The cheapest task there is: what Prefect alone costs per task."""


@task
def run_argv(argv: list[str]) -> Span:
    began = time.time()
    subprocess.run(argv, check=True, capture_output=True)
    return began, time.time()


@flow(persist_result=False)
def independent(count: int, workers: int, argv: list[str] | None) -> None:
    with ThreadPoolTaskRunner[Any](max_workers=workers) as runner:
        futures: list[PrefectFuture[Any]] = [
            runner.submit(nothing, parameters={"index": index})
            if argv is None
            else runner.submit(run_argv, parameters={"argv": argv})
            for index in range(count)
        ]
        for future in futures:
            future.wait()


@flow(persist_result=False)
def layered(layers: int, width: int, fan_in: bool, argv: list[str]) -> list[Span]:
    """``layers`` x ``width`` tasks; each waits for the whole previous layer or its column."""
    futures: dict[tuple[int, int], PrefectFuture[Span]] = {}
    with ThreadPoolTaskRunner[Any](max_workers=width) as runner:
        for layer in range(layers):
            for column in range(width):
                upstream = (
                    []
                    if layer == 0
                    else [futures[(layer - 1, c)] for c in range(width)]
                    if fan_in
                    else [futures[(layer - 1, column)]]
                )
                futures[(layer, column)] = runner.submit(
                    run_argv.with_options(task_run_name=f"op-{layer}-{column}"),
                    parameters={"argv": argv},
                    wait_for=upstream,
                )
        return [future.result() for future in futures.values()]


def run_independent(count: int, workers: int, argv: list[str] | None) -> float:
    """Wall seconds for ``count`` independent tasks in one flow."""
    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        began = time.monotonic()
        independent(count, workers, argv)
        return time.monotonic() - began


def run_layered(layers: int, width: int, fan_in: bool, argv: list[str]) -> tuple[float, float]:
    """(makespan, wall): first task start to last task end, and the whole flow call."""
    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        began = time.monotonic()
        spans = layered(layers, width, fan_in, argv)
        wall = time.monotonic() - began
    return max(end for _, end in spans) - min(start for start, _ in spans), wall
