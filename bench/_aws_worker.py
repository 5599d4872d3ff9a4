"""The two baselines of ``bench.providers``, each run as its own process like ``provision run``.

``python -m bench._aws_worker floor|prefect COUNT ENDPOINT WORKERS`` creates COUNT EC2 instances,
waits for each to run, terminates it and waits for it to go, then prints one JSON line with the
seconds the work took (imports and process start excluded; the parent times the whole process).

Both make the same EC2 calls: ``RunInstances``, ``DescribeInstances`` until ``running``,
``TerminateInstances``, ``DescribeInstances`` until ``shutting-down`` or ``terminated``, polling
like the product's drivers do (at once, then after 0.2 s, growing 1.5x up to 2 s).
"""

from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
from botocore.config import Config

IMAGE = "ami-12345678"
SIZE = "t3.micro"
RUNNING = frozenset({"running"})
GONE = frozenset({"shutting-down", "terminated"})


def ec2_client(endpoint: str, workers: int) -> Any:
    """Configured like the product's client: one try per call, a pool as wide as the workers."""
    config = Config(
        retries={"mode": "standard", "total_max_attempts": 1},
        max_pool_connections=max(10, workers),
    )
    return boto3.client("ec2", endpoint_url=endpoint, region_name="us-east-1", config=config)


def wait_for(client: Any, instance_id: str, states: frozenset[str]) -> None:
    delay = 0.2
    while True:
        reservations = client.describe_instances(InstanceIds=[instance_id])["Reservations"]
        state = reservations[0]["Instances"][0]["State"]["Name"] if reservations else "terminated"
        if state in states:
            return
        time.sleep(delay)
        delay = min(delay * 1.5, 2.0)


def create(client: Any, name: str) -> str:
    response = client.run_instances(
        ImageId=IMAGE,
        InstanceType=SIZE,
        MinCount=1,
        MaxCount=1,
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": name}]}],
    )
    instance_id: str = response["Instances"][0]["InstanceId"]
    wait_for(client, instance_id, RUNNING)
    return instance_id


def delete(client: Any, instance_id: str) -> None:
    client.terminate_instances(InstanceIds=[instance_id])
    wait_for(client, instance_id, GONE)


def floor(count: int, endpoint: str, workers: int) -> float:
    """A plain boto3 script: a thread pool, one create-wait-delete-wait per server."""
    client = ec2_client(endpoint, workers)

    def lifecycle(index: int) -> None:
        delete(client, create(client, f"srv-{index}"))

    began = time.monotonic()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(lifecycle, range(count)))
    return time.monotonic() - began


def plain_prefect(count: int, endpoint: str, workers: int) -> float:
    """The same calls as plain Prefect tasks: a create task and a delete task per server."""
    from prefect import flow, task
    from prefect.futures import PrefectFuture
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.task_runners import ThreadPoolTaskRunner

    client = ec2_client(endpoint, workers)

    @task(task_run_name="create {name}")
    def create_server(name: str) -> str:
        return create(client, name)

    @task(task_run_name="delete {instance_id}")
    def delete_server(instance_id: str) -> None:
        delete(client, instance_id)

    @flow(name="plain-servers", persist_result=False)
    def servers(count: int) -> None:
        with ThreadPoolTaskRunner[Any](max_workers=workers) as runner:
            deletes: list[PrefectFuture[None]] = []
            for index in range(count):
                created = runner.submit(create_server, parameters={"name": f"srv-{index}"})
                deletes.append(runner.submit(delete_server, parameters={"instance_id": created}))
            for future in deletes:
                future.result()

    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        began = time.monotonic()
        servers(count)
        return time.monotonic() - began


def main(argv: list[str]) -> None:
    approach, count, endpoint, workers = argv[0], int(argv[1]), argv[2], int(argv[3])
    run = floor if approach == "floor" else plain_prefect
    print(json.dumps({"seconds": run(count, endpoint, workers)}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
