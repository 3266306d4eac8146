# SPDX-License-Identifier: Apache-2.0
"""What the layernorm unit tests share: the device list, the one-thread fixture
and ``run_python`` (a fresh interpreter on this tree).

Importing ``one_cpu_thread`` into a test module turns it on for that module.

``test_fp32_layernorm.py`` keeps its own copy on purpose: the SGLang
compatibility harness loads that file alone into a venv with the real
``sglang`` installed, where this module does not exist.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# this tree's python/ directory
PYTHON_DIR = Path(__file__).resolve().parents[4]

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


def run_python(code: str, *args: str, env=None, timeout=None):
    """Run ``code`` with ``args`` in a fresh Python, for what a process decides
    at import (environment switches, the Triton interpreter, a missing Triton).

    The child sees ``os.environ`` updated with ``env``, and this tree's python/
    first on its path, then this process's ``sys.path``, so it imports the same
    modules; returns the ``CompletedProcess`` with text stdout and stderr.
    """
    child_env = {**os.environ, **(env or {})}
    child_env["PYTHONPATH"] = os.pathsep.join([str(PYTHON_DIR)] + sys.path)
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        env=child_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
