"""Per-provider limits and the read cache (``tasks.limits``), on an in-memory driver."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from providers.base import Provider, ProviderStatus, Server, ServerSpec, ServerState
from tasks.limits import LimitedProvider, TokenBucket


class CountingProvider(Provider):
    """Records how many calls run at once and when each one started."""

    name = "counting"

    def __init__(self, config: dict[str, Any], call_time: float = 0.0) -> None:
        super().__init__(config)
        self.call_time = call_time
        self.servers: dict[str, Server] = {}
        self.lock = threading.Lock()
        self.in_flight = 0
        self.peak = 0
        self.starts: list[float] = []
        self.reads = 0

    def _enter(self) -> None:
        with self.lock:
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
            self.starts.append(time.monotonic())
        time.sleep(self.call_time)
        with self.lock:
            self.in_flight -= 1

    def list_servers(self) -> list[Server]:
        self.reads += 1
        self._enter()
        return list(self.servers.values())

    def create_server(self, spec: ServerSpec, key: str) -> Server:
        self._enter()
        server = Server(
            id=f"s{len(self.servers)}", provider=self.name, name=spec.name,
            state=ServerState.running, key=key,
        )  # fmt: skip
        self.servers[server.id] = server
        return server

    def get_server(self, server_id: str) -> Server:
        self.reads += 1
        self._enter()
        return self.servers[server_id]

    def delete_server(self, server_id: str) -> None:
        self._enter()
        self.servers.pop(server_id, None)

    def check(self) -> ProviderStatus:
        return ProviderStatus(provider=self.name, reachable=True)


def test_max_concurrency_caps_calls_in_flight() -> None:
    inner = CountingProvider({"max_concurrency": 2, "requests_per_second": 0}, call_time=0.05)
    limited = LimitedProvider(inner)
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda i: limited.create_server(ServerSpec(name=f"n{i}"), f"k{i}"), range(8)))
    assert inner.peak == 2
    assert len(inner.servers) == 8


def test_requests_per_second_spaces_calls_across_threads() -> None:
    inner = CountingProvider({"max_concurrency": 50, "requests_per_second": 20})
    limited = LimitedProvider(inner)
    limited.bucket.tokens = 0  # start empty: no burst, so 10 calls need about 0.5 s
    began = time.monotonic()
    with ThreadPoolExecutor(max_workers=10) as pool:
        list(pool.map(lambda _: limited.check(), range(10)))
    elapsed = time.monotonic() - began
    assert elapsed >= 0.45


def test_token_bucket_allows_a_burst_then_the_rate() -> None:
    bucket = TokenBucket(rate=10, burst=5)
    began = time.monotonic()
    for _ in range(5):
        bucket.acquire()
    assert time.monotonic() - began < 0.05
    for _ in range(5):
        bucket.acquire()
    assert time.monotonic() - began >= 0.45


def test_reads_are_cached_for_the_ttl_and_writes_invalidate() -> None:
    inner = CountingProvider({"cache_ttl": 30, "requests_per_second": 0})
    limited = LimitedProvider(inner)
    limited.create_server(ServerSpec(name="a"), "k-a")
    assert [s.name for s in limited.list_servers()] == ["a"]
    assert [s.name for s in limited.list_servers()] == ["a"]
    assert inner.reads == 1  # second list came from the cache
    limited.create_server(ServerSpec(name="b"), "k-b")
    assert sorted(s.name for s in limited.list_servers()) == ["a", "b"]
    assert inner.reads == 2  # the create invalidated the cache
    assert limited.find("k-b") is not None
    limited.delete_server("s1")
    assert limited.find("k-b") is None  # the delete invalidated it too


def test_zero_ttl_never_caches() -> None:
    inner = CountingProvider({"cache_ttl": 0, "requests_per_second": 0})
    limited = LimitedProvider(inner)
    limited.list_servers()
    limited.list_servers()
    assert inner.reads == 2


def test_cached_reads_expire() -> None:
    inner = CountingProvider({"cache_ttl": 0.1, "requests_per_second": 0})
    limited = LimitedProvider(inner)
    limited.list_servers()
    time.sleep(0.15)
    limited.list_servers()
    assert inner.reads == 2


def test_a_read_that_began_before_an_invalidation_is_not_cached() -> None:
    inner = CountingProvider({"cache_ttl": 30, "requests_per_second": 0})
    limited = LimitedProvider(inner)
    started = threading.Event()
    release = threading.Event()
    original = inner.list_servers

    def slow_list() -> list[Server]:
        started.set()
        release.wait(5)
        return original()

    inner.list_servers = slow_list  # type: ignore[method-assign]
    reader = threading.Thread(target=limited.list_servers)
    reader.start()
    assert started.wait(5)
    limited.create_server(ServerSpec(name="new"), "k-new")  # invalidates while the read runs
    release.set()
    reader.join(5)
    inner.list_servers = original  # type: ignore[method-assign]
    assert [s.name for s in limited.list_servers()] == ["new"]  # the stale list was not kept
