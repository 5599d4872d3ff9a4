"""UpCloud driver: the provider interface translated to the UpCloud API 1.3 over ``httpx``.

The driver only translates. Requests go to ``api_endpoint`` (the real API, or the local emulator
in ``provisioning.sandbox.upcloud``); answers become :class:`Server` records; failures become the
project's error classes in one place, :func:`translate_error`, so the engine can tell what to
retry (429, 5xx, network trouble) from what to report at once (bad plan, bad credentials).

Idempotency rests on a label: every server we create carries ``provisioning-key``, and
:meth:`UpCloudProvider.find` asks the API for it (``GET /server?label=key=value``) before a
create, unless the engine's journal shows the key never reached the API. Label values go through
:func:`encode_label_value` so the key survives any character a workflow or operation id may hold,
including ``/``, ``=`` and ``,`` that would otherwise blur a ``label=key=value`` filter.

Credentials come from the config (``token``, or ``username`` and ``password``) or the
environment (``UPCLOUD_TOKEN``, or ``UPCLOUD_USERNAME`` and ``UPCLOUD_PASSWORD``). They live only
inside the ``httpx`` auth object: never in logs, errors, ``repr`` or returned records.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Generator
from typing import Any, ClassVar, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, Field, ValidationError

from providers.base import (
    KEY_LABEL,
    OPERATION_LABEL,
    WORKFLOW_LABEL,
    PermanentProviderError,
    Provider,
    ProviderStatus,
    ProviderUnavailable,
    ResourceNotFound,
    Server,
    ServerSpec,
    ServerState,
    TransientProviderError,
)
from provisioning.errors import ProvisioningError

__all__ = ["UpCloudProvider", "decode_label_value", "encode_label_value", "translate_error"]

logger = logging.getLogger(__name__)

PROVIDER = "upcloud"
DEFAULT_ENDPOINT = "https://api.upcloud.com/1.3"
DEFAULT_ZONE = "de-fra1"
DEFAULT_PLAN = "1xCPU-1GB"
#: Ubuntu Server 24.04 LTS, a public template in every zone.
DEFAULT_TEMPLATE = "01000000-0000-4000-8000-000030240200"
#: Longest single HTTP call; long waits are polling loops of short calls instead.
MAX_REQUEST_TIMEOUT = 30.0

STATES: dict[str, ServerState] = {
    "maintenance": ServerState.pending,
    "started": ServerState.running,
    "stopped": ServerState.stopped,
    "error": ServerState.error,
}
OUR_LABELS = (KEY_LABEL, WORKFLOW_LABEL, OPERATION_LABEL)
LABEL_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{1,31}")
LABEL_VALUE_MAX = 255
UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
HOSTNAME_INVALID = re.compile(r"[^a-z0-9.-]+")
#: ``spec.extra`` keys the driver understands; any other extra is sent as a server attribute.
EXTRA_KEYS = ("storage_size", "storage_tier", "ssh_keys", "login_user", "hostname")
_SAFE_LABEL_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")


def encode_label_value(text: str) -> str:
    """Spell ``text`` with ``[A-Za-z0-9._-]`` only: every other UTF-8 byte becomes ``~XX``.

    Reversible (``~`` itself is escaped), readable for ordinary ids (``wf-web/db`` ->
    ``wf-web~2Fdb``), and safe inside a ``label=key=value`` query whatever the id contains.
    """
    return "".join(
        chr(byte) if chr(byte) in _SAFE_LABEL_CHARS else f"~{byte:02X}"
        for byte in text.encode("utf-8")
    )


def decode_label_value(text: str) -> str:
    """Inverse of :func:`encode_label_value`; text that was never encoded comes back as is."""
    return re.sub(
        r"(?:~[0-9A-F]{2})+",
        lambda run: bytes.fromhex(run.group(0).replace("~", "")).decode("utf-8", "replace"),
        text,
    )


# --- the API's shapes, as far as the driver reads them ----------------------------------------


class _Label(BaseModel):
    key: str
    value: str = ""


class _Labels(BaseModel):
    label: list[_Label] = Field(default_factory=list)


class _IpAddress(BaseModel):
    address: str
    access: str = ""
    family: str = ""


class _IpAddresses(BaseModel):
    ip_address: list[_IpAddress] = Field(default_factory=list)


class _ApiServer(BaseModel):
    uuid: str
    state: str
    title: str = ""
    hostname: str = ""
    labels: _Labels = Field(default_factory=_Labels)
    ip_addresses: _IpAddresses = Field(default_factory=_IpAddresses)


class _ServerEnvelope(BaseModel):
    server: dict[str, Any]


class _ServerList(BaseModel):
    server: list[dict[str, Any]] = Field(default_factory=list)


class _ServersEnvelope(BaseModel):
    servers: _ServerList


class _Template(BaseModel):
    uuid: str
    title: str = ""


class _TemplateList(BaseModel):
    storage: list[_Template] = Field(default_factory=list)


class _StoragesEnvelope(BaseModel):
    storages: _TemplateList


class _ApiErrorBody(BaseModel):
    error_code: str
    error_message: str = ""


class _ErrorEnvelope(BaseModel):
    error: _ApiErrorBody


_Model = TypeVar("_Model", bound=BaseModel)


def _parse(model: type[_Model], payload: Any) -> _Model:
    try:
        return model.model_validate(payload)
    except ValidationError as error:
        raise PermanentProviderError(
            f"unexpected answer from the UpCloud API ({model.__name__.strip('_')}: "
            f"{error.error_count()} problem(s), first at "
            f"{'.'.join(str(part) for part in error.errors()[0]['loc'])})",
            provider=PROVIDER,
        ) from error


# --- errors -----------------------------------------------------------------------------------


def translate_error(failure: httpx.Response | httpx.HTTPError) -> ProvisioningError:
    """The project's error for a failed call: an error answer, or no answer at all.

    429 and 5xx and transport trouble (timeouts, refused or reset connections) are transient; a
    missing server is :class:`ResourceNotFound`; 401/403 and every other 4xx (a missing template
    included) are permanent, with the API's words on one line: ``<error_code>: <error_message>``.
    """
    if isinstance(failure, httpx.UnsupportedProtocol):
        return ProviderUnavailable(
            f"api_endpoint is not an http(s) URL ({failure})", provider=PROVIDER
        )
    if isinstance(failure, httpx.TransportError):
        return TransientProviderError(
            f"no answer from the UpCloud API ({type(failure).__name__}: {failure})",
            provider=PROVIDER,
        )
    if isinstance(failure, httpx.HTTPError):
        return PermanentProviderError(
            f"UpCloud API call failed ({type(failure).__name__}: {failure})", provider=PROVIDER
        )
    status = failure.status_code
    try:
        body = _ErrorEnvelope.model_validate_json(failure.content).error
        code, message = body.error_code, body.error_message
    except ValidationError:
        code, message = f"HTTP_{status}", failure.reason_phrase or "error"
    line = f"{code}: {message}"
    context: dict[str, Any] = {"provider": PROVIDER, "http_status": status, "api_code": code}
    if status == 429 or status >= 500:
        return TransientProviderError(
            line, retry_after=failure.headers.get("Retry-After"), **context
        )
    if status == 404 and code == "SERVER_NOT_FOUND":
        return ResourceNotFound(line, **context)
    if status in (401, 403):
        return PermanentProviderError(
            f"authentication failed ({line}); check UPCLOUD_TOKEN, or UPCLOUD_USERNAME and "
            "UPCLOUD_PASSWORD",
            **context,
        )
    return PermanentProviderError(line, **context)


def _has_api_code(error: ProvisioningError, code: str) -> bool:
    return error.context.get("api_code") == code


# --- credentials ------------------------------------------------------------------------------


class _BearerToken(httpx.Auth):
    """``Authorization: Bearer``, held in an auth object so the token stays out of headers."""

    def __init__(self, token: str) -> None:
        self._token = token

    def __repr__(self) -> str:
        return "_BearerToken(***)"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self._token}"
        yield request


def _credentials(config: dict[str, Any]) -> httpx.Auth | None:
    """Config before environment; within each, a token before username and password."""
    sources = (
        (config.get("token"), config.get("username"), config.get("password")),
        (
            os.environ.get("UPCLOUD_TOKEN"),
            os.environ.get("UPCLOUD_USERNAME"),
            os.environ.get("UPCLOUD_PASSWORD"),
        ),
    )
    for token, username, password in sources:
        if token:
            return _BearerToken(str(token))
        if username and password:
            return httpx.BasicAuth(str(username), str(password))
    return None


# --- the driver -------------------------------------------------------------------------------


class UpCloudProvider(Provider):
    """Servers on UpCloud. Config: ``[providers.upcloud]`` (``zone``, ``api_endpoint``,
    ``timeout``; optionally ``plan``, ``template``, ``poll_interval`` and credentials)."""

    name: ClassVar[str] = PROVIDER

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__(config)
        endpoint = str(self.config.get("api_endpoint") or DEFAULT_ENDPOINT)
        self._auth = _credentials(self.config)
        try:
            self._client = httpx.Client(
                base_url=endpoint,
                timeout=min(self.timeout, MAX_REQUEST_TIMEOUT),
                headers={"Accept": "application/json", "User-Agent": "provisioning-upcloud"},
            )
        except httpx.InvalidURL as error:
            raise ProviderUnavailable(
                f"api_endpoint is not a valid URL ({error})", provider=PROVIDER
            ) from error

    def __repr__(self) -> str:
        return f"UpCloudProvider(api_endpoint={self._endpoint!r})"

    @property
    def _endpoint(self) -> str:
        """The API root without any user:password someone put in the URL."""
        return str(self._client.base_url.copy_with(username=None, password=None))

    def close(self) -> None:
        """Release pooled connections."""
        self._client.close()

    # --- the interface --------------------------------------------------------------------

    def list_servers(self) -> list[Server]:
        listing = _parse(_ServersEnvelope, self._call("GET", "server"))
        return [self._server(record) for record in listing.servers.server]

    def find(self, key: str) -> Server | None:
        """Ask the API for the server labelled with ``key``; check the answer ourselves too."""
        wanted = f"{KEY_LABEL}={encode_label_value(key)}"
        listing = _parse(_ServersEnvelope, self._call("GET", "server", params={"label": wanted}))
        for record in listing.servers.server:
            server = self._server(record)
            if server.key == key:
                return server
        return None

    def create_server(self, spec: ServerSpec, key: str) -> Server:
        return self._existing_or_new(spec, key)

    def create_new_server(self, spec: ServerSpec, key: str) -> Server:
        body = self._create_body(spec, key)
        created = _parse(_ServerEnvelope, self._call("POST", "server", json={"server": body}))
        server = self._server(created.server)
        logger.info("upcloud: created server %s (%s) for key %s", server.id, server.name, key)
        return server

    def get_server(self, server_id: str) -> Server:
        return self._server(self._record(server_id))

    def delete_server(self, server_id: str) -> None:
        """Stop (hard) if needed, wait for ``stopped``, delete with its storages; idempotent."""
        deadline = time.monotonic() + self.timeout
        delay = self._poll_interval
        while True:
            try:
                state = _parse(_ApiServer, self._record(server_id)).state
                if state == "stopped" and self._delete_stopped(server_id):
                    return
                if state == "started":
                    self._stop(server_id)
            except ResourceNotFound:
                logger.info("upcloud: server %s is gone", server_id)
                return
            if time.monotonic() >= deadline:
                raise TransientProviderError(
                    f"server {server_id} still '{state}' after {self.timeout:g}s; not deleted",
                    provider=PROVIDER,
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 2.0)

    def check(self) -> ProviderStatus:
        try:
            self._call("GET", "account")
        except ProvisioningError as error:
            return ProviderStatus(provider=PROVIDER, reachable=False, message=str(error))
        return ProviderStatus(
            provider=PROVIDER,
            reachable=True,
            message=f"UpCloud API at {self._endpoint} accepted the credentials",
        )

    # --- helpers --------------------------------------------------------------------------

    @property
    def _poll_interval(self) -> float:
        return float(self.config.get("poll_interval", 0.2))

    def _call(
        self,
        method: str,
        path: str,
        *,
        json: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
    ) -> Any:
        if self._auth is None:
            raise ProviderUnavailable(
                "no UpCloud credentials: set UPCLOUD_TOKEN, or UPCLOUD_USERNAME and "
                "UPCLOUD_PASSWORD (or token / username and password in [providers.upcloud])",
                provider=PROVIDER,
            )
        try:
            response = self._client.request(method, path, json=json, params=params, auth=self._auth)
        except httpx.HTTPError as error:
            logger.debug("upcloud: %s %s failed: %s", method, path, type(error).__name__)
            raise translate_error(error) from error
        logger.debug("upcloud: %s %s -> %s", method, path, response.status_code)
        if response.is_error:
            raise translate_error(response)
        if not response.content:
            return {}
        try:
            return response.json()
        except ValueError as error:
            raise PermanentProviderError(
                f"the UpCloud API answered {method} {path} with something other than JSON",
                provider=PROVIDER,
            ) from error

    def _record(self, server_id: str) -> dict[str, Any]:
        return _parse(
            _ServerEnvelope, self._call("GET", f"server/{quote(server_id, safe='')}")
        ).server

    def _stop(self, server_id: str) -> None:
        body = {"stop_server": {"stop_type": "hard", "timeout": "60"}}
        try:
            self._call("POST", f"server/{quote(server_id, safe='')}/stop", json=body)
        except PermanentProviderError as error:
            if not _has_api_code(error, "SERVER_STATE_ILLEGAL"):
                raise
        logger.info("upcloud: stopping server %s before deleting it", server_id)

    def _delete_stopped(self, server_id: str) -> bool:
        """Delete a stopped server and its disks; False if it changed state meanwhile."""
        try:
            self._call("DELETE", f"server/{quote(server_id, safe='')}", params={"storages": "1"})
        except PermanentProviderError as error:
            if _has_api_code(error, "SERVER_STATE_ILLEGAL"):
                return False
            raise
        logger.info("upcloud: deleted server %s and its storages", server_id)
        return True

    def _server(self, record: dict[str, Any]) -> Server:
        parsed = _parse(_ApiServer, record)
        labels = {
            label.key: decode_label_value(label.value) if label.key in OUR_LABELS else label.value
            for label in parsed.labels.label
        }
        addresses = sorted(
            parsed.ip_addresses.ip_address,
            key=lambda ip: (ip.access != "public", ip.family != "IPv4"),
        )
        state = STATES.get(parsed.state)
        if state is None:
            logger.warning("upcloud: server %s in unknown state %r", parsed.uuid, parsed.state)
            state = ServerState.pending
        return Server(
            id=parsed.uuid,
            provider=PROVIDER,
            name=parsed.title or parsed.hostname,
            state=state,
            key=labels.get(KEY_LABEL),
            addresses=[ip.address for ip in addresses],
            labels=labels,
            raw=record,
        )

    def _create_body(self, spec: ServerSpec, key: str) -> dict[str, Any]:
        extra = dict(spec.extra)
        known = {name: extra.pop(name) for name in EXTRA_KEYS if name in extra}
        storage: dict[str, Any] = {
            "action": "clone",
            "storage": self._template(
                spec.image or self.config.get("template") or DEFAULT_TEMPLATE
            ),
            "title": f"{spec.name} OS disk",
            "tier": known.get("storage_tier", "maxiops"),
        }
        if "storage_size" in known:
            storage["size"] = known["storage_size"]
        body: dict[str, Any] = {
            **extra,
            "zone": spec.zone or self.config.get("zone") or DEFAULT_ZONE,
            "title": spec.name,
            "hostname": known.get("hostname") or _hostname(spec.name),
            "plan": spec.size or self.config.get("plan") or DEFAULT_PLAN,
            "metadata": "yes",
            "password_delivery": "none",
            "storage_devices": {"storage_device": [storage]},
            "labels": {"label": _labels(spec.labels, key)},
        }
        if "ssh_keys" in known or "login_user" in known:
            body["login_user"] = {
                "username": known.get("login_user", "root"),
                "create_password": "no",
                "ssh_keys": {"ssh_key": list(known.get("ssh_keys", []))},
            }
        return body

    def _template(self, image: str) -> str:
        """A template uuid as given, or the uuid of the public template with that title."""
        if UUID.fullmatch(image):
            return image
        templates = _parse(_StoragesEnvelope, self._call("GET", "storage/template"))
        for template in templates.storages.storage:
            if template.title.casefold() == image.casefold():
                return template.uuid
        raise PermanentProviderError(
            f"no public UpCloud template is called {image!r} (give a template uuid or exact title)",
            provider=PROVIDER,
            field="params.image",
        )


def _hostname(name: str) -> str:
    """A valid hostname from a server name: lower case, other characters folded into '-'."""
    labels = (HOSTNAME_INVALID.sub("-", part.lower()).strip("-")[:63] for part in name.split("."))
    return ".".join(label for label in labels if label)[:128].strip(".-") or "server"


def _labels(user_labels: dict[str, str], key: str) -> list[dict[str, str]]:
    """The user's labels (validated as UpCloud requires) plus the three that mark a server ours."""
    for label_key, value in user_labels.items():
        if not LABEL_KEY.fullmatch(label_key):
            raise PermanentProviderError(
                f"label {label_key!r} is not a valid UpCloud label key (2-32 letters, digits, "
                "'-' or '_', starting with a letter or digit)",
                provider=PROVIDER,
                field=f"params.labels.{label_key}",
            )
        if len(value) > LABEL_VALUE_MAX:
            raise PermanentProviderError(
                f"label {label_key!r} is longer than {LABEL_VALUE_MAX} characters",
                provider=PROVIDER,
                field=f"params.labels.{label_key}",
            )
    workflow_id, _, operation_id = key.rpartition("/")
    ours = {KEY_LABEL: key, WORKFLOW_LABEL: workflow_id, OPERATION_LABEL: operation_id}
    encoded = {name: encode_label_value(value) for name, value in ours.items()}
    if len(encoded[KEY_LABEL]) > LABEL_VALUE_MAX:
        raise PermanentProviderError(
            f"idempotency key {key!r} is too long for an UpCloud label "
            f"({len(encoded[KEY_LABEL])} > {LABEL_VALUE_MAX} characters once encoded)",
            provider=PROVIDER,
        )
    merged = {k: v for k, v in user_labels.items() if k.lower() not in OUR_LABELS} | encoded
    return [{"key": name, "value": value} for name, value in merged.items()]
