"""What the operation tasks of one flow run share, kept out of task parameters.

Prefect hashes and records task parameters; clients, locks and the journal must not be among
them (DESIGN.md). The flow binds a :class:`RunContext` under its workflow id and the tasks, which
run in the same process, look it up by the workflow id they receive as a plain string.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from providers.base import Provider
from providers.registry import get_provider
from provisioning.config import Config
from provisioning.errors import WorkflowError
from provisioning.journal import Journal
from provisioning.spec import Workflow
from tasks.limits import LimitedProvider


@dataclass
class RunContext:
    workflow: Workflow
    config: Config
    journal: Journal
    flow_run_id: str | None = None
    providers: dict[str, LimitedProvider] = field(default_factory=dict)
    #: (started, finished) of each operation that ran in this process.
    timings: dict[str, list[datetime]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def workflow_id(self) -> str:
        return self.workflow.workflow_id

    def provider(self, name: str) -> Provider:
        """One limited driver per provider and run, so limits hold across operations."""
        with self.lock:
            if name not in self.providers:
                self.providers[name] = LimitedProvider(
                    get_provider(name, self.config.provider(name))
                )
            return self.providers[name]

    def resolve_path(self, path: str) -> Path:
        """Relative paths in a spec are relative to the project directory (``paths.base``)."""
        candidate = Path(path).expanduser()
        if candidate.is_absolute():
            return candidate
        return Path(str(self.config.get("paths.base"))) / candidate


_contexts: dict[str, RunContext] = {}
_contexts_lock = threading.Lock()


@contextmanager
def bind(context: RunContext) -> Iterator[RunContext]:
    with _contexts_lock:
        _contexts[context.workflow_id] = context
    try:
        yield context
    finally:
        with _contexts_lock:
            _contexts.pop(context.workflow_id, None)


def current(workflow_id: str) -> RunContext:
    try:
        return _contexts[workflow_id]
    except KeyError:
        raise WorkflowError(
            "operation task ran outside its workflow's flow run", code="WORKFLOW_CONTEXT_MISSING"
        ) from None
