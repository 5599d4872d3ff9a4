"""The OpenAPI document, completed with what FastAPI cannot infer.

* The submit routes take the body as a plain JSON object, so that it is validated exactly like a
  file (same messages, same codes); the document still shows the real workflow schema.
* The bearer scheme is declared, and ``/health`` marked as open.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from provisioning import __version__
from provisioning.spec import Workflow

SUBMIT_PATHS = ("/workflows", "/workflows/submit")
_PREFIX = "WorkflowSpec."


def workflow_schemas() -> dict[str, Any]:
    """The workflow contract's JSON schema as OpenAPI components (``WorkflowSpec`` and parts)."""
    schema = Workflow.model_json_schema(ref_template=f"#/components/schemas/{_PREFIX}{{model}}")
    parts: dict[str, Any] = schema.pop("$defs", {})
    return {"WorkflowSpec": schema, **{f"{_PREFIX}{name}": part for name, part in parts.items()}}


def build_openapi(app: FastAPI, *, secured: bool) -> dict[str, Any]:
    if app.openapi_schema:
        return app.openapi_schema
    document = get_openapi(
        title=app.title,
        version=__version__,
        description=app.description,
        routes=app.routes,
    )
    components = document.setdefault("components", {})
    components.setdefault("schemas", {}).update(workflow_schemas())
    for path in SUBMIT_PATHS:
        body = document["paths"][path]["post"]["requestBody"]
        body["content"]["application/json"]["schema"] = {
            "$ref": "#/components/schemas/WorkflowSpec"
        }
    if secured:
        components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        document["security"] = [{"bearer": []}]
        document["paths"]["/health"]["get"]["security"] = []
    app.openapi_schema = document
    return document
