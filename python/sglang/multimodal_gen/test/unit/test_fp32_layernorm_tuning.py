# SPDX-License-Identifier: Apache-2.0
"""Which kernel variant a plan takes (``_tuning``), and what each knob builds.

The variants compute the same bits (the GPU sweeps in
test_fp32_layernorm_fast_paths.py run each one); these cases pin the table as
measured on an H200, check that a plan hands the kernel its knobs and the
launcher its compile options, and run the fused module at the width where
the table takes the L1 prefetch and the register cap.
"""

import pytest
import torch

from sglang.kernels.ops.diffusion.norm import fp32_layernorm_bitexact as kb
from sglang.kernels.ops.diffusion.norm import fp32_layernorm_select as sel
from sglang.multimodal_gen.runtime.layers import layernorm as ln

HAS_CUDA = torch.cuda.is_available()
needs_triton = pytest.mark.skipif(kb.triton is None, reason="needs Triton")


@pytest.mark.parametrize(
    "rows, dim, residual, modulated, per_frame, mod_itemsize, variant",
    [
        (257, 5120, True, True, True, 2, "block-keep-prefetch"),  # latency
        (514, 1280, False, False, False, 4, "block-keep-prefetch"),
        (1028, 3072, False, False, False, 4, "block-keep"),
        (4096, 1280, False, False, False, 4, "rows"),  # narrow, no residual
        (75600, 1536, False, True, True, 4, "rows"),
        (4096, 1280, True, True, False, 4, "block-keep"),
        (32760, 1280, True, True, True, 4, "rows-keep"),
        (32760, 1536, True, True, False, 4, "block-keep"),
        (4096, 3072, False, True, False, 4, "block-keep-prefetch"),
        (4096, 5120, False, True, False, 4, "block-keep"),
        (75600, 5120, True, True, False, 4, "block-keep"),
        (75600, 5120, False, False, False, 4, "block-keep"),
        # ScaleResidual, per-frame modulation, D = 5120: prefetch, and with
        # bf16 modulation the register cap too
        (32760, 5120, True, True, True, 4, "block-keep-warm"),
        (75600, 5120, True, True, True, 2, "block-keep-warm-cap"),
        (16384, 5120, True, True, True, 2, "block-keep-warm-cap"),
        # ... and nowhere else: fewer rows, narrower or wider rows, [B, 1, D],
        # no residual
        (4096, 5120, True, True, True, 2, "block-keep"),
        (32760, 3072, True, True, True, 4, "block-keep"),
        (32760, 4096, True, True, True, 2, "block-keep"),
        (32760, 4608, True, True, True, 2, "block-keep"),
        (32760, 4612, True, True, True, 2, "block-keep-warm-cap"),
        (32760, 5120, True, True, False, 2, "block-keep"),
        (32760, 5120, False, True, True, 4, "block-keep"),
        (32760, 8192, True, True, True, 2, "block-keep"),
    ],
)
def test_plans_take_the_measured_variant_per_regime(
    rows, dim, residual, modulated, per_frame, mod_itemsize, variant
):
    """The tuning table of fp32_layernorm_bitexact, as measured (H200)."""
    got = kb._tuning(rows, dim, residual, modulated, per_frame, mod_itemsize)
    assert got == kb._variant(variant)


def test_kernel_variant_names_parse_or_fail_in_one_line():
    assert kb._variant("rows-keep") == {"ROWS": 1, "KEEP": True, "PREFETCH": False}
    assert kb._variant("block") == {
        "KEEP": False, "PREFETCH": False, "WARM_L1": False, "CAP": False,
    }  # fmt: skip
    assert kb._variant("block-keep-warm-cap") == {
        "KEEP": True, "PREFETCH": False, "WARM_L1": True, "CAP": True,
    }  # fmt: skip
    # warm and cap are the four-warp kernel's knobs
    for bad in ("warp", "rows-fast", "block-keep-keep-x", "rows-warm", "rows-cap"):
        with pytest.raises(ValueError, match="unknown kernel variant"):
            kb._variant(bad)


def _meta_plan(dim, mod_dtype, frames, rows=32760):
    meta = torch.device("meta")
    x = torch.empty(1, rows, dim, dtype=torch.bfloat16, device=meta)
    w = torch.empty(dim, device=meta)
    shape = (1, frames, 1, dim) if frames else (1, 1, dim)
    gate, scale, shift = (torch.empty(shape, dtype=mod_dtype, device=meta)
                          for _ in range(3))  # fmt: skip
    return kb._Plan(x, w, w, 1e-6, torch.empty_like(x), gate, scale, shift)


@needs_triton
@pytest.mark.parametrize(
    "mod_dtype, frames, variant, capped",
    [
        (torch.bfloat16, 21, "block-keep-warm-cap", True),
        (torch.float32, 21, "block-keep-warm", False),
        (torch.bfloat16, 0, "block-keep", False),
    ],
)
def test_plan_hands_knobs_to_the_kernel_and_the_cap_to_the_launcher(
    mod_dtype, frames, variant, capped
):
    """A plan reads per-frame layout and modulation width from its operands;
    WARM_L1 goes to the kernel as a constexpr, CAP picks the launcher compiled
    with ``maxnreg`` (meta tensors: runs on CPU)."""
    plan = _meta_plan(5120, mod_dtype, frames)
    assert plan.tuning == kb._variant(variant)
    assert plan.constexprs["WARM_L1"] is plan.tuning["WARM_L1"]
    assert plan.constexprs["PER_FRAME"] is bool(frames)
    assert "CAP" not in plan.constexprs
    assert plan.launcher is (kb._CAPPED_LAUNCHER if capped else kb._LAUNCHER)
    assert plan.launcher.options.get("maxnreg") == (72 if capped else None)
    # every constexpr the kernel declares, and nothing else
    names = plan.launcher.fn.arg_names
    assert set(plan.constexprs) <= set(names)
    assert len(plan.tail) == len(names) - kb._N_POINTER_ARGS - len(plan.ints) - 1


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@needs_triton
@pytest.mark.parametrize(
    "mod_dtype, variant",
    [(torch.bfloat16, "block-keep-warm-cap"), (torch.float32, "block-keep-warm")],
)
def test_scale_residual_per_frame_at_wan_width_equals_chain(
    mod_dtype, variant, monkeypatch
):
    """ScaleResidual at D = 5120 with Wan's per-frame modulation
    ([B, 21, 1, D], 800 rows a frame): the table's choice (prefetch, and the
    register cap with bf16 modulation), bit-identical to the eager chain."""
    monkeypatch.setattr(kb, "_PLANS", {})
    monkeypatch.setattr(sel, "_RUNNERS", {})
    dim, frames, seq = 5120, 21, 21 * 800
    gen = torch.Generator().manual_seed(14)
    m = ln.ScaleResidualLayerNormScaleShift(dim, eps=1e-6, elementwise_affine=True)
    m = m.cuda()
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5 + 1)

    def rnd(*shape, scale=1.0, dtype=torch.bfloat16):
        return (torch.randn(*shape, generator=gen) * scale).to("cuda", dtype)

    residual, x = rnd(1, seq, dim, scale=2.0), rnd(1, seq, dim)
    gate, shift, scale = (rnd(1, frames, 1, dim, scale=0.3, dtype=mod_dtype)
                          for _ in range(3))  # fmt: skip
    with torch.no_grad():
        fused = m(residual, x, gate, shift, scale)
        # the fused call's plan (the chain's FP32LayerNorm makes its own)
        assert [p.tuning for p in kb._PLANS.values()] == [kb._variant(variant)]
        chain = m.forward_native(residual, x, gate, shift, scale)
    for got, want in zip(fused, chain):
        assert got.dtype == torch.bfloat16
        assert torch.equal(got, want), (got != want).sum().item()
