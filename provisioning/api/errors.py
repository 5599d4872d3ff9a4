"""Errors only the API raises, with the status and stable code they answer with."""

from __future__ import annotations

from provisioning.errors import ProvisioningError


class AuthenticationError(ProvisioningError):
    """No or a wrong bearer token."""

    code = "AUTH_INVALID"
    exit_code = 2
    http_status = 401


class RequestInvalid(ProvisioningError):
    """Query, path or body parameters that do not fit the route (not a workflow error)."""

    code = "REQUEST_INVALID"
    exit_code = 2
    http_status = 422


class WorkflowNotRunning(ProvisioningError):
    """Cancelling asked for a workflow whose run already finished (and no rollback asked)."""

    code = "WORKFLOW_NOT_RUNNING"
    exit_code = 1
    http_status = 409


class NoFlowRun(ProvisioningError):
    """The workflow is in the journal but was never started as a flow run."""

    code = "NO_FLOW_RUN"
    exit_code = 1
    http_status = 409

    def __init__(self, workflow_id: str) -> None:
        super().__init__(f"workflow '{workflow_id}' has no flow run yet", workflow=workflow_id)


class FlowRunNotFound(ProvisioningError):
    """The journal names a flow run this Prefect API does not know (another server's run)."""

    code = "FLOW_RUN_NOT_FOUND"
    exit_code = 1
    http_status = 404

    def __init__(self, flow_run_id: str, workflow_id: str) -> None:
        super().__init__(
            f"Prefect does not know flow run {flow_run_id} of workflow '{workflow_id}'"
            " (was it run against another Prefect server?)",
            workflow=workflow_id,
            flow_run=flow_run_id,
        )


class CancelPending(ProvisioningError):
    """The run was told to cancel but had not stopped yet when the wait ended."""

    code = "CANCEL_PENDING"
    exit_code = 1
    http_status = 409


class DeploymentMissing(ProvisioningError):
    """The Prefect server knows no such deployment: no runner ever registered it."""

    code = "DEPLOYMENT_NOT_FOUND"
    exit_code = 1
    http_status = 503


class InsecureBind(ProvisioningError):
    """Refused to listen beyond loopback without a token."""

    code = "API_INSECURE_BIND"
    exit_code = 2
    http_status = 500


#: Stable codes for the HTTP errors the framework raises itself (unknown route, wrong method).
HTTP_CODES: dict[int, str] = {
    400: "BAD_REQUEST",
    401: "AUTH_INVALID",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    406: "NOT_ACCEPTABLE",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    422: "REQUEST_INVALID",
}
