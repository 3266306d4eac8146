# SPDX-License-Identifier: Apache-2.0
"""A/B the arithmetic-neutral tuning knobs of the norm kernels (CUDA only).

Times each variant below (``_KERNEL_TUNING`` of the 4-warp kernel, and the
warp-per-row kernel with ``ROWS`` rows per program) on Wan shapes (bf16 input, fp32
weight and bias) against the copy floor, checks each is bit-identical to the
fp32 reference, and prints the compiled kernels' registers and spills (a
kernel's occupancy is what these knobs move). Also times ATen's reduced
precision kernel and the Triton kernel on bf16 parameters (the
``"aten_reduced"`` case) and the host-side cost of one launch. Pick the
defaults (``_KERNEL_TUNING``, ``_ROWS_TUNING`` in fp32_layernorm_bitexact.py)
from its output.

    PYTHONPATH=python python scripts/bench_norm_kernel_tuning.py [--json OUT]
"""

import argparse
import itertools
import json
import time

import torch
import torch.nn.functional as F
from triton.testing import do_bench

from sglang.kernels.ops.diffusion import fp32_layernorm_reference
from sglang.kernels.ops.diffusion.norm import fp32_layernorm_bitexact as kb

SHAPES = ((32760, 1280), (32760, 1536), (32760, 5120), (75600, 5120))
EPS = 1e-6


def _variant(**knobs) -> dict:
    return {**kb._KERNEL_TUNING, **knobs}


VARIANTS = {
    "unrolled": _variant(DYN_LOOP=False),
    "loop": _variant(DYN_LOOP=True),
    "warp-per-row": {"ROWS": 1, "WARPS": 1},
    "warp-per-2-rows": {"ROWS": 2, "WARPS": 1},
}


def copy_bandwidth() -> float:
    src = torch.randn(1 << 28, device="cuda")
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), return_mode="median")
    return 2 * src.numel() * 4 / (ms / 1e3)


def host_launch_us(fn, calls: int = 200) -> float:
    """Host time per call while the GPU keeps up (tiny input)."""
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / calls * 1e6


def _timed(fn, inputs) -> float:
    return do_bench(lambda: fn(next(inputs)), return_mode="median")


def bench_shape(tokens: int, dim: int, names, bw: float) -> list:
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    count = max(2, int(3 * l2 // (tokens * dim * 2)) + 1)
    xs = [torch.randn(tokens, dim, device="cuda").bfloat16() for _ in range(count)]
    w = torch.randn(dim, device="cuda")
    b = torch.randn(dim, device="cuda")
    w16, b16 = w.bfloat16(), b.bfloat16()
    floor = (2 * tokens * dim * 2 + 2 * dim * 4) / bw * 1e3
    want = {
        "fp32": fp32_layernorm_reference(xs[0], (dim,), w, b, EPS),
        "bf16": fp32_layernorm_reference(xs[0], (dim,), w16, b16, EPS),
    }
    print(f"{tokens}x{dim}: floor {floor:.4f} ms", flush=True)
    rows = []

    def record(name, fn, params):
        same = torch.equal(fn(xs[0]), want[params])
        ms = _timed(fn, itertools.cycle(xs))
        print(f"  {params} params  {name:32s} {ms:.4f} ms  {ms / floor:5.2f}x floor"
              f"{'' if same else '  DIFFERENT BITS'}", flush=True)  # fmt: skip
        rows.append({"tokens": tokens, "dim": dim, "variant": name,
                     "params": params, "ms": ms, "x_floor": ms / floor,
                     "bit_identical": same})  # fmt: skip

    # bf16 parameters: ATen's reduced-precision kernel is the alternative route
    record(
        "ATen F.layer_norm", lambda x: F.layer_norm(x, (dim,), w16, b16, EPS), "bf16"
    )
    for params, (pw, pb) in (("fp32", (w, b)), ("bf16", (w16, b16))):
        for name in names:
            record(
                name,
                lambda x, t=VARIANTS[name], pw=pw, pb=pb: kb._launch_fp32_norm(
                    x, pw, pb, EPS, tuning=t
                ),
                params,
            )
    return rows


def bench_fused(tokens: int, dim: int, names, bw: float) -> list:
    """residual + gate * x -> norm -> (1 + scale) * y + shift, Wan's [1, 1, D] fp32."""
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    count = max(2, int(3 * l2 // (2 * tokens * dim * 2)) + 1)
    pairs = [
        tuple(torch.randn(1, tokens, dim, device="cuda").bfloat16() for _ in range(2))
        for _ in range(count)
    ]
    w, b = torch.randn(dim, device="cuda"), torch.randn(dim, device="cuda")
    gate, scale, shift = (torch.randn(1, 1, dim, device="cuda") for _ in range(3))
    floor = (4 * tokens * dim * 2 + 5 * dim * 4) / bw * 1e3
    print(f"fused {tokens}x{dim}: floor {floor:.4f} ms", flush=True)
    rows = []
    want = None
    for name in names:
        tuning = VARIANTS[name]

        def run(pair, t=tuning):
            x, res = pair
            return kb._launch_fp32_norm(x, w, b, EPS, residual=res, gate=gate,
                                        scale=scale, shift=shift, tuning=t)  # fmt: skip

        got = run(pairs[0])
        want = got if want is None else want
        same = all(torch.equal(a, c) for a, c in zip(got, want))
        ms = _timed(run, itertools.cycle(pairs))
        print(f"  fused  {name:32s} {ms:.4f} ms  {ms / floor:5.2f}x floor"
              f"{'' if same else '  DIFFERENT BITS'}", flush=True)  # fmt: skip
        rows.append({"tokens": tokens, "dim": dim, "variant": name,
                     "params": "fp32", "fused": True, "ms": ms,
                     "x_floor": ms / floor, "same_as_first": same})  # fmt: skip
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the timings here")
    parser.add_argument(
        "--variants", help="comma-separated subset of VARIANTS (default: all)"
    )
    args = parser.parse_args(argv)
    names = args.variants.split(",") if args.variants else list(VARIANTS)
    bw = copy_bandwidth()
    print(f"{torch.cuda.get_device_name()} torch {torch.__version__} "
          f"copy {bw / 1e9:.0f} GB/s")  # fmt: skip
    rows = []
    for tokens, dim in SHAPES:
        rows += bench_shape(tokens, dim, names, bw)
    rows += bench_fused(32760, 5120, names, bw)
    jits = (kb._fp32_norm_kernel, kb._fp32_norm_rows_kernel)
    for caches in (c for jit in jits for c in jit.device_caches.values()):
        for kernel in caches[0].values():
            print(f"compiled: regs {kernel.n_regs} spills {kernel.n_spills} "
                  f"smem {kernel.metadata.shared}")  # fmt: skip
    x = torch.randn(257, 1280, device="cuda").bfloat16()
    w, b = torch.randn(1280, device="cuda"), torch.randn(1280, device="cuda")
    w16, b16 = w.bfloat16(), b.bfloat16()
    launch = {
        "triton launch (257x1280)": host_launch_us(
            lambda: kb._launch_fp32_norm(x, w, b, EPS)
        ),
        "ATen bf16 F.layer_norm (257x1280)": host_launch_us(
            lambda: F.layer_norm(x, (1280,), w16, b16, EPS)
        ),
    }
    for name, us in launch.items():
        print(f"host us/call {name}: {us:.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "host_us": launch}, f, indent=1)
            f.write("\n")  # saved runs live in docs/, under end-of-file-fixer


if __name__ == "__main__":
    main()
