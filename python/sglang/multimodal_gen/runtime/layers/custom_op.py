# SPDX-License-Identifier: Apache-2.0
# Adapted from vLLM's CustomOp (model_executor/custom_op.py) via upstream SGLang.
"""Base class for ops with per-platform forward implementations."""

from collections.abc import Callable
from functools import partial
from typing import Any, ClassVar

import torch.nn as nn

import sglang.multimodal_gen.runtime.platforms as platforms


class CustomOp(nn.Module):
    """An ``nn.Module`` whose ``forward`` is picked once, at construction.

    ``dispatch_forward`` binds ``forward_cuda`` / ``forward_hip`` / ``forward_cpu`` /
    ... by ``current_platform``; every platform path defaults to ``forward_native``
    (``forward_hip`` and ``forward_musa`` default to ``forward_cuda``). Subclasses
    override only the paths they accelerate.
    """

    _oot_forward_registry: ClassVar[dict[str, dict[type["CustomOp"], Callable]]] = {}

    # name -> op class, filled by ``CustomOp.register``
    op_registry: dict[str, type["CustomOp"]] = {}

    @staticmethod
    def register_oot_forward(
        op_cls: type["CustomOp"], *, fn: Callable, platform_key: str
    ) -> None:
        """Register ``fn`` as the forward of ``op_cls`` for an out-of-tree platform."""
        CustomOp._oot_forward_registry.setdefault(platform_key, {})[op_cls] = fn

    def __init__(self) -> None:
        super().__init__()
        self._forward_method = self.dispatch_forward()

    def forward(self, *args, **kwargs) -> Any:
        return self._forward_method(*args, **kwargs)

    def forward_native(self, *args, **kwargs) -> Any:
        """PyTorch-only implementation; the reference for every other path."""
        raise NotImplementedError

    def forward_cuda(self, *args, **kwargs) -> Any:
        raise NotImplementedError

    def forward_hip(self, *args, **kwargs) -> Any:
        return self.forward_cuda(*args, **kwargs)

    def forward_cpu(self, *args, **kwargs) -> Any:
        return self.forward_native(*args, **kwargs)

    def forward_tpu(self, *args, **kwargs) -> Any:
        return self.forward_native(*args, **kwargs)

    def forward_musa(self, *args, **kwargs) -> Any:
        return self.forward_cuda(*args, **kwargs)

    def forward_oot(self, *args, **kwargs) -> Any:
        return self.forward_native(*args, **kwargs)

    def forward_npu(self, *args, **kwargs) -> Any:
        return self.forward_native(*args, **kwargs)

    def forward_xpu(self, *args, **kwargs) -> Any:
        return self.forward_native(*args, **kwargs)

    def _defined_forward(self, method_name: str) -> Callable | None:
        """Return ``method_name`` if a class below ``CustomOp`` in the MRO defines it."""
        for op_cls in type(self).__mro__:
            if op_cls is CustomOp:
                return None
            if method_name in op_cls.__dict__:
                return getattr(self, method_name)
        return None

    def dispatch_forward(self) -> Callable:
        platform = platforms.current_platform
        if platform.is_out_of_tree():
            # an empty key would route every op to forward_oot without a word
            platform_key = platform.get_dispatch_key_name().strip()
            if not platform_key:
                raise ValueError(
                    "Out-of-tree diffusion platforms must return a non-empty "
                    "get_dispatch_key_name()"
                )
            forward = self._oot_forward_registry.get(platform_key, {}).get(type(self))
            if forward is not None:
                return partial(forward, self)
            if platform_key.isidentifier():
                platform_forward = self._defined_forward(f"forward_{platform_key}")
                if platform_forward is not None:
                    return platform_forward
            return self.forward_oot
        if platform.is_cuda():
            return self.forward_cuda
        if platform.is_hip():
            return self.forward_hip
        if platform.is_npu():
            return self.forward_npu
        if platform.is_xpu():
            return self.forward_xpu
        if platform.is_musa():
            return self.forward_musa
        if platform.is_cpu():
            return self.forward_cpu
        return self.forward_native

    @classmethod
    def enabled(cls) -> bool:
        # no Inductor custom-op gating here: every registered op is on
        return True

    @classmethod
    def register(cls, name: str) -> Callable:
        """Class decorator: record ``op_cls`` under ``name`` (names are unique)."""

        def decorator(op_cls):
            assert name not in cls.op_registry, f"Duplicate op name: {name}"
            op_cls.name = name
            cls.op_registry[name] = op_cls
            return op_cls

        return decorator
