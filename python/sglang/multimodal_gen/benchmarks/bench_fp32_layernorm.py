# SPDX-License-Identifier: Apache-2.0
"""Benchmark FP32LayerNorm and the fused norm+modulation modules on Wan shapes.

Variants, each timed against the same inputs and checked bit for bit against the
uncached fp32 reference:

* ``pre-port``: what the runtime did before the port, ``weight.float().to(dev)``
  (and bias) on every call, then ``F.layer_norm`` on ``x.float()``;
* ``cached``: the port's cached fp32 parameters (``FP32LayerNorm.forward_native``);
* ``default``: what ``FP32LayerNorm`` runs by default on this device (the single
  pass on CUDA where proven, else the cached path);
* for ``LayerNormScaleShift`` / ``ScaleResidualLayerNormScaleShift``: ``chain``,
  the unfused eager ops of the module's native path, against ``default``.

The floor is the bytes each input is read once plus each output written once, over
the copy bandwidth measured in the same run. Times are medians
(``triton.testing.do_bench`` on CUDA, rotating inputs larger than L2; a
perf_counter loop on CPU).

    PYTHONPATH=python python -m sglang.multimodal_gen.benchmarks.bench_fp32_layernorm
    ... --json out.json --plot out.png      # full results and time-vs-bytes plot
"""

import argparse
import dataclasses
import itertools
import json
import math
import platform
import statistics
import sys
import time
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from sglang.kernels.ops.diffusion.norm import fp32_layernorm_bitexact as kb
from sglang.multimodal_gen.runtime.layers import layernorm as ln

CUDA_TOKENS = (257, 4096, 32760, 75600)
CUDA_DIMS = (1280, 1536, 3072, 5120)
# the embedded CPU default stays well inside a minute on two cores
CPU_SHAPES = ((257, 1280), (257, 5120), (4096, 1536))
FUSED_MODULES = ("LayerNormScaleShift", "ScaleResidualLayerNormScaleShift")
DTYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


@dataclasses.dataclass
class Case:
    module: str  # "FP32LayerNorm" or a fused module's name
    tokens: int
    dim: int
    dtype: torch.dtype
    param_dtype: Optional[torch.dtype]  # None: no affine parameters

    @property
    def label(self) -> str:
        params = (
            "no-affine"
            if self.param_dtype is None
            else f"params={DTYPE_NAMES[self.param_dtype]}"
        )
        return (
            f"{self.module} {self.tokens}x{self.dim} "
            f"{DTYPE_NAMES[self.dtype]} {params}"
        )


@dataclasses.dataclass
class Result:
    case: str
    module: str
    tokens: int
    dim: int
    dtype: str
    params: str
    variant: str
    ms: float
    floor_ms: float
    x_floor: float
    speedup_vs_preport: Optional[float]
    bit_identical: bool
    max_ulp: int
    path: str
    bytes: int


def ordered_bits(t: torch.Tensor) -> torch.Tensor:
    """Map floats to integers whose difference counts ulps (sign-magnitude order)."""
    int_dtype = {2: torch.int16, 4: torch.int32}[t.element_size()]
    i = t.contiguous().view(int_dtype).to(torch.int64)
    low = -(1 << (8 * t.element_size() - 1))
    return torch.where(i >= 0, i, low - i)


def max_ulp(a: torch.Tensor, b: torch.Tensor) -> int:
    if a.numel() == 0:
        return 0
    return int((ordered_bits(a) - ordered_bits(b)).abs().max())


def measure_copy_bandwidth(device: torch.device) -> float:
    """Bytes per second of a large device copy, counting bytes read + written."""
    nbytes = (1 << 30) if device.type == "cuda" else (256 << 20)
    src = torch.randn(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    seconds = time_fn(lambda: dst.copy_(src), device) / 1e3
    return 2 * nbytes / seconds


def time_fn(fn: Callable[[], object], device: torch.device) -> float:
    """Median milliseconds of ``fn``."""
    if device.type == "cuda":
        from triton.testing import do_bench

        return do_bench(fn, warmup=25, rep=100, return_mode="median")
    fn()
    samples, start = [], time.perf_counter()
    while len(samples) < 5 or (time.perf_counter() - start < 0.2 and len(samples) < 50):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


class Rotation:
    """Cycle through input sets whose total exceeds the L2 cache."""

    def __init__(self, make: Callable[[], tuple], set_bytes: int, device):
        count = 1
        if device.type == "cuda":
            l2 = torch.cuda.get_device_properties(device).L2_cache_size
            count = min(256, max(1, math.ceil(3 * l2 / max(set_bytes, 1))))
        self.sets = [make() for _ in range(count)]
        self._i = 0

    def next(self) -> tuple:
        self._i = (self._i + 1) % len(self.sets)
        return self.sets[self._i]


def pre_port_layer_norm(m: ln.FP32LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """The runtime before the port: convert the parameters on every call."""
    return F.layer_norm(
        x.float(),
        m.normalized_shape,
        m.weight.float().to(x.device) if m.weight is not None else None,
        m.bias.float().to(x.device) if m.bias is not None else None,
        m.eps,
    ).to(x.dtype)


def build_module(case: Case, device) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(0)
    affine = case.param_dtype is not None
    pdtype = case.param_dtype or torch.float32
    if case.module == "FP32LayerNorm":
        m = ln.FP32LayerNorm(case.dim, eps=1e-6, elementwise_affine=affine)
        norm = m
    else:
        m = getattr(ln, case.module)(case.dim, eps=1e-6, elementwise_affine=affine)
        norm = m.norm
    m = m.to(device=device, dtype=pdtype)
    with torch.no_grad():
        for p in norm.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5 + 1.0)
    return m


def make_inputs(case: Case, device) -> Callable[[], tuple]:
    shape = (1, case.tokens, case.dim)

    def rnd(dtype, *size):
        return (torch.randn(*size, device=device) * 2 + 0.25).to(dtype)

    def make():
        x = rnd(case.dtype, *shape)
        if case.module == "FP32LayerNorm":
            return (x,)
        # Wan's layout: fp32 [1, 1, D] modulation, shift before scale
        shift = rnd(torch.float32, 1, 1, case.dim) * 0.1
        scale = rnd(torch.float32, 1, 1, case.dim) * 0.1
        if case.module == "LayerNormScaleShift":
            return (x, shift, scale)
        gate = rnd(torch.float32, 1, 1, case.dim)
        return (rnd(case.dtype, *shape), x, gate, shift, scale)

    return make


def floor_bytes(case: Case) -> int:
    elem = torch.empty(0, dtype=case.dtype).element_size()
    act = case.tokens * case.dim * elem
    params = 0
    if case.param_dtype is not None:
        params = 2 * case.dim * torch.empty(0, dtype=case.param_dtype).element_size()
    if case.module == "FP32LayerNorm":
        return 2 * act + params
    mods = 2 * case.dim * 4
    if case.module == "LayerNormScaleShift":
        return 2 * act + params + mods
    # residual + x read, out + residual_out written, gate read once
    return 4 * act + params + mods + case.dim * 4


def variants(case: Case, m) -> dict[str, Callable]:
    if case.module == "FP32LayerNorm":
        return {
            "pre-port": lambda x: pre_port_layer_norm(m, x),
            "cached": m.forward_native,
            "default": m,
        }
    return {"chain": m.forward_native, "default": m}


def reference_outputs(case: Case, m, args) -> tuple:
    if case.module == "FP32LayerNorm":
        (x,) = args
        return (ln.reference_fp32_layer_norm(x, (case.dim,), m.weight, m.bias, m.eps),)
    norm = m.norm

    def norm_fn(t):
        return ln.reference_fp32_layer_norm(
            t, (case.dim,), norm.weight, norm.bias, norm.eps
        )

    if case.module == "LayerNormScaleShift":
        x, shift, scale = args
        return (ln.norm_scale_shift_chain(norm_fn, x, shift, scale),)
    residual, x, gate, shift, scale = args
    return ln.scale_residual_norm_scale_shift_chain(
        norm_fn, residual, x, gate, shift, scale
    )


def path_name(case: Case, m, args) -> str:
    if case.module == "FP32LayerNorm":
        return ln.fp32_layer_norm_path(args[0], (case.dim,), m.weight, m.bias)
    if case.module.startswith("ScaleResidual"):
        residual, x, gate, shift, scale = args
        path = ln.fused_norm_path(m, x, scale, shift, residual=residual, gate=gate)
    else:
        x, shift, scale = args
        path = ln.fused_norm_path(m, x, scale, shift)
    return "fused-triton" if path == "triton" else "native"


def run_case(case: Case, device, bandwidth: float) -> list[Result]:
    m = build_module(case, device)
    make = make_inputs(case, device)
    sample = make()
    set_bytes = sum(t.numel() * t.element_size() for t in sample)
    rotation = Rotation(make, set_bytes, device)
    nbytes = floor_bytes(case)
    floor_ms = nbytes / bandwidth * 1e3
    results = []
    with torch.inference_mode():
        refs = reference_outputs(case, m, sample)
        times = {}
        for name, fn in variants(case, m).items():
            outs = fn(*sample)
            outs = outs if isinstance(outs, tuple) else (outs,)
            identical = all(torch.equal(o, r) for o, r in zip(outs, refs))
            ulp = max(max_ulp(o, r) for o, r in zip(outs, refs))
            ms = time_fn(lambda fn=fn: fn(*rotation.next()), device)
            times[name] = ms
            base = times.get("pre-port", times.get("chain"))
            results.append(
                Result(
                    case=case.label,
                    module=case.module,
                    tokens=case.tokens,
                    dim=case.dim,
                    dtype=DTYPE_NAMES[case.dtype],
                    params=(
                        "none"
                        if case.param_dtype is None
                        else DTYPE_NAMES[case.param_dtype]
                    ),
                    variant=name,
                    ms=ms,
                    floor_ms=floor_ms,
                    x_floor=ms / floor_ms,
                    speedup_vs_preport=None if base is None else base / ms,
                    bit_identical=identical,
                    max_ulp=ulp,
                    path=path_name(case, m, sample) if name == "default" else name,
                    bytes=nbytes,
                )
            )
    return results


def default_cases(device, quick: bool, dtypes=None) -> list[Case]:
    if device.type == "cuda" and not quick:
        shapes = list(itertools.product(CUDA_TOKENS, CUDA_DIMS))
        dtypes = dtypes or (torch.bfloat16, torch.float16)
    elif device.type == "cuda":
        shapes = [(257, 1280), (32760, 1536), (32760, 5120), (75600, 5120)]
        dtypes = dtypes or (torch.bfloat16,)
    else:
        shapes, dtypes = list(CPU_SHAPES), dtypes or (torch.bfloat16,)
    cases = []
    for (tokens, dim), dtype in itertools.product(shapes, dtypes):
        for pdtype in (dtype, torch.float32, None):
            cases.append(Case("FP32LayerNorm", tokens, dim, dtype, pdtype))
        # Wan: norm1 has no affine, the self-attention residual norm has fp32 affine
        cases.append(Case("LayerNormScaleShift", tokens, dim, dtype, None))
        cases.append(
            Case("ScaleResidualLayerNormScaleShift", tokens, dim, dtype, torch.float32)
        )
    return cases


def progress(items, desc):
    try:
        from tqdm import tqdm

        return tqdm(items, desc=desc, file=sys.stderr)
    except ImportError:  # tqdm is optional
        return items


def format_table(results: list[Result]) -> str:
    header = (
        f"{'case':<60} {'variant':<9} {'path':<13} {'ms':>9} {'x floor':>8} "
        f"{'vs pre':>7} {'exact':>5} {'ulp':>4}"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        speed = "" if r.speedup_vs_preport is None else f"{r.speedup_vs_preport:.2f}x"
        lines.append(
            f"{r.case:<60} {r.variant:<9} {r.path:<13} {r.ms:>9.4f} "
            f"{r.x_floor:>7.2f}x {speed:>7} {'yes' if r.bit_identical else 'NO':>5} "
            f"{r.max_ulp:>4}"
        )
    return "\n".join(lines)


# (label, module, tokens, dim, params filter, limit, unit) from the fast-path issue;
# "x" limits are ratios to the floor, "ms" limits absolute medians
TARGETS = (
    ("single pass 32760x1536", "FP32LayerNorm", (32760,), 1536, ("same", "none"),
     1.3, "x"),
    ("single pass 32760x5120", "FP32LayerNorm", (32760,), 5120, ("same", "none"),
     1.2, "x"),
    ("single pass 75600x5120", "FP32LayerNorm", (75600,), 5120, ("same", "none"),
     1.2, "x"),
    ("single pass 257x1280", "FP32LayerNorm", (257,), 1280, ("same", "none"),
     0.007, "ms"),
    ("bf16/fp16 input + fp32 params (32760, 75600 tokens)", "FP32LayerNorm",
     (32760, 75600), None, ("fp32",), 1.5, "x"),
    ("fused residual+norm+mod 32760x5120", "ScaleResidualLayerNormScaleShift",
     (32760,), 5120, None, 1.3, "x"),
)  # fmt: skip


def target_rows(results: list[Result]) -> list[tuple]:
    """(label, limit, worst measured, met, cases) per target, over default rows."""
    rows = []
    for label, module, tokens, dim, params, limit, unit in TARGETS:
        hits = [
            r
            for r in results
            if r.variant == "default"
            and r.module == module
            and r.tokens in tokens
            and dim in (None, r.dim)
            and (
                params is None
                or ("same" in params and r.params == r.dtype)
                or r.params in params
            )
        ]
        if not hits:
            continue
        worst = max(hits, key=lambda r: r.ms if unit == "ms" else r.x_floor)
        value = worst.ms if unit == "ms" else worst.x_floor
        rows.append((label, f"{limit}{unit}", f"{value:.4g}{unit}", value <= limit,
                     worst.case))  # fmt: skip
    return rows


def markdown(results: list[Result], meta: dict) -> str:
    lines = [
        f"Measured on **{meta['device']}**, torch {meta['torch']}, Triton "
        f"{meta['triton']}, copy ceiling {meta['copy_GBps']:.0f} GB/s "
        "(read + write), by `bench_fp32_layernorm.py`.",
        "",
        "| target | limit | measured (worst case) | met | case |",
        "|---|---|---|---|---|",
    ]
    for label, limit, value, met, case in target_rows(results):
        lines.append(f"| {label} | {limit} | {value} | {'yes' if met else 'NO'} | "
                     f"{case} |")  # fmt: skip
    lines += [
        "",
        "| case | variant | path | ms | x floor | vs pre-port | bit-identical | "
        "max ulp |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        speed = "" if r.speedup_vs_preport is None else f"{r.speedup_vs_preport:.2f}x"
        lines.append(
            f"| {r.case} | {r.variant} | {r.path} | {r.ms:.4f} | {r.x_floor:.2f}x | "
            f"{speed} | {'yes' if r.bit_identical else 'NO'} | {r.max_ulp} |"
        )
    return "\n".join(lines) + "\n"


def plot(results: list[Result], bandwidth: float, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    markers = {"pre-port": "x", "cached": "s", "chain": "v", "default": "o"}
    for variant in markers:
        pts = [r for r in results if r.variant == variant]
        if pts:
            ax.scatter(
                [r.bytes for r in pts],
                [r.ms for r in pts],
                marker=markers[variant],
                label=variant,
                alpha=0.8,
            )
    xs = sorted({r.bytes for r in results})
    if xs:
        ax.plot(xs, [b / bandwidth * 1e3 for b in xs], "k--", label="floor (copy bw)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("bytes moved at the floor (inputs read once + outputs written once)")
    ax.set_ylabel("median time, ms")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=130)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument(
        "--quick", action="store_true", help="a few headline shapes only (CUDA)"
    )
    parser.add_argument(
        "--shapes",
        help="override shapes as TOKENSxDIM,... (e.g. 257x1280,32760x5120)",
    )
    parser.add_argument(
        "--dtypes", help="input dtypes, comma-separated (bf16,fp16; default per mode)"
    )
    parser.add_argument("--json", help="write all results and metadata here")
    parser.add_argument("--plot", help="write a time-vs-bytes PNG here")
    parser.add_argument("--markdown", help="write the tables as Markdown here")
    parser.add_argument(
        "--from-json",
        help="re-render --markdown/--plot from a saved --json run (no timing)",
    )
    return parser.parse_args(argv)


def render_saved(args) -> int:
    with open(args.from_json) as f:
        saved = json.load(f)
    meta, results = saved["meta"], [Result(**r) for r in saved["results"]]
    bandwidth = meta["copy_GBps"] * 1e9
    print(format_table(results))
    if args.plot:
        title = (
            f"{meta['device']}, torch {meta['torch']}, copy ceiling "
            f"{meta['copy_GBps']:.0f} GB/s"
        )
        plot(results, bandwidth, args.plot, title)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(markdown(results, meta))
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.from_json:
        return render_saved(args)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    by_name = {name: dtype for dtype, name in DTYPE_NAMES.items()}
    dtypes = [by_name[d] for d in args.dtypes.split(",")] if args.dtypes else None
    cases = default_cases(device, args.quick, dtypes)
    if args.shapes:
        wanted = {tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")}
        cases = [c for c in cases if (c.tokens, c.dim) in wanted]
    torch.manual_seed(0)
    bandwidth = measure_copy_bandwidth(device)
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else (platform.processor() or platform.machine())
    )
    meta = {
        "device": name,
        "torch": torch.__version__,
        "triton": getattr(kb.triton, "__version__", None),
        "copy_GBps": bandwidth / 1e9,
    }
    title = (
        f"{name}, torch {torch.__version__}, copy ceiling {bandwidth / 1e9:.0f} GB/s"
    )
    print(title, flush=True)
    results = []
    for case in progress(cases, "cases"):
        results.extend(run_case(case, device, bandwidth))
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(format_table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"meta": meta, "results": [dataclasses.asdict(r) for r in results]},
                f,
                indent=1,
            )
            f.write("\n")
    if args.plot:
        plot(results, bandwidth, args.plot, title)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(markdown(results, meta))
    return 0 if all(r.bit_identical for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
