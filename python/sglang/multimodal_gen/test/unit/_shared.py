# SPDX-License-Identifier: Apache-2.0
"""What the layernorm unit tests share: the device list and the one-thread fixture.

Importing ``one_cpu_thread`` into a test module turns it on for that module.

``test_fp32_layernorm.py`` keeps its own copy on purpose: the SGLang
compatibility harness loads that file alone into a venv with the real
``sglang`` installed, where this module does not exist.
"""

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=[
            pytest.mark.gpu,
            pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device"),
        ],
    ),
]


@pytest.fixture(autouse=True)
def one_cpu_thread():
    """Many tiny CPU ops: intra-op threads only add wake-up latency (on a loaded
    2-core runner, milliseconds per op); results do not depend on it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
