# SPDX-License-Identifier: Apache-2.0
"""The Welford merges' count arithmetic that the kernels fold into constants.

ATen's ``cuWelfordCombine`` divides by the merged count in fp32. The counts
depend only on D and the lane, so the kernels take ``(a_n, n_a, n_b)`` as
compile-time constants (``merge_counts``), or from ``_merge_coefficients``'
table where a warp mixes lane counts. Here both are checked, number for
number, against that arithmetic replayed in fp32 by torch on the CPU.
"""

import pytest
import torch

pytest.importorskip("triton")

from sglang.kernels.ops.diffusion.norm import (  # noqa: E402
    fp32_layernorm_bitexact as kb,
)
from sglang.kernels.ops.diffusion.norm import fp32_layernorm_triton as kt  # noqa: E402

# Wan's widths (every warp's lanes share a count), and widths whose last tile
# splits a warp (the table's path)
DIMS = (8, 100, 128, 320, 384, 1000, 1280, 1536, 1540, 3072, 5120, 8192)


def _replayed_merges(dim: int) -> torch.Tensor:
    """[7, 3, 128]: ATen's seven merges (shuffles by 16..1, then lanes + 64
    and + 32) at each receiving lane, as fp32 torch arithmetic:
    ``(a_n, a_n * (1 / n), b_n * (1 / n))``, zeros where both counts are 0."""
    lanes = torch.arange(128)
    counts = 4.0 * ((dim // 4 - lanes + 127) // 128).clamp(min=0).float()
    in_warp = [lanes - lanes % 32 + (lanes % 32 + o) % 32 for o in (16, 8, 4, 2, 1)]
    stages = []
    for src in in_warp + [(lanes + 64) % 128, (lanes + 32) % 128]:
        a_n, b_n = counts[src], counts
        total = a_n + b_n
        coef = torch.ones(128) / total
        entry = torch.stack([a_n, a_n * coef, b_n * coef])
        stages.append(torch.where(total > 0, entry, torch.zeros_like(entry)))
        counts = total
    return torch.stack(stages)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32)


@pytest.mark.parametrize("a_n", [0, 1, 3, 4, 12, 40, 384, 1000, 2560, 8192])
@pytest.mark.parametrize("b_n", [0, 4, 7, 8, 640, 2048, 3072])
def test_merge_counts_round_as_fp32_division_and_products(a_n, b_n):
    a, b = torch.tensor([float(a_n)]), torch.tensor([float(b_n)])
    coef = torch.ones(1) / (a + b)
    want = [a_n, (a * coef).item(), (b * coef).item()] if a_n + b_n else [0.0] * 3
    assert list(kt.merge_counts(a_n, b_n)) == want


def test_fp32_ratio_is_the_correctly_rounded_quotient():
    for p, q in [(1, 3), (1, 24), (2, 3), (5, 7), (1, 12288), (7, 10), (3, 65536)]:
        want = (torch.tensor([float(p)]) / torch.tensor([float(q)])).item()
        assert kt.fp32_ratio(p, q) == want, (p, q)


@pytest.mark.parametrize("dim", DIMS)
def test_table_holds_atens_in_warp_merges(dim):
    table = kb._merge_coefficients(dim, torch.device("cpu"))
    want = _replayed_merges(dim)[:5]
    assert torch.equal(_bits(table[:5]), _bits(want))
    # the lane-major copy: ATen's lane 32w + l at 4l + w
    by_lane = want.view(5, 3, 4, 32).transpose(2, 3).reshape(5, 3, 128)
    assert torch.equal(_bits(table[5:]), _bits(by_lane))


@pytest.mark.parametrize("dim", DIMS)
def test_constants_for_the_step_between_warps(dim):
    want = _replayed_merges(dim)
    # warps 0 <- 2 (lane 0) and 1 <- 3 (lane 32), then 0 <- 1 (lane 0)
    for stage, lane, receiver, incoming in ((5, 0, 1, 4), (5, 32, 2, 8), (6, 0, 5, 10)):
        got = [kt.warp_merge_count(dim, receiver, incoming, k) for k in range(3)]
        assert got == want[stage, :, lane].tolist(), (stage, lane)


@pytest.mark.parametrize("dim", [d for d in DIMS if d // 4 % 32 == 0])
def test_in_warp_constants_where_each_warp_shares_a_count(dim):
    want = _replayed_merges(dim)
    for stage in range(5):
        for lane in range(128):
            # the kernels' choice: lanes below dim / 4 % 128 get lane 0's
            # constants, the others lane 127's
            like = 0 if lane < dim // 4 % 128 else 127
            a_n, n_a = (kt.shuffle_merge_count(dim, stage, like, k) for k in (0, 1))
            assert [a_n, n_a, n_a] == want[stage, :, lane].tolist(), (stage, lane)
