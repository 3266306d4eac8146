# SPDX-License-Identifier: Apache-2.0
"""Register budget of the fp32 LayerNorm kernel, compiled offline for sm_90.

Guards the regression that made the kernel 3.7x the copy floor: lane merges laid
out replicated in every thread (255 registers, 2 rows in flight per SM).
"""

import importlib.util
import pathlib
import re

import pytest
import torch

pytest.importorskip("triton")

from sglang.kernels.ops.diffusion.norm import (  # noqa: E402
    fp32_layernorm_bitexact as kb,
)

_SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "scripts/inspect_norm_kernel.py"


@pytest.fixture(scope="module")
def inspect():
    spec = importlib.util.spec_from_file_location("inspect_norm_kernel", _SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# neither knob: the kernels as they were before KEEP and PREFETCH
PLAIN = kb._variant("block")


def _registers_and_stack(usage: str) -> tuple:
    """Registers per thread and stack bytes from ``resources``' line."""
    found = re.search(r"registers (\d+) stack (\d+)", usage)
    return int(found.group(1)), int(found.group(2))


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("dim", [1536, 5120])
def test_kernel_fits_the_register_budget(inspect, tmp_path, dim, fused):
    compiled = inspect.compile_kernel(dim, fused, PLAIN, 90)
    usage = inspect.resources(compiled, str(tmp_path / "k.cubin"))
    regs, stack = _registers_and_stack(usage)
    # <= 64 registers keeps >= 8 rows (32 warps) in flight per SM; no spills
    assert regs <= 64 and stack == 0, usage


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("dim", [1280, 1536])
def test_warp_per_row_kernel_has_no_barriers(inspect, tmp_path, dim, fused):
    """The warp-per-row kernel merges ATen's four warps in registers: a layout
    conversion through shared memory (25 barriers when the coefficient loads
    took their own layout) would undo what it is for."""
    compiled = inspect.compile_kernel(dim, fused, PLAIN, 90, rows=1)
    usage = inspect.resources(compiled, str(tmp_path / "k.cubin"))
    regs, stack = _registers_and_stack(usage)
    barriers = int(re.search(r"(\d+) barriers", usage).group(1))
    # one warp per program: <= 96 registers keeps >= 21 rows in flight per SM
    assert barriers == 0 and stack == 0 and regs <= 96, usage


@pytest.mark.parametrize(
    "variant, dim",
    [("block-keep", 5120), ("block-keep-prefetch", 5120), ("block-keep-prefetch", 1280),
     ("rows-keep", 1280)],
)  # fmt: skip
def test_variants_that_hold_the_row_do_not_spill(inspect, tmp_path, variant, dim):
    """KEEP and PREFETCH hold a row's tiles in registers; where the plans take
    them (the widest fused rows included) that must not spill to local memory,
    which would add the memory traffic they are there to save."""
    tuning = kb._variant(variant)
    rows = tuning.pop("ROWS", 0)
    compiled = inspect.compile_kernel(dim, True, tuning, 90, rows=rows)
    usage = inspect.resources(compiled, str(tmp_path / "k.cubin"))
    assert re.search(r"stack 0 B", usage), usage


@pytest.mark.parametrize("variant", ["block-keep", "rows-keep"])
def test_rows_stream_past_l1_and_the_modulation_stays_there(inspect, variant):
    """x and the residual are read once, so they load with ``.cg`` (L2 only),
    and the modulation, read again by every row of a frame, with
    ``evict_last``: 0.82x the time with per-frame modulation on an H200."""
    tuning = kb._variant(variant)
    rows = tuning.pop("ROWS", 0)
    compiled = inspect.compile_kernel(1280, True, tuning, 90, rows=rows)
    loads = re.findall(r"ld\.global\.[\w:.]*", compiled.asm["ptx"])
    streamed = sum(".cg." in ld for ld in loads)
    kept = sum("L1::evict_last" in ld for ld in loads)
    # as many loads per input tensor: x and residual; gate, scale and shift
    assert streamed > 0 and 3 * streamed == 2 * kept, loads


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("dim", [1280, 1536, 5120])
def test_four_warp_kernel_exchanges_once_between_warps(inspect, tmp_path, dim, fused):
    """Each warp's merged state crosses to the others in one shared-memory
    exchange, and the merges' counts are constants (no loads, no division):
    15 barriers and a division per merge before, and 1.13x the time of this
    at ScaleResidual 4096x1280 on an H200."""
    compiled = inspect.compile_kernel(dim, fused, PLAIN, 90)
    usage = inspect.resources(compiled, str(tmp_path / "k.cubin"))
    assert int(re.search(r"(\d+) barriers", usage).group(1)) <= 3, usage
    # the variance's division is the only one left (one per merge before)
    assert compiled.asm["ptx"].count("div.rn.f32") == 1, usage


@pytest.mark.parametrize("mod_dtype, code, load", [
    (torch.float32, 0, ".v4.b32"), (torch.bfloat16, 1, ".v2.b32"),
])  # fmt: skip
def test_offline_build_is_the_launch_a_plan_makes(inspect, mod_dtype, code, load):
    """The offline build takes its arguments from a plan for Wan's operands, so
    it compiles what a launch compiles. Typed by hand, the fused build paired
    fp32 modulation with a bf16 residual rounding that no launch has: 125
    registers at D=5120 with KEEP, where the launches on an H200 had 86 (fp32
    modulation) and 72 (bf16), as this build now has."""
    variant = kb._variant("block-keep")
    launcher, pointers, ints, constexprs = inspect.launch_arguments(
        1280, True, variant, mod_dtype=mod_dtype
    )
    kernel = launcher.fn
    assert kernel is kb._fp32_norm_kernel
    typed = dict(zip(kernel.arg_names, pointers))
    assert [typed[n] for n in ("GATE", "SCALE", "SHIFT")] == [mod_dtype] * 3
    assert typed["X"] == typed["RES"] == typed["Y"] == torch.bfloat16
    assert typed["W"] == typed["B"] == typed["COEF"] == torch.float32
    # eager rounds after each op in the promoted dtype: bf16 with bf16
    # modulation, fp32 (no rounding) with fp32
    codes = [constexprs[n] for n in ("G1_RND", "R_RND", "S_RND", "M1_RND", "M_RND")]
    assert codes == [code] * 5
    # a [B, 1, D] modulation: one frame (stride 0) of all 32760 rows, unit
    # column stride; no per-frame quotient, but the batch's (L's) reciprocal
    named = dict(zip(kernel.arg_names[len(pointers) :], ints))
    assert (named["g_sf"], named["g_sd"], named["L"]) == (0, 1, 32760)
    assert (named["l_mul"], named["l_shift"]) == kb.quotient_reciprocal(32760)
    assert constexprs["PER_FRAME"] is False
    compiled = inspect.compile_kernel(1280, True, variant, 90, mod_dtype=mod_dtype)
    kept = re.findall(r"ld\.global\.L1::evict_last[\w:.]*", compiled.asm["ptx"])
    # four modulation elements per thread and load: 16 bytes of fp32, 8 of bf16
    assert kept and all(ld.endswith(load) for ld in kept), kept
    # a row's batch is a multiply-high and a shift: no integer division left
    # (four div.s32 before, about 80 of 624 instructions at D=1280)
    assert not re.search(r"\b(div|rem)\.[su](32|64)", compiled.asm["ptx"])


@pytest.mark.parametrize("mod_dtype, variant", [
    (torch.bfloat16, "block-keep-warm-cap"), (torch.float32, "block-keep-warm"),
])  # fmt: skip
def test_per_frame_variants_prefetch_and_hold_no_more_registers(
    inspect, tmp_path, mod_dtype, variant
):
    """What the table takes for ScaleResidual with per-frame modulation at
    D = 5120: every lane prefetches its scale and shift tiles into L1 (a
    hint: the loads are those of the kernel without it), and the cap holds
    the kernel to 72 registers without a spill, which would eat the seventh
    row per SM it is there for."""
    tuning = kb._variant(variant)
    build = inspect.compile_kernel(
        5120, True, tuning, 90, mod_dtype=mod_dtype, frames=21
    )
    plain = inspect.compile_kernel(
        5120, True, kb._variant("block-keep"), 90, mod_dtype=mod_dtype, frames=21
    )
    ptx, plain_ptx = build.asm["ptx"], plain.asm["ptx"]
    # ten tiles of 128 lanes x 4 columns, two operands
    assert ptx.count("prefetch.global.L1 ") == 20 and "prefetch" not in plain_ptx
    loads = re.findall(r"ld\.global\.[\w:.]*", ptx)
    assert sorted(loads) == sorted(re.findall(r"ld\.global\.[\w:.]*", plain_ptx))
    usage = inspect.resources(build, str(tmp_path / "k.cubin"))
    regs, stack = _registers_and_stack(usage)
    plain_regs, _ = _registers_and_stack(
        inspect.resources(plain, str(tmp_path / "p.cubin"))
    )
    assert stack == 0 and regs <= (72 if tuning["CAP"] else plain_regs), usage


@pytest.mark.parametrize("mod_dtype, fits", [
    (torch.bfloat16, True), (torch.float32, False),
])  # fmt: skip
def test_looped_scale_residual_fits_its_programs_per_sm_where_the_table_loops(
    inspect, tmp_path, mod_dtype, fits
):
    """LOOP's programs per SM for ScaleResidual at D = 5120 (six, with bf16
    modulation) must all be resident: at most 80 registers (65536 / (6 x 128)
    rounded down to the allocation's 8) and no spill. With fp32 modulation the
    looped body holds more (126 on an H200), which is why the table leaves
    that case to WARM_L1."""
    frames = 21
    tuning = kb._tuning(32760, 5120, True, True, True, mod_dtype.itemsize,
                        32760 // frames)  # fmt: skip
    assert (tuning["LOOP"] == 6) is fits
    build = inspect.compile_kernel(
        5120, True, kb._variant("block-keep-loop6"), 90, mod_dtype=mod_dtype,
        frames=frames,
    )  # fmt: skip
    regs, stack = _registers_and_stack(
        inspect.resources(build, str(tmp_path / "k.cubin"))
    )
    assert stack == 0 and (regs <= 80) is fits, (regs, stack)
