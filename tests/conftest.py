"""Session-wide test setup.

Prefect settings are fixed before anything imports Prefect: a throw-away ``PREFECT_HOME``, no
telemetry, and a generous start-up timeout for the temporary API server (see DESIGN.md). Fixture
modules under ``tests/fixtures/`` (one per sandbox) are loaded automatically.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

_PREFECT_HOME = tempfile.mkdtemp(prefix="provisioning-tests-prefect-")
os.environ.setdefault("PREFECT_HOME", _PREFECT_HOME)
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "90"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
# Prefect persists events in batches every 5 s by default; tests read them back sooner.
os.environ["PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL"] = "0.5"
os.environ.pop("PREFECT_API_URL", None)

import pytest  # noqa: E402

pytest_plugins = sorted(
    f"tests.fixtures.{path.stem}"
    for path in (Path(__file__).parent / "fixtures").glob("*.py")
    if path.stem != "__init__"
)


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[None]:
    """Prefect's test harness (a temporary API server), started once per session (~15 s)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield
