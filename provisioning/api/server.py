"""``serve(config, host, port)``: the API under uvicorn, behind ``provision api``."""

from __future__ import annotations

import uvicorn

from provisioning.api.auth import check_bind, configured_token
from provisioning.config import Config
from provisioning.runtime import prepare_prefect


def serve(config: Config, host: str | None = None, port: int | None = None) -> None:
    """Serve until Ctrl-C / SIGTERM.

    Refuses a non-loopback ``host`` without a token (:class:`InsecureBind`) and needs a standing
    Prefect server (``PREFECT_API_URL``, ``[prefect] api_url`` or the one ``provision up``
    recorded): runs are created there for a runner to execute.
    """
    host = host or str(config.get("api.host") or "127.0.0.1")
    port = port if port is not None else int(config.get("api.port") or 9090)
    check_bind(host, configured_token(config))
    prepare_prefect(config, require_standing=True)
    from provisioning.api.app import create_app  # imports Prefect: only after the line above

    uvicorn.run(
        create_app(config),
        host=host,
        port=port,
        log_level="info",
        access_log=bool(config.get("api.access_log", False)),
    )
