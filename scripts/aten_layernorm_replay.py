# SPDX-License-Identifier: Apache-2.0
"""Find how nvcc contracted ATen's CUDA LayerNorm, by replaying every candidate.

ATen's vectorized LayerNorm (aten/src/ATen/native/cuda/layer_norm_kernel.cu) is
compiled with FMA contraction on, so ``a * b + c`` may have become one fused op.
Which ones did is a property of the compiled binary, not of the source. This
script runs ``_fp32_norm_kernel`` with each combination of the contraction knobs
(``layernorm._ATEN_REPLAY``) against ``torch.native_layer_norm`` on fp32 input and
compares mean, rstd and output bit for bit: first the statistics knobs (with a
weight and bias), then the output knob for the combinations whose statistics
matched, over every affine variant. Needs a CUDA device and Triton.

    PYTHONPATH=python python scripts/aten_layernorm_replay.py [--json OUT]
"""

import argparse
import itertools
import json
import os
import sys

import torch

from sglang.kernels.ops.diffusion.norm import fp32_layernorm_bitexact as kb

DEVICE = os.environ.get("REPLAY_DEVICE", "cuda")  # "cpu" only to smoke-test
DIMS = tuple(
    int(d)
    for d in os.environ.get("REPLAY_DIMS", "64,320,1280,1536,3072,5120,8192").split(",")
)
STATS_DIMS = (320, 1280, 5120)
AFFINE = ((True, True), (True, False), (False, True), (False, False))


def mismatches(replay, dim, affine=AFFINE, rows=1031, seed=0):
    gen = torch.Generator(device=DEVICE).manual_seed(seed + dim)
    x = torch.randn(rows, dim, generator=gen, device=DEVICE) * 3.0 + 0.5
    x = x.to(torch.bfloat16)
    w = torch.randn(dim, generator=gen, device=DEVICE)
    b = torch.randn(dim, generator=gen, device=DEVICE)
    counts = {}
    for has_w, has_b in affine:
        wt, bt = (w if has_w else None), (b if has_b else None)
        y, (mean, rstd) = kb._launch_fp32_norm(
            x, wt, bt, 1e-6, store_stats=True, replay=replay
        )
        ref, ref_mean, ref_rstd = torch.native_layer_norm(
            x.float(), (dim,), wt, bt, 1e-6
        )
        tag = f"d{dim}w{int(has_w)}b{int(has_b)}"
        counts[f"mean_{tag}"] = int((mean != ref_mean.flatten()).sum())
        counts[f"rstd_{tag}"] = int((rstd != ref_rstd.flatten()).sum())
        counts[f"out_{tag}"] = int((y != ref.to(torch.bfloat16)).sum())
    return counts


def _sum(counts, prefix=None):
    return sum(v for k, v in counts.items() if prefix is None or k.startswith(prefix))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write every combination's counts here")
    args = parser.parse_args(argv)
    if kb.triton is None or (DEVICE == "cuda" and not torch.cuda.is_available()):
        print("needs CUDA and Triton", file=sys.stderr)
        return 2
    if DEVICE == "cuda":
        print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}")
    stage1, stage2, exact = [], [], []
    for online, merge_mean, merge_m2 in itertools.product(
        (True, False), (0, 1, 2), (True, False)
    ):
        replay = dict(kb._ATEN_REPLAY)
        replay.update(
            ONLINE_FMA=online, MERGE_MEAN_FMA=merge_mean, MERGE_M2_FMA=merge_m2
        )
        counts = {}
        for dim in STATS_DIMS:
            counts.update(mismatches(replay, dim, affine=AFFINE[:1]))
        stats = _sum(counts, "mean") + _sum(counts, "rstd")
        stage1.append({"replay": replay, "stats_mismatch": stats})
        print(f"stats {replay}: {stats} mismatching mean/rstd", flush=True)
        if stats:
            continue
        for out_fma in (True, False):
            full = dict(replay, OUT_FMA=out_fma)
            counts = {}
            for dim in DIMS:
                counts.update(mismatches(full, dim))
            total = _sum(counts)
            stage2.append({"replay": full, "total_mismatch": total, "counts": counts})
            print(f"full  {full}: {total} mismatches", flush=True)
            if total == 0:
                exact.append(full)
    print("EXACT:", json.dumps(exact))
    print("current _ATEN_REPLAY exact:", kb._ATEN_REPLAY in exact)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"stats": stage1, "full": stage2, "exact": exact}, f, indent=1)
    return 0 if exact else 1


if __name__ == "__main__":
    sys.exit(main())
