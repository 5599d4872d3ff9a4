"""The AWS driver against moto's EC2 over real HTTP: lifecycle, idempotency, error translation."""

from __future__ import annotations

import json
import logging
import os
import pickle
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
import tomli_w
from botocore.exceptions import ClientError

from providers.aws import CAPACITY_MAX_ATTEMPTS, AWSProvider, client_token, translate_error
from providers.base import (
    PermanentProviderError,
    ResourceNotFound,
    ServerSpec,
    ServerState,
    TransientProviderError,
)
from providers.registry import warm_up
from provisioning.config import load_config
from provisioning.errors import is_transient
from provisioning.sandbox.moto import MotoSandbox
from tests.fixtures.aws import DUMMY_SECRET_KEY

AMI = "ami-0123456789abcdef0"
KEY = "wf-test/web"
ROOT = Path(__file__).resolve().parents[2]


def _spec(**overrides: Any) -> ServerSpec:
    fields: dict[str, Any] = {"name": "web-1", "image": AMI, "size": "t3.micro"}
    fields.update(overrides)
    return ServerSpec(**fields)


def _live_instances(sandbox: MotoSandbox) -> list[dict[str, Any]]:
    """What the sandbox holds, read with plain boto3 rather than through the driver."""
    client = boto3.client("ec2", endpoint_url=sandbox.endpoint_url, region_name="us-east-1")
    reservations = client.describe_instances(
        Filters=[{"Name": "instance-state-name", "Values": ["pending", "running"]}]
    )["Reservations"]
    return [instance for r in reservations for instance in r["Instances"]]


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_server_lifecycle(aws_provider: AWSProvider) -> None:
    created = aws_provider.create_server(_spec(), KEY)
    assert created.id.startswith("i-")
    assert created.state in {ServerState.pending, ServerState.running}
    assert created.provider == "aws"

    found = aws_provider.find(KEY)
    assert found is not None and found.id == created.id
    assert aws_provider.get_server(created.id).name == "web-1"
    assert [s.id for s in aws_provider.list_servers()] == [created.id]

    running = aws_provider.wait_for(created.id, ServerState.running, timeout=5)
    assert running.addresses, "a running instance reports its IP addresses"

    aws_provider.delete_server(created.id)
    gone = aws_provider.wait_for(created.id, ServerState.deleted, timeout=5)
    assert gone.state == ServerState.deleted
    assert aws_provider.get_server(created.id).state == ServerState.deleted
    assert aws_provider.list_servers() == []
    assert aws_provider.find(KEY) is None


def test_create_with_the_same_key_returns_the_same_server(
    aws_provider: AWSProvider, moto_sandbox: MotoSandbox
) -> None:
    first = aws_provider.create_server(_spec(), KEY)
    # A second driver, as a resumed run in another process would build.
    again = AWSProvider(dict(aws_provider.config)).create_server(_spec(), KEY)
    assert again.id == first.id
    assert [i["InstanceId"] for i in _live_instances(moto_sandbox)] == [first.id]


def test_a_new_key_after_delete_creates_a_new_server(aws_provider: AWSProvider) -> None:
    first = aws_provider.create_server(_spec(), KEY)
    aws_provider.delete_server(first.id)
    second = aws_provider.create_server(_spec(), KEY)
    assert second.id != first.id


def test_tags_and_labels_round_trip(aws_provider: AWSProvider) -> None:
    created = aws_provider.create_server(_spec(labels={"role": "db", "team": "core"}), KEY)
    server = aws_provider.get_server(created.id)
    assert server.name == "web-1"
    assert server.key == KEY
    assert server.labels == {"role": "db", "team": "core"}
    tags = {t["Key"]: t["Value"] for t in server.raw["Tags"]}
    assert tags["provisioning:workflow"] == "wf-test"
    assert tags["provisioning:operation"] == "web"
    assert tags["provisioning:key"] == KEY
    assert server.raw["InstanceType"] == "t3.micro"
    json.dumps(server.raw)  # datetimes became strings: the record can go into results and APIs


def test_find_matches_the_key_exactly(aws_provider: AWSProvider) -> None:
    aws_provider.create_server(_spec(), "wf-test/web-1")
    assert aws_provider.find("wf-test/web-*") is None
    assert aws_provider.find("wf-test/web") is None


def test_long_keys_still_make_one_server(aws_provider: AWSProvider) -> None:
    key = "wf-" + "x" * 80 + "/operation-with-a-long-name"
    token = client_token(key)
    assert len(token) <= 64 and token.isascii()
    created = aws_provider.create_server(_spec(), key)
    assert aws_provider.create_server(_spec(), key).id == created.id
    assert aws_provider.get_server(created.id).key == key


def test_get_unknown_server_is_not_found_and_delete_is_idempotent(
    aws_provider: AWSProvider,
) -> None:
    with pytest.raises(ResourceNotFound, match=r"InvalidInstanceID\.NotFound"):
        aws_provider.get_server("i-0123456789abcdef0")
    aws_provider.delete_server("i-0123456789abcdef0")
    created = aws_provider.create_server(_spec(), KEY)
    aws_provider.delete_server(created.id)
    aws_provider.delete_server(created.id)


@pytest.mark.parametrize(
    ("kind", "code"), [("throttle", "RequestLimitExceeded"), ("unavailable", "HTTP 503")]
)
def test_throttling_and_outages_are_transient_and_not_retried_by_botocore(
    aws_provider: AWSProvider, moto_sandbox: MotoSandbox, kind: Any, code: str
) -> None:
    moto_sandbox.inject(1, kind)
    with pytest.raises(TransientProviderError) as caught:
        aws_provider.list_servers()
    assert is_transient(caught.value)
    assert code in str(caught.value)
    assert caught.value.context["provider"] == "aws"
    assert "max_attempts" not in caught.value.context
    assert moto_sandbox.requests_served == 1, "botocore must leave retrying to the engine"
    assert aws_provider.list_servers() == []


def test_capacity_shortage_is_transient_with_bounded_attempts(
    aws_provider: AWSProvider, moto_sandbox: MotoSandbox
) -> None:
    moto_sandbox.inject(1, "capacity")
    with pytest.raises(TransientProviderError) as caught:
        aws_provider.create_server(_spec(size="m5.large"), KEY)
    error = caught.value
    assert error.context["max_attempts"] == CAPACITY_MAX_ATTEMPTS == 2
    assert error.message.startswith("InsufficientInstanceCapacity: ")
    assert "m5.large" in error.message
    assert moto_sandbox.requests_served == 2  # the key lookup went through, the launch did not
    # Prefect pickles errors into task states: the engine must still read the bound afterwards.
    assert pickle.loads(pickle.dumps(error)).context["max_attempts"] == CAPACITY_MAX_ATTEMPTS
    assert aws_provider.create_server(_spec(), KEY).key == KEY


def test_malformed_ami_is_permanent_with_one_line_message(
    aws_provider: AWSProvider, moto_sandbox: MotoSandbox
) -> None:
    with pytest.raises(PermanentProviderError) as caught:
        aws_provider.create_server(_spec(image="ami-doesnotexist"), KEY)
    error = caught.value
    assert not is_transient(error)
    assert (
        error.message
        == 'InvalidAMIID.Malformed: Invalid id: "ami-doesnotexist" (expecting "ami-...")'
    )
    assert "\n" not in str(error)
    assert str(error).startswith("provider 'aws': ")
    assert _live_instances(moto_sandbox) == []


def test_invalid_parameter_from_moto_is_permanent(aws_provider: AWSProvider) -> None:
    with pytest.raises(PermanentProviderError) as caught:
        aws_provider.create_server(_spec(zone="us-east-1zz"), KEY)
    assert caught.value.message == "InvalidParameterValue: Invalid Availability Zone (us-east-1zz)"
    assert caught.value.context["aws_code"] == "InvalidParameterValue"


def test_extras_reach_run_instances(aws_provider: AWSProvider, moto_sandbox: MotoSandbox) -> None:
    ec2 = boto3.client("ec2", endpoint_url=moto_sandbox.endpoint_url, region_name="us-east-1")
    vpc = ec2.create_vpc(CidrBlock="10.7.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.7.1.0/24")["Subnet"]["SubnetId"]
    group = ec2.create_security_group(GroupName="web", Description="web", VpcId=vpc)["GroupId"]
    ec2.create_key_pair(KeyName="ops")
    extra = {
        "subnet_id": subnet,
        "key_name": "ops",
        "security_group_ids": [group],
        "user_data": "#!/bin/sh\necho hi\n",
        "EbsOptimized": True,  # not translated: passed to RunInstances as is
    }

    server = aws_provider.create_server(_spec(extra=extra), KEY)

    instance = server.raw
    assert (instance["SubnetId"], instance["KeyName"]) == (subnet, "ops")
    assert [g["GroupId"] for g in instance["SecurityGroups"]] == [group]
    assert instance["EbsOptimized"] is True
    assert server.id in {i["InstanceId"] for i in _live_instances(moto_sandbox)}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            {"subnet": "subnet-1"},
            'Unknown parameter in input: "subnet", must be one of:',
        ),
        (
            {"ImageId": "ami-other"},
            "params.extra.ImageId would replace ImageId, which the driver sets",
        ),
    ],
)
def test_a_bad_extra_fails_before_any_launch_naming_it(
    aws_provider: AWSProvider, moto_sandbox: MotoSandbox, extra: dict[str, Any], message: str
) -> None:
    with pytest.raises(PermanentProviderError) as caught:
        aws_provider.create_server(_spec(extra=extra), KEY)
    assert message in caught.value.message
    assert "\n" not in str(caught.value)
    assert _live_instances(moto_sandbox) == []


def test_missing_image_fails_before_any_launch(
    aws_provider: AWSProvider, moto_sandbox: MotoSandbox
) -> None:
    with pytest.raises(PermanentProviderError, match="needs an image"):
        aws_provider.create_server(_spec(image=None), KEY)
    assert _live_instances(moto_sandbox) == []


def test_check_reports_reachability_without_raising(
    aws_provider: AWSProvider, aws_config: dict[str, Any]
) -> None:
    assert aws_provider.check().reachable is True

    started = time.monotonic()
    closed = AWSProvider({**aws_config, "endpoint_url": f"http://127.0.0.1:{_closed_port()}"})
    status = closed.check()
    assert status.reachable is False
    assert "EndpointConnectionError" in status.message
    assert time.monotonic() - started < 5

    with pytest.raises(TransientProviderError, match="EndpointConnectionError"):
        closed.list_servers()


def test_unknown_credentials_profile_is_reported_not_raised(aws_config: dict[str, Any]) -> None:
    provider = AWSProvider({**aws_config, "credentials_profile": "no-such-profile"})
    status = provider.check()
    assert status.reachable is False
    assert "no-such-profile" in status.message


def test_faults_can_be_injected_over_http(
    aws_provider: AWSProvider, moto_sandbox: MotoSandbox
) -> None:
    url = f"{moto_sandbox.endpoint_url}/_sandbox"
    answer = httpx.post(f"{url}/faults", json={"count": 2, "kind": "throttle"})
    assert answer.json() == {"requests_served": 0, "faults_pending": 2}
    for _ in range(2):
        with pytest.raises(TransientProviderError, match="RequestLimitExceeded"):
            aws_provider.find(KEY)
    assert aws_provider.find(KEY) is None
    assert httpx.get(f"{url}/stats").json() == {"requests_served": 3, "faults_pending": 0}
    assert httpx.post(f"{url}/faults", json={"count": 1, "kind": "bogus"}).status_code == 422
    assert httpx.post(f"{url}/reset").json() == {"requests_served": 0, "faults_pending": 0}


def test_requests_served_counts_api_calls(
    aws_provider: AWSProvider, moto_sandbox: MotoSandbox
) -> None:
    created = aws_provider.create_server(_spec(), KEY)  # lookup + launch
    aws_provider.get_server(created.id)
    aws_provider.create_server(_spec(), KEY)  # lookup only
    assert moto_sandbox.requests_served == 4


def test_credentials_never_leak(
    aws_provider: AWSProvider, moto_sandbox: MotoSandbox, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server = aws_provider.create_server(_spec(), KEY)
    moto_sandbox.inject(1, "throttle")
    with pytest.raises(TransientProviderError) as caught:
        aws_provider.get_server(server.id)
    shown = [server.model_dump_json(), json.dumps(caught.value.to_dict()), caplog.text]
    assert all(DUMMY_SECRET_KEY not in text for text in shown)


def test_sandbox_runs_in_another_process(aws_config: dict[str, Any]) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "provisioning.sandbox.moto", "--port", "0"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT) as child:
        try:
            assert child.stdout is not None
            endpoint = child.stdout.readline().strip()
            assert endpoint.startswith("http://127.0.0.1:")
            provider = AWSProvider({**aws_config, "endpoint_url": endpoint})
            created = provider.create_server(_spec(), KEY)
            httpx.post(f"{endpoint}/_sandbox/faults", json={"count": 1, "kind": "unavailable"})
            with pytest.raises(TransientProviderError, match="HTTP 503"):
                provider.get_server(created.id)
            assert provider.get_server(created.id).key == KEY
        finally:
            child.terminate()
        assert child.wait(timeout=10) == 0


@pytest.mark.parametrize(
    ("code", "status", "expected"),
    [
        ("AuthFailure", 401, PermanentProviderError),
        ("UnauthorizedOperation", 403, PermanentProviderError),
        ("InvalidParameterCombination", 400, PermanentProviderError),
        ("VcpuLimitExceeded", 400, PermanentProviderError),
        ("InstanceLimitExceeded", 400, PermanentProviderError),
        ("Throttling", 400, TransientProviderError),
        ("InternalError", 500, TransientProviderError),
        ("SomethingNew", 502, TransientProviderError),
    ],
)
def test_error_codes_ec2_sends_but_moto_cannot_are_classified(
    code: str, status: int, expected: type[Exception]
) -> None:
    response: Any = {
        "Error": {"Code": code, "Message": "as EC2\nsays it"},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    error = translate_error(ClientError(response, "RunInstances"), "RunInstances")
    assert type(error) is expected
    assert error.message == f"{code}: as EC2 says it"
    assert error.context["provider"] == "aws"


def test_an_endpoint_that_never_answers_is_a_transient_timeout(aws_config: dict[str, Any]) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        provider = AWSProvider(
            {**aws_config, "endpoint_url": f"http://127.0.0.1:{port}", "timeout": 0.3}
        )
        with pytest.raises(TransientProviderError, match="ReadTimeoutError"):
            provider.list_servers()


def test_warm_up_builds_the_client_before_the_first_operation(
    aws_config: dict[str, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "config.user.toml").write_text(tomli_w.dumps({"providers": {"aws": aws_config}}))
    config = load_config(tmp_path)
    provider = AWSProvider(config.provider("aws"))
    provider.warm_up()
    assert provider._ec2 is not None

    caplog.set_level(logging.DEBUG, logger="providers.registry")
    thread = warm_up(["aws", "no-such-provider"], config)
    thread.join(timeout=30)
    assert not thread.is_alive()
    # An unknown provider is left for the first real call to report, with its usual message.
    assert (
        "warming up provider no-such-provider failed: provider 'no-such-provider': unknown"
        in caplog.text
    )
