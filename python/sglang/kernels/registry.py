# SPDX-License-Identifier: Apache-2.0
"""The process-wide inventory of kernel implementations (a subset of upstream's).

Registering a :class:`~sglang.kernels.spec.KernelSpec` stores metadata only; no
backend is imported.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Dict, List

from sglang.kernels.spec import KernelBackend, KernelSpec


class KernelRegistry:
    """``op`` id -> its specs, at most one per backend."""

    def __init__(self) -> None:
        self._by_op: Dict[str, List[KernelSpec]] = defaultdict(list)

    def register(self, spec: KernelSpec) -> KernelSpec:
        """Add ``spec``; the same spec again is a no-op, a different one for the
        same ``(op, backend)`` is an error (the choice must not hinge on import
        order)."""
        specs = self._by_op[spec.op]
        for other in specs:
            if other.backend == spec.backend:
                if other != spec:
                    raise ValueError(
                        f"Conflicting kernel registration for op {spec.op!r}, "
                        f"backend {spec.backend.value!r}: "
                        f"{other.target!r} != {spec.target!r}"
                    )
                return spec
        specs.append(spec)
        return spec

    def get(self, op: str) -> List[KernelSpec]:
        return list(self._by_op.get(op, ()))

    def get_backend(self, op: str, backend: KernelBackend) -> KernelSpec:
        for spec in self._by_op.get(op, ()):
            if spec.backend == backend:
                return spec
        raise KeyError(f"No '{backend.value}' backend registered for op {op!r}")

    def has(self, op: str) -> bool:
        return bool(self._by_op.get(op))

    def ops(self) -> List[str]:
        return sorted(self._by_op)


registry = KernelRegistry()


def register_kernel(spec: KernelSpec) -> KernelSpec:
    """Register ``spec`` in the process-wide :data:`registry`."""
    return registry.register(spec)
