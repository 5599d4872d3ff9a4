"""Short-lived answers for what clients poll, so polling does not load the journal or Prefect.

``GET /workflows/{id}/status`` is what clients poll, often many at once. Each answer costs a few
journal queries and, for Prefect's task-run states, a query on the (often SQLite) Prefect server.
So answers are kept briefly (half a second for a status, a second for a live run's Prefect states,
half a minute once the journal says the run finished: not forever, as Prefect records task states
asynchronously and the last may land after the run ended), concurrent requests for the same key
share one lookup instead of stampeding, and refreshes happen in the background.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from provisioning.errors import ProvisioningError

T = TypeVar("T")

logger = logging.getLogger(__name__)


class TtlCache(Generic[T]):
    """Values by key for a caller-chosen time, loaded once however many ask at the same time.

    An expired value is still served for one more ``ttl`` while a refresh runs in the background,
    so a poller never waits for a refresh (that is what keeps the latency tail short under load);
    only a value older than twice its ``ttl`` is waited for.
    """

    def __init__(self, size: int = 1024) -> None:
        self.size = size
        self._entries: OrderedDict[str, tuple[float, float, T]] = OrderedDict()
        self._inflight: dict[str, asyncio.Future[T]] = {}
        self._refreshes: set[asyncio.Task[T]] = set()

    async def get(self, key: str, load: Callable[[], Awaitable[T]], ttl: float) -> T:
        """The cached value, or ``await load()`` (its :class:`ProvisioningError` is not cached)."""
        entry = self._entries.get(key)
        now = time.monotonic()
        if entry is not None:
            expires, stale_after, value = entry
            if now < expires:
                self._entries.move_to_end(key)
                return value
            if now < stale_after:
                if key not in self._inflight:
                    self._refresh(key, load, ttl)
                return value
        pending = self._inflight.get(key)
        if pending is not None:
            await asyncio.wait([pending])
            if not pending.cancelled():
                return pending.result()  # re-raises the loader's error for this waiter too
        return await self._load(key, load, ttl)

    def _refresh(self, key: str, load: Callable[[], Awaitable[T]], ttl: float) -> None:
        task = asyncio.create_task(self._load(key, load, ttl))
        self._refreshes.add(task)
        task.add_done_callback(self._refreshed)

    def _refreshed(self, task: asyncio.Task[T]) -> None:
        self._refreshes.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.debug("background refresh failed: %s", task.exception())

    async def _load(self, key: str, load: Callable[[], Awaitable[T]], ttl: float) -> T:
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            value = await load()
        except ProvisioningError as error:
            self._entries.pop(key, None)
            future.set_exception(error)
            future.exception()  # retrieved: waiters re-raise it, nobody else must log it
            raise
        else:
            future.set_result(value)
        finally:
            self._inflight.pop(key, None)
            if not future.done():  # the load was cancelled or failed unexpectedly: waiters retry
                future.cancel()
        now = time.monotonic()
        self._entries[key] = (now + ttl, now + 2 * ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
        return value


class TaskStateCache:
    """Prefect task-run states (operation id -> state name) of a flow run."""

    def __init__(self, live_ttl: float = 1.0, final_ttl: float = 30.0) -> None:
        self.live_ttl = live_ttl
        self.final_ttl = final_ttl
        self._cache: TtlCache[dict[str, str]] = TtlCache()

    async def get(
        self, flow_run_id: str, load: Callable[[], Awaitable[dict[str, str]]], *, final: bool
    ) -> dict[str, str]:
        return await self._cache.get(flow_run_id, load, self.final_ttl if final else self.live_ttl)
