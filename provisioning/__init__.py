"""Infrastructure provisioning as Prefect flows.

The notebook surface: ``from provisioning import run_workflow, load_workflow``. Both sit above the
core (``run_workflow`` is the flow, ``load_workflow`` checks provider names with the registry), so
they are imported on first use: the core itself never imports flows, tasks or providers.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("provisioning")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

if TYPE_CHECKING:
    from flows.run import run_workflow
    from providers.registry import load_workflow

__all__ = ["__version__", "load_workflow", "run_workflow"]


def __getattr__(name: str) -> Any:
    if name == "run_workflow":
        from flows.run import run_workflow

        return run_workflow
    if name == "load_workflow":
        from providers.registry import load_workflow

        return load_workflow
    raise AttributeError(f"module 'provisioning' has no attribute {name!r}")
