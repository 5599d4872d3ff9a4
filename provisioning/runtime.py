"""Which Prefect API a process talks to, decided before Prefect is imported.

A temporary Prefect server costs about 10 s per process here, a standing one about 2.5 s, so a
standing server is used whenever one answers: ``PREFECT_API_URL``, then ``[prefect] api_url``,
then the one ``provision up`` recorded in the state directory. Otherwise Prefect starts its
temporary server on a project-local ``PREFECT_HOME`` with settings that make it start reliably.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx

from provisioning.config import Config
from provisioning.errors import ProvisioningError

SERVER_RECORD = "server.json"


class PrefectUnreachable(ProvisioningError):
    code = "PREFECT_UNREACHABLE"
    exit_code = 1
    http_status = 503


def healthy(api_url: str, timeout: float = 2.0) -> bool:
    try:
        return httpx.get(f"{api_url.rstrip('/')}/health", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def recorded_server(state_dir: Path) -> str | None:
    """The API URL ``provision up`` wrote down, if any."""
    try:
        record = json.loads((state_dir / SERVER_RECORD).read_text())
    except (OSError, ValueError):
        return None
    url = record.get("api_url") if isinstance(record, dict) else None
    return str(url) if url else None


def prepare_prefect(config: Config, *, require_standing: bool = False) -> str | None:
    """Set Prefect's environment for this process; the standing API URL, or None (temporary)."""
    state_dir = config.state_dir
    home = Path(os.environ.setdefault("PREFECT_HOME", str(state_dir / "prefect")))
    home.mkdir(parents=True, exist_ok=True)  # Prefect creates only the last level itself
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    explicit = os.environ.get("PREFECT_API_URL") or str(config.get("prefect.api_url") or "")
    if explicit:
        if not healthy(explicit):
            raise PrefectUnreachable(f"the Prefect API at {explicit} does not answer")
        os.environ["PREFECT_API_URL"] = explicit
        return explicit
    recorded = recorded_server(state_dir)
    if recorded and healthy(recorded):
        os.environ["PREFECT_API_URL"] = recorded
        return recorded
    if require_standing:
        raise PrefectUnreachable(
            "no Prefect server is reachable: start one with `provision up` or set PREFECT_API_URL"
        )
    return None
