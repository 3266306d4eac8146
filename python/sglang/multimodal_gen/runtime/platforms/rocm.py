# SPDX-License-Identifier: Apache-2.0
# Adapted from vLLM's ROCm platform via upstream SGLang (subset).

import torch

from sglang.multimodal_gen.runtime.platforms.interface import Platform, PlatformEnum


class RocmPlatform(Platform):
    _enum = PlatformEnum.ROCM
    device_name = "rocm"
    device_type = "cuda"
    dispatch_key = "CUDA"

    @classmethod
    def get_local_torch_device(cls) -> torch.device:
        return torch.device(f"cuda:{torch.cuda.current_device()}")
