"""Per-provider limits shared by every operation of a run, and a short read cache.

Fifty ``server.create`` operations at parallelism 50 must not trip an API's rate limit, so every
call to a provider goes through one :class:`LimitedProvider` per provider and run: a semaphore caps
calls in flight (``max_concurrency``) and a token bucket caps their rate (``requests_per_second``).
These are in-process limits; Prefect's global concurrency limits would need a server round trip per
call and a limit object created ahead, for the same effect inside one flow run.

The lookups ``list_servers``, ``find`` and ``find_by_name`` are cached for ``cache_ttl`` seconds,
so that the operations of one run asking the same question share one answer; creates and deletes
(even failed ones) clear the cache. ``get_server`` is never cached: ``wait_for`` polls it to see a
state change, and a cached answer would hide one. Prefect's task caching does not fit here: these
reads happen inside a task, not as tasks.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from providers.base import Provider, ProviderStatus, Server, ServerSpec, ServerState

T = TypeVar("T")


class TokenBucket:
    """At most ``rate`` acquisitions per second on average, bursts up to ``burst``."""

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self.rate = rate
        self.capacity = burst if burst is not None else max(rate, 1.0)
        self.tokens = self.capacity
        self.updated = time.monotonic()
        self.lock = threading.Lock()

    def acquire(self) -> None:
        if self.rate <= 0:
            return
        while True:
            with self.lock:
                now = time.monotonic()
                self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
                self.updated = now
                if self.tokens >= 1:
                    self.tokens -= 1
                    return
                wait = (1 - self.tokens) / self.rate
            time.sleep(wait)


class LimitedProvider(Provider):
    """Wraps a driver with the limits and read cache of its provider."""

    def __init__(self, inner: Provider) -> None:
        super().__init__(inner.config)
        self.inner = inner
        self.name = inner.name  # type: ignore[misc]
        self.slots = threading.BoundedSemaphore(int(inner.config.get("max_concurrency", 10)))
        self.bucket = TokenBucket(float(inner.config.get("requests_per_second", 0)))
        self.ttl = float(inner.config.get("cache_ttl", 0))
        self.cache: dict[tuple[str, str], tuple[float, Any]] = {}
        self.cache_lock = threading.Lock()
        #: Bumped by every invalidation: a read that began before one must not be cached.
        self.generation = 0
        #: Calls actually sent to the driver, by method (for tests and benchmarks).
        self.calls: dict[str, int] = {}

    def _call(self, method: str, call: Callable[[], T]) -> T:
        with self.slots:
            self.bucket.acquire()
            with self.cache_lock:
                self.calls[method] = self.calls.get(method, 0) + 1
            return call()

    def _cached(self, method: str, argument: str, call: Callable[[], T]) -> T:
        if self.ttl <= 0:
            return self._call(method, call)
        now = time.monotonic()
        with self.cache_lock:
            hit = self.cache.get((method, argument))
            generation = self.generation
        if hit is not None and now - hit[0] < self.ttl:
            value: T = hit[1]
            return value
        value = self._call(method, call)
        with self.cache_lock:
            if generation == self.generation:
                self.cache[(method, argument)] = (time.monotonic(), value)
        return value

    def invalidate(self) -> None:
        with self.cache_lock:
            self.cache.clear()
            self.generation += 1

    def list_servers(self) -> list[Server]:
        return self._cached("list_servers", "", self.inner.list_servers)

    def find(self, key: str) -> Server | None:
        return self._cached("find", key, lambda: self.inner.find(key))

    def find_by_name(self, name: str) -> list[Server]:
        return self._cached("find_by_name", name, lambda: self.inner.find_by_name(name))

    def get_server(self, server_id: str) -> Server:
        return self._call("get_server", lambda: self.inner.get_server(server_id))

    def _change(self, method: str, call: Callable[[], T]) -> T:
        """A call that changes servers: every cached read is stale after it, even a failed one."""
        try:
            return self._call(method, call)
        finally:
            self.invalidate()

    def create_server(self, spec: ServerSpec, key: str) -> Server:
        return self._change("create_server", lambda: self.inner.create_server(spec, key))

    def create_new_server(self, spec: ServerSpec, key: str) -> Server:
        return self._change("create_new_server", lambda: self.inner.create_new_server(spec, key))

    def delete_server(self, server_id: str) -> None:
        self._change("delete_server", lambda: self.inner.delete_server(server_id))

    def wait_for(self, server_id: str, state: ServerState, timeout: float | None = None) -> Server:
        # The base class polls get_server, which goes through the limits above.
        return super().wait_for(server_id, state, timeout)

    def check(self) -> ProviderStatus:
        return self._call("check", self.inner.check)
