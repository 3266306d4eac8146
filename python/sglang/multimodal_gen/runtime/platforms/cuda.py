# SPDX-License-Identifier: Apache-2.0
# Adapted from vLLM's CUDA platform via upstream SGLang (subset).
"""CUDA platform. Importing this module must not initialize a CUDA context."""

import torch

from sglang.multimodal_gen.runtime.platforms.interface import Platform, PlatformEnum


class CudaPlatform(Platform):
    _enum = PlatformEnum.CUDA
    device_name = "cuda"
    device_type = "cuda"
    dispatch_key = "CUDA"

    @classmethod
    def get_local_torch_device(cls) -> torch.device:
        return torch.device(f"cuda:{torch.cuda.current_device()}")
