"""Dependency resolution with :mod:`graphlib`: execution order, waves, and cycles named in full."""

from __future__ import annotations

from graphlib import CycleError, TopologicalSorter

from provisioning.errors import WorkflowError
from provisioning.spec import Workflow


class WorkflowGraph:
    """The operations of a workflow as a DAG of ``operation id -> ids it waits for``."""

    def __init__(self, workflow: Workflow) -> None:
        self.upstream: dict[str, list[str]] = {
            operation_id: workflow.upstream(operation_id) for operation_id in workflow.operation_ids
        }
        self.downstream: dict[str, list[str]] = {operation_id: [] for operation_id in self.upstream}
        for operation_id, upstream in self.upstream.items():
            for upstream_id in upstream:
                self.downstream[upstream_id].append(operation_id)
        self.waves = self._waves()

    def _waves(self) -> list[list[str]]:
        sorter = TopologicalSorter(self.upstream)
        try:
            sorter.prepare()
        except CycleError as error:
            # graphlib lists each node before the one that waits for it; reversed, every arrow
            # reads like the spec's ``[dependencies]``: ``web -> api`` = web waits for api.
            cycle = list(reversed(error.args[1]))
            raise WorkflowError(
                f"dependency cycle: {' -> '.join(cycle)}", code="WORKFLOW_CYCLE", cycle=cycle
            ) from None
        order = {operation_id: index for index, operation_id in enumerate(self.upstream)}
        waves: list[list[str]] = []
        while sorter.is_active():
            ready = sorted(sorter.get_ready(), key=order.__getitem__)
            waves.append(ready)
            sorter.done(*ready)
        return waves

    @property
    def order(self) -> list[str]:
        """One valid execution order: wave by wave, spec order within a wave."""
        return [operation_id for wave in self.waves for operation_id in wave]

    def wave_of(self, operation_id: str) -> int:
        for index, wave in enumerate(self.waves):
            if operation_id in wave:
                return index
        raise KeyError(operation_id)

    def descendants(self, operation_id: str) -> set[str]:
        """Every operation that waits, directly or not, for ``operation_id``."""
        found: set[str] = set()
        pending = list(self.downstream[operation_id])
        while pending:
            current = pending.pop()
            if current not in found:
                found.add(current)
                pending.extend(self.downstream[current])
        return found

    def critical_path_length(self) -> int:
        """Number of waves: the lower bound on sequential steps at unlimited parallelism."""
        return len(self.waves)


def resolve(workflow: Workflow) -> WorkflowGraph:
    return WorkflowGraph(workflow)
