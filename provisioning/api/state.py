"""What every route shares: the configuration, the journal, and the names of the deployments."""

from __future__ import annotations

from dataclasses import dataclass, field

from starlette.requests import Request

from provisioning.api.cache import TaskStateCache, TtlCache
from provisioning.config import Config
from provisioning.journal import Journal
from provisioning.status import StatusReport

#: Deployments the API starts runs of; ``[api] run_deployment`` / ``rollback_deployment`` override
#: them (e.g. for a deployment named differently in ``prefect.yaml``).
RUN_DEPLOYMENT = "run-workflow/run-workflow"
ROLLBACK_DEPLOYMENT = "rollback-workflow/rollback-workflow"


@dataclass
class ApiState:
    config: Config
    journal: Journal
    token: str | None
    run_deployment: str = RUN_DEPLOYMENT
    rollback_deployment: str = ROLLBACK_DEPLOYMENT
    #: Seconds ``DELETE ...?rollback=true`` waits for a cancelled run to stop before undoing.
    cancel_timeout: float = 60.0
    #: Seconds a provider's ``check()`` may take in ``GET /providers``.
    check_timeout: float = 5.0
    #: Seconds a status answer is reused: pollers see changes this late at most.
    status_ttl: float = 0.5
    task_states: TaskStateCache = field(default_factory=TaskStateCache)
    reports: TtlCache[StatusReport] = field(default_factory=TtlCache)

    @classmethod
    def from_config(cls, config: Config, token: str | None) -> ApiState:
        api = config.section("api")
        return cls(
            config=config,
            journal=Journal.from_config(config),
            token=token,
            run_deployment=str(api.get("run_deployment") or RUN_DEPLOYMENT),
            rollback_deployment=str(api.get("rollback_deployment") or ROLLBACK_DEPLOYMENT),
            cancel_timeout=float(api.get("cancel_timeout", 60.0)),
            check_timeout=float(api.get("check_timeout", 5.0)),
            status_ttl=float(api.get("status_ttl", 0.5)),
        )


def get_state(request: Request) -> ApiState:
    state: ApiState = request.app.state.api
    return state
