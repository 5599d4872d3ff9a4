"""The one exception tree of the project.

Every error a user can cause or meet carries a stable ``code`` (shown by the CLI, returned by the
API) and a ``context`` saying where it happened (file, operation, field, provider). The CLI prints
``str(error)`` in one or two lines; nothing here ever needs a traceback to be understood.
"""

from __future__ import annotations

from typing import Any


class ProvisioningError(Exception):
    """Base of every error the project raises on purpose."""

    code: str = "PROVISIONING_ERROR"
    #: Exit status of the CLI when this error ends a command (2 = bad input, 1 = failure).
    exit_code: int = 1
    #: HTTP status the API answers with.
    http_status: int = 500

    def __init__(self, message: str, *, code: str | None = None, **context: Any) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.context: dict[str, Any] = {k: v for k, v in context.items() if v is not None}

    def where(self) -> str:
        """Location prefix such as ``web.toml: operation 'db': field 'params.image'``."""
        parts: list[str] = []
        if "file" in self.context:
            parts.append(str(self.context["file"]))
        if "operation" in self.context:
            parts.append(f"operation '{self.context['operation']}'")
        if "provider" in self.context:
            parts.append(f"provider '{self.context['provider']}'")
        if "field" in self.context:
            parts.append(f"field '{self.context['field']}'")
        return ": ".join(parts)

    def __str__(self) -> str:
        where = self.where()
        return f"{where}: {self.message}" if where else self.message

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep code and context when Prefect pickles the exception into a task state.
        return (_rebuild, (type(self), self.message, self.code, self.context))

    def to_dict(self) -> dict[str, Any]:
        """The envelope's ``error`` object."""
        return {"code": self.code, "message": str(self), "details": dict(self.context)}


def _rebuild(
    cls: type[ProvisioningError], message: str, code: str, context: dict[str, Any]
) -> ProvisioningError:
    error = cls.__new__(cls)
    ProvisioningError.__init__(error, message, code=code, **context)
    return error


class ConfigurationError(ProvisioningError):
    """A configuration file, override or interpolation is wrong."""

    code = "CONFIGURATION_INVALID"
    exit_code = 2
    http_status = 422


class WorkflowError(ProvisioningError):
    """A workflow spec is invalid (schema, dependencies, cycle) or a workflow cannot run."""

    code = "WORKFLOW_INVALID"
    exit_code = 2
    http_status = 422


class WorkflowFailed(ProvisioningError):
    """A valid workflow ran and at least one operation failed."""

    code = "WORKFLOW_FAILED"
    exit_code = 1
    http_status = 500


class WorkflowNotFound(ProvisioningError):
    code = "WORKFLOW_NOT_FOUND"
    exit_code = 2
    http_status = 404


class WorkflowLocked(ProvisioningError):
    """Another live process is running or resuming the same workflow id."""

    code = "WORKFLOW_LOCKED"
    exit_code = 1
    http_status = 409


class OperationError(ProvisioningError):
    """A local operation (file.write, config.set, command.run) failed for good."""

    code = "OPERATION_FAILED"
    exit_code = 1


class TransientOperationError(OperationError):
    """A local operation failed in a way worth retrying (e.g. a command timed out)."""

    code = "OPERATION_TRANSIENT"


class ProviderError(ProvisioningError):
    """A provider call failed. ``transient`` decides whether the engine retries it."""

    code = "PROVIDER_ERROR"
    transient: bool = False
    http_status = 502


class TransientProviderError(ProviderError):
    """Throttling, 5xx, timeouts, connection resets: retried with backoff."""

    code = "PROVIDER_TRANSIENT"
    transient = True


class PermanentProviderError(ProviderError):
    """Bad image, bad parameter, quota, auth: fails fast with the provider's message."""

    code = "PROVIDER_PERMANENT"


class ProviderUnavailable(ProviderError):
    """The provider is unknown, not installed, or not configured."""

    code = "PROVIDER_UNAVAILABLE"
    exit_code = 2
    http_status = 503


class ResourceError(ProvisioningError):
    """A resource is not where or in the state the journal says."""

    code = "RESOURCE_ERROR"


class ResourceNotFound(ResourceError):
    code = "RESOURCE_NOT_FOUND"
    http_status = 404


def is_transient(error: BaseException) -> bool:
    """Whether the engine should retry after ``error``."""
    return isinstance(error, (TransientProviderError, TransientOperationError))
