"""A standing ``prefect server start`` on loopback, for the embedded mode, the demo and tests.

Against a standing server a CLI process starts a flow in about 3 s instead of about 10 s with a
temporary one (DESIGN.md), and deployments need one.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from provisioning.errors import ProvisioningError
from provisioning.sandbox.base import Sandbox


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class PrefectServer(Sandbox):
    """``prefect server start`` as a child process with its own ``PREFECT_HOME``."""

    def __init__(self, home: Path, port: int | None = None, log: Path | None = None) -> None:
        self.home = home
        self.port = port or free_port()
        self.log = log or home / "server.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def environment(self) -> dict[str, str]:
        return {
            **os.environ,
            "PREFECT_HOME": str(self.home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_API_URL": "",
            "PREFECT_UI_ENABLED": os.environ.get("PREFECT_UI_ENABLED", "true"),
            "PREFECT_LOGGING_LEVEL": "WARNING",
        }

    def start(self, timeout: float = 90.0) -> str:
        self.home.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable, "-m", "prefect", "server", "start",
            "--host", "127.0.0.1", "--port", str(self.port),
        ]  # fmt: skip
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                command,
                env=self.environment(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ProvisioningError(
                    f"prefect server exited with {self.process.returncode}; see {self.log}",
                    code="PREFECT_SERVER_FAILED",
                )
            try:
                if httpx.get(f"{self.api_url}/health", timeout=1).status_code == 200:
                    return self.api_url
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        self.stop()
        raise ProvisioningError(
            f"prefect server did not answer within {timeout:g}s; see {self.log}",
            code="PREFECT_SERVER_FAILED",
        )

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
