# SPDX-License-Identifier: Apache-2.0
"""Which kernel variant a plan takes (``_tuning``), and what each knob builds.

The variants compute the same bits (the GPU sweeps in
test_fp32_layernorm_fast_paths.py run each one); these cases pin the table as
measured on an H200, check that a plan hands the kernel its knobs, the
launcher its compile options and the grid its programs, and run the fused
modules with per-frame modulation at the widths where the table takes the L1
prefetch and the register cap, or the looping grid.
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
        (32760, 1280, True, True, False, 4, "rows-keep"),
        (75600, 1280, True, True, True, 4, "block-keep"),  # per-frame: four warps
        (16384, 1280, True, True, True, 2, "block-keep"),
        (16380, 1280, True, True, True, 2, "block-keep"),
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


@pytest.mark.parametrize(
    "rows, dim, residual, mod_itemsize, frame_rows, variant",
    [
        # per-frame modulation, frames of at most 2048 rows (Wan at 32760
        # tokens: 1560), D = 3072 and 5120 but ScaleResidual at 5120 with
        # fp32 modulation: a looping grid, its programs per SM by kernel and
        # modulation width
        (32760, 5120, False, 2, 1560, "block-keep-loop18"),
        (65520, 5120, False, 4, 1560, "block-keep-loop7"),
        (32760, 3072, False, 2, 1560, "block-keep-loop24"),
        (32760, 3072, False, 4, 1560, "block-keep-loop20"),
        (32760, 3072, True, 2, 1560, "block-keep-loop18"),
        (16384, 3072, True, 4, 2048, "block-keep-loop16"),
        (16384, 2564, True, 2, 780, "block-keep-loop18"),  # ITERS 6, as 3072
        (32760, 5120, True, 2, 1560, "block-keep-loop6"),
        (32760, 4612, True, 2, 780, "block-keep-loop6"),  # ITERS 10, as 5120
        # ... and not: larger frames (75600 tokens: 3600 rows), fewer rows,
        # ScaleResidual at 5120 with fp32 modulation (its own rule), other
        # widths, D <= 1536 (the rows kernels), no per-frame operand
        (75600, 5120, False, 2, 3600, "block-keep"),
        (32760, 3072, True, 2, 2049, "block-keep"),
        (16380, 5120, False, 2, 780, "block-keep"),
        (32760, 5120, True, 4, 1560, "block-keep-warm"),
        (75600, 5120, True, 2, 3600, "block-keep-warm-cap"),
        (32760, 4096, False, 2, 1560, "block-keep"),
        (32760, 2560, False, 2, 1560, "block-keep"),
        (32760, 1536, False, 2, 1560, "rows"),
        (32760, 1280, True, 2, 1560, "block-keep"),
        (32760, 3072, True, 2, 0, "block-keep"),
    ],
)
def test_per_frame_plans_loop_where_frames_are_short(
    rows, dim, residual, mod_itemsize, frame_rows, variant
):
    """LOOP as measured (H200, session 16): LayerNormScaleShift 32760x5120
    with per-frame bf16 modulation 0.80x the one-row kernel, 0.84x with fp32;
    at 75600 tokens 0.97-1.02x, so not there. ScaleResidual 32760x5120 with
    bf16 modulation 0.98x its prefetching kernel (session 17)."""
    got = kb._tuning(rows, dim, residual, True, frame_rows > 0, mod_itemsize,
                     frame_rows)  # fmt: skip
    assert got == kb._variant(variant)


H100 = "NVIDIA H100 80GB HBM3"


@pytest.mark.parametrize(
    "rows, dim, residual, mod_itemsize, frame_rows, variant",
    [
        # LayerNormScaleShift at D = 1536: four warps per row, [B, 1, D] or
        # per frame of at most _LOOP_FRAME_ROWS rows, either modulation width
        (75600, 1536, False, 2, 0, "block"),
        (32760, 1536, False, 4, 0, "block"),
        (32760, 1536, False, 4, 1560, "block"),
        (43008, 1536, False, 2, 2048, "block"),
        # ScaleResidual at D = 1536, per frame: PREFETCH too
        (32760, 1536, True, 2, 1560, "block-keep-prefetch"),
        (75600, 1536, True, 4, 3600, "block-keep-prefetch"),
        # D = 5120, per-frame bf16 modulation: no LOOP
        (32760, 5120, False, 2, 1560, "block-keep-prefetch"),
        (75600, 5120, False, 2, 3600, "block-keep-prefetch"),
        (32760, 5120, True, 2, 1560, "block-keep-warm-cap"),
        # ... and the H200 table elsewhere: fp32 modulation at 5120, [B, 1, D]
        # ScaleResidual, other widths, fewer rows
        (32760, 5120, False, 4, 1560, "block-keep-loop7"),
        (32760, 5120, True, 4, 1560, "block-keep-warm"),
        (32760, 1536, True, 2, 0, "block-keep"),
        (75600, 1536, False, 2, 3600, "rows"),
        (75600, 1536, False, 4, 3600, "rows"),
        (43029, 1536, False, 2, 2049, "rows"),
        (32760, 1280, False, 2, 1560, "rows"),
        (32760, 3072, False, 2, 1560, "block-keep-loop24"),
        (16380, 1536, False, 2, 780, "rows"),
        (4096, 5120, False, 2, 195, "block-keep"),
    ],
)
def test_an_h100_takes_its_own_entries_and_the_table_elsewhere(
    rows, dim, residual, mod_itemsize, frame_rows, variant
):
    """The H100's entries (_H100_CARDS, measured on that card, sessions 21
    and 23); the same case on any other card, or off CUDA, is the H200
    table's."""
    case = (rows, dim, residual, True, frame_rows > 0, mod_itemsize, frame_rows)
    assert kb._tuning(*case, card=H100) == kb._variant(variant)
    table = kb._tuning(*case)
    for card in ("NVIDIA H200", "NVIDIA H100 PCIe", ""):
        assert kb._tuning(*case, card=card) == table
    # FP32LayerNorm (no modulation) keeps the table on an H100
    assert kb._tuning(rows, dim, False, False, card=H100) == kb._tuning(
        rows, dim, False, False
    )


def test_card_name_is_empty_off_cuda():
    assert kb._card_name(torch.device("cpu")) == ""
    assert kb._card_name(torch.device("meta")) == ""


def test_kernel_variant_names_parse_or_fail_in_one_line():
    assert kb._variant("rows-keep") == {"ROWS": 1, "KEEP": True, "PREFETCH": False}
    assert kb._variant("block") == {
        "KEEP": False, "PREFETCH": False, "WARM_L1": False, "CAP": False, "LOOP": 0,
    }  # fmt: skip
    assert kb._variant("block-keep-warm-cap") == {
        "KEEP": True, "PREFETCH": False, "WARM_L1": True, "CAP": True, "LOOP": 0,
    }  # fmt: skip
    assert kb._variant("block-keep-loop18") == {
        "KEEP": True, "PREFETCH": False, "WARM_L1": False, "CAP": False, "LOOP": 18,
    }  # fmt: skip
    # warm, cap and loop are the four-warp kernel's knobs; loop comes last
    # and counts programs per SM
    for bad in ("warp", "rows-fast", "block-keep-keep-x", "rows-warm", "rows-cap",
                "rows-loop2", "block-loop", "block-loop0", "block-loop2-keep",
                "block-loopx", "block-keep-loop-2"):  # fmt: skip
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
    "mod_dtype, frames, rows, variant, capped",
    [
        (torch.bfloat16, 21, 75600, "block-keep-warm-cap", True),
        (torch.float32, 21, 32760, "block-keep-warm", False),
        (torch.bfloat16, 0, 32760, "block-keep", False),
    ],
)
def test_plan_hands_knobs_to_the_kernel_and_the_cap_to_the_launcher(
    mod_dtype, frames, rows, variant, capped
):
    """A plan reads per-frame layout and modulation width from its operands;
    WARM_L1 goes to the kernel as a constexpr, CAP picks the launcher compiled
    with ``maxnreg`` (meta tensors: runs on CPU)."""
    plan = _meta_plan(5120, mod_dtype, frames, rows)
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
    assert plan.constexprs["LOOP"] is False and plan.grid == (rows, 1, 1)


@needs_triton
@pytest.mark.parametrize("mod_dtype, loop", [(torch.bfloat16, 24), (torch.float32, 20)])
def test_plan_hands_the_loop_to_the_grid(mod_dtype, loop, monkeypatch):
    """A looping plan: the kernel is told only that it loops; the grid holds
    LOOP programs per SM (meta tensors count one SM) and the ints end with
    the rows, which the kernel splits into the programs' chunks; a program
    per row where the chunks' int32 ends could pass the row limit."""
    meta = torch.device("meta")
    x = torch.empty(1, 32760, 3072, dtype=torch.bfloat16, device=meta)
    scale, shift = (torch.empty(1, 21, 1, 3072, dtype=mod_dtype, device=meta)
                    for _ in range(2))  # fmt: skip
    plan = kb._Plan(x, None, None, 1e-6, None, None, scale, shift)
    assert plan.tuning == kb._variant(f"block-keep-loop{loop}")
    assert plan.constexprs["LOOP"] is True and plan.constexprs["PER_FRAME"]
    assert plan.grid == (loop, 1, 1)
    assert plan.ints[-1] == 32760
    assert plan.launcher is kb._LAUNCHER
    # the last chunk's end (rows + programs - 1) must stay within the row
    # limit, or each program takes one row
    for limit, grid in ((32760 + loop, loop), (32760 + loop - 1, 32760)):
        monkeypatch.setattr(kb, "_KERNEL_MAX_ROWS", limit)
        plan = kb._Plan(x, None, None, 1e-6, None, None, scale, shift)
        assert plan.grid == (grid, 1, 1) and plan.constexprs["LOOP"] is True


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@needs_triton
@pytest.mark.parametrize(
    "residual, dim, mod_dtype, frame_rows, variant, h100",
    [
        (True, 5120, torch.bfloat16, 800, "block-keep-loop6", "block-keep-warm-cap"),
        (True, 5120, torch.bfloat16, 2100, "block-keep-warm-cap", None),
        (True, 5120, torch.float32, 800, "block-keep-warm", None),
        (True, 3072, torch.float32, 800, "block-keep-loop16", None),
        (False, 5120, torch.bfloat16, 800, "block-keep-loop18", "block-keep-prefetch"),
        (False, 5120, torch.float32, 800, "block-keep-loop7", None),
        (False, 3072, torch.bfloat16, 800, "block-keep-loop24", None),
        (True, 1280, torch.float32, 800, "block-keep", None),
        (True, 1280, torch.bfloat16, 800, "block-keep", None),
        (True, 1536, torch.bfloat16, 800, "block-keep", "block-keep-prefetch"),
        (False, 1536, torch.float32, 800, "rows", "block"),
    ],
)
def test_per_frame_modulation_at_wan_widths_equals_chain(
    residual, dim, mod_dtype, frame_rows, variant, h100, monkeypatch
):
    """The fused modules with Wan's per-frame modulation ([B, 21, 1, D]) at
    D = 1280, 3072 and 5120: the table's choice, bit-identical to the eager
    chain. ScaleResidual at 1280 takes four warps per row, not one.
    Frames of 800 rows loop (LOOP: 6 to 22 rows per program on 132 SMs, the
    grid's last programs without a row), but ScaleResidual at 5120 with fp32
    modulation, which prefetches; so does that module with frames past
    _LOOP_FRAME_ROWS, capping its registers with bf16 modulation. An H100
    takes its own entries (``h100``) where it has one."""
    if h100 and torch.cuda.get_device_name() in kb._H100_CARDS:
        variant = h100
    monkeypatch.setattr(kb, "_PLANS", {})
    monkeypatch.setattr(sel, "_RUNNERS", {})
    frames = 21
    seq = frames * frame_rows
    gen = torch.Generator().manual_seed(14)
    if residual:
        m = ln.ScaleResidualLayerNormScaleShift(dim, eps=1e-6, elementwise_affine=True)
    else:
        m = ln.LayerNormScaleShift(dim, eps=1e-6, elementwise_affine=False)
    m = m.cuda()
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5 + 1)

    def rnd(*shape, scale=1.0, dtype=torch.bfloat16):
        return (torch.randn(*shape, generator=gen) * scale).to("cuda", dtype)

    x = rnd(1, seq, dim)
    gate, shift, scale = (rnd(1, frames, 1, dim, scale=0.3, dtype=mod_dtype)
                          for _ in range(3))  # fmt: skip
    if residual:
        args = (rnd(1, seq, dim, scale=2.0), x, gate, shift, scale)
    else:
        args = (x, shift, scale)
    with torch.no_grad():
        fused = m(*args)
        # the fused call's plan (the chain's FP32LayerNorm makes its own)
        assert [p.tuning for p in kb._PLANS.values()] == [kb._variant(variant)]
        chain = m.forward_native(*args)
    fused = fused if residual else (fused,)
    chain = chain if residual else (chain,)
    for got, want in zip(fused, chain):
        assert got.dtype == torch.bfloat16
        assert torch.equal(got, want), (got != want).sum().item()
