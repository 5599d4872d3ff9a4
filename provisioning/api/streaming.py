"""``GET /workflows/{id}/events``: a run's events as server-sent events.

Runs execute in the runner's processes, not in the API's, so the API's in-process bus rarely sees
them. Prefect's event system sees every run, wherever it executes, so it is the source:

1. the live feed (Prefect's ``/events/out`` websocket, filtered to the flow run) is opened first,
   so nothing that happens while the history is read is missed;
2. the history is read page by page (``/events/filter``, oldest first) and sent;
3. then live events are sent as they come, merged with the in-process bus (a run executed inside
   this process, e.g. in tests, shows up there without a round trip);
4. every event is sent once (the bus reuses the Prefect event id) and the stream ends after the
   flow run's final state event. Should that event be lost (``emit_event`` drops events when its
   connection fails), the flow run's state is polled while idle and the stream ends a few seconds
   after Prefect reports the run final.

Events are the run's own ``provisioning.*`` events and Prefect's ``prefect.flow-run.*`` state
changes (heartbeats left out). Each SSE message has ``id`` (the event id), ``event`` (its name) and
``data`` (JSON: id, event, occurred, resource, payload); the last one is ``event: end``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from prefect.client.orchestration import PrefectClient
from prefect.events.clients import get_events_subscriber
from prefect.events.filters import (
    EventAnyResourceFilter,
    EventFilter,
    EventNameFilter,
    EventOccurredFilter,
    EventOrder,
)
from prefect.events.schemas.events import Event
from prefect.exceptions import ObjectNotFound
from pydantic import BaseModel

from provisioning.api.gateway import prefect_errors
from provisioning.events import SystemEvent, bus

TERMINAL_STATES = ("Completed", "Failed", "Cancelled", "Crashed")
#: Seconds between keep-alive comments, so proxies do not close an idle stream.
KEEPALIVE_S = 15.0
#: Seconds between state polls while idle, and how long after Prefect reports the run final the
#: stream waits for late events before ending without the final state event.
POLL_S = 2.0
GRACE_S = 5.0


class StreamedEvent(BaseModel):
    id: str
    event: str
    occurred: datetime
    resource: dict[str, str]
    payload: dict[str, Any]


def from_prefect(event: Event) -> StreamedEvent:
    return StreamedEvent(
        id=str(event.id),
        event=event.event,
        occurred=event.occurred,
        resource=dict(event.resource.root),
        payload=dict(event.payload),
    )


def from_system(event: SystemEvent) -> StreamedEvent:
    return StreamedEvent(
        id=event.event_id,
        event=event.prefect_event_name,
        occurred=event.occurred,
        resource=event.prefect_resource(),
        payload=event.to_payload(),
    )


def frame(event: str, data: str, event_id: str | None = None) -> str:
    head = f"id: {event_id}\n" if event_id else ""
    return f"{head}event: {event}\ndata: {data}\n\n"


def run_filter(flow_run_id: str, since: datetime) -> EventFilter:
    return EventFilter(
        occurred=EventOccurredFilter(since=since, until=since + timedelta(days=365)),
        any_resource=EventAnyResourceFilter(id=[f"prefect.flow-run.{flow_run_id}"]),
        event=EventNameFilter(
            prefix=["provisioning.", "prefect.flow-run."],
            exclude_name=["prefect.flow-run.heartbeat"],
        ),
        order=EventOrder.ASC,
    )


class RunEventStream:
    """One client's stream of one flow run's events (see the module docstring)."""

    def __init__(
        self,
        client: PrefectClient,
        workflow_id: str,
        flow_run_id: str,
        since: datetime,
        *,
        follow: bool = True,
        timeout: float = 600.0,
    ) -> None:
        self.client = client
        self.workflow_id = workflow_id
        self.flow_run_id = flow_run_id
        self.since = since - timedelta(minutes=1)
        self.follow = follow
        self.timeout = timeout
        self._seen: set[str] = set()
        self._queue: asyncio.Queue[StreamedEvent] = asyncio.Queue()
        self._final_state: str | None = None

    def _is_terminal(self, event: StreamedEvent) -> bool:
        if event.resource.get("prefect.resource.id") != f"prefect.flow-run.{self.flow_run_id}":
            return False
        return event.event.rsplit(".", 1)[-1] in TERMINAL_STATES

    def _send(self, event: StreamedEvent) -> str | None:
        if event.id in self._seen:
            return None
        self._seen.add(event.id)
        if self._is_terminal(event):
            self._final_state = event.event.rsplit(".", 1)[-1]
        return frame(event.event, event.model_dump_json(), event.id)

    def _end(self, reason: str) -> str:
        data = {"flow_run_id": self.flow_run_id, "state": self._final_state, "reason": reason}
        return frame("end", json.dumps(data))

    async def _history(self) -> AsyncIterator[StreamedEvent]:
        async with prefect_errors("reading events"):
            page = await self.client.read_events(
                filter=run_filter(self.flow_run_id, self.since), limit=50
            )
            while True:
                for event in page.events:
                    yield from_prefect(event)
                if page.next_page is None:
                    return
                page = await self.client.read_events_page(str(page.next_page))

    async def _pump(self, source: AsyncIterator[Event]) -> None:
        async for event in source:
            self._queue.put_nowait(from_prefect(event))

    async def frames(self) -> AsyncIterator[str]:
        if not self.follow:
            async for event in self._history():
                if (text := self._send(event)) is not None:
                    yield text
            yield self._end("history")
            return
        loop = asyncio.get_running_loop()

        def deliver(event: SystemEvent) -> None:
            loop.call_soon_threadsafe(self._queue.put_nowait, from_system(event))

        subscription = bus.subscribe(None, deliver, workflow_id=self.workflow_id)
        subscriber = get_events_subscriber(
            filter=run_filter(self.flow_run_id, self.since), reconnection_attempts=3
        )
        pump: asyncio.Task[None] | None = None
        try:
            async with prefect_errors("subscribing to events"), subscriber:
                pump = asyncio.create_task(self._pump(subscriber))
                async for event in self._history():
                    if (text := self._send(event)) is not None:
                        yield text
                async for text in self._live():
                    yield text
        finally:
            subscription.close()
            if pump is not None:
                pump.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pump

    async def _live(self) -> AsyncIterator[str]:
        started = last_sent = last_poll = time.monotonic()
        final_since: float | None = None
        while self._final_state is None:
            now = time.monotonic()
            if now - started >= self.timeout:
                yield self._end("timeout")
                return
            try:
                event = await asyncio.wait_for(self._queue.get(), min(1.0, self.timeout))
            except TimeoutError:
                event = None
            if event is not None:
                if (text := self._send(event)) is not None:
                    last_sent = time.monotonic()
                    yield text
                continue
            now = time.monotonic()
            if now - last_sent >= KEEPALIVE_S:
                last_sent = now
                yield ": keep-alive\n\n"
            if now - last_poll >= POLL_S:
                last_poll = now
                state = await self._polled_final_state()
                final_since = None if state is None else (final_since or now)
                if state is not None and final_since is not None and now - final_since >= GRACE_S:
                    self._final_state = state
                    yield self._end("final state read from the flow run")
                    return
        yield self._end("final state")

    async def _polled_final_state(self) -> str | None:
        async with prefect_errors("reading the flow run"):
            try:
                flow_run = await self.client.read_flow_run(UUID(self.flow_run_id))
            except ObjectNotFound:  # deleted from Prefect while we streamed: nothing will come
                return "Deleted"
        state = flow_run.state
        return str(state.name) if state is not None and state.is_final() else None
