# SPDX-License-Identifier: Apache-2.0
"""torch.compile of a Wan-like block keeps every output bit-identical to eager.

With grad off, FP32LayerNorm and the LayerNorm adaLN modules run as opaque
custom ops while compiling (``sglang::mmgen_*``), so inductor cannot re-round
the modulation chain, and ``fullgraph=True`` proves there is no graph break.
"""

import pytest
import torch

from sglang.multimodal_gen.runtime.layers import layernorm as ln

from _shared import DEVICES


class _WanLikeBlock(torch.nn.Module):
    # the adaLN pattern of a Wan DiT block: gated residual + norm + modulate,
    # then a second modulated norm, then a standalone FP32LayerNorm
    def __init__(self, dim: int):
        super().__init__()
        self.srn = ln.ScaleResidualLayerNormScaleShift(dim, elementwise_affine=True)
        self.nss = ln.LayerNormScaleShift(dim, elementwise_affine=False)
        self.out_norm = ln.FP32LayerNorm(dim, eps=1e-6)

    def forward(self, residual, x, gate, shift, scale, shift2, scale2):
        h, r = self.srn(residual, x, gate, shift, scale)
        h = self.nss(h, shift2, scale2)
        return self.out_norm(h + r), r


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("per_frame", [False, True])
def test_compiled_wan_like_block_equals_eager(device, dtype, per_frame):
    torch._dynamo.reset()
    dim, batch, seq = 128, 2, 24
    gen = torch.Generator().manual_seed(7)
    block = _WanLikeBlock(dim).to(device)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5 + 1)

    def rnd(*shape, dt=dtype):
        return (torch.randn(*shape, generator=gen) * 2).to(device, dt)

    mod_shape = (batch, 3, 1, dim) if per_frame else (batch, 1, dim)
    args = (
        rnd(batch, seq, dim),
        rnd(batch, seq, dim),
        rnd(*mod_shape, dt=torch.float32),
        rnd(*mod_shape),
        rnd(*mod_shape, dt=torch.float32),
        rnd(*mod_shape),
        rnd(*mod_shape),
    )
    compiled = torch.compile(block, fullgraph=True)
    with torch.no_grad():
        eager = block(*args)
        got = compiled(*args)
    for e, g in zip(eager, got):
        assert g.dtype == e.dtype
        assert torch.equal(g, e), (g != e).sum().item()
