"""Engine benchmark: makespan of a layered DAG, per-operation overhead, CLI start-up latency.

Run from the repository root: ``.venv/bin/python -m bench.engine`` (about three minutes here).

1. Makespan. 200 ``command.run`` operations running ``sleep 0.2``, 10 layers of 20, parallelism
   20, measured from the first operation's start to the last one's end (the operations' own
   timestamps), next to the critical-path bound of 10 x 0.2 s. Two dependency shapes: *fan-in*,
   every operation waits for all 20 of the previous layer (a barrier per layer: the slowest
   operation and every scheduling delay of a layer land on the critical path), and *chains*, each
   operation waits for the one above it (20 independent chains of 10). The same DAGs as plain
   Prefect tasks calling ``subprocess.run`` show what Prefect and process spawning cost alone.
2. Overhead per operation. 200 independent operations at parallelism 20, wall time / 200:
   ``file.write`` into a temporary directory and ``command.run`` of ``true``, next to plain Prefect
   tasks that do nothing and ones that run ``true``, all in one flow with the same
   ``ThreadPoolTaskRunner(max_workers=20)``.
3. Start-up. ``provision run`` of a one-operation workflow as a subprocess, from spawning it to
   its operation starting, with Prefect's temporary server (a fresh and a used ``PREFECT_HOME``)
   and with the standing server.

Every in-process part talks to one standing Prefect server (``PREFECT_API_URL`` is set before
Prefect is imported); flows run with the heartbeat off, as ``run_workflow`` does. Each
measurement starts once the server has finished ingesting the previous run's events.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

from bench._common import (
    banner,
    child_environment,
    load_average,
    median,
    note,
    prefect_environment,
    settle,
    start_prefect_server,
    table,
)

MAKESPAN_TARGET = 1.10
OVERHEAD_TARGET_MS = 15.0


@dataclass(frozen=True)
class Settings:
    layers: int
    width: int
    sleep: float
    count: int
    repeat: int
    project: Path

    @property
    def bound(self) -> float:
        return self.layers * self.sleep


def layered_spec(settings: Settings, fan_in: bool) -> dict[str, Any]:
    operations: list[dict[str, Any]] = []
    dependencies: dict[str, list[str]] = {}
    for layer in range(settings.layers):
        for column in range(settings.width):
            operation_id = f"op-{layer}-{column}"
            operations.append(
                {
                    "id": operation_id,
                    "kind": "command.run",
                    "params": {"argv": ["sleep", f"{settings.sleep:g}"]},
                }
            )
            if layer:
                columns = range(settings.width) if fan_in else [column]
                dependencies[operation_id] = [f"op-{layer - 1}-{c}" for c in columns]
    return {
        "workflow_id": f"bench-dag-{uuid.uuid4().hex[:8]}",
        "name": "bench-dag",
        "operations": operations,
        "dependencies": dependencies,
        "configuration": {"parallelism": settings.width},
    }


def independent_spec(settings: Settings, kind: str) -> dict[str, Any]:
    run = uuid.uuid4().hex[:8]
    directory = settings.project / "files" / run
    operations: list[dict[str, Any]] = []
    for index in range(settings.count):
        if kind == "file.write":
            params: dict[str, Any] = {"path": str(directory / f"f{index}.txt"), "content": "x\n"}
        else:
            params = {"argv": ["true"]}
        operations.append({"id": f"op-{index}", "kind": kind, "params": params})
    return {
        "workflow_id": f"bench-ops-{run}",
        "name": "bench-ops",
        "operations": operations,
        "configuration": {"parallelism": settings.width},
    }


def run_layered_spec(settings: Settings, fan_in: bool) -> tuple[float, float]:
    return run_spec(layered_spec(settings, fan_in))


def run_spec(spec: dict[str, Any]) -> tuple[float, float]:
    """(makespan, wall) of one workflow run in this process."""
    from flows.run import run_workflow

    began = time.monotonic()
    result = run_workflow(spec)
    wall = time.monotonic() - began
    if not result.ok:
        raise RuntimeError(f"benchmark workflow failed: {result.error}")
    starts = [op.started_at for op in result.result.operations if op.started_at]
    ends = [op.finished_at for op in result.result.operations if op.finished_at]
    return (max(ends) - min(starts)).total_seconds(), wall


def measure(
    variants: dict[str, Callable[[], tuple[float, float]]], repeat: int, quiet: Callable[[], float]
) -> dict[str, list[tuple[float, float]]]:
    """Each variant ``repeat`` times, interleaved so that a noisy moment hits all of them."""
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    for round_ in range(repeat):
        for name, variant in variants.items():
            waited = quiet()
            sample = variant()
            samples[name].append(sample)
            note(
                f"  [{round_ + 1}/{repeat}] {name}: {sample[0]:.2f} s / {sample[1]:.2f} s "
                f"(waited {waited:.1f} s for a quiet server)"
            )
    return samples


def makespan_table(settings: Settings, quiet: Callable[[], float]) -> str:
    from bench import _plain_engine

    argv = ["sleep", f"{settings.sleep:g}"]
    variants: dict[str, Callable[[], tuple[float, float]]] = {}
    for fan_in, shape in ((True, "fan-in"), (False, "chains")):
        variants[f"provisioning|{shape}"] = partial(run_layered_spec, settings, fan_in)
        variants[f"plain Prefect tasks|{shape}"] = partial(
            _plain_engine.run_layered, settings.layers, settings.width, fan_in, argv
        )
    note(f"makespan: {settings.layers}x{settings.width} DAG of `sleep {settings.sleep:g}`")
    samples = measure(variants, settings.repeat, quiet)
    rows = []
    for name, values in samples.items():
        approach, shape = name.split("|")
        makespan = median([value[0] for value in values])
        wall = median([value[1] for value in values])
        ratio = makespan / settings.bound
        verdict = (
            "" if approach != "provisioning" else ("met" if ratio <= MAKESPAN_TARGET else "MISSED")
        )
        rows.append(
            [
                approach,
                shape,
                f"{makespan:.2f}",
                f"{wall:.2f}",
                f"{settings.bound:.2f}",
                f"{ratio:.2f}x",
                verdict,
            ]
        )
    return table(
        f"Makespan: {settings.layers * settings.width} command.run `sleep {settings.sleep:g}`, "
        f"{settings.layers} layers x {settings.width}, parallelism {settings.width} "
        f"(median of {settings.repeat}; target <= {MAKESPAN_TARGET:.2f}x bound)",
        ["approach", "dependencies", "makespan s", "flow wall s", "bound s", "ratio", "target"],
        rows,
        text_columns=2,
    )


def overhead_table(settings: Settings, quiet: Callable[[], float]) -> str:
    from bench import _plain_engine

    def plain(argv: list[str] | None) -> Callable[[], tuple[float, float]]:
        def run() -> tuple[float, float]:
            wall = _plain_engine.run_independent(settings.count, settings.width, argv)
            return wall, wall

        return run

    variants: dict[str, Callable[[], tuple[float, float]]] = {
        "plain Prefect task doing nothing": plain(None),
        "plain Prefect task running `true`": plain(["true"]),
        "provisioning file.write": lambda: run_spec(independent_spec(settings, "file.write")),
        "provisioning command.run `true`": lambda: run_spec(
            independent_spec(settings, "command.run")
        ),
    }
    note(f"overhead: {settings.count} independent operations")
    samples = measure(variants, settings.repeat, quiet)
    per_op = {
        name: 1000 * median([v[1] for v in values]) / settings.count
        for name, values in samples.items()
    }
    nothing = per_op["plain Prefect task doing nothing"]
    same_work = {
        "provisioning file.write": nothing,
        "provisioning command.run `true`": per_op["plain Prefect task running `true`"],
    }
    rows = []
    for name, values in samples.items():
        wall = median([value[1] for value in values])
        over_nothing = per_op[name] - nothing
        if name in same_work:
            over_same = per_op[name] - same_work[name]
            verdict = "met" if over_same <= OVERHEAD_TARGET_MS else "MISSED"
            extra = [f"{over_nothing:+.1f}", f"{over_same:+.1f}", verdict]
        else:
            extra = [f"{over_nothing:+.1f}", "", ""]
        rows.append([name, f"{wall:.2f}", f"{per_op[name]:.1f}", *extra])
    return table(
        f"Overhead: {settings.count} independent operations, parallelism {settings.width}, "
        f"wall / {settings.count} (median of {settings.repeat}; target <= "
        f"{OVERHEAD_TARGET_MS:g} ms/op over plain Prefect doing the same work)",
        ["approach", "wall s", "ms/op", "vs nothing", "vs same work", "target"],
        rows,
    )


def _cli_run(spec: Path, project: Path, environment: dict[str, str]) -> tuple[float, float]:
    """(seconds to the operation's start, seconds to exit) of one ``provision run``."""
    command = [sys.executable, "-m", "provisioning.cli", "run", str(spec), "--json"]
    spawned_at = time.time()
    began = time.monotonic()
    completed = subprocess.run(
        command, cwd=project, env=environment, capture_output=True, text=True, check=False
    )
    exited = time.monotonic() - began
    if completed.returncode != 0:
        raise RuntimeError(f"provision run failed ({completed.returncode}): {completed.stderr}")
    result = json.loads(completed.stdout[completed.stdout.index("{") :])
    started = datetime.fromisoformat(result["result"]["operations"][0]["started_at"])
    return started.timestamp() - spawned_at, exited


def startup_table(
    settings: Settings, api_url: str, work: Path, log_level: str, quiet: Callable[[], float]
) -> str:
    spec = settings.project / "one-op.json"
    spec.write_text(
        json.dumps(
            {
                "name": "bench-one-op",
                "operations": [{"id": "only", "kind": "command.run", "params": {"argv": ["true"]}}],
            }
        )
    )
    base = {"PROVISIONING_BASE": str(settings.project)}
    temporary_home = work / "prefect-temporary"
    temporary = child_environment(
        {**base, **prefect_environment(None, temporary_home, log_level)}, drop=["PREFECT_API_URL"]
    )
    standing = child_environment(
        {**base, **prefect_environment(api_url, work / "prefect-cli", log_level)}
    )
    rows = []
    note("start-up: `provision run` of one operation in a subprocess")
    for label, environment, times in (
        ("temporary server, fresh PREFECT_HOME", temporary, 1),
        ("temporary server, used PREFECT_HOME", temporary, 1),
        ("standing server", standing, settings.repeat),
    ):
        samples = []
        for _ in range(times):
            quiet()
            samples.append(_cli_run(spec, settings.project, environment))
            note(
                f"  {label}: first operation after {samples[-1][0]:.2f} s, "
                f"exit after {samples[-1][1]:.2f} s"
            )
        rows.append(
            [
                label if times == 1 else f"{label} (median of {times})",
                f"{median([s[0] for s in samples]):.2f}",
                f"{median([s[1] for s in samples]):.2f}",
            ]
        )
    return table(
        "Start-up: `provision run` (subprocess) of a one-operation workflow",
        ["Prefect API", "to first operation s", "to exit s"],
        rows,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.engine")
    parser.add_argument("--layers", type=int, default=10)
    parser.add_argument("--width", type=int, default=20, help="operations per layer = parallelism")
    parser.add_argument("--sleep", type=float, default=0.2)
    parser.add_argument("--count", type=int, default=200, help="operations in the overhead runs")
    parser.add_argument("--repeat", type=int, default=3, help="runs per variant (median shown)")
    parser.add_argument("--log-level", default="WARNING", help="PREFECT_LOGGING_LEVEL for all")
    parser.add_argument("--skip-startup", action="store_true", help="skip the CLI start-up part")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)

    started_load = load_average()
    work = Path(tempfile.mkdtemp(prefix="bench-engine-"))
    project = work / "project"
    project.mkdir()
    settings = Settings(args.layers, args.width, args.sleep, args.count, args.repeat, project)
    server = start_prefect_server(work)
    try:
        assert server.process is not None
        server_pid = server.process.pid
        os.environ.update(
            prefect_environment(server.api_url, work / "prefect-client", args.log_level)
        )
        os.environ["PROVISIONING_BASE"] = str(project)

        def quiet() -> float:
            return settle([server_pid, os.getpid()])

        tables = [makespan_table(settings, quiet), overhead_table(settings, quiet)]
        if not args.skip_startup:
            tables.append(startup_table(settings, server.api_url, work, args.log_level, quiet))
    finally:
        server.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(banner("bench.engine", started_load, args.log_level))
    print("\n\n".join(tables))


if __name__ == "__main__":
    main()
