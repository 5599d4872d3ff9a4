"""``provision up``: the embedded default, a whole installation in one command.

It starts, in this order, and stops in reverse on Ctrl-C or SIGTERM:

1. a Prefect server on SQLite in the project's state directory (``<state>/prefect-server``), its
   address recorded in ``<state>/server.json`` so every ``provision`` command of the project uses it
   (:func:`provisioning.runtime.prepare_prefect`);
2. the runner serving every deployment (``python -m deployments.serve``), which executes runs
   started from the API, the UI or a schedule;
3. the REST API, in this process, under uvicorn.

Nothing here imports Prefect at module level: Prefect reads ``PREFECT_API_URL`` when imported,
and this process only learns the address once its server is up.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import httpx

from deployments import DEPLOYMENTS
from provisioning.api.auth import check_bind, configured_token
from provisioning.config import Config
from provisioning.errors import ProvisioningError
from provisioning.runtime import SERVER_RECORD, healthy, recorded_server
from provisioning.sandbox.prefect_server import PrefectServer

if TYPE_CHECKING:
    from fastapi import FastAPI

logger = logging.getLogger(__name__)

Report = Callable[[str], None]


class EmbeddedError(ProvisioningError):
    code = "EMBEDDED_FAILED"
    exit_code = 1


def stop_process(process: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """SIGTERM to the child's process group (the runner's flow runs too), SIGKILL if it hangs."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def start_runner(config: Config, api_url: str, log: Path) -> subprocess.Popen[bytes]:
    """``python -m deployments.serve`` against ``api_url``, in the project directory."""
    env = {
        **os.environ,
        "PREFECT_API_URL": api_url,
        "PREFECT_HOME": os.environ.get("PREFECT_HOME", str(config.state_dir / "prefect")),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": os.environ.get("PREFECT_LOGGING_LEVEL", "INFO"),
        "PROVISIONING_BASE": str(config.get("paths.base")),
    }
    with log.open("ab") as output:
        return subprocess.Popen(
            [sys.executable, "-m", "deployments.serve"],
            cwd=str(config.get("paths.base")),
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_for_deployments(
    api_url: str, runner: subprocess.Popen[bytes], log: Path, timeout: float = 90.0
) -> None:
    """Block until the runner has registered every deployment with the server."""
    deadline = time.monotonic() + timeout
    missing = [spec.full_name for spec in DEPLOYMENTS]
    while missing:
        if runner.poll() is not None:
            raise EmbeddedError(f"the runner exited with {runner.returncode}; see {log}")
        if time.monotonic() > deadline:
            raise EmbeddedError(f"the runner did not register {missing[0]} in time; see {log}")
        try:
            answer = httpx.get(f"{api_url}/deployments/name/{missing[0]}", timeout=2)
        except httpx.HTTPError:
            answer = None
        if answer is not None and answer.status_code == 200:
            missing.pop(0)
        else:
            time.sleep(0.25)


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so the children started so far are always stopped."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def up(
    config: Config,
    *,
    host: str | None = None,
    port: int | None = None,
    prefect_port: int | None = None,
    report: Report = logger.info,
) -> None:
    """Run Prefect server, runner and API until interrupted; ``report`` gets the addresses."""
    host = host or str(config.get("api.host") or "127.0.0.1")
    port = port if port is not None else int(config.get("api.port") or 9090)
    check_bind(host, configured_token(config))
    state_dir = config.state_dir
    state_dir.mkdir(parents=True, exist_ok=True)
    record = state_dir / SERVER_RECORD
    running = recorded_server(state_dir)
    if running and healthy(running):
        raise EmbeddedError(
            f"a Prefect server recorded in {record} already answers at {running}:"
            " stop that `provision up` first"
        )
    server = PrefectServer(state_dir / "prefect-server", port=prefect_port)
    runner: subprocess.Popen[bytes] | None = None
    try:
        with _terminate_as_interrupt():
            report("starting the Prefect server ...")
            api_url = server.start()
            assert server.process is not None
            record.write_text(
                json.dumps({"api_url": api_url, "ui_url": server.ui_url, "pid": server.process.pid})
            )
            os.environ["PREFECT_API_URL"] = api_url
            os.environ.setdefault("PREFECT_HOME", str(state_dir / "prefect"))
            report("starting the runner serving the deployments ...")
            runner_log = state_dir / "runner.log"
            runner = start_runner(config, api_url, runner_log)
            wait_for_deployments(api_url, runner, runner_log)
            from provisioning.api.app import create_app  # imports Prefect: after the URL is set

            app = create_app(config)
            report(f"Prefect UI   {server.ui_url}")
            report(f"Prefect API  {api_url}")
            report(f"REST API     http://{host}:{port}  (Ctrl-C stops everything)")
            # uvicorn shuts down on SIGINT/SIGTERM, then re-raises the signal into the handler
            # it found: ours, which turns it into KeyboardInterrupt, so the cleanup below runs.
            _serve_api(app, host, port)
    except KeyboardInterrupt:
        report("interrupted")
    finally:
        report("stopping ...")
        if runner is not None:
            stop_process(runner)
        server.stop()
        record.unlink(missing_ok=True)


def _serve_api(app: FastAPI, host: str, port: int) -> None:
    import uvicorn

    uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="info")).run()


if __name__ == "__main__":
    from provisioning.config import load_config

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        up(load_config())
    except ProvisioningError as error:
        sys.stderr.write(f"error {error.code}: {error}\n")
        sys.exit(error.exit_code)
