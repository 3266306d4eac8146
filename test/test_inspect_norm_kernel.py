# SPDX-License-Identifier: Apache-2.0
"""Register budget of the fp32 LayerNorm kernel, compiled offline for sm_90.

Guards the regression that made the kernel 3.7x the copy floor: lane merges laid
out replicated in every thread (255 registers, 2 rows in flight per SM).
"""

import importlib.util
import pathlib
import re

import pytest

pytest.importorskip("triton")

_SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "scripts/inspect_norm_kernel.py"


@pytest.fixture(scope="module")
def inspect():
    spec = importlib.util.spec_from_file_location("inspect_norm_kernel", _SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("dim", [1536, 5120])
def test_kernel_fits_the_register_budget(inspect, tmp_path, dim, fused):
    compiled = inspect.compile_kernel(dim, fused, {"DYN_LOOP": False}, 90)
    usage = inspect.resources(compiled, str(tmp_path / "k.cubin"))
    regs, stack = map(int, re.search(r"registers (\d+) stack (\d+)", usage).groups())
    # <= 64 registers keeps >= 8 rows (32 warps) in flight per SM; no spills
    assert regs <= 64 and stack == 0, usage
