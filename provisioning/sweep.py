"""Orphan sweep: servers that carry our key label but that no journal entry owns.

A server can end up orphaned when its journal was lost or a run was killed before the journal
heard of it and nobody resumed or rolled back. The key label is the proof the server is ours.
"""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import BaseModel, Field

from provisioning.config import Config
from provisioning.errors import ProviderError
from provisioning.journal import Journal


class Orphan(BaseModel):
    provider: str
    id: str
    name: str
    key: str | None
    deleted: bool = False
    #: Why ``--delete`` could not delete it (the sweep goes on with the others).
    error: str | None = None


class SweepReport(BaseModel):
    orphans: list[Orphan] = Field(default_factory=list)
    #: Providers that could not be listed, and why.
    unreachable: dict[str, str] = Field(default_factory=dict)


def find_orphans(
    config: Config, providers: Iterable[str] | None = None, *, delete: bool = False
) -> SweepReport:
    from providers.registry import get_provider, provider_names

    journal = Journal.from_config(config)
    report = SweepReport()
    for name in providers or provider_names():
        try:
            driver = get_provider(name, config.provider(name))
            owned = journal.owned_keys(name)
            found = [s for s in driver.list_servers() if s.key is not None and s.key not in owned]
        except ProviderError as error:
            report.unreachable[name] = str(error)
            continue
        for server in found:
            orphan = Orphan(provider=name, id=server.id, name=server.name, key=server.key)
            if delete:
                try:
                    driver.delete_server(server.id)
                    orphan.deleted = True
                except ProviderError as error:
                    orphan.error = str(error)
            report.orphans.append(orphan)
    return report
