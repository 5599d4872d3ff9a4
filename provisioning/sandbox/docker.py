"""A private Docker engine for the demo and the tests, with a test image built without a registry.

The machine has ``dockerd`` but no daemon running and no registry to pull from, so the sandbox
starts its own engine in a directory it owns (vfs storage, no bridge, no iptables: nothing on the
host changes) and imports a busybox root filesystem as the image every local server runs. A start
takes about half a second here; a first start also imports the image (about 0.1 s).

Run it by hand with ``python -m provisioning.sandbox.docker --root DIR``: it prints the socket URL
and serves until SIGTERM or Ctrl-C, then removes its containers and stops the engine.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import logging
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path
from types import FrameType
from typing import IO

import docker
import docker.errors
import requests.exceptions

from provisioning.errors import ProvisioningError
from provisioning.sandbox.base import Sandbox

__all__ = ["DEFAULT_IMAGE", "DockerSandbox", "SandboxError", "main"]

log = logging.getLogger(__name__)

DEFAULT_IMAGE = "provisioning-sandbox:latest"
#: What the image's containers run when a server spec gives no command: stay up until stopped.
DEFAULT_COMMAND = '["/bin/sleep", "infinity"]'
#: Applets linked into the image so that commands in examples and tests find their tools.
BUSYBOX_APPLETS = (
    "sh", "sleep", "cat", "echo", "env", "ls", "mkdir", "rm", "true", "false", "hostname",
    "ps", "id", "touch", "date", "uname", "wc", "grep", "head", "tail", "printf", "test",
)  # fmt: skip
BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")
#: Unix socket paths are limited to 108 bytes including the NUL; containerd puts
#: ``exec/containerd/containerd.sock.ttrpc`` (38 bytes) under the run directory.
MAX_RUN_DIR_LENGTH = 60
START_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0


class SandboxError(ProvisioningError):
    """The local Docker engine could not be started, reached or stopped."""

    code = "SANDBOX_FAILED"


def _busybox() -> Path | None:
    for candidate in BUSYBOX_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return Path(candidate)
    return None


def _is_live_process(pid: int, command: str) -> bool:
    """Whether ``pid`` runs ``command`` and is not a zombie (``kill -0`` alone says yes to both)."""
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    state = stat.rpartition(")")[2].split()[0]
    return comm == command and state not in ("Z", "X")


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _wait_gone(pid: int, command: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _is_live_process(pid, command):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _terminate(pid: int, command: str, timeout: float) -> None:
    """SIGTERM, then SIGKILL if ``command`` has not exited within ``timeout``."""
    if not _is_live_process(pid, command):
        return
    os.kill(pid, signal.SIGTERM)
    if _wait_gone(pid, command, timeout):
        return
    log.warning("%s (pid %d) ignored SIGTERM for %.0f s; killing it", command, pid, timeout)
    os.kill(pid, signal.SIGKILL)
    _wait_gone(pid, command, 5.0)


def rootfs_tarball(busybox: Path) -> bytes:
    """A root filesystem holding a static busybox and links to the applets we use."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for directory in ("bin", "tmp", "etc", "root"):
            info = tarfile.TarInfo(directory)
            info.type = tarfile.DIRTYPE
            info.mode = 0o1777 if directory == "tmp" else 0o755
            tar.addfile(info)
        tar.add(str(busybox), arcname="bin/busybox")
        for applet in BUSYBOX_APPLETS:
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type = tarfile.SYMTYPE
            link.linkname = "busybox"
            tar.addfile(link)
    return buffer.getvalue()


class DockerSandbox(Sandbox):
    """A private ``dockerd`` under ``root`` plus the local image, or an engine someone else runs.

    ``root`` keeps the engine's data (images survive a restart). The socket and the engine's run
    directory live under ``root`` too when its path is short enough for a unix socket, otherwise in
    ``/tmp/pdk-<hash of root>``, so the socket URL is the same on every start for the same root.
    """

    def __init__(self, root: Path, *, image: str = DEFAULT_IMAGE) -> None:
        self.root = Path(root).resolve()
        self._image = image
        if len(str(self.root)) <= MAX_RUN_DIR_LENGTH:
            self.run_dir = self.root
        else:
            digest = hashlib.sha256(str(self.root).encode()).hexdigest()[:12]
            self.run_dir = Path("/tmp") / f"pdk-{digest}"
        self._socket_url = f"unix://{self.run_dir / 'docker.sock'}"
        self._owned = True
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        #: Seconds the last :meth:`start` took until the engine answered and the image existed.
        self.start_seconds: float | None = None

    @classmethod
    def attach(cls, socket_url: str, *, image: str = DEFAULT_IMAGE) -> DockerSandbox:
        """Use an engine that is already running; :meth:`stop` then leaves it alone."""
        sandbox = cls(Path("/tmp"), image=image)
        sandbox._socket_url = socket_url
        sandbox._owned = False
        return sandbox

    @staticmethod
    def available() -> tuple[bool, str]:
        """Whether this machine can start a private engine, and why not in one line."""
        if shutil.which("dockerd") is None:
            return False, "dockerd is not installed (apt-get install docker.io)"
        if os.geteuid() != 0:
            return False, "starting dockerd needs root"
        if _busybox() is None:
            return False, "busybox is not installed (apt-get install busybox-static)"
        return True, ""

    @property
    def socket_url(self) -> str:
        return self._socket_url

    @property
    def image(self) -> str:
        return self._image

    @property
    def pidfile(self) -> Path:
        return self.run_dir / "dockerd.pid"

    @property
    def socket_path(self) -> Path:
        return self.run_dir / "docker.sock"

    def client(self, timeout: int = 30) -> docker.DockerClient:
        """A client for the engine; raises :class:`SandboxError` if it does not answer."""
        try:
            return docker.DockerClient(base_url=self._socket_url, timeout=timeout)
        except docker.errors.DockerException as error:
            raise SandboxError(
                f"Docker engine at {self._socket_url} does not answer: {error}"
            ) from error

    def start(self) -> str:
        """Start the engine (or check the attached one) and make sure the image exists."""
        started = time.monotonic()
        if self._owned:
            self._start_daemon()
        try:
            client = self._wait_until_ready(started + START_TIMEOUT)
            try:
                self._ensure_image(client)
            finally:
                client.close()
        except SandboxError:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - started
        log.info("Docker engine ready at %s in %.2f s", self._socket_url, self.start_seconds)
        return self._socket_url

    def stop(self) -> None:
        """Remove every container, then stop the engine; a no-op for an attached engine."""
        if not self._owned:
            return
        pid = self._process.pid if self._process is not None else _read_pid(self.pidfile)
        if pid is not None and _is_live_process(pid, "dockerd"):
            self._remove_all_containers()
            _terminate(pid, "dockerd", STOP_TIMEOUT)
        if self._process is not None:
            self._process.wait()
            self._process = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        self._cleanup_leftovers()
        if self.run_dir != self.root:
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def remove_containers(self, label: str | None = None) -> int:
        """Force-remove containers (those carrying ``label`` if given); how many went away."""
        client = self.client()
        try:
            filters = {"label": label} if label else None
            removed = 0
            for container in client.containers.list(all=True, filters=filters, sparse=True):
                try:
                    container.remove(force=True)
                except docker.errors.NotFound:
                    continue
                removed += 1
            return removed
        finally:
            client.close()

    def _start_daemon(self) -> None:
        if self._process is not None and self._process.poll() is None:
            return
        ok, reason = self.available()
        if not ok:
            raise SandboxError(f"cannot start a Docker engine here: {reason}")
        self.root.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._cleanup_leftovers()
        command = [
            "dockerd",
            "--storage-driver=vfs",
            "--iptables=false",
            "--ip6tables=false",
            "--bridge=none",
            "--shutdown-timeout=2",
            f"--data-root={self.root / 'data'}",
            f"--exec-root={self.run_dir / 'exec'}",
            f"--host={self._socket_url}",
            f"--pidfile={self.pidfile}",
        ]
        self._log_file = (self.root / "dockerd.log").open("ab")
        # A session of its own: Ctrl-C in a terminal reaches us, and we stop the engine cleanly.
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def _cleanup_leftovers(self) -> None:
        """Stop the dockerd and containerd a crashed run left behind; remove their files."""
        stale = _read_pid(self.pidfile)
        if stale is not None and _is_live_process(stale, "dockerd"):
            log.warning("stopping a dockerd (pid %d) left running under %s", stale, self.run_dir)
            _terminate(stale, "dockerd", STOP_TIMEOUT)
        containerd_pidfile = self.run_dir / "exec" / "containerd" / "containerd.pid"
        orphan = _read_pid(containerd_pidfile)
        if orphan is not None and _is_live_process(orphan, "containerd"):
            log.warning(
                "stopping a containerd (pid %d) left running under %s", orphan, self.run_dir
            )
            _terminate(orphan, "containerd", STOP_TIMEOUT)
        for leftover in (self.pidfile, self.socket_path, containerd_pidfile):
            leftover.unlink(missing_ok=True)

    def _daemon_log_tail(self, lines: int = 5) -> str:
        try:
            text = (self.root / "dockerd.log").read_text(errors="replace")
        except OSError:
            return ""
        return " | ".join(text.strip().splitlines()[-lines:])

    def _wait_until_ready(self, deadline: float) -> docker.DockerClient:
        while True:
            if self._process is not None and self._process.poll() is not None:
                raise SandboxError(
                    f"dockerd exited with status {self._process.returncode}: "
                    f"{self._daemon_log_tail()}"
                )
            try:
                # Building a client asks the engine for its API version: an answer means ready.
                return docker.DockerClient(base_url=self._socket_url, timeout=10)
            except docker.errors.DockerException as error:
                if time.monotonic() >= deadline:
                    raise SandboxError(
                        f"Docker engine at {self._socket_url} did not answer: {error}"
                    ) from error
            time.sleep(0.05)

    def _ensure_image(self, client: docker.DockerClient) -> None:
        try:
            client.images.get(self._image)
            return
        except docker.errors.ImageNotFound:
            pass
        busybox = _busybox()
        if busybox is None:
            raise SandboxError(f"cannot build {self._image}: busybox is not installed")
        repository, _, tag = self._image.rpartition(":")
        if not repository or "/" in tag:
            repository, tag = self._image, "latest"
        try:
            client.api.import_image_from_data(
                rootfs_tarball(busybox),
                repository=repository,
                tag=tag,
                changes=[f"CMD {DEFAULT_COMMAND}"],
            )
            client.images.get(self._image)
        except docker.errors.APIError as error:
            raise SandboxError(f"cannot import {self._image}: {error.explanation}") from error
        log.info("imported %s from %s", self._image, busybox)

    def _remove_all_containers(self) -> None:
        try:
            removed = self.remove_containers()
        except (
            SandboxError,
            docker.errors.APIError,
            requests.exceptions.RequestException,
        ) as error:
            log.warning("could not remove containers before stopping dockerd: %s", error)
            return
        if removed:
            log.info("removed %d container(s) before stopping dockerd", removed)


def main(argv: list[str] | None = None) -> int:
    """Start the engine, print its socket URL on one line, serve until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(
        prog="python -m provisioning.sandbox.docker", description=main.__doc__
    )
    parser.add_argument("--root", type=Path, required=True, help="directory for the engine's data")
    parser.add_argument("--image", default=DEFAULT_IMAGE, help="tag of the local image")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)

    ok, reason = DockerSandbox.available()
    if not ok:
        log.error("cannot start a Docker engine here: %s", reason)
        return 2
    stop_requested = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop_requested.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    sandbox = DockerSandbox(args.root, image=args.image)
    try:
        sys.stdout.write(sandbox.start() + "\n")
        sys.stdout.flush()
        stop_requested.wait()
    except SandboxError as error:
        log.error("%s", error)
        return 1
    finally:
        sandbox.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
