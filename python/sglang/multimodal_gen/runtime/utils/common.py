# SPDX-License-Identifier: Apache-2.0
"""Small helpers shared across the diffusion runtime (subset of upstream's module)."""

import logging
import os

# the stdlib logger avoids an import cycle with the runtime's logging utilities
logger = logging.getLogger(__name__)

_TRUTHY = frozenset({"1", "true", "yes", "y", "t", "on"})
_FALSY = frozenset({"0", "false", "no", "n", "f", "off", ""})
_warned_bool_env_var_keys: set[str] = set()


def add_prefix(name: str, prefix: str) -> str:
    """Return ``prefix.name``, or ``name`` when ``prefix`` is empty."""
    return name if not prefix else f"{prefix}.{name}"


def get_bool_env_var(name: str, default: str = "false") -> bool:
    """Read a boolean environment variable the way upstream SGLang does.

    Unknown spellings count as false, with one warning per variable, so a typo
    never turns a debug switch on.
    """
    value = str(os.getenv(name, default)).strip().lower()
    if value in _TRUTHY:
        return True
    if value not in _FALSY and name not in _warned_bool_env_var_keys:
        _warned_bool_env_var_keys.add(name)
        logger.warning(
            "get_bool_env_var(%s) see non-understandable value=%s and treat as false",
            name,
            value,
        )
    return False
