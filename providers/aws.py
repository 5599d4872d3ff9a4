"""The AWS provider: a "server" is an EC2 instance, driven through boto3.

Idempotency rests on the ``provisioning:key`` tag, looked up before a create unless the engine's
journal shows the key never reached EC2: EC2 honours ``ClientToken`` (which we also send), but
moto ignores it, and a tag lookup also finds a server whose creation a crashed run never heard
back about.

botocore is told to try each call once (``total_max_attempts=1``): the engine retries transient
errors itself, with backoff and jitter, under the per-provider rate limit, and counts its attempts.
If botocore retried too, every engine attempt would hide up to several HTTP calls, multiplying
throttling instead of backing off from it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime
from typing import Any, ClassVar

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    SSLError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)

from providers.base import (
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

__all__ = ["AWSProvider", "client_token", "translate_error"]

logger = logging.getLogger(__name__)

PROVIDER = "aws"
TAG_PREFIX = "provisioning:"
KEY_TAG = "provisioning:key"
WORKFLOW_TAG = "provisioning:workflow"
OPERATION_TAG = "provisioning:operation"
NAME_TAG = "Name"
DEFAULT_INSTANCE_TYPE = "t3.micro"
DEFAULT_REGION = "us-east-1"
#: Instance states a live server can be in; ``shutting-down`` and ``terminated`` count as deleted.
LIVE_STATES = ("pending", "running", "stopping", "stopped")
#: Tries in total (the first included) the engine makes after a capacity shortage: one AZ rarely
#: gains capacity within seconds, so a single retry is worth it and more only delays the failure.
CAPACITY_MAX_ATTEMPTS = 2
_CLIENT_TOKEN_MAX = 64
#: ``spec.extra`` keys the driver translates into ``RunInstances`` parameters. Any other extra is
#: passed to ``RunInstances`` as is (``EbsOptimized``, ``MetadataOptions``, ...), where botocore
#: checks it against EC2's model: an unknown name fails at once, naming the parameter.
EXTRA_PARAMETERS = {
    "subnet_id": "SubnetId",
    "key_name": "KeyName",
    "security_group_ids": "SecurityGroupIds",
    "user_data": "UserData",
    "iam_instance_profile": "IamInstanceProfile",
}
#: ``RunInstances`` parameters the driver sets itself; an extra may not replace them.
_MANAGED_PARAMETERS = frozenset(
    {"ImageId", "InstanceType", "MinCount", "MaxCount", "ClientToken", "TagSpecifications"}
)

STATES: dict[str, ServerState] = {
    "pending": ServerState.pending,
    "running": ServerState.running,
    "stopping": ServerState.stopped,
    "stopped": ServerState.stopped,
    "shutting-down": ServerState.deleted,
    "terminated": ServerState.deleted,
}

_TRANSIENT_CODES = frozenset(
    {
        "RequestLimitExceeded",
        "Throttling",
        "ThrottlingException",
        "ServiceUnavailable",
        "Unavailable",
        "InternalError",
    }
)
_CAPACITY_CODES = frozenset({"InsufficientInstanceCapacity", "InsufficientHostCapacity"})
_NOT_FOUND_CODES = frozenset({"InvalidInstanceID.NotFound"})


def _one_line(text: str) -> str:
    return " ".join(text.split())


def client_token(key: str) -> str:
    """The ``ClientToken`` for ``key``: the key itself when EC2 accepts it (at most 64 ASCII
    characters), else its SHA-256, so that every key still maps to one token."""
    if len(key) <= _CLIENT_TOKEN_MAX and key.isascii() and key.isprintable():
        return key
    return hashlib.sha256(key.encode()).hexdigest()


def _translate_client_error(error: ClientError, api_call: str) -> ProviderError | ResourceNotFound:
    details = error.response.get("Error", {})
    status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    code = str(details.get("Code") or status or "Unknown")
    aws_message = _one_line(str(details.get("Message") or "")) or "no message"
    # An error without an EC2 body (a bare 503 from a load balancer) has its status as its code.
    message = f"HTTP {code}: {aws_message}" if code.isdigit() else f"{code}: {aws_message}"
    context: dict[str, Any] = {"provider": PROVIDER, "aws_code": code, "api_call": api_call}
    if code in _NOT_FOUND_CODES:
        return ResourceNotFound(message, **context)
    if code in _CAPACITY_CODES:
        return TransientProviderError(message, max_attempts=CAPACITY_MAX_ATTEMPTS, **context)
    if code in _TRANSIENT_CODES or status >= 500:
        return TransientProviderError(message, **context)
    return PermanentProviderError(message, **context)


def translate_error(
    error: ClientError | BotoCoreError, api_call: str
) -> ProviderError | ResourceNotFound:
    """The one place where AWS failures become the project's errors.

    * ``InvalidInstanceID.NotFound`` -> :class:`ResourceNotFound`.
    * Throttling (``RequestLimitExceeded``, ``Throttling*``), ``ServiceUnavailable``,
      ``Unavailable``, ``InternalError``, any HTTP 5xx, connection failures and timeouts ->
      :class:`TransientProviderError`.
    * ``InsufficientInstanceCapacity`` -> transient too, with ``context["max_attempts"]`` =
      :data:`CAPACITY_MAX_ATTEMPTS`, which the engine honours as the total number of tries.
    * Everything else EC2 rejects (``InvalidAMIID.*``, ``InvalidParameterValue``,
      ``InvalidParameterCombination``, ``Unsupported``, ``AuthFailure``, ``UnauthorizedOperation``,
      quotas such as ``InstanceLimitExceeded``, ...) and local failures (no credentials, unknown
      profile, TLS) -> :class:`PermanentProviderError`: asking again cannot help.

    Messages are one line, ``"<Code>: <AWS message>"``; ``context`` holds ``provider="aws"``,
    ``aws_code`` and ``api_call`` (the EC2 action).
    """
    if isinstance(error, ClientError):
        return _translate_client_error(error, api_call)
    code = type(error).__name__
    message = f"{code}: {_one_line(str(error))}"
    context: dict[str, Any] = {"provider": PROVIDER, "aws_code": code, "api_call": api_call}
    if isinstance(error, HTTPClientError | BotoConnectionError) and not isinstance(error, SSLError):
        return TransientProviderError(message, **context)
    return PermanentProviderError(message, **context)


@contextmanager
def _translated(api_call: str) -> Iterator[None]:
    try:
        yield
    except (ClientError, BotoCoreError) as error:
        raise translate_error(error, api_call) from error


_sessions: dict[str | None, boto3.session.Session] = {}
_sessions_lock = threading.Lock()


def _session(profile: str | None) -> boto3.session.Session:
    """One boto3 session per profile for the whole process: each new session parses EC2's
    service model again (0.2-0.8 s here), while a client from a known session costs ~30 ms.
    Sessions are not thread-safe, hence the lock around client creation too."""
    with _sessions_lock:
        if profile not in _sessions:
            _sessions[profile] = boto3.session.Session(profile_name=profile)
        return _sessions[profile]


def _json_default(value: object) -> str:
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value)


def _json_safe(record: dict[str, Any]) -> dict[str, Any]:
    safe: dict[str, Any] = json.loads(json.dumps(record, default=_json_default))
    return safe


def _run_parameters(extra: dict[str, Any]) -> dict[str, Any]:
    """``RunInstances`` parameters from a spec's ``extra`` (see :data:`EXTRA_PARAMETERS`)."""
    parameters: dict[str, Any] = {}
    for name, value in extra.items():
        parameter = EXTRA_PARAMETERS.get(name, name)
        if parameter in _MANAGED_PARAMETERS:
            raise PermanentProviderError(
                f"params.extra.{name} would replace {parameter}, which the driver sets"
                " (use image, size, zone or labels)",
                provider=PROVIDER,
                field=f"params.extra.{name}",
            )
        if parameter == "IamInstanceProfile" and isinstance(value, str):
            value = {"Arn": value} if value.startswith("arn:") else {"Name": value}
        parameters[parameter] = value
    return parameters


def _tags(record: dict[str, Any]) -> dict[str, str]:
    return {str(tag["Key"]): str(tag["Value"]) for tag in record.get("Tags") or []}


class AWSProvider(Provider):
    """EC2 instances in one region.

    Config (``[providers.aws]``): ``region``; ``credentials_profile`` (a boto3 profile, empty for
    the usual chain: environment, shared files, instance role); ``endpoint_url`` (empty for AWS,
    else e.g. the moto sandbox); ``timeout`` (seconds: bounds :meth:`wait_for`, and caps each
    call's connect timeout at 10 s and read timeout at 60 s); ``max_concurrency`` (HTTP pool size).
    A spec's ``extra`` adds ``RunInstances`` parameters (:data:`EXTRA_PARAMETERS`).
    """

    name: ClassVar[str] = PROVIDER

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__(config)
        self._client_lock = threading.Lock()
        self._ec2: Any = None

    @property
    def region(self) -> str:
        return str(self.config.get("region") or DEFAULT_REGION)

    @property
    def _client(self) -> Any:
        """The boto3 EC2 client, built on first use (boto3 sessions are not thread-safe, clients
        are; building lazily keeps ``plan`` from paying for it)."""
        with self._client_lock:
            if self._ec2 is None:
                self._ec2 = self._build_client()
            return self._ec2

    def _build_client(self) -> Any:
        profile = str(self.config.get("credentials_profile") or "") or None
        endpoint_url = str(self.config.get("endpoint_url") or "") or None
        config = Config(
            connect_timeout=min(self.timeout, 10.0),
            read_timeout=min(self.timeout, 60.0),
            retries={"mode": "standard", "total_max_attempts": 1},
            max_pool_connections=max(10, int(self.config.get("max_concurrency", 10))),
        )
        with _translated("CreateClient"):
            session = _session(profile)
            with _sessions_lock:
                return session.client(
                    "ec2", region_name=self.region, endpoint_url=endpoint_url, config=config
                )

    def warm_up(self) -> None:
        # The process's first EC2 client parses the service model; later ones reuse it.
        self._client  # noqa: B018

    # -- queries -----------------------------------------------------------------------------

    def _describe(self, **params: Any) -> list[dict[str, Any]]:
        instances: list[dict[str, Any]] = []
        with _translated("DescribeInstances"):
            for page in self._client.get_paginator("describe_instances").paginate(**params):
                for reservation in page.get("Reservations", []):
                    instances.extend(reservation.get("Instances", []))
        return instances

    def _to_server(self, instance: dict[str, Any]) -> Server:
        tags = _tags(instance)
        state_name = str(instance.get("State", {}).get("Name", ""))
        addresses: list[str] = []
        for field in ("PublicIpAddress", "PrivateIpAddress"):
            address = instance.get(field)
            if address and address not in addresses:
                addresses.append(str(address))
        return Server(
            id=str(instance["InstanceId"]),
            provider=PROVIDER,
            name=tags.get(NAME_TAG) or str(instance["InstanceId"]),
            # EC2 documents exactly the six states above; anything else is not a state we know.
            state=STATES.get(state_name, ServerState.error),
            key=tags.get(KEY_TAG),
            addresses=addresses,
            labels={
                k: v for k, v in tags.items() if k != NAME_TAG and not k.startswith(TAG_PREFIX)
            },
            raw=_json_safe(instance),
        )

    def list_servers(self) -> list[Server]:
        instances = self._describe(
            Filters=[{"Name": "instance-state-name", "Values": list(LIVE_STATES)}]
        )
        return [self._to_server(instance) for instance in instances]

    def _tagged(self, tag: str, value: str) -> list[dict[str, Any]]:
        """Live instances whose ``tag`` is exactly ``value`` (one filtered describe)."""
        instances = self._describe(
            Filters=[
                {"Name": f"tag:{tag}", "Values": [value]},
                {"Name": "instance-state-name", "Values": list(LIVE_STATES)},
            ]
        )
        # Tag filters treat * and ? as wildcards: keep exact matches only.
        return [instance for instance in instances if _tags(instance).get(tag) == value]

    def find_by_name(self, name: str) -> list[Server]:
        return [self._to_server(instance) for instance in self._tagged("Name", name)]

    def find(self, key: str) -> Server | None:
        ours = self._tagged(KEY_TAG, key)
        if not ours:
            return None
        # Should two ever exist (a race EC2's ClientToken would have prevented), pick the first.
        oldest = min(ours, key=lambda i: (str(i.get("LaunchTime", "")), str(i["InstanceId"])))
        return self._to_server(oldest)

    def get_server(self, server_id: str) -> Server:
        instances = self._describe(InstanceIds=[server_id])
        if not instances:
            raise ResourceNotFound(f"instance {server_id} does not exist", provider=PROVIDER)
        return self._to_server(instances[0])

    # -- changes -----------------------------------------------------------------------------

    def create_server(self, spec: ServerSpec, key: str) -> Server:
        return self._existing_or_new(spec, key)

    def create_new_server(self, spec: ServerSpec, key: str) -> Server:
        if not spec.image:
            raise PermanentProviderError(
                "server.create needs an image (an AMI id)", provider=PROVIDER, field="params.image"
            )
        workflow_id, _, operation_id = key.partition("/")
        tags = {
            **spec.labels,
            NAME_TAG: spec.name,
            WORKFLOW_TAG: workflow_id,
            OPERATION_TAG: operation_id,
            KEY_TAG: key,
        }
        tag_list = [{"Key": k, "Value": v} for k, v in tags.items()]
        params: dict[str, Any] = {
            **_run_parameters(spec.extra),
            "ImageId": spec.image,
            "InstanceType": spec.size or DEFAULT_INSTANCE_TYPE,
            "MinCount": 1,
            "MaxCount": 1,
            "ClientToken": client_token(key),
            "TagSpecifications": [{"ResourceType": "instance", "Tags": tag_list}],
        }
        if spec.zone:
            params["Placement"] = {**params.get("Placement", {}), "AvailabilityZone": spec.zone}
        with _translated("RunInstances"):
            response = self._client.run_instances(**params)
        instance: dict[str, Any] = response["Instances"][0]
        # RunInstances may answer before the tags show on the record; they were applied with it.
        instance.setdefault("Tags", tag_list)
        logger.info("created instance %s for key %s", instance["InstanceId"], key)
        return self._to_server(instance)

    def delete_server(self, server_id: str) -> None:
        try:
            with _translated("TerminateInstances"):
                self._client.terminate_instances(InstanceIds=[server_id])
        except ResourceNotFound:
            logger.debug("instance %s is already gone", server_id)
            return
        logger.info("terminating instance %s", server_id)

    def check(self) -> ProviderStatus:
        try:
            with _translated("DescribeInstances"):
                self._client.describe_instances(MaxResults=5)
        except (ProviderError, ResourceNotFound) as error:
            return ProviderStatus(provider=PROVIDER, reachable=False, message=error.message)
        where = self.config.get("endpoint_url") or "AWS"
        return ProviderStatus(
            provider=PROVIDER, reachable=True, message=f"EC2 {self.region} at {where}"
        )
