"""Providers benchmark: create, wait for and delete N servers on moto, four ways.

Run from the repository root: ``.venv/bin/python -m bench.providers`` (about four minutes here,
most of it Ansible; ``--skip-ansible`` leaves it out).

For N = 10 and 50 servers at parallelism 10, against one standing Prefect server and one moto
endpoint (``python -m provisioning.sandbox.moto``, its own process), each approach as a process
timed from spawn to exit:

* ``provision run`` of a generated workflow: N ``server.create`` and N ``server.delete`` (by
  name, each after its create), ``--parallelism 10``;
* ``provision run`` of the N creates, then ``provision destroy`` (two processes);
* plain Prefect: the same EC2 calls as a create and a delete task per server in one flow with
  ``ThreadPoolTaskRunner(max_workers=10)`` (``bench/_aws_worker.py``);
* the floor: the same calls from a plain boto3 script with a ``ThreadPoolExecutor`` of 10;
* Ansible: ``amazon.aws.ec2_instance`` (``state: running, wait: true`` then ``state: absent``),
  one inventory host per server, ``ansible-playbook -f 10``; skipped if not installed.

Client-side provider limits: ``[providers.aws] requests_per_second = 0`` (no token bucket) and
``max_concurrency = 10`` for the main rows. No other approach throttles itself and moto does not
throttle, so the provider's default 20 requests/s would measure the limiter, not the engine (about
six calls per server: over 15 s for 50 servers at 20/s). One extra row runs with the defaults to
show what they cost here. ``max_concurrency = 10`` equals the parallelism, so it never binds.

moto is reset (and warmed up: its first call after a reset is slow) before every run, and every
run must leave no live instance behind.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import httpx

from bench._aws_worker import create, delete, ec2_client
from bench._common import (
    banner,
    child_environment,
    load_average,
    note,
    prefect_environment,
    settle,
    start_prefect_server,
    table,
)

REPOSITORY = Path(__file__).resolve().parent.parent
COUNTS = (10, 50)
WORKERS = 10
IMAGE = "ami-12345678"
WHOLE_RUN_TARGET = 1.10
MARGINAL_TARGET = 1.2
ANSIBLE_TARGET = 8.0
DUMMY_KEY = "bench-dummy-key"
OURS = "provision run (create + delete ops)"
PLAIN = "plain Prefect tasks"
FLOOR = "plain boto3 + thread pool (floor)"
ANSIBLE = "Ansible amazon.aws.ec2_instance -f 10"

PLAYBOOK_TEMPLATE = """\
- hosts: all
  gather_facts: false
  connection: local
  vars:
    aws: &aws
      endpoint_url: "{{ endpoint }}"
      aws_access_key: "{{ access_key }}"
      aws_secret_key: "{{ secret_key }}"
      region: us-east-1
  tasks:
    - name: create and wait until running
      amazon.aws.ec2_instance:
        <<: *aws
        name: "{{ inventory_hostname }}"
        image_id: IMAGE
        instance_type: t3.micro
        state: running
        wait: true
      register: created
    - name: terminate and wait
      amazon.aws.ec2_instance:
        <<: *aws
        instance_ids: "{{ created.instance_ids }}"
        state: absent
        wait: true
"""
PLAYBOOK = PLAYBOOK_TEMPLATE.replace("IMAGE", IMAGE)


@dataclass
class Moto:
    """moto in its own process, so no client shares its interpreter (and GIL) with it."""

    process: subprocess.Popen[str]
    endpoint: str
    client: Any = field(default=None)

    @classmethod
    def start(cls) -> Moto:
        process = subprocess.Popen(
            [sys.executable, "-m", "provisioning.sandbox.moto", "--port", "0"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert process.stdout is not None
        endpoint = process.stdout.readline().strip()
        if not endpoint.startswith("http"):
            process.terminate()
            raise RuntimeError("the moto sandbox did not start")
        return cls(process, endpoint, ec2_client(endpoint, WORKERS))

    def reset(self) -> None:
        """Empty moto, then one full create/delete so every code path is warm before timing."""
        httpx.post(f"{self.endpoint}/_sandbox/reset", timeout=60).raise_for_status()
        delete(self.client, create(self.client, "warm-up"))

    def requests(self) -> int:
        stats = httpx.get(f"{self.endpoint}/_sandbox/stats", timeout=10).json()
        return int(stats["requests_served"])

    def live(self) -> int:
        pages = self.client.get_paginator("describe_instances").paginate(
            Filters=[{"Name": "instance-state-name", "Values": ["pending", "running"]}]
        )
        return sum(len(r["Instances"]) for page in pages for r in page["Reservations"])

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=15)


@dataclass
class Sample:
    seconds: float
    calls: int
    inner: float | None = None


@dataclass
class Bench:
    work: Path
    project: Path
    moto: Moto
    environment: dict[str, str]
    quiet_pids: list[int]

    def run(self, label: str, count: int, body: Callable[[int], float | None]) -> Sample:
        self.moto.reset()
        settle(self.quiet_pids)
        before = self.moto.requests()
        began = time.monotonic()
        inner = body(count)
        seconds = time.monotonic() - began
        calls = self.moto.requests() - before
        left = self.moto.live()
        if left:
            raise RuntimeError(f"{label} with {count} servers left {left} instances running")
        note(
            f"  {label}, N={count}: {seconds:.2f} s, {calls} EC2 calls"
            + (f" ({inner:.2f} s inside)" if inner is not None else "")
        )
        return Sample(seconds, calls, inner)

    def subprocess(self, command: list[str], cwd: Path | None = None) -> str:
        completed = subprocess.run(
            command,
            cwd=cwd or self.project,
            env=self.environment,
            capture_output=True,
            text=True,
            check=False,
        )
        if completed.returncode != 0:
            raise RuntimeError(
                f"{' '.join(command[:4])} failed ({completed.returncode}):\n"
                f"{completed.stdout[-2000:]}\n{completed.stderr[-2000:]}"
            )
        return completed.stdout

    def provision(self, *arguments: str) -> dict[str, Any]:
        output = self.subprocess([sys.executable, "-m", "provisioning.cli", *arguments, "--json"])
        parsed: dict[str, Any] = json.loads(output[output.index("{") :])
        return parsed

    def write_spec(self, count: int, with_deletes: bool) -> Path:
        operations: list[dict[str, Any]] = []
        dependencies: dict[str, list[str]] = {}
        for index in range(count):
            operations.append(
                {
                    "id": f"create-{index}",
                    "kind": "server.create",
                    "provider": "aws",
                    "params": {"name": f"srv-{index}", "image": IMAGE, "size": "t3.micro"},
                }
            )
            if with_deletes:
                operations.append(
                    {
                        "id": f"delete-{index}",
                        "kind": "server.delete",
                        "provider": "aws",
                        "params": {"name": f"srv-{index}"},
                    }
                )
                dependencies[f"delete-{index}"] = [f"create-{index}"]
        spec = self.project / f"servers-{count}-{'cd' if with_deletes else 'c'}.json"
        spec.write_text(
            json.dumps(
                {
                    "name": f"bench-servers-{count}",
                    "operations": operations,
                    "dependencies": dependencies,
                    "configuration": {"parallelism": WORKERS},
                }
            )
        )
        return spec

    def ours(self, *extra: str) -> Callable[[int], float]:
        def body(count: int) -> float:
            spec = self.write_spec(count, with_deletes=True)
            result = self.provision("run", str(spec), "--parallelism", str(WORKERS), *extra)
            if result["status"] != "success":
                raise RuntimeError(f"provision run failed: {result['error']}")
            return float(result["result"]["duration_s"])

        return body

    def ours_destroy(self, count: int) -> None:
        spec = self.write_spec(count, with_deletes=False)
        result = self.provision("run", str(spec), "--parallelism", str(WORKERS))
        if result["status"] != "success":
            raise RuntimeError(f"provision run failed: {result['error']}")
        report = self.provision("destroy", result["context"]["workflow_id"])
        if not all(step["status"] == "done" for step in report["steps"]):
            raise RuntimeError(f"provision destroy failed: {report}")
        return None

    def worker(self, approach: str) -> Callable[[int], float]:
        def body(count: int) -> float:
            output = self.subprocess(
                [
                    sys.executable,
                    "-m",
                    "bench._aws_worker",
                    approach,
                    str(count),
                    self.moto.endpoint,
                    str(WORKERS),
                ],
                cwd=REPOSITORY,
            )
            return float(json.loads(output)["seconds"])

        return body

    def ansible(self, playbook_command: Path) -> Callable[[int], None]:
        directory = self.work / "ansible"
        directory.mkdir(exist_ok=True)
        playbook = directory / "servers.yml"
        playbook.write_text(PLAYBOOK)
        interpreter = playbook_command.parent / "python"

        def body(count: int) -> None:
            inventory = directory / f"inventory-{count}.ini"
            inventory.write_text(
                "[all]\n"
                + "".join(
                    f"srv-{index} ansible_python_interpreter={interpreter}\n"
                    for index in range(count)
                )
            )
            self.subprocess(
                [
                    str(playbook_command),
                    "-i",
                    str(inventory),
                    "-f",
                    str(WORKERS),
                    "-e",
                    f"endpoint={self.moto.endpoint}",
                    "-e",
                    f"access_key={DUMMY_KEY}",
                    "-e",
                    f"secret_key={DUMMY_KEY}",
                    str(playbook),
                ]
            )

        return body


def find_ansible(explicit: str | None) -> Path | None:
    """``ansible-playbook`` whose own Python can import boto3 (amazon.aws needs it)."""
    candidates = [
        explicit,
        shutil.which("ansible-playbook"),
        "/tmp/ansible-venv/bin/ansible-playbook",
    ]
    for candidate in candidates:
        if not candidate or not Path(candidate).is_file():
            continue
        python = Path(candidate).parent / "python"
        probe = subprocess.run(
            [str(python), "-c", "import boto3"], capture_output=True, check=False
        )
        if probe.returncode == 0:
            return Path(candidate)
    return None


def write_project(project: Path, endpoint: str) -> None:
    project.mkdir(parents=True, exist_ok=True)
    (project / "config.user.toml").write_text(
        "[engine]\nretry_backoff = 0.05\n\n"
        "[providers.aws]\n"
        f'endpoint_url = "{endpoint}"\n'
        'region = "us-east-1"\n'
        "timeout = 120\n"
        "max_concurrency = 10\n"
        "requests_per_second = 0\n"
    )


def marginal(samples: dict[int, Sample]) -> float:
    low, high = COUNTS
    return (samples[high].seconds - samples[low].seconds) / (high - low)


def results_table(results: dict[str, dict[int, Sample]]) -> str:
    low, high = COUNTS
    rows = []
    for label, samples in results.items():
        inner = [samples[n].inner for n in COUNTS]
        rows.append(
            [
                label,
                f"{samples[low].seconds:.2f}",
                f"{samples[high].seconds:.2f}",
                f"{1000 * marginal(samples):.0f}",
                str(samples[high].calls),
                " / ".join(f"{value:.2f}" for value in inner if value is not None) or "-",
            ]
        )
    return table(
        f"Create + wait + delete on moto, parallelism {WORKERS} (whole process, spawn to exit)",
        [
            "approach",
            f"N={low} s",
            f"N={high} s",
            "marginal ms/server",
            f"EC2 calls N={high}",
            "inside s N=10 / 50",
        ],
        rows,
    )


def targets_table(results: dict[str, dict[int, Sample]]) -> str:
    ours = results[OURS]
    rows = []
    if PLAIN in results:
        for count in COUNTS:
            ratio = ours[count].seconds / results[PLAIN][count].seconds
            rows.append(
                [
                    f"whole run vs plain Prefect, N={count}",
                    f"{ratio:.2f}x",
                    f"<= {WHOLE_RUN_TARGET:.2f}x",
                    verdict(ratio <= WHOLE_RUN_TARGET),
                ]
            )
    if FLOOR in results:
        ratio = marginal(ours) / marginal(results[FLOOR])
        rows.append(
            [
                "marginal cost per server vs floor",
                f"{ratio:.2f}x",
                f"<= {MARGINAL_TARGET:.1f}x",
                verdict(ratio <= MARGINAL_TARGET),
            ]
        )
    if ANSIBLE in results:
        for count in COUNTS:
            ratio = results[ANSIBLE][count].seconds / ours[count].seconds
            rows.append(
                [
                    f"speed-up over Ansible, N={count}",
                    f"{ratio:.1f}x",
                    f">= {ANSIBLE_TARGET:.0f}x",
                    verdict(ratio >= ANSIBLE_TARGET),
                ]
            )
    return table(
        "Targets (provision run, create + delete ops)", ["ratio", "measured", "target", ""], rows
    )


def verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.providers")
    parser.add_argument("--skip-ansible", action="store_true")
    parser.add_argument("--ansible-playbook", help="path to ansible-playbook (default: search)")
    parser.add_argument("--log-level", default="WARNING", help="PREFECT_LOGGING_LEVEL for all")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument(
        "--only", action="append", default=[], help="run approaches whose label contains this"
    )
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="bench-providers-"))
    for name, value in (
        ("AWS_ACCESS_KEY_ID", DUMMY_KEY),
        ("AWS_SECRET_ACCESS_KEY", DUMMY_KEY),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ):
        os.environ[name] = value
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN"):
        os.environ.pop(name, None)
    boto3.setup_default_session()
    started_load = load_average()
    server = start_prefect_server(work)
    moto = Moto.start()
    results: dict[str, dict[int, Sample]] = {}
    try:
        assert server.process is not None
        project = work / "project"
        write_project(project, moto.endpoint)
        environment = child_environment(
            {
                "PROVISIONING_BASE": str(project),
                "ANSIBLE_LOCAL_TEMP": str(work / "ansible-tmp"),
                "ANSIBLE_LOCALHOST_WARNING": "false",
                "ANSIBLE_NOCOLOR": "true",
                **prefect_environment(server.api_url, work / "prefect-client", args.log_level),
            }
        )
        bench = Bench(work, project, moto, environment, [server.process.pid, moto.process.pid])
        approaches: dict[str, Callable[[int], float | None]] = {
            OURS: bench.ours(),
            "provision run (creates), then provision destroy": bench.ours_destroy,
            "provision run, provider default limits (20 req/s)": bench.ours(
                "--set", "providers.aws.requests_per_second=20"
            ),
            PLAIN: bench.worker("prefect"),
            FLOOR: bench.worker("floor"),
        }
        ansible = None if args.skip_ansible else find_ansible(args.ansible_playbook)
        if ansible is not None:
            approaches[ANSIBLE] = bench.ansible(ansible)
        elif not args.skip_ansible:
            note("Ansible not found: see bench/README.md; or pass --ansible-playbook")
        for label, body in approaches.items():
            if args.only and not any(part in label for part in args.only):
                continue
            results[label] = {count: bench.run(label, count, body) for count in COUNTS}
    finally:
        moto.stop()
        server.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(banner("bench.providers", started_load, args.log_level))
    print(results_table(results))
    print()
    print(targets_table(results))


if __name__ == "__main__":
    main()
