"""An in-memory provider shipped as an installable package.

Servers live in a process-wide dict (a fake cloud that every ``EchoProvider`` instance shares, as
instances of a real driver share the cloud), so the registry can hand out a fresh instance per call.
"""

from __future__ import annotations

import itertools
import threading
from typing import ClassVar

from providers.base import (
    Provider,
    ProviderStatus,
    ResourceNotFound,
    Server,
    ServerSpec,
    ServerState,
)

__all__ = ["EchoProvider"]

_lock = threading.Lock()
_servers: dict[str, Server] = {}
_ids = itertools.count(1)


class EchoProvider(Provider):
    name: ClassVar[str] = "echo"

    def list_servers(self) -> list[Server]:
        with _lock:
            return list(_servers.values())

    def create_server(self, spec: ServerSpec, key: str) -> Server:
        with _lock:
            for server in _servers.values():
                if server.key == key:
                    return server
            server = Server(
                id=f"echo-{next(_ids)}",
                provider=self.name,
                name=spec.name,
                state=ServerState.running,
                key=key,
                labels=dict(spec.labels),
            )
            _servers[server.id] = server
            return server

    def get_server(self, server_id: str) -> Server:
        with _lock:
            if server_id not in _servers:
                raise ResourceNotFound(f"no echo server {server_id!r}", provider=self.name)
            return _servers[server_id]

    def delete_server(self, server_id: str) -> None:
        with _lock:
            _servers.pop(server_id, None)

    def check(self) -> ProviderStatus:
        return ProviderStatus(provider=self.name, reachable=True, message="in memory")
