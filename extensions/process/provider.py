"""The ``process`` provider: a "server" is a long-running local process.

It exists to show how little a provider needs, and to give workflows a resource that costs nothing
to create. The pieces map onto a real cloud API:

* the server id is ``<pid>-<start time>`` (from ``/proc``), so a recycled pid never passes for an
  old server;
* a small JSON record per server under ``state_dir`` holds name, key and labels, so another
  process (a resumed run) can list and :meth:`find` it;
* the process also carries its key and state dir in its environment (``PROVISIONING_KEY``), the
  way a VM carries a tag: if a crash falls between starting the process and writing its record,
  :meth:`find` still recognises the process by its key and adopts it instead of starting another.

Config (``[providers.process]``): ``state_dir`` (default ``<tmp>/provisioning-process-provider``),
``stop_timeout`` (seconds between SIGTERM and SIGKILL, default 5). Per server,
``spec.extra["command"]`` (a list or a shell-like string) defaults to ``["sleep", "3600"]``.
Linux only: state comes from ``/proc``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shlex
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from providers.base import (
    PermanentProviderError,
    Provider,
    ProviderStatus,
    ResourceNotFound,
    Server,
    ServerSpec,
    ServerState,
    TransientProviderError,
)

__all__ = ["ProcessProvider"]

PROVIDER = "process"
DEFAULT_COMMAND = ["sleep", "3600"]
ENV_KEY = "PROVISIONING_KEY"
ENV_NAME = "PROVISIONING_SERVER_NAME"
ENV_STATE = "PROVISIONING_STATE_DIR"
_ID = re.compile(r"^(\d+)-(\d+)$")
_PROC = Path("/proc")

#: Processes this Python process started, so their exit can be reaped (not left as zombies).
_children: dict[int, subprocess.Popen[bytes]] = {}


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks) of a live pid, or None if there is none."""
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = text.rsplit(")", 1)[1].split()
    return fields[0], int(fields[19])


def _process_environment(pid: int) -> dict[str, str]:
    try:
        raw = (_PROC / str(pid) / "environ").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return {}
    pairs = (item.partition(b"=") for item in raw.split(b"\0") if item)
    return {
        name.decode(errors="replace"): value.decode(errors="replace") for name, _, value in pairs
    }


def _command(spec: ServerSpec) -> list[str]:
    command = spec.extra.get("command", DEFAULT_COMMAND)
    if isinstance(command, str):
        command = shlex.split(command)
    if not (isinstance(command, list) and command and all(isinstance(a, str) for a in command)):
        raise PermanentProviderError(
            "extra.command must be a non-empty list of strings or a command line",
            provider=PROVIDER,
        )
    return command


class ProcessProvider(Provider):
    """Local processes as servers (see the module docstring)."""

    name: ClassVar[str] = PROVIDER

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__(config)
        default = Path(tempfile.gettempdir()) / "provisioning-process-provider"
        self.state_dir = Path(self.config.get("state_dir") or default).resolve()
        self.stop_timeout = float(self.config.get("stop_timeout", 5))

    # ------------------------------------------------------------------------- records on disk

    @property
    def _servers(self) -> Path:
        return self.state_dir / "servers"

    def _record_path(self, server_id: str) -> Path:
        if not _ID.match(server_id):  # ids come from users: never let one name another path
            raise ResourceNotFound(f"no process server {server_id!r}", provider=PROVIDER)
        return self._servers / f"{server_id}.json"

    def _write_record(self, record: dict[str, Any]) -> None:
        self._servers.mkdir(parents=True, exist_ok=True)
        path = self._record_path(record["id"])
        partial = path.with_suffix(".tmp")
        partial.write_text(json.dumps(record, indent=2))
        partial.replace(path)  # atomic: readers never see half a record

    def _read_record(self, server_id: str) -> dict[str, Any]:
        try:
            record: dict[str, Any] = json.loads(self._record_path(server_id).read_text())
        except FileNotFoundError:
            raise ResourceNotFound(f"no process server {server_id!r}", provider=PROVIDER) from None
        return record

    @contextlib.contextmanager
    def _key_lock(self, key: str) -> Iterator[None]:
        """Serialise creates of one key across threads and processes (find, then start)."""
        locks = self.state_dir / "locks"
        locks.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        with open(locks / f"{digest}.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # ------------------------------------------------------------------------------ processes

    @staticmethod
    def _state(pid: int, started: int) -> ServerState:
        child = _children.get(pid)
        if child is not None and child.poll() is not None:
            del _children[pid]  # reaped: the pid is now free for the kernel to reuse
            return ServerState.stopped
        stat = _proc_stat(pid)
        if stat is None or stat[1] != started:
            return ServerState.stopped
        return ServerState.stopped if stat[0] in ("Z", "X") else ServerState.running

    def _server(self, record: dict[str, Any]) -> Server:
        return Server(
            id=record["id"],
            provider=PROVIDER,
            name=record["name"],
            state=self._state(record["pid"], record["started"]),
            key=record.get("key"),
            addresses=["127.0.0.1"],
            labels=dict(record.get("labels", {})),
            raw=record,
        )

    def _adopt_orphan(self, key: str) -> Server | None:
        """A live process carrying ``key`` whose record was never written (crash), recorded now."""
        for entry in _PROC.iterdir():
            if not entry.name.isdigit():
                continue
            environment = _process_environment(int(entry.name))
            if environment.get(ENV_KEY) != key or environment.get(ENV_STATE) != str(self.state_dir):
                continue
            stat = _proc_stat(int(entry.name))
            if stat is None or stat[0] in ("Z", "X"):
                continue
            record = {
                "id": f"{entry.name}-{stat[1]}",
                "pid": int(entry.name),
                "started": stat[1],
                "name": environment.get(ENV_NAME, ""),
                "key": key,
                "labels": {},
                "command": [],
            }
            self._write_record(record)
            return self._server(record)
        return None

    # ----------------------------------------------------------------------------- interface

    def list_servers(self) -> list[Server]:
        servers: list[Server] = []
        for path in sorted(self._servers.glob("*.json")):
            with contextlib.suppress(FileNotFoundError):  # deleted meanwhile
                servers.append(self._server(json.loads(path.read_text())))
        return servers

    def find(self, key: str) -> Server | None:
        return super().find(key) or self._adopt_orphan(key)

    def create_server(self, spec: ServerSpec, key: str) -> Server:
        command = _command(spec)
        with self._key_lock(key):
            existing = self.find(key)
            if existing is not None:
                return existing
            log_dir = self.state_dir / "logs"
            log_dir.mkdir(parents=True, exist_ok=True)
            log_path = log_dir / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.log"
            environment = {
                **os.environ,
                ENV_KEY: key,
                ENV_NAME: spec.name,
                ENV_STATE: str(self.state_dir),
            }
            try:
                with open(log_path, "ab") as log:
                    child = subprocess.Popen(
                        command,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        env=environment,
                        start_new_session=True,  # its own process group: delete stops it all
                    )
            except (FileNotFoundError, PermissionError) as error:
                raise PermanentProviderError(
                    f"cannot start {command[0]!r}: {error.strerror}", provider=PROVIDER
                ) from error
            except OSError as error:  # e.g. EAGAIN: too many processes right now
                raise TransientProviderError(
                    f"cannot start {command[0]!r}: {error}", provider=PROVIDER
                ) from error
            _children[child.pid] = child
            # An unreaped child keeps its /proc entry even if it exited at once.
            stat = _proc_stat(child.pid)
            if stat is None:
                raise TransientProviderError(
                    f"process {child.pid} vanished right after start", provider=PROVIDER
                )
            record = {
                "id": f"{child.pid}-{stat[1]}",
                "pid": child.pid,
                "started": stat[1],
                "name": spec.name,
                "key": key,
                "labels": dict(spec.labels),
                "command": command,
                "log": str(log_path),
            }
            self._write_record(record)
            return self._server(record)

    def get_server(self, server_id: str) -> Server:
        return self._server(self._read_record(server_id))

    def delete_server(self, server_id: str) -> None:
        try:
            record = self._read_record(server_id)
        except ResourceNotFound:
            return  # already gone: deleting twice is fine
        pid, started = record["pid"], record["started"]
        if self._state(pid, started) == ServerState.running:
            self._stop(pid, started)
        self._record_path(server_id).unlink(missing_ok=True)

    def _stop(self, pid: int, started: int) -> None:
        """SIGTERM the process group, SIGKILL it if still there after ``stop_timeout``."""
        for sig, wait in ((signal.SIGTERM, self.stop_timeout), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, sig)
            deadline = time.monotonic() + wait
            while self._state(pid, started) == ServerState.running:
                if time.monotonic() >= deadline:
                    break
                time.sleep(0.01)
            else:
                return
        raise TransientProviderError(f"process {pid} survived SIGKILL", provider=PROVIDER)

    def check(self) -> ProviderStatus:
        if not (_PROC / "self" / "stat").exists():
            return ProviderStatus(provider=PROVIDER, reachable=False, message="needs /proc (Linux)")
        try:
            self._servers.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            return ProviderStatus(
                provider=PROVIDER, reachable=False, message=f"state_dir unusable: {error}"
            )
        return ProviderStatus(provider=PROVIDER, reachable=True, message=str(self.state_dir))
