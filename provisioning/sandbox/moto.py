"""moto's EC2 served over real HTTP from a thread of this process, with fault injection.

Tests and the demo talk to it through boto3 exactly as they would talk to EC2, so the driver's
error translation, retries and idempotency are exercised on the wire, not against mocks. Faults can
be injected in-process (:meth:`MotoSandbox.inject`) or over HTTP (``POST /_sandbox/faults``) when
the sandbox runs in another process (``python -m provisioning.sandbox.moto --port N``).

Two behaviours differ from plain moto on purpose, to be closer to real EC2:

* ``RunInstances`` with a malformed AMI id (not ``ami-`` + 8 or 17 hex digits) answers
  ``InvalidAMIID.Malformed`` like EC2 does; moto accepts any id when AMI validation is off, which
  would leave no way to provoke a permanent error with a bad image.
* A ``capacity`` fault waits for the next ``RunInstances``: EC2 only reports
  ``InsufficientInstanceCapacity`` when launching.

moto keeps its backends in module globals, so every sandbox of one process shares one state: run
one per process.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import re
import signal
import threading
import uuid
from collections import deque
from collections.abc import Iterable, Sequence
from types import FrameType
from typing import Any, Literal
from urllib.parse import parse_qs
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

import boto3
import httpx
from moto import settings as moto_settings
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from werkzeug.serving import BaseWSGIServer, make_server

from provisioning.sandbox.base import Sandbox

logger = logging.getLogger(__name__)

FaultKind = Literal["throttle", "unavailable", "capacity"]

CONTROL_PREFIX = "/_sandbox"
MOTO_API_PREFIX = "/moto-api"
_AMI_ID = re.compile(r"ami-(?:[0-9a-f]{8}|[0-9a-f]{17})")
# Dummy key for the sandbox's own warm-up call; moto accepts any.
_WARMUP_KEY = "sandbox"


class FaultRequest(BaseModel):
    """Body of ``POST /_sandbox/faults``."""

    model_config = ConfigDict(extra="forbid")

    count: int = Field(ge=0, le=100_000)
    kind: FaultKind


class SandboxStats(BaseModel):
    """Answer of every ``/_sandbox`` endpoint."""

    requests_served: int
    faults_pending: int


def _error_body(code: str, message: str) -> bytes:
    """The XML document EC2 answers errors with (query protocol)."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error>"
        f"</Errors><RequestID>{uuid.uuid4()}</RequestID></Response>"
    ).encode()


def _respond(
    start_response: StartResponse, status: str, body: bytes, content_type: str
) -> list[bytes]:
    start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body)))])
    return [body]


def _ec2_error(start_response: StartResponse, status: str, code: str, message: str) -> list[bytes]:
    return _respond(start_response, status, _error_body(code, message), "text/xml;charset=UTF-8")


def _fault_response(
    kind: FaultKind, params: dict[str, str], start_response: StartResponse
) -> list[bytes]:
    if kind == "throttle":
        return _ec2_error(
            start_response,
            "503 Service Unavailable",
            "RequestLimitExceeded",
            "Request limit exceeded.",
        )
    if kind == "unavailable":
        return _respond(start_response, "503 Service Unavailable", b"", "text/plain")
    instance_type = params.get("InstanceType", "m1.small")
    return _ec2_error(
        start_response,
        "500 Internal Server Error",
        "InsufficientInstanceCapacity",
        f"We currently do not have sufficient {instance_type} capacity in the Availability Zone "
        "you requested. Our system will be working on provisioning additional capacity.",
    )


def _read_body(environ: WSGIEnvironment) -> bytes:
    """Read the request body and put it back so the wrapped app can read it again."""
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    body: bytes = environ["wsgi.input"].read(length) if length > 0 else b""
    environ["wsgi.input"] = io.BytesIO(body)
    return body


def _query_params(environ: WSGIEnvironment) -> dict[str, str]:
    """EC2 query-protocol parameters (``Action``, ``ImageId``...) from the form body."""
    if not str(environ.get("CONTENT_TYPE", "")).startswith("application/x-www-form-urlencoded"):
        return {}
    body = _read_body(environ).decode("utf-8", errors="replace")
    return {name: values[0] for name, values in parse_qs(body).items()}


class _SandboxApp:
    """WSGI middleware in front of moto: counts requests, injects faults, serves ``/_sandbox``."""

    def __init__(self, moto_app: WSGIApplication, sandbox: MotoSandbox) -> None:
        self._moto_app = moto_app
        self._sandbox = sandbox
        self._lock = threading.Lock()
        self._faults: deque[FaultKind] = deque()
        self.requests_served = 0

    def stats(self) -> SandboxStats:
        with self._lock:
            return SandboxStats(
                requests_served=self.requests_served, faults_pending=len(self._faults)
            )

    def inject(self, count: int, kind: FaultKind) -> None:
        with self._lock:
            self._faults.extend([kind] * count)

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()
            self.requests_served = 0

    def _take_fault(self, action: str | None) -> FaultKind | None:
        with self._lock:
            self.requests_served += 1
            if not self._faults:
                return None
            if self._faults[0] == "capacity" and action != "RunInstances":
                return None
            return self._faults.popleft()

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = str(environ.get("PATH_INFO", ""))
        if path.startswith(CONTROL_PREFIX):
            return self._control(path, environ, start_response)
        if path.startswith(MOTO_API_PREFIX):
            return self._moto_app(environ, start_response)
        params = _query_params(environ)
        action = params.get("Action")
        fault = self._take_fault(action)
        if fault is not None:
            logger.debug("injecting %s fault into %s", fault, action)
            return _fault_response(fault, params, start_response)
        image = params.get("ImageId")
        if action == "RunInstances" and image is not None and not _AMI_ID.fullmatch(image):
            return _ec2_error(
                start_response,
                "400 Bad Request",
                "InvalidAMIID.Malformed",
                f'Invalid id: "{image}" (expecting "ami-...")',
            )
        return self._moto_app(environ, start_response)

    def _control(
        self, path: str, environ: WSGIEnvironment, start_response: StartResponse
    ) -> list[bytes]:
        method = str(environ.get("REQUEST_METHOD", "GET"))
        route = path[len(CONTROL_PREFIX) :]
        if route == "/faults" and method == "POST":
            try:
                fault = FaultRequest.model_validate_json(_read_body(environ))
            except ValidationError as error:
                message = json.dumps({"error": str(error)}).encode()
                return _respond(
                    start_response, "422 Unprocessable Entity", message, "application/json"
                )
            self.inject(fault.count, fault.kind)
        elif route == "/reset" and method == "POST":
            self._sandbox.reset()
        elif route != "/stats" or method != "GET":
            return _respond(
                start_response, "404 Not Found", b'{"error": "not found"}', "application/json"
            )
        body = self.stats().model_dump_json().encode()
        return _respond(start_response, "200 OK", body, "application/json")


class _QuietRequestHandler(MotoRequestHandler):
    """moto's handler, logging each request at debug level instead of printing it."""

    def log(self, type: str, message: str, *args: Any) -> None:
        logger.debug("%s - " + message, self.address_string(), *args)


class MotoSandbox(Sandbox):
    """moto's EC2 on ``http://HOST:PORT`` (a free port by default), served by a daemon thread."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, region: str = "us-east-1") -> None:
        self._host = host
        self._port = port
        self._region = region
        self._app = _SandboxApp(DomainDispatcherApplication(create_backend_app), self)
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._endpoint_url: str | None = None
        self._warm_up_client: Any = None

    @property
    def endpoint_url(self) -> str:
        if self._endpoint_url is None:
            raise RuntimeError("the moto sandbox is not started")
        return self._endpoint_url

    @property
    def requests_served(self) -> int:
        """EC2 API requests answered (faults included) since start or the last reset."""
        return self._app.stats().requests_served

    @property
    def faults_pending(self) -> int:
        return self._app.stats().faults_pending

    def start(self) -> str:
        """Serve and warm up; returns the endpoint URL for boto3's ``endpoint_url``."""
        if self._server is not None:
            return self.endpoint_url
        # moto reads MOTO_ENABLE_AMI_VALIDATION once, at import, and takes "false" for true;
        # the sandbox promises that any well-formed AMI id launches.
        moto_settings.ENABLE_AMI_VALIDATION = False
        self._server = make_server(
            self._host, self._port, self._app, threaded=True, request_handler=_QuietRequestHandler
        )
        port = self._server.server_address[1]
        self._endpoint_url = f"http://{self._host}:{port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, name=f"moto-sandbox-{port}", daemon=True
        )
        self._thread.start()
        self._warm_up()
        logger.info("moto sandbox serving on %s", self._endpoint_url)
        return self._endpoint_url

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join()
        self._server = None
        self._thread = None
        self._warm_up_client = None
        self._endpoint_url = None

    def reset(self) -> None:
        """Forget every resource, pending fault and the request count; warm up again."""
        self._app.clear()
        httpx.post(f"{self.endpoint_url}{MOTO_API_PREFIX}/reset", timeout=30).raise_for_status()
        self._warm_up()

    def inject(self, count: int, kind: FaultKind) -> None:
        """Make the next ``count`` EC2 requests fail as EC2 does under throttling, an outage, or
        a capacity shortage (``capacity`` waits for the next ``RunInstances``)."""
        fault = FaultRequest(count=count, kind=kind)
        self._app.inject(fault.count, fault.kind)

    def _warm_up(self) -> None:
        # The first call after a (re)start builds moto's EC2 backend (about 1.5 s here); pay it
        # now so tests time what they mean to, then forget the call in the count.
        if self._warm_up_client is None:
            self._warm_up_client = boto3.client(
                "ec2",
                endpoint_url=self.endpoint_url,
                region_name=self._region,
                aws_access_key_id=_WARMUP_KEY,
                aws_secret_access_key=_WARMUP_KEY,
            )
        self._warm_up_client.describe_instances()
        self._app.clear()


def main(argv: Sequence[str] | None = None) -> None:
    """Serve until SIGTERM or Ctrl-C; the first line on stdout is the endpoint URL."""
    parser = argparse.ArgumentParser(prog="python -m provisioning.sandbox.moto")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--region", default="us-east-1", help="region to warm up")
    args = parser.parse_args(argv)
    stopping = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    with MotoSandbox(host=args.host, port=args.port, region=args.region) as sandbox:
        print(sandbox.endpoint_url, flush=True)
        stopping.wait()


if __name__ == "__main__":
    main()
