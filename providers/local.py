"""The local provider: a "server" is a Docker container, driven through the Docker SDK.

Containers carry the idempotency key as the ``provisioning-key`` label, so :meth:`find` is one
filtered list call and a resumed workflow never starts a second container for the same operation.
Images are never pulled: the engine must already hold the image (the sandbox imports its own), so a
missing image fails at once instead of waiting on a registry that may not be reachable.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import docker
import docker.errors
import requests.exceptions

from providers.base import (
    KEY_LABEL,
    OPERATION_LABEL,
    WORKFLOW_LABEL,
    PermanentProviderError,
    Provider,
    ProviderError,
    ProviderStatus,
    ResourceNotFound,
    Server,
    ServerSpec,
    ServerState,
    TransientProviderError,
)

__all__ = ["LocalProvider", "container_name", "translate_error"]

PROVIDER = "local"
OUR_LABELS = frozenset({KEY_LABEL, WORKFLOW_LABEL, OPERATION_LABEL})

STATES: dict[str, ServerState] = {
    "created": ServerState.pending,
    "restarting": ServerState.pending,
    "running": ServerState.running,
    "paused": ServerState.stopped,
    "exited": ServerState.stopped,
    "removing": ServerState.deleted,
    "dead": ServerState.error,
}

#: How long a create refused for a name clash waits for the clashing container to appear.
NAME_RACE_WAIT = 2.0

_NAME_INVALID = re.compile(r"[^a-zA-Z0-9_.-]+")
_NAME_MAX = 48


def container_name(name: str, key: str) -> str:
    """A valid, key-specific container name that still reads like the server's name."""
    base = _NAME_INVALID.sub("-", name).lstrip("_.-")[:_NAME_MAX] or "server"
    digest = hashlib.sha256(key.encode()).hexdigest()[:8]
    return f"{base}-{digest}"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _api_message(error: docker.errors.APIError) -> str:
    return _one_line(str(error.explanation or error))


def _causes(error: BaseException) -> Iterator[BaseException]:
    """``error`` and what caused it, outermost first."""
    cause: BaseException | None = error
    while cause is not None:
        yield cause
        cause = cause.__cause__ or cause.__context__


def _is_connection_failure(error: BaseException) -> bool:
    """Whether ``error`` (or what caused it) means the engine did not answer in time or at all."""
    return any(
        isinstance(cause, requests.exceptions.ConnectionError | requests.exceptions.Timeout)
        for cause in _causes(error)
    )


def _engine_answer(error: BaseException) -> docker.errors.APIError | None:
    """The engine's error answer behind ``error``, if there is one.

    The SDK wraps the answer to its first call (the API version it asks for when a client is
    made) in a plain ``DockerException``: its status must decide retry or fail all the same.
    """
    for cause in _causes(error):
        if isinstance(cause, docker.errors.APIError):
            return cause
    return None


def translate_error(
    error: docker.errors.DockerException | requests.exceptions.RequestException,
    *,
    action: str,
    socket: str,
    server_id: str | None = None,
    image: str | None = None,
) -> ProviderError | ResourceNotFound:
    """The project's error for a Docker SDK error: the one place that decides retry or fail."""
    context: dict[str, Any] = {"provider": PROVIDER, "action": action, "server_id": server_id}
    if isinstance(error, docker.errors.ImageNotFound):
        return PermanentProviderError(
            f"image '{image or '?'}' is not in the Docker engine at {socket} "
            "(images are never pulled: build or load it first)",
            image=image,
            **context,
        )
    if (
        isinstance(error, docker.errors.NotFound)
        and "no such container" in _api_message(error).lower()
    ):
        return ResourceNotFound(f"container {server_id or '?'} does not exist", **context)
    answer = _engine_answer(error)
    if answer is not None:
        status = answer.status_code or 0
        if status >= 500 or status == 429:
            return TransientProviderError(
                f"{action} failed with HTTP {status}: {_api_message(answer)}",
                status=status,
                **context,
            )
        return PermanentProviderError(
            f"{action} refused with HTTP {status}: {_api_message(answer)}", status=status, **context
        )
    if _is_connection_failure(error):
        return TransientProviderError(
            f"Docker engine at {socket} is unreachable: {_one_line(str(error))}", **context
        )
    return PermanentProviderError(f"{action} failed: {_one_line(str(error))}", **context)


def _addresses(attrs: dict[str, Any]) -> list[str]:
    networks = (attrs.get("NetworkSettings") or {}).get("Networks") or {}
    addresses: list[str] = []
    for network in networks.values():
        for field in ("IPAddress", "GlobalIPv6Address"):
            address = (network or {}).get(field)
            if address and address not in addresses:
                addresses.append(address)
    return addresses


def _raw(attrs: dict[str, Any]) -> dict[str, Any]:
    """The fields a user may want to see, as plain JSON (the full record is large and nested)."""
    config = attrs.get("Config") or {}
    state = attrs.get("State") or {}
    subset: dict[str, Any] = {
        "Id": attrs.get("Id"),
        "Name": str(attrs.get("Name", "")).lstrip("/"),
        "Image": config.get("Image"),
        "ImageID": attrs.get("Image"),
        "Created": attrs.get("Created"),
        "Status": state.get("Status"),
        "Command": config.get("Cmd"),
        "NetworkMode": (attrs.get("HostConfig") or {}).get("NetworkMode"),
        "Labels": config.get("Labels") or {},
        "State": {
            field: state.get(field)
            for field in ("Running", "ExitCode", "Error", "StartedAt", "FinishedAt", "OOMKilled")
        },
    }
    parsed: dict[str, Any] = json.loads(json.dumps(subset, default=str))
    return parsed


def _split_key(key: str) -> tuple[str, str]:
    workflow_id, _, operation_id = key.partition("/")
    return workflow_id, operation_id


class LocalProvider(Provider):
    """Containers on a Docker engine (``[providers.local]``: ``docker_socket``, ``network_mode``,
    ``image``, ``timeout``, optional ``stop_timeout``)."""

    name: ClassVar[str] = PROVIDER

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__(config)
        self._client: docker.DockerClient | None = None
        self._client_lock = threading.Lock()

    @property
    def socket(self) -> str:
        return str(self.config.get("docker_socket") or "unix:///var/run/docker.sock")

    @property
    def stop_timeout(self) -> int:
        return int(self.config.get("stop_timeout", 2))

    @contextmanager
    def _calls(
        self, action: str, *, server_id: str | None = None, image: str | None = None
    ) -> Iterator[docker.DockerClient]:
        """The client, with every Docker SDK error translated on the way out."""
        try:
            yield self._connect()
        except (docker.errors.DockerException, requests.exceptions.RequestException) as error:
            raise translate_error(
                error, action=action, socket=self.socket, server_id=server_id, image=image
            ) from error

    def _connect(self) -> docker.DockerClient:
        # Built lazily: the SDK asks the engine for its API version when the client is made, and
        # a provider must be constructible while the engine is down (``check`` then says so).
        with self._client_lock:
            if self._client is None:
                self._client = docker.DockerClient(
                    base_url=self.socket, timeout=int(self.config.get("timeout", 60))
                )
            return self._client

    def close(self) -> None:
        """Release the client's connections (a provider stays usable: it reconnects on use)."""
        with self._client_lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def _server(self, attrs: dict[str, Any]) -> Server:
        """A server from an inspect record (list summaries have another shape: never used)."""
        raw = _raw(attrs)
        labels: dict[str, str] = raw["Labels"]
        return Server(
            id=str(attrs["Id"]),
            provider=PROVIDER,
            name=raw["Name"],
            state=STATES.get(str(raw["Status"]), ServerState.error),
            key=labels.get(KEY_LABEL),
            addresses=_addresses(attrs),
            labels={k: v for k, v in labels.items() if k not in OUR_LABELS},
            raw=raw,
        )

    def _list(self, label: str) -> list[Server]:
        with self._calls("list containers") as client:
            containers = client.containers.list(
                all=True, filters={"label": label}, ignore_removed=True
            )
            servers = [self._server(container.attrs) for container in containers]
        return sorted(servers, key=lambda server: str(server.raw.get("Created")))

    def list_servers(self) -> list[Server]:
        """Containers this project created (those carrying the key label), oldest first."""
        return [s for s in self._list(KEY_LABEL) if s.state != ServerState.deleted]

    def find(self, key: str) -> Server | None:
        for server in self._list(f"{KEY_LABEL}={key}"):
            if server.state != ServerState.deleted:
                return server
        return None

    def get_server(self, server_id: str) -> Server:
        with self._calls("get container", server_id=server_id) as client:
            return self._server(client.containers.get(server_id).attrs)

    def create_server(self, spec: ServerSpec, key: str) -> Server:
        """Create and start a container carrying ``key``; the existing one if the key is known.

        ``create`` + ``start`` rather than ``run``: ``run`` pulls a missing image, which turns a
        typo into a long wait on a registry instead of an immediate, permanent error.
        """
        existing = self.find(key)
        if existing is not None:
            return self._start_if_created(existing)
        image = spec.image or str(self.config.get("image") or "")
        if not image:
            raise PermanentProviderError(
                "no image: give params.image or set providers.local.image",
                provider=PROVIDER,
                field="image",
            )
        workflow_id, operation_id = _split_key(key)
        labels = {**spec.labels, KEY_LABEL: key, WORKFLOW_LABEL: workflow_id}
        if operation_id:
            labels[OPERATION_LABEL] = operation_id
        name = container_name(spec.name, key)
        try:
            with self._calls("create container", image=image) as client:
                container = client.containers.create(
                    image=image,
                    name=name,
                    labels=labels,
                    command=spec.extra.get("command"),
                    network_mode=str(self.config.get("network_mode") or "none"),
                    # A tiny init as PID 1 forwards SIGTERM, so a stop takes milliseconds.
                    init=True,
                    detach=True,
                )
        except PermanentProviderError as error:
            # 409: another worker created the same key a moment ago; theirs is ours.
            if error.context.get("status") == 409:
                raced = self._holder_of(name, key)
                if raced is not None:
                    return self._start_if_created(raced)
            raise
        try:
            with self._calls("start container", server_id=container.id):
                container.start()
        except ProviderError:
            # Leave nothing half made behind: a retry creates it again from the start.
            self.delete_server(container.id)
            raise
        return self.get_server(container.id)

    def _holder_of(self, name: str, key: str) -> Server | None:
        """The container holding ``name`` if it carries ``key``.

        The engine reserves a name before the container shows up in lists or inspects, so a
        concurrent create can be refused for a container we cannot see yet: wait briefly for it.
        """
        deadline = time.monotonic() + NAME_RACE_WAIT
        while True:
            try:
                holder = self.get_server(name)
            except ResourceNotFound:
                if time.monotonic() >= deadline:
                    return None
                time.sleep(0.02)
                continue
            return holder if holder.key == key else None

    def _start_if_created(self, server: Server) -> Server:
        """Finish a create that crashed between ``create`` and ``start``."""
        if server.state != ServerState.pending or server.raw.get("Status") != "created":
            return server
        with self._calls("start container", server_id=server.id) as client:
            client.api.start(server.id)
        return self.get_server(server.id)

    def delete_server(self, server_id: str) -> None:
        """Stop (briefly) and remove the container; a container already gone is fine."""
        try:
            with self._calls("delete container", server_id=server_id) as client:
                client.api.stop(server_id, timeout=self.stop_timeout)
                client.api.remove_container(server_id, force=True)
        except ResourceNotFound:
            return
        except PermanentProviderError as error:
            # 409: someone else is removing it right now; the outcome is the one we asked for.
            if error.context.get("status") != 409 or not self._gone(server_id):
                raise

    def _gone(self, server_id: str) -> bool:
        try:
            return self.get_server(server_id).state == ServerState.deleted
        except ResourceNotFound:
            return True

    def check(self) -> ProviderStatus:
        try:
            with self._calls("ping") as client:
                client.ping()
                version = client.version().get("Version", "?")
        except (ProviderError, ResourceNotFound) as error:
            return ProviderStatus(provider=PROVIDER, reachable=False, message=error.message)
        return ProviderStatus(
            provider=PROVIDER, reachable=True, message=f"Docker {version} at {self.socket}"
        )
