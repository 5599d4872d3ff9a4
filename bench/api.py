"""Benchmark of the REST API: status polling under a steady 200 req/s, and submit latency.

    python bench/api.py                      # self-contained: Prefect server, runner, API
    python bench/api.py --url http://127.0.0.1:9090 --token T --workflow-id wf-local

Self-contained mode starts a Prefect server, the runner serving the deployments and the API
(``python -m provisioning.api``, i.e. ``provision api``) on loopback in a scratch project, runs the
example local workflow once, then:

* status: ``GET /workflows/{id}/status`` at a fixed arrival rate (open loop: requests are sent on
  schedule whether or not earlier ones returned, so a slow server shows up as latency, not as a
  politely lower rate) for ``--duration`` seconds;
* submit: ``POST /workflows`` of ``--submits`` new workflows one after another (each creates a
  flow run), then the same ids again (idempotent answers).

Prints a table. Target: status p99 < 50 ms at 200 req/s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from provisioning.embedded import stop_process, wait_for_deployments  # noqa: E402
from provisioning.sandbox.prefect_server import PrefectServer, free_port  # noqa: E402

TOKEN = "bench-token"
LOCAL_WORKFLOW = ROOT / "examples" / "workflows" / "local.toml"


@dataclass
class Sample:
    name: str
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    elapsed: float = 0.0

    def row(self) -> list[str]:
        ordered = sorted(self.latencies)
        if not ordered:
            return [self.name, "0", str(self.errors), "-", "-", "-", "-"]

        def pct(p: float) -> float:
            return ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000

        return [
            self.name,
            str(len(ordered)),
            str(self.errors),
            f"{len(ordered) / self.elapsed:.0f}" if self.elapsed else "-",
            f"{statistics.median(ordered) * 1000:.1f}",
            f"{pct(0.99):.1f}",
            f"{ordered[-1] * 1000:.1f}",
        ]


def start(command: list[str], env: dict[str, str], log: Path, cwd: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as output:
        return subprocess.Popen(
            command,
            env=env,
            cwd=cwd,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_healthy(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"the API at {url} did not become healthy")


def local_spec(workflow_id: str) -> dict[str, Any]:
    spec: dict[str, Any] = tomllib.loads(LOCAL_WORKFLOW.read_text())
    spec["workflow_id"] = workflow_id
    return spec


def run_one(client: httpx.Client, workflow_id: str, timeout: float = 120) -> None:
    response = client.post("/workflows", json=local_spec(workflow_id))
    response.raise_for_status()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get(f"/workflows/{workflow_id}").json()["data"]["status"]
        if status not in ("pending", "running"):
            return
        time.sleep(0.5)
    raise SystemExit(f"{workflow_id} did not finish in {timeout:g}s")


def status_load(
    url: str, token: str, workflow_id: str, rate: float, duration: float, workers: int = 8
) -> Sample:
    """``rate`` requests per second from ``workers`` threads, each on a fixed schedule.

    Threads with their own keep-alive connection: a single asyncio client falls behind here before
    the server does. A request sent late (the previous one of its thread was slow) counts from its
    scheduled time, so a slow server shows up as latency, not only as a lower rate.
    """
    sample = Sample(f"GET status @ {rate:g}/s")
    lock = threading.Lock()
    headers = {"Authorization": f"Bearer {token}"}
    path = f"/workflows/{workflow_id}/status"
    start_at = time.perf_counter() + 0.5
    per_worker = int(rate * duration) // workers
    interval = workers / rate

    def worker(offset: float) -> None:
        with httpx.Client(base_url=url, headers=headers, timeout=10) as client:
            for _ in range(5):  # warm up the connection
                client.get(path)
            for index in range(per_worker):
                scheduled = start_at + offset + index * interval
                delay = scheduled - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                try:
                    ok = client.get(path).status_code == 200
                except httpx.HTTPError:
                    ok = False
                latency = time.perf_counter() - scheduled
                with lock:
                    if ok:
                        sample.latencies.append(latency)
                    else:
                        sample.errors += 1

    threads = [
        threading.Thread(target=worker, args=(index / rate,), daemon=True)
        for index in range(workers)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    sample.elapsed = time.perf_counter() - start_at
    return sample


def submit_latency(client: httpx.Client, count: int) -> tuple[Sample, Sample]:
    new, again = Sample("POST /workflows (new run)"), Sample("POST /workflows (resubmit)")
    ids = [f"wf-bench-{os.getpid()}-{i}" for i in range(count)]
    for sample, expected in ((new, 202), (again, 200)):
        began_all = time.perf_counter()
        for workflow_id in ids:
            began = time.perf_counter()
            response = client.post("/workflows", json=local_spec(workflow_id))
            if response.status_code == expected:
                sample.latencies.append(time.perf_counter() - began)
            else:
                sample.errors += 1
        sample.elapsed = time.perf_counter() - began_all
    return new, again


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--url", help="an API already running (else one is started)")
    parser.add_argument("--token", default=TOKEN)
    parser.add_argument("--workflow-id", help="with --url: the workflow whose status is polled")
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--submits", type=int, default=20)
    args = parser.parse_args()

    with ExitStack() as stack:
        url = args.url
        workflow_id = args.workflow_id
        if url is None:
            scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-api-")))
            server = PrefectServer(scratch / "prefect-server")
            os.environ["PREFECT_UI_ENABLED"] = "false"
            server.start()
            stack.callback(server.stop)
            project = scratch / "project"
            project.mkdir()
            env = {
                **os.environ,
                "PROVISIONING_BASE": str(project),
                "PREFECT_API_URL": server.api_url,
                "PREFECT_HOME": str(scratch / "prefect-home"),
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "PREFECT_LOGGING_LEVEL": "WARNING",
                "PROVISIONING_API_TOKEN": args.token,
            }
            runner = start(
                [sys.executable, "-m", "deployments.serve", "--poll", "1"],
                env,
                scratch / "runner.log",
                project,
            )
            stack.callback(stop_process, runner)
            wait_for_deployments(server.api_url, runner, scratch / "runner.log")
            port = free_port()
            api = start(
                [sys.executable, "-m", "provisioning.api", "--port", str(port)],
                env,
                scratch / "api.log",
                project,
            )
            stack.callback(stop_process, api)
            url = f"http://127.0.0.1:{port}"
            wait_healthy(url)
        headers = {"Authorization": f"Bearer {args.token}"}
        client = stack.enter_context(httpx.Client(base_url=url, headers=headers, timeout=60))
        if workflow_id is None:
            workflow_id = f"wf-bench-status-{os.getpid()}"
            run_one(client, workflow_id)
        status = status_load(url, args.token, workflow_id, args.rate, args.duration)
        new, again = submit_latency(client, args.submits)

    table = Table(title=f"provisioning API on {url.split('//')[-1]} (loopback)")
    for column in ("requests", "n", "errors", "req/s", "p50 ms", "p99 ms", "max ms"):
        table.add_column(column, justify="left" if column == "requests" else "right")
    for sample in (status, new, again):
        table.add_row(*sample.row())
    Console().print(table)


if __name__ == "__main__":
    main()
