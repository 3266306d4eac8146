# SPDX-License-Identifier: Apache-2.0
"""A/B the arithmetic-neutral tuning knobs of ``_fp32_norm_kernel`` (CUDA only).

Times every ``_KERNEL_TUNING`` combination on Wan shapes (bf16 input, fp32
weight and bias) against the copy floor, checks each is bit-identical to the
runtime-loop/tile-load variant, and prints the compiled kernels' registers,
spills and shared memory. Pick the default in layernorm.py from its output.

    PYTHONPATH=python python scripts/bench_norm_kernel_tuning.py [--json OUT]
"""

import argparse
import itertools
import json

import torch
from triton.testing import do_bench

from sglang.multimodal_gen.runtime.layers import layernorm as ln

SHAPES = ((32760, 1536), (32760, 5120), (75600, 5120))
BASELINE = {"DYN_LOOP": True, "COLUMN_LOADS": False}


def copy_bandwidth() -> float:
    src = torch.randn(1 << 28, device="cuda")
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), return_mode="median")
    return 2 * src.numel() * 4 / (ms / 1e3)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the timings here")
    args = parser.parse_args(argv)
    bw = copy_bandwidth()
    print(f"{torch.cuda.get_device_name()} torch {torch.__version__} "
          f"copy {bw / 1e9:.0f} GB/s")  # fmt: skip
    rows = []
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    for tokens, dim in SHAPES:
        count = max(1, int(3 * l2 // (tokens * dim * 2)))
        xs = [torch.randn(tokens, dim, device="cuda").bfloat16() for _ in range(count)]
        w = torch.randn(dim, device="cuda")
        b = torch.randn(dim, device="cuda")
        floor = (2 * tokens * dim * 2 + 2 * dim * 4) / bw * 1e3
        inputs = itertools.cycle(xs)
        line = [f"{tokens}x{dim} floor {floor:.4f} ms"]
        want = ln._launch_fp32_norm(xs[0], w, b, 1e-6, tuning=BASELINE)
        for dyn, col in itertools.product((False, True), (False, True)):
            tuning = {"DYN_LOOP": dyn, "COLUMN_LOADS": col}
            same = torch.equal(
                ln._launch_fp32_norm(xs[0], w, b, 1e-6, tuning=tuning), want
            )
            ms = do_bench(
                lambda t=tuning, it=inputs, w=w, b=b: ln._launch_fp32_norm(
                    next(it), w, b, 1e-6, tuning=t
                ),
                return_mode="median",
            )
            line.append(f"dyn={int(dyn)} col={int(col)}: {ms:.4f} ms "
                        f"({ms / floor:.2f}x){'' if same else ' DIFFERENT BITS'}")  # fmt: skip
            rows.append({"tokens": tokens, "dim": dim, "tuning": tuning, "ms": ms,
                         "x_floor": ms / floor, "bit_identical": same})  # fmt: skip
        print(" | ".join(line), flush=True)
    for caches in ln._fp32_norm_kernel.device_caches.values():
        for kernel in caches[0].values():
            print(f"compiled: regs {kernel.n_regs} spills {kernel.n_spills} "
                  f"smem {kernel.metadata.shared}")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
