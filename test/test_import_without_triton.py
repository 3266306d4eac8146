# SPDX-License-Identifier: Apache-2.0
"""The tree imports and computes with torch alone: Triton is optional.

Without Triton, or with a Triton older than 3.5 (no ``constexpr_function``,
which the kernels' merge counts need), the kernels are not defined and every
path falls back to torch, still bit-identical to the reference. Each case runs
in a fresh interpreter, since the kernels module decides at import. A property
of this tree, not of an SGLang install (upstream's own modules import Triton),
so it lives here and not among the unit tests that the export runs there.
"""

import textwrap

import pytest

from sglang.multimodal_gen.test.unit._shared import run_python

CHILD = textwrap.dedent(
    """
    import sys
    if sys.argv[1] == "absent":
        sys.modules["triton"] = None  # `import triton` raises ImportError
    else:
        import triton  # a Triton from before constexpr_function
        del triton.constexpr_function
    import torch
    import torch.nn.functional as F
    from sglang.kernels.ops.diffusion.norm import fp32_layernorm_triton as kt
    from sglang.multimodal_gen.runtime.layers.layernorm import FP32LayerNorm

    assert kt.triton is None and kt._fp32_norm_kernel is None
    assert kt.merge_counts is None
    torch.manual_seed(0)
    norm = FP32LayerNorm(320, dtype=torch.bfloat16)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = torch.randn(8, 320, dtype=torch.bfloat16)
    with torch.inference_mode():
        out = norm(x)
    ref = F.layer_norm(
        x.float(), (320,), norm.weight.float(), norm.bias.float(), norm.eps
    ).to(x.dtype)
    assert torch.equal(out, ref)
    print("ok")
    """
)


@pytest.mark.parametrize("triton", ["absent", "before-3.5"])
def test_norm_imports_and_is_exact_without_a_usable_triton(triton):
    if triton == "before-3.5":
        pytest.importorskip("triton")
    done = run_python(CHILD, triton, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
