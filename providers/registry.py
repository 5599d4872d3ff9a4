"""Which providers exist and how to build one.

Built-in drivers are imported lazily (boto3 and the Docker SDK are slow to import and ``plan`` must
answer in about a second). Plugins come from the ``provisioning.providers`` entry-point group or
are registered at run time by an activated extension (:func:`register`).
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Callable, Iterable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from providers.base import Provider, ProviderUnavailable
from provisioning.config import Config
from provisioning.errors import ProvisioningError
from provisioning.spec import Workflow
from provisioning.spec import load_workflow as load_spec

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "provisioning.providers"

ProviderFactory = Callable[[dict[str, Any]], Provider]

BUILTIN: dict[str, str] = {
    "aws": "providers.aws:AWSProvider",
    "upcloud": "providers.upcloud:UpCloudProvider",
    "local": "providers.local:LocalProvider",
}

_registered: dict[str, str | ProviderFactory] = {}


def register(name: str, target: str | ProviderFactory) -> None:
    """Make a provider available under ``name`` (``"module:Class"`` or a factory)."""
    _registered[name] = target


def unregister(name: str) -> None:
    _registered.pop(name, None)


def _entry_point_targets() -> dict[str, str]:
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def provider_targets() -> dict[str, str | ProviderFactory]:
    """Every known provider name and where it comes from; later sources override earlier ones."""
    return {**BUILTIN, **_entry_point_targets(), **_registered}


def provider_names() -> list[str]:
    return sorted(provider_targets())


def _resolve(name: str, target: str | ProviderFactory) -> ProviderFactory:
    if not isinstance(target, str):
        return target
    module_name, _, attribute = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ProviderUnavailable(
            f"provider is not installed ({module_name}: {error})", provider=name
        ) from error
    factory: ProviderFactory = getattr(module, attribute)
    return factory


def get_provider(name: str, config: dict[str, Any] | None = None) -> Provider:
    """A driver instance for ``name`` configured with its ``[providers.NAME]`` table."""
    targets = provider_targets()
    if name not in targets:
        known = ", ".join(sorted(targets))
        raise ProviderUnavailable(f"unknown provider (known: {known})", provider=name)
    return _resolve(name, targets[name])(dict(config or {}))


def load_workflow(source: str | Path | dict[str, Any] | Workflow) -> Workflow:
    """Load and validate a workflow, checking its provider names against this registry."""
    return load_spec(source, known_providers=provider_targets().keys())


def warm_up(names: Iterable[str], config: Config) -> threading.Thread:
    """Build these providers' clients on a background thread, so that the first operation does
    not pay for it while every other worker waits (an EC2 client's first build takes 0.2-0.4 s of
    CPU, which can overlap Prefect's waits on its API while it creates the flow run)."""

    def build() -> None:
        for name in names:
            try:
                get_provider(name, config.provider(name)).warm_up()
            except ProvisioningError as error:  # the first real call reports it properly
                logger.debug("warming up provider %s failed: %s", name, error)

    thread = threading.Thread(target=build, name="provider-warm-up", daemon=True)
    thread.start()
    return thread
