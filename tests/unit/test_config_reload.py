"""Diffing two configurations, as a config reload reports it."""

from __future__ import annotations

from provisioning.config import Layer, build_config, changes


def test_changes_lists_changed_added_and_removed_leaves() -> None:
    old = build_config([Layer("a", {"paths": {"base": "/p"}, "api": {"port": 1, "token": "x"}})])
    new = build_config(
        [Layer("a", {"paths": {"base": "/p"}, "api": {"port": 2}, "engine": {"retries": 5}})]
    )
    assert changes(old, new) == [
        ("api.port", 1, 2),
        ("api.token", "x", None),
        ("engine.retries", None, 5),
    ]


def test_no_changes_for_equal_configurations() -> None:
    layer = Layer("a", {"paths": {"base": "/p"}, "api": {"port": 1}})
    assert changes(build_config([layer]), build_config([layer])) == []
