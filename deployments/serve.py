"""``python -m deployments.serve``: one runner serving every deployment of the project.

The runner polls the Prefect API (``PREFECT_API_URL``) for scheduled runs of these deployments and
executes each in a subprocess, so runs started from the API, the UI or a schedule all land here.
Deployments are registered by module path, not file path: the runner's working directory (the
project directory, where relative paths of a spec resolve) need not be the source tree.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from typing import Any

from prefect import serve
from prefect.deployments.runner import RunnerDeployment
from prefect.types.entrypoint import EntrypointType

from deployments import DEPLOYMENTS, DeploymentSpec

logger = logging.getLogger(__name__)

#: Seconds between the runner's polls for scheduled runs; Prefect's default (10 s) is what a
#: submission waits at worst before it starts, too slow for an interactive API.
DEFAULT_POLL_SECONDS = 2.0


def to_deployment(spec: DeploymentSpec) -> RunnerDeployment:
    deployment = spec.load().to_deployment(
        name=spec.name,
        cron=spec.cron,
        description=spec.description,
        tags=["provisioning"],
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
    assert isinstance(deployment, RunnerDeployment)  # the sync call never returns a coroutine
    return deployment


def deployments() -> list[RunnerDeployment]:
    return [to_deployment(spec) for spec in DEPLOYMENTS]


def serve_all(poll_seconds: float = DEFAULT_POLL_SECONDS, limit: int | None = None) -> None:
    """Register every deployment and execute their runs until interrupted (Ctrl-C, SIGTERM)."""
    options: dict[str, Any] = {"query_seconds": poll_seconds}
    serve(*deployments(), limit=limit, pause_on_shutdown=False, **options)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m deployments.serve", description=__doc__)
    parser.add_argument(
        "--poll", type=float, default=DEFAULT_POLL_SECONDS, help="seconds between polls"
    )
    parser.add_argument("--limit", type=int, default=None, help="runs at once (default: no limit)")
    arguments = parser.parse_args(argv)
    serve_all(arguments.poll, arguments.limit)


if __name__ == "__main__":
    main()
