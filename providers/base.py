"""The one provider interface, its data models, and the error classes drivers raise.

A driver is a plain subclass of :class:`Provider` that translates these calls to its API and
the API's answers and errors back to :class:`Server` and the classes below. Drivers never import
Prefect: retries, ordering and rate limits belong to the engine, which tells transient errors from
permanent ones by class alone.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from enum import StrEnum
from typing import Any, ClassVar

from pydantic import BaseModel, Field

from provisioning.errors import (
    PermanentProviderError,
    ProviderError,
    ProviderUnavailable,
    ResourceNotFound,
    TransientProviderError,
)
from provisioning.spec import ServerSpec

__all__ = [
    "KEY_LABEL",
    "OPERATION_LABEL",
    "WORKFLOW_LABEL",
    "PermanentProviderError",
    "Provider",
    "ProviderError",
    "ProviderStatus",
    "ProviderUnavailable",
    "ResourceNotFound",
    "Server",
    "ServerSpec",
    "ServerState",
    "TransientProviderError",
]

logger = logging.getLogger(__name__)

#: Label (tag) names that mark a server as ours; drivers may spell them as their API requires.
KEY_LABEL = "provisioning-key"
WORKFLOW_LABEL = "provisioning-workflow"
OPERATION_LABEL = "provisioning-operation"


class ServerState(StrEnum):
    """Normalised lifecycle state; drivers map their own states onto these five."""

    pending = "pending"
    running = "running"
    stopped = "stopped"
    deleted = "deleted"
    error = "error"


class Server(BaseModel):
    """A server as every provider reports it, plus the provider's raw record."""

    id: str
    provider: str
    name: str
    state: ServerState
    key: str | None = None  # idempotency key ``{workflow_id}/{operation_id}`` if we created it
    addresses: list[str] = Field(default_factory=list)
    labels: dict[str, str] = Field(default_factory=dict)
    raw: dict[str, Any] = Field(default_factory=dict, repr=False)


class ProviderStatus(BaseModel):
    """Answer of :meth:`Provider.check`."""

    provider: str
    reachable: bool
    message: str = ""


class Provider(ABC):
    """Interface every driver implements.

    ``config`` is the provider's ``[providers.NAME]`` table from the layered configuration.
    ``key`` is the idempotency key ``{workflow_id}/{operation_id}``; a driver stores it on the
    server (tag, label) so that :meth:`find` can look it up after a crash.
    """

    name: ClassVar[str]

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        self.config: dict[str, Any] = dict(config or {})

    @abstractmethod
    def list_servers(self) -> list[Server]:
        """Servers visible to these credentials (not deleted)."""

    @abstractmethod
    def create_server(self, spec: ServerSpec, key: str) -> Server:
        """Create a server carrying ``key``, or return the live one that already carries it;
        return as soon as the API accepted it."""

    def _existing_or_new(self, spec: ServerSpec, key: str) -> Server:
        """``create_server`` for a driver whose ``create_new_server`` is a plain create: the live
        server carrying ``key`` if there is one, else a new one."""
        existing = self.find(key)
        if existing is not None:
            logger.info("%s: server %s already carries key %s", self.name, existing.id, key)
            return existing
        return self.create_new_server(spec, key)

    def create_new_server(self, spec: ServerSpec, key: str) -> Server:
        """:meth:`create_server` for a key the caller knows no server can carry yet.

        The engine calls this when its journal shows the key never reached the provider (the
        operation's first attempt, no resource recorded under the key). Drivers whose
        ``create_server`` looks the key up first override it to skip that lookup: one API call
        fewer per server. The default is the idempotent path, which is always correct.
        """
        return self.create_server(spec, key)

    @abstractmethod
    def get_server(self, server_id: str) -> Server:
        """The server with this id; :class:`ResourceNotFound` if it does not exist."""

    @abstractmethod
    def delete_server(self, server_id: str) -> None:
        """Delete the server (stopping it first if the API requires); idempotent."""

    def find(self, key: str) -> Server | None:
        """The live server carrying ``key``, if any. Drivers may override with a filtered query."""
        for server in self.list_servers():
            if server.key == key and server.state != ServerState.deleted:
                return server
        return None

    def find_by_name(self, name: str) -> list[Server]:
        """Live servers named ``name``. Drivers whose API filters by name should override."""
        return [
            server
            for server in self.list_servers()
            if server.name == name and server.state != ServerState.deleted
        ]

    def wait_for(self, server_id: str, state: ServerState, timeout: float | None = None) -> Server:
        """Poll until the server reaches ``state``; a timeout is a transient error."""
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        delay = float(self.config.get("poll_interval", 0.2))
        while True:
            try:
                server = self.get_server(server_id)
            except ResourceNotFound:
                if state == ServerState.deleted:
                    return Server(id=server_id, provider=self.name, name="", state=state)
                raise
            if server.state == state:
                return server
            if server.state == ServerState.error:
                raise PermanentProviderError(
                    f"server {server_id} entered the error state while waiting for {state.value}",
                    provider=self.name,
                )
            if time.monotonic() >= deadline:
                raise TransientProviderError(
                    f"server {server_id} still {server.state.value} "
                    f"after waiting for {state.value}",
                    provider=self.name,
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 2.0)

    def warm_up(self) -> None:
        """Pay the driver's one-time set-up (building its API client) before the first call.

        Runs on a background thread while Prefect creates the flow run; the default has nothing
        to prepare."""
        return None

    @abstractmethod
    def check(self) -> ProviderStatus:
        """Whether the endpoint is reachable and the credentials are accepted."""

    @property
    def timeout(self) -> float:
        return float(self.config.get("timeout", 300))
