"""System events: the in-process bus, secret masking, and what Prefect's event system receives."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING
from uuid import UUID

import pytest

from provisioning import events
from provisioning.events import (
    EVENT_KINDS,
    ConfigurationChanged,
    EventBus,
    OperationCompleted,
    OperationEvent,
    OperationRetried,
    ResourceCreated,
    ResourceDeleted,
    SystemEvent,
    WorkflowCompleted,
    WorkflowStarted,
)
from provisioning.secrets import MASK, is_secret_key, mask_secrets

if TYPE_CHECKING:
    from prefect.events.schemas.events import ReceivedEvent


@pytest.fixture
def bus() -> Iterator[EventBus]:
    yield EventBus()


def started(workflow_id: str = "wf-1", n: int = 0) -> WorkflowStarted:
    return WorkflowStarted(workflow_id=workflow_id, name=f"run-{n}", operation_count=n)


def created(workflow_id: str = "wf-1", resource_id: str = "i-1") -> ResourceCreated:
    return ResourceCreated(
        workflow_id=workflow_id,
        provider="aws",
        resource_id=resource_id,
        operation_id="db",
        name="db-1",
    )


class Recorder:
    """A subscriber that remembers what it got."""

    def __init__(self) -> None:
        self.events: list[SystemEvent] = []

    def __call__(self, event: SystemEvent) -> None:
        self.events.append(event)


# ------------------------------------------------------------------------------------ delivery


def test_a_subscriber_to_all_kinds_gets_every_event_in_order(bus: EventBus) -> None:
    recorder = Recorder()
    subscription = bus.subscribe(None, recorder)
    published = [started(), created(), WorkflowCompleted(workflow_id="wf-1", duration_s=1.5)]
    for event in published:
        bus.publish(event)

    assert subscription.flush()
    assert recorder.events == published


def test_kind_filters_accept_names_models_and_several_kinds(bus: EventBus) -> None:
    by_name, by_model, by_both = Recorder(), Recorder(), Recorder()
    subscriptions = [
        bus.subscribe("resource.created", by_name),
        bus.subscribe(WorkflowStarted, by_model),
        bus.subscribe(["resource.created", WorkflowStarted], by_both),
    ]
    start, create = started(), created()
    bus.publish(start)
    bus.publish(create)
    bus.publish(
        ResourceDeleted(workflow_id="wf-1", provider="aws", resource_id="i-1", operation_id="db")
    )

    assert all(subscription.flush() for subscription in subscriptions)
    assert by_name.events == [create]
    assert by_model.events == [start]
    assert by_both.events == [start, create]


def test_a_base_model_stands_for_every_kind_derived_from_it(bus: EventBus) -> None:
    recorder = Recorder()
    subscription = bus.subscribe(OperationEvent, recorder)
    retried = OperationRetried(
        workflow_id="wf-1", operation_id="db", attempt=2, delay_s=1.0, error="throttled"
    )
    bus.publish(started())
    bus.publish(retried)
    bus.publish(created())

    assert subscription.flush()
    assert recorder.events == [retried]


def test_a_subscriber_can_follow_one_workflow(bus: EventBus) -> None:
    recorder = Recorder()
    subscription = bus.subscribe(None, recorder, workflow_id="wf-web")
    bus.publish(started("wf-other"))
    bus.publish(started("wf-web"))

    assert subscription.flush()
    assert [event.workflow_id for event in recorder.events] == ["wf-web"]


def test_an_unknown_kind_is_refused_with_the_known_ones(bus: EventBus) -> None:
    with pytest.raises(ValueError, match=r"resource\.craeted.*known: .*resource\.created"):
        bus.subscribe("resource.craeted", Recorder())


def test_a_closed_subscription_receives_nothing_more(bus: EventBus) -> None:
    recorder = Recorder()
    subscription = bus.subscribe(None, recorder)
    bus.publish(started(n=1))
    assert subscription.flush()
    subscription.close()
    subscription.close()
    bus.publish(started(n=2))

    assert subscription.closed
    assert [event.operation_count for event in recorder.events] == [1]  # type: ignore[attr-defined]


def test_a_slow_subscriber_never_blocks_the_publisher(bus: EventBus) -> None:
    handled: list[SystemEvent] = []

    def slow(event: SystemEvent) -> None:
        time.sleep(0.02)
        handled.append(event)

    subscription = bus.subscribe(None, slow)
    begin = time.perf_counter()
    for n in range(100):
        bus.publish(started(n=n))
    elapsed = time.perf_counter() - begin
    subscription.close()

    # The subscriber needs 2 s for these; the publisher must not wait for any of it.
    assert elapsed < 0.1, f"publishing 100 events took {elapsed:.3f} s"
    assert len(handled) < 100


def test_a_subscriber_that_falls_behind_loses_the_oldest_events_and_counts_them(
    bus: EventBus,
) -> None:
    busy, release = threading.Event(), threading.Event()
    received: list[int] = []

    def blocked(event: SystemEvent) -> None:
        busy.set()
        release.wait(5)
        received.append(event.operation_count)  # type: ignore[attr-defined]

    subscription = bus.subscribe(WorkflowStarted, blocked, maxsize=5)
    bus.publish(started(n=0))
    assert busy.wait(5)
    for n in range(1, 20):
        bus.publish(started(n=n))
    release.set()

    assert subscription.flush()
    assert received == [0, 15, 16, 17, 18, 19]
    assert subscription.dropped == 14


def test_a_failing_subscriber_is_logged_and_keeps_receiving(
    bus: EventBus, caplog: pytest.LogCaptureFixture
) -> None:
    received: list[SystemEvent] = []

    def fragile(event: SystemEvent) -> None:
        received.append(event)
        if len(received) == 1:
            raise RuntimeError("subscriber bug")

    healthy = Recorder()
    subscriptions = [bus.subscribe(None, fragile), bus.subscribe(None, healthy)]
    with caplog.at_level(logging.ERROR, logger="provisioning.events"):
        bus.publish(started(n=1))
        bus.publish(started(n=2))
        assert all(subscription.flush() for subscription in subscriptions)

    assert len(received) == 2
    assert len(healthy.events) == 2
    assert "subscriber bug" in caplog.text
    assert "workflow.started" in caplog.text


def test_a_stream_hands_out_events_to_a_consumer_loop(bus: EventBus) -> None:
    with bus.stream("resource.created", workflow_id="wf-1") as stream:
        assert stream.get(timeout=0.01) is None
        bus.publish(started())
        bus.publish(created(resource_id="i-1"))
        bus.publish(created(workflow_id="wf-2"))
        bus.publish(created(resource_id="i-2"))
        got = [stream.get(timeout=1), stream.get(timeout=1)]
        assert [event.resource_id for event in got if isinstance(event, ResourceCreated)] == [
            "i-1",
            "i-2",
        ]
        assert stream.get(timeout=0.01) is None

    bus.publish(created())
    assert stream.closed
    assert stream.get(timeout=0.01) is None


def test_iterating_a_stream_ends_when_it_is_closed(bus: EventBus) -> None:
    stream = bus.stream()
    seen: list[SystemEvent] = []
    consumer = threading.Thread(target=lambda: seen.extend(stream))
    consumer.start()
    bus.publish(started())
    deadline = time.monotonic() + 5
    while not seen and time.monotonic() < deadline:
        time.sleep(0.005)
    stream.close()
    consumer.join(5)

    assert not consumer.is_alive()
    assert len(seen) == 1


def test_emit_outside_a_run_reaches_the_bus_without_starting_a_prefect_server() -> None:
    recorder = Recorder()
    subscription = events.bus.subscribe(ConfigurationChanged, recorder)
    event = ConfigurationChanged(
        workflow_id="wf-1", source="config", key="parallelism", old_value=10, new_value=4
    )
    begin = time.perf_counter()
    events.emit(event)
    elapsed = time.perf_counter() - begin

    assert subscription.flush()
    subscription.close()
    assert recorder.events == [event]
    # Starting Prefect's temporary server would take 10 s or more; importing settings ~1 s.
    assert elapsed < 5


# ----------------------------------------------------------------------------------- masking


@pytest.mark.parametrize(
    "key",
    [
        "token",
        "providers.upcloud.token",
        "API_Token",
        "db.password",
        "aws_secret_access_key",
        "ssh.private_key",
        "Client-Secret",
    ],
)
def test_secret_looking_keys_are_recognised(key: str) -> None:
    assert is_secret_key(key)


@pytest.mark.parametrize(
    "key",
    [
        "zone",
        "providers.upcloud.zone",
        "token_store.path_x.region",
        "parallelism",
        "credentials_profile",
    ],
)
def test_ordinary_keys_are_not_secret(key: str) -> None:
    assert not is_secret_key(key)


def test_masking_hides_secrets_inside_tables_and_keeps_unset_values_visible() -> None:
    table = {"zone": "de-fra1", "token": "tok-123", "auth": {"password": "hunter2", "user": "me"}}

    assert mask_secrets("providers.upcloud", table) == {
        "zone": "de-fra1",
        "token": MASK,
        "auth": {"password": MASK, "user": "me"},
    }
    assert mask_secrets("providers.upcloud.token", None) is None
    assert mask_secrets("", {"providers": {"aws": {"secret_key": "s"}}}) == {
        "providers": {"aws": {"secret_key": MASK}}
    }


def test_a_configuration_change_never_carries_a_secret() -> None:
    event = ConfigurationChanged(
        workflow_id="wf-1",
        source="config.user.toml",
        key="providers.upcloud.Token",
        old_value="old-tok",
        new_value="new-tok",
    )
    visible = ConfigurationChanged(
        workflow_id="wf-1", source="config", key="parallelism", old_value=10, new_value=4
    )

    assert (event.old_value, event.new_value) == (MASK, MASK)
    assert "tok" not in str(event.to_payload()).replace("Token", "")
    assert (visible.old_value, visible.new_value) == (10, 4)


# ----------------------------------------------------------------------------- Prefect shapes


def test_every_kind_is_registered_under_its_name() -> None:
    assert set(EVENT_KINDS) == {
        "workflow.started",
        "workflow.completed",
        "workflow.failed",
        "resource.created",
        "resource.deleted",
        "resource.drifted",
        "configuration.changed",
        "operation.started",
        "operation.completed",
        "operation.failed",
        "operation.retried",
        "rollback.executed",
    }
    assert all(model.kind == kind for kind, model in EVENT_KINDS.items())


def test_event_ids_must_be_uuids_and_times_must_be_aware() -> None:
    from datetime import datetime

    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="event_id"):
        WorkflowStarted(workflow_id="wf", name="x", operation_count=0, event_id="nope")
    with pytest.raises(ValidationError, match="occurred"):
        WorkflowStarted(
            workflow_id="wf", name="x", operation_count=0, occurred=datetime(2024, 1, 1)
        )


def test_prefect_shapes_name_the_resource_the_event_is_about() -> None:
    resource = created().model_copy(update={"flow_run_id": "fr-1"})
    operation = OperationRetried(
        workflow_id="wf-1", operation_id="web", attempt=2, delay_s=1.0, error="throttled"
    )
    workflow = started()

    assert resource.prefect_event_name == "provisioning.resource.created"
    assert resource.prefect_resource() == {"prefect.resource.id": "provisioning.resource.aws.i-1"}
    assert resource.prefect_related() == [
        {"prefect.resource.id": "provisioning.workflow.wf-1", "prefect.resource.role": "workflow"},
        {"prefect.resource.id": "prefect.flow-run.fr-1", "prefect.resource.role": "flow-run"},
    ]
    assert operation.prefect_resource() == {
        "prefect.resource.id": "provisioning.operation.wf-1.web"
    }
    assert workflow.prefect_resource() == {"prefect.resource.id": "provisioning.workflow.wf-1"}
    assert workflow.prefect_related() == []  # the workflow is already the subject
    assert resource.to_payload()["kind"] == "resource.created"
    assert resource.to_payload()["occurred"].endswith(("Z", "+00:00"))


def _read_prefect_events(ids: list[str], deadline_s: float = 30.0) -> dict[str, ReceivedEvent]:
    """The stored Prefect events with these ids (they are persisted asynchronously)."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventIDFilter

    wanted = [UUID(event_id) for event_id in ids]
    deadline = time.monotonic() + deadline_s
    with get_client(sync_client=True) as client:
        while True:
            page = client.read_events(filter=EventFilter(id=EventIDFilter(id=wanted)), limit=50)
            found = {str(event.id): event for event in page.events}
            if len(found) == len(ids) or time.monotonic() > deadline:
                return found
            time.sleep(0.2)


@pytest.mark.usefixtures("prefect_api")
def test_emitted_events_reach_prefect_with_names_resources_and_payload() -> None:
    flow_run_id = "8a0e9b0c-0c7c-4a55-9b4c-3b1f6f1d2a10"
    sent: list[SystemEvent] = [
        started("wf-prefect").model_copy(update={"flow_run_id": flow_run_id}),
        created("wf-prefect", "i-abc").model_copy(update={"flow_run_id": flow_run_id}),
        OperationCompleted(
            workflow_id="wf-prefect",
            operation_id="db",
            operation_kind="server.create",
            duration_s=0.5,
        ),
        ConfigurationChanged(
            workflow_id="wf-prefect",
            source="config",
            key="upcloud.password",
            old_value="a",
            new_value="b",
        ),
    ]
    for event in sent:
        events.emit(event)

    stored = _read_prefect_events([event.event_id for event in sent])

    assert set(stored) == {event.event_id for event in sent}
    workflow, resource, operation, config = (stored[event.event_id] for event in sent)
    assert workflow.event == "provisioning.workflow.started"
    assert workflow.resource.id == "provisioning.workflow.wf-prefect"
    assert workflow.payload["name"] == "run-0"

    assert resource.event == "provisioning.resource.created"
    assert resource.resource.id == "provisioning.resource.aws.i-abc"
    roles = {item.role: item.id for item in resource.related}
    assert roles["workflow"] == "provisioning.workflow.wf-prefect"
    assert roles["flow-run"] == f"prefect.flow-run.{flow_run_id}"
    assert resource.payload["resource_id"] == "i-abc"

    assert operation.event == "provisioning.operation.completed"
    assert operation.resource.id == "provisioning.operation.wf-prefect.db"
    assert operation.payload["operation_kind"] == "server.create"

    assert config.payload["new_value"] == MASK


@pytest.mark.usefixtures("prefect_api")
def test_inside_a_flow_run_events_name_the_flow_run_and_emitting_is_cheap() -> None:
    from prefect import flow
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    recorder = Recorder()
    subscription = events.bus.subscribe(None, recorder, workflow_id="wf-in-flow")

    @flow
    def emitting() -> tuple[str, float]:
        from prefect.runtime import flow_run

        begin = time.perf_counter()
        for n in range(200):
            events.emit(started("wf-in-flow", n))
        return str(flow_run.id), (time.perf_counter() - begin) / 200

    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        flow_run_id, per_event_s = emitting()

    assert subscription.flush()
    subscription.close()
    assert len(recorder.events) == 200
    assert {event.flow_run_id for event in recorder.events} == {flow_run_id}
    assert per_event_s < 0.005, f"emit took {per_event_s * 1000:.2f} ms per event"

    last = recorder.events[-1]
    stored = _read_prefect_events([last.event_id])
    roles = {item.role: item.id for item in stored[last.event_id].related}
    assert roles["flow-run"] == f"prefect.flow-run.{flow_run_id}"


@pytest.mark.usefixtures("prefect_api")
def test_an_event_sent_after_a_flow_names_no_flow_run_of_its_own() -> None:
    """Prefect's event worker, started inside a flow run, must not tag later events with it."""
    from prefect import flow
    from prefect.events.worker import EventsWorker
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    EventsWorker.drain_all()  # the next emit starts a new worker, inside the flow below

    @flow
    def emitting_first() -> None:
        events.emit(started("wf-before"))

    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        emitting_first()
    flow_run_id = "5d0c8a61-1f7e-4f0e-9a57-0f2c3b0de001"
    after = [
        started("wf-after"),
        created("wf-after").model_copy(update={"flow_run_id": flow_run_id}),
    ]
    for event in after:
        events.emit(event)

    stored = _read_prefect_events([event.event_id for event in after])

    untagged, tagged = (stored[event.event_id] for event in after)
    assert [item.role for item in untagged.related] == []
    assert [(item.role, item.id) for item in tagged.related if item.role == "flow-run"] == [
        ("flow-run", f"prefect.flow-run.{flow_run_id}")
    ]


@pytest.mark.usefixtures("prefect_api")
def test_an_event_too_large_for_prefect_still_reaches_local_subscribers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from prefect.settings import get_current_settings

    recorder = Recorder()
    subscription = events.bus.subscribe(ConfigurationChanged, recorder, workflow_id="wf-big")
    too_big = "x" * (get_current_settings().server.events.maximum_size_bytes + 1)
    event = ConfigurationChanged(
        workflow_id="wf-big", source="/etc/motd", key="content", old_value=None, new_value=too_big
    )

    with caplog.at_level(logging.WARNING, logger="provisioning.events"):
        events.emit(event)

    assert subscription.flush()
    subscription.close()
    assert recorder.events == [event]
    assert "configuration.changed not sent to Prefect" in caplog.text
