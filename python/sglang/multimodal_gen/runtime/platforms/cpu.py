# SPDX-License-Identifier: Apache-2.0
# Adapted from vLLM's CPU platform via upstream SGLang (subset).

import torch

from sglang.multimodal_gen.runtime.platforms.interface import Platform, PlatformEnum


class CpuPlatform(Platform):
    _enum = PlatformEnum.CPU
    device_name = "CPU"
    device_type = "cpu"
    dispatch_key = "CPU"

    @classmethod
    def get_local_torch_device(cls) -> torch.device:
        return torch.device("cpu")
