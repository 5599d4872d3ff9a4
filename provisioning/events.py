"""System events: what happened during a run, told to Prefect and to local subscribers.

Each kind is a small frozen pydantic model. :func:`emit` hands an event to two audiences:

* Prefect's event system, as ``provisioning.<kind>`` (``provisioning.resource.created``) about a
  resource ``provisioning.resource.<provider>.<id>``, ``provisioning.workflow.<workflow_id>`` or
  ``provisioning.operation.<workflow_id>.<operation_id>``, related to the workflow and the flow
  run, so automations and the Prefect UI see them;
* the in-process :data:`bus`, which feeds the CLI's live progress and the API's event stream
  without a round trip through a server.

This is the one core module that talks to Prefect, and it imports Prefect only when an event is
sent there: the CLI and the API import this module for the bus and must start fast.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from types import MappingProxyType, TracebackType
from typing import Any, ClassVar, Literal
from uuid import UUID, uuid4

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from provisioning.secrets import mask_secrets

__all__ = [
    "EVENT_KINDS",
    "ConfigurationChanged",
    "DriftKind",
    "EventBus",
    "EventStream",
    "KindFilter",
    "OperationCompleted",
    "OperationEvent",
    "OperationFailed",
    "OperationRetried",
    "OperationStarted",
    "ResourceCreated",
    "ResourceDeleted",
    "ResourceDrifted",
    "ResourceEvent",
    "RollbackExecuted",
    "Subscription",
    "SystemEvent",
    "WorkflowCompleted",
    "WorkflowFailed",
    "WorkflowStarted",
    "bus",
    "emit",
]

logger = logging.getLogger(__name__)

#: Prefix of every Prefect event name and resource id this project emits.
PREFIX = "provisioning"

_kinds: dict[str, type[SystemEvent]] = {}
#: Every event kind (``"workflow.started"``) and its model.
EVENT_KINDS: Mapping[str, type[SystemEvent]] = MappingProxyType(_kinds)


def _now() -> datetime:
    return datetime.now(UTC)


def _new_id() -> str:
    return str(uuid4())


def _workflow_resource_id(workflow_id: str) -> str:
    return f"{PREFIX}.workflow.{workflow_id}"


class SystemEvent(BaseModel):
    """Base of every event kind; ``kind`` names the subclass (``"resource.created"``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: ClassVar[str]

    workflow_id: str
    flow_run_id: str | None = None
    occurred: AwareDatetime = Field(default_factory=_now)
    #: A UUID, reused as the Prefect event id so both audiences can tell the same event apart.
    event_id: str = Field(default_factory=_new_id)

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        if "kind" in cls.__dict__:
            _kinds[cls.kind] = cls

    @field_validator("event_id")
    @classmethod
    def _event_id_is_uuid(cls, value: str) -> str:
        UUID(value)  # raises ValueError, which pydantic reports against the field
        return value

    @property
    def prefect_event_name(self) -> str:
        return f"{PREFIX}.{self.kind}"

    def prefect_resource(self) -> dict[str, str]:
        """The resource the event is about (the workflow unless a subclass knows better)."""
        return {"prefect.resource.id": _workflow_resource_id(self.workflow_id)}

    def prefect_related(self) -> list[dict[str, str]]:
        related = [
            {
                "prefect.resource.id": _workflow_resource_id(self.workflow_id),
                "prefect.resource.role": "workflow",
            }
        ]
        if self.flow_run_id is not None:
            related.append(
                {
                    "prefect.resource.id": f"prefect.flow-run.{self.flow_run_id}",
                    "prefect.resource.role": "flow-run",
                }
            )
        primary = self.prefect_resource()["prefect.resource.id"]
        return [item for item in related if item["prefect.resource.id"] != primary]

    def to_payload(self) -> dict[str, Any]:
        """JSON-safe fields plus ``kind``: the Prefect payload and the API's event body."""
        return {"kind": self.kind, **self.model_dump(mode="json")}


class WorkflowStarted(SystemEvent):
    kind: ClassVar[str] = "workflow.started"

    name: str
    operation_count: int = Field(ge=0)


class WorkflowCompleted(SystemEvent):
    kind: ClassVar[str] = "workflow.completed"

    status: str = "completed"
    duration_s: float = Field(ge=0)


class WorkflowFailed(SystemEvent):
    kind: ClassVar[str] = "workflow.failed"

    error_code: str
    message: str


class ResourceEvent(SystemEvent):
    """A provider resource came or went; Prefect sees the resource itself as the subject."""

    provider: str
    resource_id: str
    operation_id: str

    def prefect_resource(self) -> dict[str, str]:
        return {"prefect.resource.id": f"{PREFIX}.resource.{self.provider}.{self.resource_id}"}


class ResourceCreated(ResourceEvent):
    kind: ClassVar[str] = "resource.created"

    name: str


class ResourceDeleted(ResourceEvent):
    kind: ClassVar[str] = "resource.deleted"


DriftKind = Literal["missing", "state"]


class ResourceDrifted(ResourceEvent):
    """A journalled resource is gone from its provider, or in a state we never put it in."""

    kind: ClassVar[str] = "resource.drifted"

    drift: DriftKind
    expected: str
    actual: str


class ConfigurationChanged(SystemEvent):
    """A setting or file changed; values under secret-looking keys are masked on creation."""

    kind: ClassVar[str] = "configuration.changed"

    #: Where the value lives: a file path, or ``"config"`` for the layered configuration.
    source: str
    key: str
    old_value: Any = None
    new_value: Any = None

    @field_validator("old_value", "new_value")
    @classmethod
    def _mask(cls, value: Any, info: ValidationInfo) -> Any:
        # ``key`` is declared before the values, so it is validated and available here.
        return mask_secrets(str(info.data.get("key", "")), value)


class OperationEvent(SystemEvent):
    """About one operation of a workflow; Prefect sees the operation as the subject."""

    operation_id: str

    def prefect_resource(self) -> dict[str, str]:
        return {"prefect.resource.id": f"{PREFIX}.operation.{self.workflow_id}.{self.operation_id}"}


class OperationStarted(OperationEvent):
    kind: ClassVar[str] = "operation.started"

    #: The operation's kind (``"server.create"``); ``kind`` itself names the event.
    operation_kind: str
    status: str = "running"


class OperationCompleted(OperationEvent):
    kind: ClassVar[str] = "operation.completed"

    operation_kind: str
    #: ``completed``, or e.g. ``cached`` when a resumed run reused a stored result.
    status: str = "completed"
    duration_s: float | None = Field(default=None, ge=0)


class OperationFailed(OperationEvent):
    kind: ClassVar[str] = "operation.failed"

    operation_kind: str
    status: str = "failed"
    error: str
    duration_s: float | None = Field(default=None, ge=0)


class OperationRetried(OperationEvent):
    kind: ClassVar[str] = "operation.retried"

    attempt: int = Field(ge=1)
    delay_s: float = Field(ge=0)
    error: str


class RollbackExecuted(OperationEvent):
    kind: ClassVar[str] = "rollback.executed"

    action_type: str
    status: str
    error: str | None = None


# --------------------------------------------------------------------------- the in-process bus

#: What a subscriber wants: a kind (``"workflow.started"``), a model (``OperationEvent`` = every
#: ``operation.*`` kind), several of these, or None for all.
KindFilter = str | type[SystemEvent] | Iterable[str | type[SystemEvent]] | None

Callback = Callable[[SystemEvent], None]

DEFAULT_MAXSIZE = 1000


def _kind_set(kinds: KindFilter) -> frozenset[str] | None:
    """Kind names wanted; a model class stands for itself and every kind derived from it."""
    if kinds is None:
        return None
    items: Iterable[str | type[SystemEvent]] = [kinds] if isinstance(kinds, str | type) else kinds
    names: set[str] = set()
    for item in items:
        if isinstance(item, str):
            names.add(item)
        else:
            names.update(kind for kind, model in _kinds.items() if issubclass(model, item))
    unknown = sorted(names - _kinds.keys())
    if unknown:
        raise ValueError(
            f"unknown event kind(s) {', '.join(unknown)} (known: {', '.join(sorted(_kinds))})"
        )
    return frozenset(names)


class _Mailbox:
    """Bounded FIFO between the publisher and one subscriber.

    When full it drops the *oldest* event so the publisher never waits and the subscriber, once it
    catches up, sees the latest state (what a progress view wants).
    """

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self._maxsize = maxsize
        self._items: deque[SystemEvent] = deque()
        self._cond = threading.Condition()
        self._busy = False
        self._closed = False
        self.dropped = 0

    @property
    def closed(self) -> bool:
        return self._closed

    def put(self, event: SystemEvent) -> bool:
        """Queue ``event``; False when an older event had to be dropped to make room."""
        with self._cond:
            if self._closed:
                return True
            dropped = len(self._items) >= self._maxsize
            if dropped:
                self._items.popleft()
                self.dropped += 1
            self._items.append(event)
            self._cond.notify_all()
            return not dropped

    def take(self, timeout: float | None = None) -> SystemEvent | None:
        """The next event, marking the consumer busy; None on close or timeout."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._items or self._closed, timeout):
                return None
            if self._closed:
                return None
            self._busy = True
            return self._items.popleft()

    def done(self) -> None:
        with self._cond:
            self._busy = False
            self._cond.notify_all()

    def wait_idle(self, timeout: float | None) -> bool:
        with self._cond:
            return self._cond.wait_for(
                lambda: self._closed or (not self._items and not self._busy), timeout
            )

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._items.clear()
            self._cond.notify_all()


class _Listener:
    """What :class:`Subscription` and :class:`EventStream` share: a filter and a mailbox."""

    def __init__(
        self,
        bus: EventBus,
        kinds: frozenset[str] | None,
        workflow_id: str | None,
        maxsize: int,
    ) -> None:
        self._bus = bus
        self._kinds = kinds
        self._workflow_id = workflow_id
        self._mailbox = _Mailbox(maxsize)

    @property
    def dropped(self) -> int:
        """Events this listener lost because it fell more than ``maxsize`` events behind."""
        return self._mailbox.dropped

    @property
    def closed(self) -> bool:
        return self._mailbox.closed

    def matches(self, event: SystemEvent) -> bool:
        if self._kinds is not None and event.kind not in self._kinds:
            return False
        return self._workflow_id is None or event.workflow_id == self._workflow_id

    def offer(self, event: SystemEvent) -> None:
        if not self._mailbox.put(event) and self._mailbox.dropped == 1:
            logger.warning(
                "%s is too slow: dropping its oldest events (see .dropped for the count)", self
            )

    def close(self) -> None:
        """Stop receiving; events not yet delivered are discarded. Safe to call twice."""
        self._bus._remove(self)
        self._mailbox.close()


class Subscription(_Listener):
    """A callback subscription, delivered on its own thread so it never slows the publisher.

    Exceptions raised by the callback are logged and the subscription carries on.
    """

    def __init__(
        self,
        bus: EventBus,
        kinds: frozenset[str] | None,
        workflow_id: str | None,
        maxsize: int,
        callback: Callback,
    ) -> None:
        super().__init__(bus, kinds, workflow_id, maxsize)
        self._callback = callback
        name = getattr(callback, "__qualname__", type(callback).__name__)
        self._thread = threading.Thread(
            target=self._run, name=f"provisioning-events:{name}", daemon=True
        )
        self._thread.start()

    def __repr__(self) -> str:
        return f"<Subscription {self._thread.name}>"

    def _run(self) -> None:
        while (event := self._mailbox.take()) is not None:
            try:
                self._callback(event)
            # A subscriber is someone else's code: whatever it raises must not stop the
            # deliveries to it, nor reach the publisher (an operation of a running workflow).
            except Exception:
                logger.exception("event subscriber %s failed on %s", self._thread.name, event.kind)
            finally:
                self._mailbox.done()

    def flush(self, timeout: float | None = 5.0) -> bool:
        """Wait until every event published so far was handled (e.g. before a CLI exits).

        Returns False if the callback is still busy after ``timeout`` seconds.
        """
        return self._mailbox.wait_idle(timeout)


class EventStream(_Listener):
    """A pull subscription for consumers that own their loop, such as a server-sent-events
    endpoint: ``with bus.stream(...) as stream: for event in stream: ...``.

    :meth:`get` blocks, so an async endpoint calls it in a worker thread
    (``await anyio.to_thread.run_sync(stream.get, 1.0)``) and sends a keep-alive on ``None``.
    """

    def __repr__(self) -> str:
        return f"<EventStream kinds={sorted(self._kinds) if self._kinds else 'all'}>"

    def get(self, timeout: float | None = None) -> SystemEvent | None:
        """The next event; None after ``timeout`` seconds without one, or once closed."""
        event = self._mailbox.take(timeout)
        self._mailbox.done()
        return event

    def __iter__(self) -> Iterator[SystemEvent]:
        """Events until the stream is closed (from another thread)."""
        while (event := self.get()) is not None:
            yield event

    def __enter__(self) -> EventStream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class EventBus:
    """In-process publish/subscribe for :class:`SystemEvent` s.

    :meth:`publish` only appends to each matching subscriber's bounded mailbox, so its cost does
    not depend on how slow the subscribers are.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Replaced, never mutated, so publish() can read it without taking the lock.
        self._listeners: tuple[_Listener, ...] = ()

    def subscribe(
        self,
        kinds: KindFilter,
        callback: Callback,
        *,
        workflow_id: str | None = None,
        maxsize: int = DEFAULT_MAXSIZE,
    ) -> Subscription:
        """Call ``callback(event)`` on a dedicated thread for each matching event.

        ``kinds`` is a kind name, a model class, several of them, or None for every kind;
        ``workflow_id`` narrows to one workflow. An unknown kind name raises ValueError.
        """
        subscription = Subscription(self, _kind_set(kinds), workflow_id, maxsize, callback)
        self._add(subscription)
        return subscription

    def stream(
        self,
        kinds: KindFilter = None,
        *,
        workflow_id: str | None = None,
        maxsize: int = DEFAULT_MAXSIZE,
    ) -> EventStream:
        """A pull subscription (see :class:`EventStream`); close it when done."""
        stream = EventStream(self, _kind_set(kinds), workflow_id, maxsize)
        self._add(stream)
        return stream

    def publish(self, event: SystemEvent) -> None:
        for listener in self._listeners:
            if listener.matches(event):
                listener.offer(event)

    def _add(self, listener: _Listener) -> None:
        with self._lock:
            self._listeners = (*self._listeners, listener)

    def _remove(self, listener: _Listener) -> None:
        with self._lock:
            self._listeners = tuple(item for item in self._listeners if item is not listener)


#: The process-wide bus :func:`emit` publishes to.
bus = EventBus()


# --------------------------------------------------------------------------- Prefect


def _run_context() -> tuple[bool, str | None]:
    """Whether a flow or task run is active in this thread, and its flow run id."""
    # Only a process that imported Prefect can be inside a run; checking first keeps emit() from
    # paying Prefect's import (about 0.8 s) just to learn that there is no run.
    if "prefect.context" not in sys.modules:
        return False, None
    from prefect.context import FlowRunContext, TaskRunContext

    flow_context = FlowRunContext.get()
    if flow_context is not None and flow_context.flow_run is not None:
        return True, str(flow_context.flow_run.id)
    task_context = TaskRunContext.get()
    if task_context is not None:
        flow_run_id = task_context.task_run.flow_run_id
        return True, str(flow_run_id) if flow_run_id is not None else None
    return flow_context is not None, None


def _prefect_api_configured() -> bool:
    from prefect.settings import get_current_settings

    return bool(get_current_settings().api.url)


def _send_to_prefect(event: SystemEvent, in_run: bool) -> None:
    # Outside a run and without a configured API, Prefect would start a temporary API server
    # (about 10 s) just for this event: the local bus is enough then.
    if not (in_run or _prefect_api_configured()):
        logger.debug("no Prefect API configured: %s stays on the local bus", event.kind)
        return
    from prefect.events import emit_event
    from prefect.exceptions import EventTooLarge

    def send() -> None:
        # emit_event only queues the event for Prefect's background worker, which drops it
        # (logging) if the API cannot be reached: a run never waits for or fails on an event.
        emit_event(
            event=event.prefect_event_name,
            resource=event.prefect_resource(),
            related=event.prefect_related(),
            payload=event.to_payload(),
            occurred=event.occurred,
            id=UUID(event.event_id),
        )

    try:
        if in_run:
            send()
        else:
            contextvars.copy_context().run(_outside_any_run, send)
    except EventTooLarge as error:
        logger.warning("%s not sent to Prefect: %s", event.kind, error)


def _outside_any_run(send: Callable[[], None]) -> None:
    """Call ``send`` with Prefect's run contexts explicitly empty.

    Prefect's event worker adds the run context's flow run to every event, reading it under the
    context variables captured at emit time, but only those that were ever set in the emitting
    thread. An event emitted outside any run would otherwise pick up the flow run that was
    current when the worker's loop started (a flow earlier in the same process).
    """
    from prefect.context import FlowRunContext, TaskRunContext

    run_variables: tuple[contextvars.ContextVar[Any], ...] = (
        FlowRunContext.__var__,
        TaskRunContext.__var__,
    )
    for variable in run_variables:
        variable.set(None)
    send()


def emit(event: SystemEvent) -> None:
    """Tell local subscribers and Prefect that ``event`` happened.

    Inside a flow or task run a missing ``flow_run_id`` is filled from the run context. Never
    raises because of a subscriber or an unreachable Prefect API.
    """
    in_run, flow_run_id = _run_context()
    if event.flow_run_id is None and flow_run_id is not None:
        event = event.model_copy(update={"flow_run_id": flow_run_id})
    bus.publish(event)
    _send_to_prefect(event, in_run)
