# SPDX-License-Identifier: Apache-2.0
# Adapted from vLLM's platform interface via upstream SGLang (subset).
"""Platform description used by :class:`CustomOp` dispatch."""

import enum
from functools import lru_cache

import torch


class PlatformEnum(enum.Enum):
    CUDA = enum.auto()
    ROCM = enum.auto()
    TPU = enum.auto()
    CPU = enum.auto()
    MPS = enum.auto()
    NPU = enum.auto()
    MUSA = enum.auto()
    XPU = enum.auto()
    OOT = enum.auto()
    UNSPECIFIED = enum.auto()


class Platform:
    """What the process runs on.

    Only the queries the normalization layers and their dispatch need are here;
    names and meanings are upstream's, so code written against this subset also
    runs against the full upstream class.
    """

    _enum: PlatformEnum = PlatformEnum.UNSPECIFIED
    device_name: str
    device_type: str
    device: torch.device | None = None
    dispatch_key: str = ""

    def get_dispatch_key_name(self) -> str:
        """Behavioural key for :class:`CustomOp` on out-of-tree platforms."""
        return "native"

    @classmethod
    def is_cuda_static(cls) -> bool:
        return cls._enum == PlatformEnum.CUDA

    @classmethod
    def is_rocm_static(cls) -> bool:
        return cls._enum == PlatformEnum.ROCM

    def is_cuda(self) -> bool:
        return self.is_cuda_static()

    def is_rocm(self) -> bool:
        return self.is_rocm_static()

    def is_hip(self) -> bool:
        return self.is_rocm()

    def is_tpu(self) -> bool:
        return self._enum == PlatformEnum.TPU

    def is_cpu(self) -> bool:
        return self._enum == PlatformEnum.CPU

    def is_mps(self) -> bool:
        return self._enum == PlatformEnum.MPS

    def is_out_of_tree(self) -> bool:
        return self._enum == PlatformEnum.OOT

    def is_xpu(self) -> bool:
        return self._enum == PlatformEnum.XPU

    def is_npu(self) -> bool:
        return self._enum == PlatformEnum.NPU

    def is_musa(self) -> bool:
        return self._enum == PlatformEnum.MUSA

    def is_cuda_alike(self) -> bool:
        return self._enum in (PlatformEnum.CUDA, PlatformEnum.ROCM, PlatformEnum.MUSA)

    def is_device_type(self, device_type: str | None) -> bool:
        return device_type == self.device_type

    @classmethod
    @lru_cache(maxsize=1)
    def is_hopper(cls) -> bool:
        return cls.is_cuda_static() and torch.cuda.get_device_capability() == (9, 0)

    @classmethod
    def get_local_torch_device(cls) -> torch.device:
        raise NotImplementedError


class UnspecifiedPlatform(Platform):
    _enum = PlatformEnum.UNSPECIFIED
    device_name = "unspecified"
    device_type = ""
