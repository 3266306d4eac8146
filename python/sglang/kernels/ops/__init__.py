# SPDX-License-Identifier: Apache-2.0
"""Operator groups of ``sglang.kernels`` (this tree carries ``diffusion`` only).

Importing a group registers its kernel metadata; it imports no backend.
"""

from importlib import import_module

_GROUPS = ("diffusion",)

for _group in _GROUPS:
    import_module(f"{__name__}.{_group}")

del import_module, _group

__all__ = list(_GROUPS)
