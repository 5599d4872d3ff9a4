"""The quickstart notebook runs top to bottom (nbclient, a real kernel) so it never rots."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from provisioning.sandbox.prefect_server import PrefectServer
from tests.fixtures.api import SOURCE_ROOT

NOTEBOOK = SOURCE_ROOT / "examples" / "notebooks" / "quickstart.ipynb"


def outputs_text(notebook: nbformat.NotebookNode) -> str:
    parts: list[str] = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            parts.append(output.get("text", ""))
            parts.append(output.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


@pytest.mark.slow
def test_quickstart_notebook_runs_the_example_workflow(
    prefect_server: PrefectServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    # The kernel inherits this environment: a scratch project and the session's Prefect server.
    monkeypatch.setenv("PROVISIONING_BASE", str(project))
    monkeypatch.setenv("PREFECT_API_URL", prefect_server.api_url)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect-home"))
    notebook = nbformat.read(NOTEBOOK, as_version=4)  # type: ignore[no-untyped-call]
    client = NotebookClient(
        notebook,
        timeout=120,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()
    text = outputs_text(notebook)
    assert f"Prefect API: {prefect_server.api_url}" in text
    assert "4 operations in 3 waves" in text
    assert "status: success" in text
    assert "motd.txt: 'provisioned by provisioning'" in text
    assert (project / ".demo" / "app" / "app.toml").read_text().strip() == ("[server]\nport = 8080")
    assert (project / ".provisioning" / "journal.db").exists()
    assert not any(tmp_path.glob(".demo")), "nothing written outside the project directory"
