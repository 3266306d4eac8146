# SPDX-License-Identifier: Apache-2.0
"""A/B the arithmetic-neutral tuning knobs of the norm kernels (CUDA only).

For each case of the benchmark (``bench_fp32_layernorm``'s modules, inputs and
copy floor) and each variant below, forces the variant's kernel and knobs
(``_variant`` / ``_TUNING_OVERRIDE`` in fp32_layernorm_bitexact.py), checks
the module's output bit for bit against the reference, and captures a CUDA
graph of 20 calls over inputs rotated past L2. The graphs of a case (and
upstream's CuTe DSL kernel where it imports) are then replayed round-robin,
``--rounds`` times; the table gives the median replay time per call, its ratio
to the copy floor and to the best variant, and the compiled kernels'
registers. Pick the defaults (``_tuning``) from its output.

    PYTHONPATH=python python scripts/bench_norm_kernel_tuning.py \
        [--shapes 257x1280,32760x5120] [--variants block,block-keep] [--json OUT]
        [--frames 21] [--mod-dtypes bf16,fp32] [--modules LayerNormScaleShift]
"""

import argparse
import itertools
import json
import statistics

import torch

from sglang.kernels.ops.diffusion.norm import fp32_layernorm_bitexact as kb
from sglang.kernels.ops.diffusion.norm import fp32_layernorm_select as sel
from sglang.multimodal_gen.benchmarks import bench_fp32_layernorm as bench
from sglang.multimodal_gen.benchmarks import bench_utils_norm as nu

MODULES = ("FP32LayerNorm", "LayerNormScaleShift", "ScaleResidualLayerNormScaleShift")
SHAPES = tuple(itertools.product(bench.CUDA_TOKENS, bench.CUDA_DIMS))
BF16 = torch.bfloat16
# FP32LayerNorm with fp32 and no parameters (the floor targets), Wan's two
# fused modules (the CuTe targets; modulation of --mod-dtypes, [B, 1, D] or
# per frame)
CASE_KINDS = (
    ("FP32LayerNorm", torch.float32),
    ("FP32LayerNorm", None),
    ("LayerNormScaleShift", None),
    ("ScaleResidualLayerNormScaleShift", torch.float32),
)
# name -> the forced tuning (kb._variant); "default": the plans' own choice
_NAMES = [
    kernel + knobs
    for knobs in ("", "-prefetch", "-keep", "-keep-prefetch")
    for kernel in ("block", "rows")
] + ["block-keep-warm", "block-keep-warm-cap"]
# the looping grid at the programs per SM the table uses
_NAMES += [f"block-keep-loop{k}" for k in sorted(set(kb._LOOP_PER_SM.values()))]
VARIANTS = {"default": None, **{name: kb._variant(name) for name in _NAMES}}


def use_variant(name: str) -> None:
    """Make the plans built from now on take variant ``name``."""
    kb._TUNING_OVERRIDE = VARIANTS[name]
    kb._PLANS.clear()
    sel._RUNNERS.clear()


_SHOWN = ("N", "HAS_RESIDUAL", "HAS_W", "HAS_MOD", "KEEP", "ROWS")


def registers() -> dict:
    """A label of each compiled kernel (its knobs) -> (registers, spills)."""
    out = {}
    jits = (("block", kb._fp32_norm_kernel), ("rows", kb._fp32_norm_rows_kernel))
    for kind, jit in jits:
        for caches in jit.device_caches.values():
            for kernel in caches[0].values():
                constants = getattr(getattr(kernel, "src", None), "constants", {})
                named = {jit.arg_names[i[0]]: v for i, v in constants.items()}
                knobs = " ".join(f"{k}={named[k]}" for k in _SHOWN if k in named)
                out[f"{kind} {knobs}"] = (kernel.n_regs, kernel.n_spills)
    return out


def run_case(case, variants, timer, bandwidth, rounds, cute) -> dict:
    device = torch.device("cuda")
    m = bench.build_module(case, device)
    make = bench.make_inputs(case, device)
    sample = make()
    set_bytes = sum(t.numel() * t.element_size() for t in sample)
    rotation = nu.Rotation(make, set_bytes, device)
    floor_ms = bench.floor_bytes(case) / bandwidth * 1e3
    graphs, exact = {}, {}
    with torch.inference_mode():
        refs = bench.reference_outputs(case, m, sample)
        # a warp per row lost at D >= 3072 (session 4), and compiles slowly there
        fns = {n: m for n in variants if not (n.startswith("rows") and case.dim > 1536)}
        if cute is not None and case.module != "FP32LayerNorm":
            fns[bench.CUTE] = bench.variants(case, m, cute)[bench.CUTE]
        for name, fn in fns.items():
            if name in VARIANTS:
                use_variant(name)
            outs = fn(*sample)
            outs = outs if isinstance(outs, tuple) else (outs,)
            exact[name] = nu.ulp_stats(outs, refs)[1] == 0.0
            graphs[name] = timer.capture(fn, rotation)
        times = {name: [] for name in graphs}
        names = list(graphs)
        for r in range(rounds):
            for name in nu.rotated(names, r):
                if graphs[name][0] is not None:
                    times[name].append(timer.replay(*graphs[name]))
        graphs.clear()
    us = {n: statistics.median(t) * 1e3 for n, t in times.items() if t}
    best = min(us[n] for n in fns if n in us and n != bench.CUTE)
    row = {"case": case.label, "floor_us": floor_ms * 1e3, "variants": {}}
    for name, t in us.items():
        row["variants"][name] = {
            "us": t,
            "x_floor": t / 1e3 / floor_ms,
            "x_best": t / best,
            "bit_identical": exact[name],
        }
    cells = "  ".join(
        f"{n} {v['us']:.1f}us {v['x_floor']:.2f}xF"
        + ("" if v["bit_identical"] or n == bench.CUTE else " DIFFERENT BITS")
        for n, v in row["variants"].items()
    )
    print(f"{case.label}: {cells}", flush=True)
    return row


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the timings here")
    parser.add_argument("--shapes", help="TOKENSxD,... (default: every Wan shape)")
    parser.add_argument(
        "--variants", help=f"comma-separated subset of {', '.join(VARIANTS)}"
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--mod-dtypes", default="bf16",
        help="the fused cases' modulation dtypes, comma-separated (default bf16)",
    )  # fmt: skip
    parser.add_argument(
        "--modules", help=f"comma-separated subset of {', '.join(MODULES)}"
    )
    parser.add_argument(
        "--frames", type=int, default=0,
        help="the fused cases' modulation per frame, [B, F, 1, D] (where F "
        "divides the tokens; LOOP's regime), instead of [B, 1, D]",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.frames < 0:
        parser.error("--frames must be 0 (none) or a frame count")
    names = args.variants.split(",") if args.variants else list(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    shapes = nu.parse_shapes(parser, args.shapes) if args.shapes else SHAPES
    mod_dtypes = nu.parse_dtypes(parser, args.mod_dtypes, "--mod-dtypes")
    modules = args.modules.split(",") if args.modules else list(MODULES)
    if not set(modules) <= set(MODULES):
        parser.error(f"unknown modules {sorted(set(modules) - set(MODULES))}")
    kinds = [
        (module, params, mod)
        for module, params in CASE_KINDS
        if module in modules
        for mod in ([torch.float32] if module == "FP32LayerNorm" else mod_dtypes)
    ]
    device = torch.device("cuda")
    timer = nu.Timer(device, quick=False)
    bandwidth = timer.copy_bandwidth()
    cute, reason = bench.load_upstream_cute(device)
    print(f"{torch.cuda.get_device_name()} torch {torch.__version__} "
          f"copy {bandwidth / 1e9:.0f} GB/s; CuTe peer: {reason or 'present'}")  # fmt: skip
    rows = []
    try:
        for (tokens, dim), (module, params, mod) in itertools.product(shapes, kinds):
            fused = module != "FP32LayerNorm"
            frames = args.frames if fused and tokens % max(args.frames, 1) == 0 else 0
            case = bench.Case(module, tokens, dim, BF16, params, mod, frames)
            rows.append(run_case(case, names, timer, bandwidth, args.rounds, cute))
            torch.cuda.empty_cache()
            # after every case, so a run stopped at a time limit keeps its rows
            write_json(args.json, bandwidth, rows, registers())
    finally:
        kb._TUNING_OVERRIDE = None
    for key, (n_regs, spills) in sorted(registers().items()):
        print(f"compiled {key}: regs {n_regs} spills {spills}")


def write_json(path, bandwidth, rows, regs) -> None:
    if path:
        with open(path, "w") as f:
            run = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
            run.update(bandwidth=bandwidth, rows=rows, regs=regs)
            json.dump(run, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
