# SPDX-License-Identifier: Apache-2.0
# Adapted from vLLM's platform selection via upstream SGLang (subset).
"""Lazily resolved ``current_platform``, as upstream exposes it.

Selection here is deliberately small: CUDA when torch was built with CUDA and sees
a device, ROCm when torch is a HIP build with a device, CPU otherwise. The object
is built on first attribute access, so importing this package never touches a GPU.
"""

from sglang.multimodal_gen.runtime.platforms.interface import (  # noqa: F401
    Platform,
    PlatformEnum,
)

_current_platform: Platform | None = None


def _resolve_current_platform() -> Platform:
    global _current_platform
    if _current_platform is None:
        import torch

        if torch.cuda.is_available() and torch.version.cuda is not None:
            from sglang.multimodal_gen.runtime.platforms.cuda import CudaPlatform

            _current_platform = CudaPlatform()
        elif torch.cuda.is_available() and torch.version.hip is not None:
            from sglang.multimodal_gen.runtime.platforms.rocm import RocmPlatform

            _current_platform = RocmPlatform()
        else:
            from sglang.multimodal_gen.runtime.platforms.cpu import CpuPlatform

            _current_platform = CpuPlatform()
    return _current_platform


def __getattr__(name: str):
    if name == "current_platform":
        return _resolve_current_platform()
    raise AttributeError(f"No attribute named '{name}' exists in {__name__}.")


__all__ = ["Platform", "PlatformEnum", "current_platform"]
