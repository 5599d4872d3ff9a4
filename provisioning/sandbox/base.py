"""What every sandbox shares: started on entering a ``with`` block, stopped on leaving it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from types import TracebackType
from typing import Self


class Sandbox(ABC):
    """A local stand-in for a service (moto, the UpCloud emulator, dockerd, a Prefect server)."""

    @abstractmethod
    def start(self) -> str:
        """Start serving; the address clients use (URL or socket)."""

    @abstractmethod
    def stop(self) -> None:
        """Stop serving; safe to call twice."""

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
