# SPDX-License-Identifier: Apache-2.0
"""Kernel metadata for the ``sglang.kernels`` namespace (a subset of upstream's).

Descriptors only: importing this module imports neither torch nor a kernel
backend. A :class:`KernelSpec` names its callable as ``"module:attr"`` and is
resolved on :meth:`KernelSpec.load`. Upstream builds these on ``msgspec``
structs; frozen dataclasses give the same fields, equality and hashing with the
standard library alone.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from enum import Enum
from typing import Callable, ClassVar, FrozenSet, Optional, Tuple


class KernelBackend(str, Enum):
    """How an implementation is built (its provenance), not the device it runs on."""

    TORCH = "torch"
    TORCH_COMPILE = "torch_compile"
    TRITON = "triton"
    JIT = "jit"
    AOT = "aot"
    CUTE_DSL = "cute_dsl"
    FLYDSL = "flydsl"
    KDA = "KDA"


class DeviceType(str, Enum):
    """Accelerator family a kernel can run on."""

    CUDA = "cuda"
    HIP = "hip"
    MUSA = "musa"
    NPU = "npu"
    CPU = "cpu"


@dataclass(frozen=True)
class PlatformInfo:
    """The live accelerator, as far as kernel selection needs it."""

    device_type: str = "cpu"
    cuda_arch_major: Optional[int] = None
    cuda_arch_minor: Optional[int] = None

    @property
    def device(self) -> DeviceType:
        try:
            return DeviceType(self.device_type)
        except ValueError:
            return DeviceType.CPU

    @classmethod
    def detect(cls) -> "PlatformInfo":
        """This process's platform; never raises (CPU when nothing is visible)."""
        import torch

        try:
            if torch.version.hip is not None and torch.cuda.is_available():
                return cls(device_type="hip")
            if torch.cuda.is_available():
                major, minor = torch.cuda.get_device_capability()
                return cls("cuda", major, minor)
        except Exception:  # a broken driver reads as no accelerator
            pass
        return cls()


@dataclass(frozen=True)
class CapabilityRequirement:
    """One device, optionally with a CUDA compute-capability window (inclusive)."""

    device: DeviceType
    min_cuda_arch: Optional[Tuple[int, int]] = None
    max_cuda_arch: Optional[Tuple[int, int]] = None

    CUDA: ClassVar["CapabilityRequirement"]
    HIP: ClassVar["CapabilityRequirement"]

    @classmethod
    def cuda(
        cls,
        min_sm: Optional[Tuple[int, int]] = None,
        max_sm: Optional[Tuple[int, int]] = None,
    ) -> "CapabilityRequirement":
        return cls(DeviceType.CUDA, min_sm, max_sm)

    def is_satisfied_by(self, platform: PlatformInfo) -> bool:
        if self.device != platform.device:
            return False
        if self.device == DeviceType.CUDA and platform.cuda_arch_major is not None:
            arch = (platform.cuda_arch_major, platform.cuda_arch_minor or 0)
            if self.min_cuda_arch is not None and arch < self.min_cuda_arch:
                return False
            if self.max_cuda_arch is not None and arch > self.max_cuda_arch:
                return False
        return True


CapabilityRequirement.CUDA = CapabilityRequirement(DeviceType.CUDA)
CapabilityRequirement.HIP = CapabilityRequirement(DeviceType.HIP)


def capabilities_satisfied(capabilities, platform: PlatformInfo) -> bool:
    """Any requirement met (an empty set means: runs anywhere)."""
    if isinstance(capabilities, CapabilityRequirement):
        capabilities = (capabilities,)
    return not capabilities or any(c.is_satisfied_by(platform) for c in capabilities)


@dataclass(frozen=True)
class KernelSpec:
    """One implementation of an op: ``op`` id, ``backend``, ``"module:attr"`` target."""

    op: str
    backend: KernelBackend
    target: str
    capabilities: FrozenSet[CapabilityRequirement] = frozenset()

    def is_available(self, platform: PlatformInfo) -> bool:
        return capabilities_satisfied(self.capabilities, platform)

    def load(self) -> Callable:
        """Import and return the callable (its ImportError propagates)."""
        module_path, sep, attr = self.target.partition(":")
        if not sep or not attr:
            raise ValueError(
                f"KernelSpec.target must be 'module:attr', got {self.target!r}"
            )
        obj = importlib.import_module(module_path)
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj
