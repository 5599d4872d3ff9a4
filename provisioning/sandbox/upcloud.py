"""A local stand-in for the UpCloud API 1.3: the server subset the ``upcloud`` driver relies on.

Why it exists: the driver and the official ``upcloud-api`` SDK are tested over real HTTP, with the
API's own JSON shapes (``{"server": ...}``, ``{"servers": {"server": [...]}}``, ``{"labels":
{"label": [...]}}``), status codes and ``{"error": {"error_code", "error_message"}}`` bodies,
without an account, a network or money. It also does what a real cloud does to a driver:
servers spend a moment in ``maintenance`` before ``started`` and before ``stopped``, a started
server cannot be deleted (409 ``SERVER_STATE_ILLEGAL``), and injected faults answer 503, 429 or
500 so retry logic can be exercised on purpose.

States advance lazily: a record remembers its target state and when it is due, and every read
settles it. No background timers, so a stopped emulator leaves nothing running.

Run it in-process (``with UpCloudEmulator() as emulator: ...``) or as a process for other
programs: ``python -m provisioning.sandbox.upcloud --port 8765`` prints the API root and serves
until killed; ``POST /_sandbox/faults`` and ``POST /_sandbox/reset`` drive it from outside.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hmac
import ipaddress
import itertools
import json
import logging
import re
import signal
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any, Literal, get_args
from urllib.parse import parse_qs, urlsplit

from pydantic import BaseModel, Field, ValidationError

from provisioning.sandbox.base import Sandbox

__all__ = ["PLANS", "TEMPLATES", "ZONES", "FaultKind", "UpCloudEmulator", "main"]

logger = logging.getLogger(__name__)

FaultKind = Literal["unavailable", "throttle", "error"]

API_PREFIX = "/1.3"
SANDBOX_PREFIX = "/_sandbox"

ZONES: dict[str, str] = {
    "de-fra1": "Frankfurt #1",
    "fi-hel1": "Helsinki #1",
    "fi-hel2": "Helsinki #2",
    "nl-ams1": "Amsterdam #1",
    "uk-lon1": "London #1",
    "us-nyc1": "New York #1",
    "sg-sin1": "Singapore #1",
}


@dataclass(frozen=True)
class Plan:
    name: str
    core_number: int
    memory_amount: int  # MiB
    storage_size: int  # GB included in the plan


PLANS: dict[str, Plan] = {
    plan.name: plan
    for plan in (
        Plan("1xCPU-1GB", 1, 1024, 25),
        Plan("1xCPU-2GB", 1, 2048, 50),
        Plan("2xCPU-4GB", 2, 4096, 80),
        Plan("4xCPU-8GB", 4, 8192, 160),
        Plan("6xCPU-16GB", 6, 16384, 320),
    )
}
DEFAULT_PLAN = "1xCPU-1GB"

#: Public templates (uuid -> title), as ``GET /1.3/storage/template`` lists them.
TEMPLATES: dict[str, str] = {
    "01000000-0000-4000-8000-000020070100": "Debian GNU/Linux 12 (Bookworm)",
    "01000000-0000-4000-8000-000030220200": "Ubuntu Server 22.04 LTS (Jammy Jellyfish)",
    "01000000-0000-4000-8000-000030240200": "Ubuntu Server 24.04 LTS (Noble Numbat)",
    "01000000-0000-4000-8000-000150020100": "Rocky Linux 9",
}
TEMPLATE_SIZE = 4  # GB; a clone may not be smaller

TIERS = ("maxiops", "standard", "hdd")
LABEL_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{1,31}")
HOSTNAME_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOSTNAME = re.compile(rf"(?=.{{1,128}}$){HOSTNAME_LABEL}(?:\.{HOSTNAME_LABEL})*")
UUID = r"[0-9a-fA-F-]{36}"

# Public addresses come from 198.18.0.0/15 (RFC 2544, never routed on the internet).
PUBLIC_POOL = ipaddress.IPv4Address("198.18.0.0")
UTILITY_POOL = ipaddress.IPv4Address("10.3.0.0")


class ApiError(Exception):
    """An answer in the API's error shape; raised by handlers, rendered by the HTTP layer."""

    def __init__(self, status: HTTPStatus, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message

    def body(self) -> dict[str, Any]:
        return {"error": {"error_code": self.code, "error_message": self.message}}


FAULTS: dict[str, ApiError] = {
    "unavailable": ApiError(
        HTTPStatus.SERVICE_UNAVAILABLE,
        "SERVICE_UNAVAILABLE",
        "The service is temporarily unavailable. Please try again later.",
    ),
    "throttle": ApiError(
        HTTPStatus.TOO_MANY_REQUESTS,
        "RATE_LIMIT_EXCEEDED",
        "Too many requests. Slow down and try again later.",
    ),
    "error": ApiError(
        HTTPStatus.INTERNAL_SERVER_ERROR, "INTERNAL_ERROR", "An internal error occurred."
    ),
}


class FaultRequest(BaseModel):
    """Body of ``POST /_sandbox/faults``."""

    count: int = Field(ge=1, le=10_000)
    kind: FaultKind


def _bad(code: str, message: str) -> ApiError:
    return ApiError(HTTPStatus.BAD_REQUEST, code, message)


def _not_found(kind: str, identifier: str) -> ApiError:
    return ApiError(
        HTTPStatus.NOT_FOUND,
        f"{kind.upper()}_NOT_FOUND",
        f"The {kind} {identifier} does not exist.",
    )


def _illegal_state(uuid_: str, state: str) -> ApiError:
    return ApiError(
        HTTPStatus.CONFLICT,
        "SERVER_STATE_ILLEGAL",
        f"The operation is not allowed while the server {uuid_} is in state '{state}'.",
    )


def _new_uuid(prefix: str) -> str:
    """UpCloud ids start with a kind prefix: ``00`` servers, ``01`` storages, ``03`` networks."""
    return prefix + str(uuid.uuid4())[len(prefix) :]


def _as_int(value: Any, code: str, low: int, high: int) -> int:
    """The API sends numbers as strings and accepts both; anything else is ``code``."""
    if isinstance(value, bool):
        raise _bad(code, f"Invalid value {value!r}.")
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise _bad(code, f"Invalid value {value!r}.") from None
    if not low <= number <= high:
        raise _bad(code, f"The value {number} is outside {low}-{high}.")
    return number


def _text(value: Any, missing: str, invalid: str, max_length: int = 255) -> str:
    if value is None or value == "":
        raise _bad(missing, f"Attribute missing ({missing.removesuffix('_MISSING').lower()}).")
    if not isinstance(value, str) or len(value) > max_length:
        raise _bad(invalid, f"Invalid value {value!r}.")
    return value


def _labels(value: Any) -> list[dict[str, str]]:
    """``{"label": [{"key", "value"}]}`` (a bare list is accepted too, as the API does)."""
    if value is None:
        return []
    items = value.get("label", []) if isinstance(value, dict) else value
    if not isinstance(items, list):
        raise _bad("LABELS_INVALID", "Labels must be given as {'label': [{key, value}]}.")
    labels: list[dict[str, str]] = []
    seen: set[str] = set()
    for item in items:
        if not isinstance(item, dict):
            raise _bad("LABELS_INVALID", f"Invalid label {item!r}.")
        key, text = item.get("key"), item.get("value", "")
        if not isinstance(key, str) or not LABEL_KEY.fullmatch(key):
            raise _bad(
                "LABEL_KEY_INVALID",
                f"Invalid label key {key!r}: 2-32 characters, letters, digits, '-' and '_', "
                "starting with a letter or digit.",
            )
        if not isinstance(text, str) or len(text) > 255:
            raise _bad("LABEL_VALUE_INVALID", f"Invalid value for label {key!r}: 0-255 characters.")
        if key.lower() in seen:
            raise _bad("LABEL_KEY_DUPLICATE", f"Duplicate label key {key!r}.")
        seen.add(key.lower())
        labels.append({"key": key, "value": text})
    return labels


@dataclass
class StorageRecord:
    uuid: str
    title: str
    zone: str
    size: int
    tier: str
    server: str | None = None
    origin: str = ""  # the template a clone was made from
    labels: list[dict[str, str]] = field(default_factory=list)

    def view(self) -> dict[str, Any]:
        return {
            "access": "private",
            "labels": {"label": list(self.labels)},
            "license": 0,
            "origin": self.origin,
            "size": self.size,
            "state": "online",
            "tier": self.tier,
            "title": self.title,
            "type": "normal",
            "uuid": self.uuid,
            "zone": self.zone,
            "servers": {"server": [self.server] if self.server else []},
        }


@dataclass
class ServerRecord:
    uuid: str
    title: str
    hostname: str
    zone: str
    plan: str
    core_number: int
    memory_amount: int
    labels: list[dict[str, str]]
    storages: list[StorageRecord]
    public_ip: str
    utility_ip: str
    created: int
    metadata: str = "no"
    login_user: dict[str, Any] | None = None
    state: str = "maintenance"
    #: Where a transition is heading and the monotonic time it completes.
    target: str | None = None
    due: float = 0.0

    def begin(self, target: str, delay: float) -> None:
        self.state, self.target, self.due = "maintenance", target, time.monotonic() + delay

    def settle(self) -> None:
        if self.target is not None and time.monotonic() >= self.due:
            self.state, self.target = self.target, None

    def summary(self) -> dict[str, Any]:
        """The fields ``GET /server`` lists for each server."""
        return {
            "core_number": str(self.core_number),
            "created": self.created,
            "host": 7_000_000_000 + int(self.uuid[-6:], 16),
            "hostname": self.hostname,
            "labels": {"label": list(self.labels)},
            "license": 0,
            "memory_amount": str(self.memory_amount),
            "plan": self.plan,
            "plan_ipv4_bytes": "0",
            "plan_ipv6_bytes": "0",
            "progress": "0" if self.target else "100",
            "server_group": "",
            "simple_backup": "no",
            "state": self.state,
            "tags": {"tag": []},
            "title": self.title,
            "uuid": self.uuid,
            "zone": self.zone,
        }

    def details(self) -> dict[str, Any]:
        """The full record ``GET /server/{uuid}`` and create/stop/start answer with."""
        public = {"access": "public", "address": self.public_ip, "family": "IPv4"}
        utility = {"access": "utility", "address": self.utility_ip, "family": "IPv4"}
        return {
            **self.summary(),
            "boot_order": "disk",
            "firewall": "off",
            "ip_addresses": {"ip_address": [{**public, "part_of_plan": "yes"}, utility]},
            "metadata": self.metadata,
            "networking": {
                "interfaces": {
                    "interface": [
                        self._interface(1, "public", self.public_ip),
                        self._interface(2, "utility", self.utility_ip),
                    ]
                }
            },
            "nic_model": "virtio",
            "remote_access_enabled": "no",
            "remote_access_type": "vnc",
            "storage_devices": {
                "storage_device": [
                    {
                        "address": f"virtio:{index}",
                        "boot_disk": "1" if index == 0 else "0",
                        "part_of_plan": "yes" if index == 0 and self.plan != "custom" else "no",
                        "storage": storage.uuid,
                        "storage_size": storage.size,
                        "storage_tier": storage.tier,
                        "storage_title": storage.title,
                        "type": "disk",
                    }
                    for index, storage in enumerate(self.storages)
                ]
            },
            "timezone": "UTC",
            "video_model": "vga",
        }

    def _interface(self, index: int, kind: str, address: str) -> dict[str, Any]:
        return {
            "bootable": "no",
            "index": index,
            "ip_addresses": {
                "ip_address": [{"address": address, "family": "IPv4", "floating": "no"}]
            },
            "mac": f"de:ff:00:{self.uuid[-6:-4]}:{self.uuid[-4:-2]}:{index:02x}",
            "network": f"03{self.uuid[2:]}" if kind == "public" else f"04{self.uuid[2:]}",
            "source_ip_filtering": "yes",
            "type": kind,
        }


Handler = Callable[[re.Match[str], dict[str, list[str]], Any], tuple[HTTPStatus, Any]]


class Cloud:
    """The emulated account: servers, storages, transitions. Thread-safe behind one lock."""

    def __init__(self, username: str, boot_delay: float, stop_delay: float) -> None:
        self.username = username
        self._defaults = (boot_delay, stop_delay)
        self.boot_delay, self.stop_delay = boot_delay, stop_delay
        self.lock = threading.RLock()
        self.servers: dict[str, ServerRecord] = {}
        self.storages: dict[str, StorageRecord] = {}
        self.faults: deque[str] = deque()
        self.requests_served = 0
        self._addresses = itertools.count(1)
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = [
            ("GET", re.compile(r"/account"), self._account),
            ("GET", re.compile(r"/zone"), self._zones),
            ("GET", re.compile(r"/plan"), self._plans),
            ("GET", re.compile(r"/server"), self._list_servers),
            ("POST", re.compile(r"/server"), self._create_server),
            ("GET", re.compile(rf"/server/(?P<uuid>{UUID})"), self._get_server),
            ("DELETE", re.compile(rf"/server/(?P<uuid>{UUID})"), self._delete_server),
            ("POST", re.compile(rf"/server/(?P<uuid>{UUID})/stop"), self._stop_server),
            ("POST", re.compile(rf"/server/(?P<uuid>{UUID})/start"), self._start_server),
            ("GET", re.compile(r"/storage(?:/(?P<kind>template|normal|private|public))?"),
             self._list_storages),
            ("GET", re.compile(rf"/storage/(?P<uuid>{UUID})"), self._get_storage),
        ]  # fmt: skip

    def reset(self) -> None:
        with self.lock:
            self.servers.clear()
            self.storages.clear()
            self.faults.clear()
            self.requests_served = 0
            self.boot_delay, self.stop_delay = self._defaults

    def take_fault(self) -> ApiError | None:
        with self.lock:
            self.requests_served += 1
            return FAULTS[self.faults.popleft()] if self.faults else None

    def route(
        self, method: str, path: str, query: dict[str, list[str]], body: Any
    ) -> tuple[HTTPStatus, Any]:
        known_path = False
        for route_method, pattern, handler in self._routes:
            match = pattern.fullmatch(path)
            if match is None:
                continue
            known_path = True
            if route_method == method:
                with self.lock:
                    return handler(match, query, body)
        if known_path:
            raise ApiError(
                HTTPStatus.METHOD_NOT_ALLOWED,
                "METHOD_NOT_ALLOWED",
                f"{method} is not allowed on {path}.",
            )
        if path.startswith("/server/"):
            raise _not_found("server", path.split("/")[2])
        raise ApiError(HTTPStatus.NOT_FOUND, "ENDPOINT_NOT_FOUND", f"No such endpoint {path}.")

    def server(self, uuid_: str) -> ServerRecord:
        record = self.servers.get(uuid_.lower())
        if record is None:
            raise _not_found("server", uuid_)
        record.settle()
        return record

    # --- endpoints -------------------------------------------------------------------------

    def _account(self, match: re.Match[str], query: Any, body: Any) -> tuple[HTTPStatus, Any]:
        return HTTPStatus.OK, {
            "account": {
                "credits": 10000.0,
                "username": self.username,
                "resource_limits": {
                    "cores": 100,
                    "memory": 307200,
                    "networks": 100,
                    "public_ipv4": 100,
                    "public_ipv6": 100,
                    "storage_hdd": 10240,
                    "storage_maxiops": 10240,
                    "storage_ssd": 10240,
                },
            }
        }

    def _zones(self, match: re.Match[str], query: Any, body: Any) -> tuple[HTTPStatus, Any]:
        zones = [{"id": z, "description": d, "public": "yes"} for z, d in ZONES.items()]
        return HTTPStatus.OK, {"zones": {"zone": zones}}

    def _plans(self, match: re.Match[str], query: Any, body: Any) -> tuple[HTTPStatus, Any]:
        plans = [
            {
                "core_number": plan.core_number,
                "memory_amount": plan.memory_amount,
                "name": plan.name,
                "public_traffic_out": 1024,
                "storage_size": plan.storage_size,
                "storage_tier": "maxiops",
            }
            for plan in PLANS.values()
        ]
        return HTTPStatus.OK, {"plans": {"plan": plans}}

    def _list_servers(
        self, match: re.Match[str], query: dict[str, list[str]], body: Any
    ) -> tuple[HTTPStatus, Any]:
        wanted = [item.partition("=") for item in query.get("label", [])]
        listed = []
        for record in sorted(self.servers.values(), key=lambda r: (r.created, r.uuid)):
            record.settle()
            labels = {label["key"].lower(): label["value"] for label in record.labels}
            if all(
                key.lower() in labels and (not has_value or labels[key.lower()] == value)
                for key, has_value, value in wanted
            ):
                listed.append(record.summary())
        return HTTPStatus.OK, {"servers": {"server": listed}}

    def _get_server(self, match: re.Match[str], query: Any, body: Any) -> tuple[HTTPStatus, Any]:
        return HTTPStatus.OK, {"server": self.server(match["uuid"]).details()}

    def _create_server(self, match: re.Match[str], query: Any, body: Any) -> tuple[HTTPStatus, Any]:
        spec = body.get("server") if isinstance(body, dict) else None
        if not isinstance(spec, dict):
            raise _bad("SERVER_MISSING", "The request body must contain a 'server' object.")
        zone = _text(spec.get("zone"), "ZONE_MISSING", "ZONE_INVALID")
        if zone not in ZONES:
            raise _bad("ZONE_INVALID", f"The zone '{zone}' does not exist.")
        title = _text(spec.get("title"), "TITLE_MISSING", "TITLE_INVALID")
        hostname = _text(spec.get("hostname"), "HOSTNAME_MISSING", "HOSTNAME_INVALID", 128)
        if not HOSTNAME.fullmatch(hostname):
            raise _bad("HOSTNAME_INVALID", f"The hostname '{hostname}' is not valid.")
        plan, cores, memory, included = self._plan(spec)
        labels = _labels(spec.get("labels"))
        login_user = spec.get("login_user")
        if login_user is not None and not isinstance(login_user, dict):
            raise _bad("LOGIN_USER_INVALID", "login_user must be an object.")
        metadata = spec.get("metadata", "no")
        if metadata not in ("yes", "no"):
            raise _bad("METADATA_INVALID", "metadata must be 'yes' or 'no'.")
        server_uuid = _new_uuid("00")
        storages = self._storages(spec.get("storage_devices"), zone, included, server_uuid)
        number = next(self._addresses)
        record = ServerRecord(
            uuid=server_uuid,
            title=title,
            hostname=hostname,
            zone=zone,
            plan=plan,
            core_number=cores,
            memory_amount=memory,
            labels=labels,
            storages=storages,
            public_ip=str(PUBLIC_POOL + number),
            utility_ip=str(UTILITY_POOL + number),
            created=int(time.time()),
            metadata=metadata,
            login_user=login_user,
        )
        record.begin("started", self.boot_delay)
        for storage in storages:
            self.storages[storage.uuid] = storage
        self.servers[record.uuid] = record
        return HTTPStatus.ACCEPTED, {"server": record.details()}

    def _plan(self, spec: dict[str, Any]) -> tuple[str, int, int, int]:
        name = spec.get("plan")
        if name is None and "core_number" not in spec and "memory_amount" not in spec:
            name = DEFAULT_PLAN
        if name not in (None, "custom"):
            plan = PLANS.get(name) if isinstance(name, str) else None
            if plan is None:
                raise _bad("PLAN_INVALID", f"The plan '{name}' does not exist.")
            return plan.name, plan.core_number, plan.memory_amount, plan.storage_size
        cores = _as_int(spec.get("core_number"), "CORE_NUMBER_INVALID", 1, 64)
        memory = _as_int(spec.get("memory_amount"), "MEMORY_AMOUNT_INVALID", 1024, 524288)
        if memory % 1024:
            raise _bad("MEMORY_AMOUNT_INVALID", "memory_amount must be a multiple of 1024.")
        return "custom", cores, memory, 0

    def _storages(
        self, devices: Any, zone: str, included: int, server_uuid: str
    ) -> list[StorageRecord]:
        items = devices.get("storage_device") if isinstance(devices, dict) else None
        if not items or not isinstance(items, list):
            raise _bad("STORAGE_DEVICES_MISSING", "At least one storage device is required.")
        created: list[StorageRecord] = []
        for index, device in enumerate(items):
            if not isinstance(device, dict):
                raise _bad("STORAGE_DEVICE_INVALID", f"Invalid storage device {device!r}.")
            action = device.get("action")
            if action == "attach":
                raise _bad("ACTION_INVALID", "Attaching existing storages is not emulated.")
            if action not in ("create", "clone"):
                raise _bad("ACTION_INVALID", f"Invalid storage action {action!r}.")
            minimum, origin = 1, ""
            if action == "clone":
                source = device.get("storage")
                if not source:
                    raise _bad("STORAGE_MISSING", "A clone needs the 'storage' to clone.")
                origin = str(source).lower()
                if origin not in TEMPLATES:
                    raise _not_found("storage", str(source))
                minimum = TEMPLATE_SIZE
            size_given = device.get("size")
            if size_given is None and action == "create":
                raise _bad("SIZE_MISSING", "A new storage needs a size.")
            size = (
                max(included, minimum)
                if size_given is None
                else _as_int(size_given, "SIZE_INVALID", minimum, 4096)
            )
            tier = device.get("tier", "maxiops")
            if tier not in TIERS:
                raise _bad("TIER_INVALID", f"Invalid storage tier {tier!r}.")
            title = device.get("title") or f"{server_uuid}-disk{index}"
            created.append(
                StorageRecord(
                    uuid=_new_uuid("01"),
                    title=str(title),
                    zone=zone,
                    size=size,
                    tier=tier,
                    server=server_uuid,
                    origin=origin,
                    labels=_labels(device.get("labels")),
                )
            )
        return created

    def _stop_server(self, match: re.Match[str], query: Any, body: Any) -> tuple[HTTPStatus, Any]:
        record = self.server(match["uuid"])
        options = body.get("stop_server", {}) if isinstance(body, dict) else {}
        if not isinstance(options, dict) or options.get("stop_type", "soft") not in (
            "soft",
            "hard",
        ):
            raise _bad("STOP_TYPE_INVALID", "stop_type must be 'soft' or 'hard'.")
        if "timeout" in options:
            _as_int(options["timeout"], "TIMEOUT_INVALID", 1, 600)
        if record.state != "started":
            raise _illegal_state(record.uuid, record.state)
        record.begin("stopped", self.stop_delay)
        return HTTPStatus.ACCEPTED, {"server": record.details()}

    def _start_server(self, match: re.Match[str], query: Any, body: Any) -> tuple[HTTPStatus, Any]:
        record = self.server(match["uuid"])
        if record.state != "stopped":
            raise _illegal_state(record.uuid, record.state)
        record.begin("started", self.boot_delay)
        return HTTPStatus.OK, {"server": record.details()}

    def _delete_server(
        self, match: re.Match[str], query: dict[str, list[str]], body: Any
    ) -> tuple[HTTPStatus, Any]:
        record = self.server(match["uuid"])
        if record.state != "stopped":
            raise _illegal_state(record.uuid, record.state)
        delete_storages = query.get("storages", ["0"])[-1].lower() in ("1", "true")
        for storage in record.storages:
            if delete_storages:
                del self.storages[storage.uuid]
            else:
                storage.server = None
        del self.servers[record.uuid]
        return HTTPStatus.NO_CONTENT, None

    def _list_storages(self, match: re.Match[str], query: Any, body: Any) -> tuple[HTTPStatus, Any]:
        kind = match["kind"]
        listed: list[dict[str, Any]] = []
        if kind in (None, "template", "public"):
            listed += [
                {
                    "access": "public",
                    "license": 0,
                    "size": TEMPLATE_SIZE,
                    "state": "online",
                    "template_type": "cloud-init",
                    "tier": "maxiops",
                    "title": title,
                    "type": "template",
                    "uuid": template_uuid,
                }
                for template_uuid, title in TEMPLATES.items()
            ]
        if kind in (None, "normal", "private"):
            listed += [storage.view() for storage in self.storages.values()]
        return HTTPStatus.OK, {"storages": {"storage": listed}}

    def _get_storage(self, match: re.Match[str], query: Any, body: Any) -> tuple[HTTPStatus, Any]:
        storage = self.storages.get(match["uuid"].lower())
        if storage is None:
            raise _not_found("storage", match["uuid"])
        return HTTPStatus.OK, {"storage": storage.view()}


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], emulator: UpCloudEmulator) -> None:
        super().__init__(address, _RequestHandler)
        self.emulator = emulator


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes; without this, Nagle's algorithm and the
        # client's delayed ACK add about 40 ms to every answer.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("upcloud emulator: " + format, *args)

    def _handle(self, method: str) -> None:
        emulator = self.server.emulator
        parts = urlsplit(self.path)
        path = parts.path.rstrip("/") or "/"
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if path.startswith(SANDBOX_PREFIX + "/"):
            self._sandbox(emulator, method, path.removeprefix(SANDBOX_PREFIX), raw)
            return
        fault = emulator.cloud.take_fault()
        if fault is not None:
            retry = {"Retry-After": "1"} if fault.status == HTTPStatus.TOO_MANY_REQUESTS else {}
            self._send(fault.status, fault.body(), retry)
            return
        if path != API_PREFIX and not path.startswith(API_PREFIX + "/"):
            self._send(
                HTTPStatus.NOT_FOUND,
                ApiError(HTTPStatus.NOT_FOUND, "ENDPOINT_NOT_FOUND", "Unknown API version.").body(),
            )
            return
        if not emulator.authorized(self.headers.get("Authorization")):
            self._send(
                HTTPStatus.UNAUTHORIZED,
                ApiError(
                    HTTPStatus.UNAUTHORIZED,
                    "AUTHENTICATION_FAILED",
                    "Authentication failed using the given username and password.",
                ).body(),
            )
            return
        try:
            body = json.loads(raw) if raw.strip() else None
            status, payload = emulator.cloud.route(
                method, path.removeprefix(API_PREFIX), parse_qs(parts.query), body
            )
        except json.JSONDecodeError:
            status, payload = (
                HTTPStatus.BAD_REQUEST,
                _bad("JSON_MALFORMED", "The request body is not valid JSON.").body(),
            )
        except ApiError as error:
            status, payload = error.status, error.body()
        self._send(status, payload)

    def _sandbox(self, emulator: UpCloudEmulator, method: str, path: str, raw: bytes) -> None:
        if method == "POST" and path == "/reset":
            emulator.reset()
            self._send(HTTPStatus.OK, {"reset": True})
        elif method == "POST" and path == "/faults":
            try:
                request = FaultRequest.model_validate_json(raw or b"{}")
            except ValidationError as error:
                self._send(HTTPStatus.BAD_REQUEST, _bad("FAULT_INVALID", str(error)).body())
                return
            emulator.inject(request.count, request.kind)
            self._send(HTTPStatus.OK, {"faults": request.model_dump()})
        elif method == "GET" and path == "/state":
            self._send(
                HTTPStatus.OK,
                {"requests_served": emulator.requests_served, "servers": emulator.servers()},
            )
        else:
            self._send(
                HTTPStatus.NOT_FOUND,
                ApiError(HTTPStatus.NOT_FOUND, "ENDPOINT_NOT_FOUND", path).body(),
            )

    def _send(
        self, status: HTTPStatus, payload: Any, headers: dict[str, str] | None = None
    ) -> None:
        data = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        if data:
            self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if data:
            self.wfile.write(data)


class UpCloudEmulator(Sandbox):
    """The UpCloud API 1.3 server subset on ``127.0.0.1``, in a background thread.

    Credentials: HTTP basic ``username``/``password`` or ``Authorization: Bearer <token>``;
    anything else answers 401 ``AUTHENTICATION_FAILED``. ``boot_delay`` and ``stop_delay`` are
    the seconds a server stays in ``maintenance`` after create/start and after stop.
    """

    def __init__(
        self,
        *,
        username: str = "sandbox",
        password: str = "sandbox-password",
        token: str = "sandbox-token",
        boot_delay: float = 0.3,
        stop_delay: float = 0.2,
        port: int = 0,
    ) -> None:
        self.username = username
        self.password = password
        self.token = token
        self.port = port
        self.cloud = Cloud(username, boot_delay, stop_delay)
        self._http: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        state = self.api_root if self._http else "stopped"
        return f"UpCloudEmulator({state})"

    @property
    def api_root(self) -> str:
        if self._http is None:
            raise RuntimeError("the UpCloud emulator is not running")
        return f"http://127.0.0.1:{self._http.server_address[1]}{API_PREFIX}"

    @property
    def requests_served(self) -> int:
        """API requests answered since start or the last reset (faults included)."""
        return self.cloud.requests_served

    @property
    def boot_delay(self) -> float:
        return self.cloud.boot_delay

    @boot_delay.setter
    def boot_delay(self, seconds: float) -> None:
        self.cloud.boot_delay = seconds

    @property
    def stop_delay(self) -> float:
        return self.cloud.stop_delay

    @stop_delay.setter
    def stop_delay(self, seconds: float) -> None:
        self.cloud.stop_delay = seconds

    def start(self) -> str:
        """Bind (a free port unless one was given), serve in a thread, return the API root."""
        if self._http is None:
            self._http = _HTTPServer(("127.0.0.1", self.port), self)
            self._thread = threading.Thread(
                target=self._http.serve_forever,
                kwargs={"poll_interval": 0.05},
                name="upcloud-emulator",
                daemon=True,
            )
            self._thread.start()
        return self.api_root

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._http, self._thread = None, None

    def reset(self) -> None:
        """Forget every server, storage and pending fault; restore the configured delays."""
        self.cloud.reset()

    def inject(self, count: int, kind: FaultKind) -> None:
        """Make the next ``count`` API requests fail: 503, 429 (with Retry-After) or 500."""
        if kind not in get_args(FaultKind):
            raise ValueError(f"unknown fault kind {kind!r}")
        with self.cloud.lock:
            self.cloud.faults.extend([kind] * count)

    def authorized(self, header: str | None) -> bool:
        scheme, _, value = (header or "").partition(" ")
        if scheme.lower() == "bearer":
            return hmac.compare_digest(value.strip().encode(), self.token.encode())
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(value.strip(), validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                return False
            expected = f"{self.username}:{self.password}"
            return hmac.compare_digest(decoded.encode(), expected.encode())
        return False

    def servers(self) -> list[dict[str, Any]]:
        """Every server as ``GET /server/{uuid}`` would show it (for assertions)."""
        with self.cloud.lock:
            return [self.cloud.server(uuid_).details() for uuid_ in list(self.cloud.servers)]

    def storages(self) -> list[dict[str, Any]]:
        """Every private storage as ``GET /storage/{uuid}`` would show it."""
        with self.cloud.lock:
            return [storage.view() for storage in self.cloud.storages.values()]

    def set_state(self, server_uuid: str, state: str) -> None:
        """Force a server into a state (e.g. ``error``), cancelling any transition."""
        with self.cloud.lock:
            record = self.cloud.server(server_uuid)
            record.state, record.target = state, None


def main(argv: list[str] | None = None) -> None:
    """Serve until SIGINT/SIGTERM; print the API root on one line first."""
    parser = argparse.ArgumentParser(
        prog="python -m provisioning.sandbox.upcloud", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0 = any free)")
    parser.add_argument("--username", default="sandbox")
    parser.add_argument("--password", default="sandbox-password")
    parser.add_argument("--token", default="sandbox-token")
    parser.add_argument("--boot-delay", type=float, default=0.3)
    parser.add_argument("--stop-delay", type=float, default=0.2)
    args = parser.parse_args(argv)
    finished = threading.Event()

    def _finish(signum: int, frame: FrameType | None) -> None:
        finished.set()

    signal.signal(signal.SIGTERM, _finish)
    signal.signal(signal.SIGINT, _finish)
    with UpCloudEmulator(
        username=args.username,
        password=args.password,
        token=args.token,
        boot_delay=args.boot_delay,
        stop_delay=args.stop_delay,
        port=args.port,
    ) as emulator:
        print(emulator.api_root, flush=True)
        finished.wait()


if __name__ == "__main__":
    main()
