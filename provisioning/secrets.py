"""Recognising and hiding secret values before they reach events, logs or a screen.

Credentials must never appear in events, results or API responses (DESIGN.md), yet configuration
changes and ``provision config`` output want to show *which* keys changed. Masking by key name is
the one rule both use, so it lives here, free of any other dependency.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MASK", "SECRET_WORDS", "is_secret_key", "mask_secrets"]

#: What a secret value is replaced with.
MASK = "********"

#: A key whose last segment contains one of these words (any case) holds a secret.
SECRET_WORDS: tuple[str, ...] = ("token", "password", "secret", "key")


def is_secret_key(key: str) -> bool:
    """Whether the value under ``key`` (e.g. ``providers.upcloud.token``) must be hidden.

    Only the last dotted segment counts, so ``providers.upcloud.zone`` is shown even though a
    parent table could hold secrets; matching is by substring so ``api_token`` and
    ``aws_secret_access_key`` are caught. False positives (``key_name``) only cost a hidden value.
    """
    last = key.rsplit(".", 1)[-1].lower()
    return any(word in last for word in SECRET_WORDS)


def mask_secrets(key: str, value: Any) -> Any:
    """``value`` with every secret replaced by :data:`MASK`, looking inside tables and lists.

    ``None`` stays ``None``: whether a secret is set at all is useful and reveals nothing.
    Nested table keys are judged on their own name (``mask_secrets("providers.upcloud",
    {"token": "t", "zone": "de-fra1"})`` hides only the token); ``key=""`` masks a whole
    configuration tree.
    """
    if value is None:
        return None
    if is_secret_key(key):
        return MASK
    if isinstance(value, dict):
        return {
            name: mask_secrets(f"{key}.{name}" if key else str(name), item)
            for name, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [mask_secrets(key, item) for item in value]
    return value
