"""The REST API: the seed's envelope over the journal, with runs executed through Prefect.

``create_app(config)`` builds the FastAPI application; ``serve(config, host, port)`` runs it
with uvicorn (``provision api``). Submissions become flow runs of the ``run-workflow``
deployment, which a runner (``python -m deployments.serve``, or ``provision up``) executes.

Both are imported on first use: Prefect reads ``PREFECT_API_URL`` once, when it is imported, so
``serve`` must settle which Prefect API to use before anything imports the app.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from provisioning.api.app import create_app
    from provisioning.api.server import serve

__all__ = ["create_app", "serve"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from provisioning.api.app import create_app

        return create_app
    if name == "serve":
        from provisioning.api.server import serve

        return serve
    raise AttributeError(f"module 'provisioning.api' has no attribute {name!r}")
