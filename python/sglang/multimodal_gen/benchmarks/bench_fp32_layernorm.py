# SPDX-License-Identifier: Apache-2.0
"""Benchmark FP32LayerNorm and the fused norm+modulation modules on Wan shapes.

Variants, each run on the same inputs and compared bit for bit with the uncached
fp32 reference (for the fused modules: the eager chain with that reference):

* FP32LayerNorm: ``pre-port`` (``weight.float().to(dev)`` and bias on every call,
  then ``F.layer_norm`` on ``x.float()``; the baseline), ``upstream 0.5.23 class``
  (upstream SGLang 0.5.23's cached ``FP32LayerNorm``, re-implemented here),
  ``aten`` (``F.layer_norm`` on x with parameters in x's dtype: a host-time peer,
  not expected to be exact), ``cached`` (``forward_native``), ``default`` (what the
  module runs on this device);
* fused modules: ``chain`` (the eager chain, the baseline), ``default``, and
  ``upstream 0.5.23 CuTe`` (``sglang_upstream_norm.scale_residual_norm_cutedsl``)
  where it imports (CUDA, after the GPU machine's prep step).

Three numbers per case and variant, taken in every round; rounds interleave
the variants (round-robin, rotated start) and every number is reported as the
median with its [min, max] over its samples:

* ``graph``: CUDA-graph replay (n calls captured after warm-up, timed with events,
  divided by n; "n/a" with the reason in the JSON where capture fails or on CPU).
  Under capture FP32LayerNorm's cached path records the parameter casts (by
  design, so replays read live parameters); upstream's class replays its cache;
* ``bench``: ``triton.testing.do_bench`` median on CUDA (inputs rotate through
  sets larger than L2), a perf_counter median of single calls on CPU;
* ``host``: microseconds per call of a plain loop of n calls, synchronized only
  before and after the loop, after one untimed call (the first call after a
  synchronize and another variant's loop costs more, see ``Timer.host``);
  each round runs k such loops per variant, the variants' loops alternating,
  and each loop is a sample (CUDA: k=5, n=10).

Times are also given as ratios to the floor (bytes each input read once plus each
output written once, over the copy bandwidth measured in the same run) and to the
baseline variant. ``--markdown`` grades the issue's targets on CUDA runs only
(they are H200 targets).

    PYTHONPATH=python python -m sglang.multimodal_gen.benchmarks.bench_fp32_layernorm
    ... --json out.json --plot out.png --markdown out.md
"""

import argparse
import dataclasses
import itertools
import json
import platform
import sys
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from sglang.kernels.ops.diffusion import (
    fp32_layernorm_path,
    fp32_layernorm_reference,
    fused_layernorm_path,
)
from sglang.multimodal_gen.benchmarks import bench_utils_norm as nu
from sglang.multimodal_gen.runtime.layers import layernorm as ln

CUDA_TOKENS = (257, 4096, 32760, 75600)
CUDA_DIMS = (1280, 1536, 3072, 5120)
CUDA_QUICK_SHAPES = ((257, 1280), (32760, 1536), (32760, 5120), (75600, 5120))
# the embedded CPU default stays well inside a minute on two shared cores: five
# variants x three interleaved rounds; 1024 (not 4096) tokens for the mid shape
CPU_SHAPES = ((257, 1280), (257, 5120), (1024, 1536))
CPU_QUICK_SHAPES = ((257, 1280),)
WAN_FRAMES = 21  # per-frame modulation [B, 21, 1, D] (81 frames -> 21 latent)
FUSED_MODULES = ("LayerNormScaleShift", "ScaleResidualLayerNormScaleShift")
DTYPE_NAMES = nu.DTYPE_NAMES
PREPORT, UPCLASS, ATEN = "pre-port", "upstream 0.5.23 class", "aten"
CUTE = "upstream 0.5.23 CuTe"
BASELINES = {"FP32LayerNorm": PREPORT, **{m: "chain" for m in FUSED_MODULES}}
PATHS = {UPCLASS: "upstream-class", CUTE: "cute-dsl"}  # path column of peers
PEERS = {"FP32LayerNorm": UPCLASS, **{m: CUTE for m in FUSED_MODULES}}


################################################################################
# Adapter: every access to the norm modules' internals
################################################################################
def triton_version() -> Optional[str]:
    """Triton's version where it imports (the kernels need it), else None."""
    try:
        import triton
    except ImportError:
        return None
    return getattr(triton, "__version__", None)


def chain_norm_modulate(norm_fn, x, shift, scale):
    """LayerNormScaleShift's eager chain with ``norm_fn`` as the norm."""
    return ln.norm_scale_shift_chain(norm_fn, x, shift, scale)


def chain_residual_norm_modulate(norm_fn, residual, x, gate, shift, scale):
    """ScaleResidualLayerNormScaleShift's eager chain with ``norm_fn``."""
    return ln.scale_residual_norm_scale_shift_chain(
        norm_fn, residual, x, gate, shift, scale
    )


def reference_outputs(case, m, args) -> tuple:
    """The uncached fp32 reference (the eager chain around it for fused modules)."""
    if case.module == "FP32LayerNorm":
        (x,) = args
        return (fp32_layernorm_reference(x, (case.dim,), m.weight, m.bias, m.eps),)
    norm = m.norm

    def norm_fn(t):
        return fp32_layernorm_reference(
            t, (case.dim,), norm.weight, norm.bias, norm.eps
        )

    if case.module == "LayerNormScaleShift":
        x, shift, scale = args
        return (chain_norm_modulate(norm_fn, x, shift, scale),)
    residual, x, gate, shift, scale = args
    return chain_residual_norm_modulate(norm_fn, residual, x, gate, shift, scale)


def path_name(case, m, args) -> str:
    """The path the module's default forward takes for these inputs."""
    if case.module == "FP32LayerNorm":
        return fp32_layernorm_path(args[0], (case.dim,), m.weight, m.bias)
    if case.module.startswith("ScaleResidual"):
        residual, x, gate, shift, scale = args
        path = fused_layernorm_path(
            x, m.norm.weight, m.norm.bias, scale, shift, residual=residual, gate=gate
        )
    else:
        x, shift, scale = args
        path = fused_layernorm_path(x, m.norm.weight, m.norm.bias, scale, shift)
    return "fused-triton" if path == "triton" else "native"


################################################################################
# Peers: upstream SGLang 0.5.23
################################################################################
def load_upstream_cute(device) -> tuple:
    """((nss, srn) kernels, None) where upstream's CuTe DSL kernels import, else
    (None, reason)."""
    if device.type != "cuda":
        return None, "CuTe DSL kernels need CUDA"
    try:
        from sglang_upstream_norm.scale_residual_norm_cutedsl import (
            fused_norm_scale_shift,
            fused_scale_residual_norm_scale_shift,
        )
    except Exception as e:  # ImportError, or a CUDA/CuTe init error
        return None, f"{type(e).__name__}: {e}".splitlines()[0]
    return (fused_norm_scale_shift, fused_scale_residual_norm_scale_shift), None


################################################################################
# Cases and variants
################################################################################
@dataclasses.dataclass
class Case:
    module: str  # "FP32LayerNorm" or a fused module's name
    tokens: int
    dim: int
    dtype: torch.dtype
    param_dtype: Optional[torch.dtype]  # None: no affine parameters
    mod_dtype: torch.dtype = torch.float32  # fused modules: shift/scale/gate
    frames: int = 0  # fused modules: 0 for [B, 1, D], F for per-frame [B, F, 1, D]

    @property
    def label(self) -> str:
        params = (
            "no-affine"
            if self.param_dtype is None
            else f"params={DTYPE_NAMES[self.param_dtype]}"
        )
        label = (
            f"{self.module} {self.tokens}x{self.dim} "
            f"{DTYPE_NAMES[self.dtype]} {params}"
        )
        if self.module != "FP32LayerNorm":
            label += f" mod={DTYPE_NAMES[self.mod_dtype]}"
            label += f" [B,{self.frames},1,D]" if self.frames else ""
        return label


@dataclasses.dataclass
class Result:
    case: str
    module: str
    tokens: int
    dim: int
    dtype: str
    params: str
    variant: str
    ms: float  # bench median (do_bench on CUDA), median over rounds
    floor_ms: float
    x_floor: float
    speedup_vs_preport: Optional[float]  # baseline bench time / this one
    bit_identical: bool
    max_ulp: int
    path: str
    bytes: int
    # added with the peers, graph and host numbers (older JSON lacks them)
    mod: str = ""
    baseline: str = ""
    exact_required: bool = True  # peers need not be bit-identical
    diff_frac: float = 0.0  # fraction of output elements that differ
    x_base: Optional[float] = None  # bench time / baseline's
    ms_spread: Optional[list] = None  # [min, median, max] over rounds
    graph_ms: Optional[float] = None
    graph_spread: Optional[list] = None
    graph_na: Optional[str] = None  # why there is no graph time
    graph_x_floor: Optional[float] = None
    graph_x_base: Optional[float] = None
    host_us: Optional[float] = None
    host_spread: Optional[list] = None
    host_x_floor: Optional[float] = None
    host_x_base: Optional[float] = None
    x_peer: Optional[float] = None  # GPU time (graph, else bench) / the peer's
    host_x_peer: Optional[float] = None


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
    mshape = (1, case.frames, 1, case.dim) if case.frames else (1, 1, case.dim)

    def rnd(dtype, *size):
        return (torch.randn(*size, device=device) * 2 + 0.25).to(dtype)

    def make():
        x = rnd(case.dtype, *shape)
        if case.module == "FP32LayerNorm":
            return (x,)
        # Wan's layout: [1, 1, D] (or per-frame) modulation, shift before scale
        shift = rnd(case.mod_dtype, *mshape) * 0.1
        scale = rnd(case.mod_dtype, *mshape) * 0.1
        if case.module == "LayerNormScaleShift":
            return (x, shift, scale)
        gate = rnd(case.mod_dtype, *mshape)
        return (rnd(case.dtype, *shape), x, gate, shift, scale)

    return make


def floor_bytes(case: Case) -> int:
    def size(dtype):
        return torch.empty(0, dtype=dtype).element_size()

    act = case.tokens * case.dim * size(case.dtype)
    params = 0 if case.param_dtype is None else 2 * case.dim * size(case.param_dtype)
    if case.module == "FP32LayerNorm":
        return 2 * act + params
    mod = max(case.frames, 1) * case.dim * size(case.mod_dtype)
    if case.module == "LayerNormScaleShift":
        return 2 * act + params + 2 * mod
    # residual + x read, out + residual_out written, gate read once
    return 4 * act + params + 3 * mod


def variants(case: Case, m, cute) -> dict[str, Callable]:
    """name -> fn(*inputs), baseline first."""
    if case.module == "FP32LayerNorm":
        up = nu.UpstreamFP32LayerNorm(m)

        # ATen: parameters in x's dtype, converted once here (not timed)
        w = None if m.weight is None else m.weight.detach().to(case.dtype)
        b = None if m.bias is None else m.bias.detach().to(case.dtype)

        def aten(x):
            return F.layer_norm(x, (case.dim,), w, b, m.eps)

        return {
            PREPORT: lambda x: pre_port_layer_norm(m, x),
            UPCLASS: up,
            ATEN: aten,
            "cached": m.forward_native,
            "default": m,
        }
    out = {"chain": m.forward_native, "default": m}
    if cute is not None:
        nss, srn = cute
        w, b, eps = m.norm.weight, m.norm.bias, m.norm.eps
        if case.module == "LayerNormScaleShift":
            out[CUTE] = lambda x, shift, scale: nss(x, w, b, scale, shift, "layer", eps)
        else:
            out[CUTE] = lambda residual, x, gate, shift, scale: srn(
                residual, x, gate, w, b, scale, shift, "layer", eps
            )
    return out


def _ratio(a, b) -> Optional[float]:
    return None if a is None or b is None or b <= 0 else a / b


def run_case(case, device, bandwidth, timer, rounds, cute, errors) -> list:
    m = build_module(case, device)
    make = make_inputs(case, device)
    sample = make()
    set_bytes = sum(t.numel() * t.element_size() for t in sample)
    rotation = nu.Rotation(make, set_bytes, device)
    nbytes = floor_bytes(case)
    floor_ms = nbytes / bandwidth * 1e3
    exactness, graphs, fns = {}, {}, {}
    with torch.inference_mode():
        refs = reference_outputs(case, m, sample)
        for name, fn in variants(case, m, cute).items():
            try:
                outs = fn(*sample)
                outs = outs if isinstance(outs, tuple) else (outs,)
                exactness[name] = nu.ulp_stats(outs, refs)
            except Exception as e:
                if name not in (CUTE, ATEN):
                    raise
                errors.append(f"{name} on {case.label}: {type(e).__name__}: {e}")
                continue
            fns[name] = fn
            graphs[name] = timer.capture(fn, rotation)
        samples = {name: ([], [], []) for name in fns}
        names = list(fns)
        for r in range(rounds):
            order = nu.rotated(names, r)
            for name in order:
                bench, host, graph = samples[name]
                bench.append(timer.bench(fns[name], rotation))
                if graphs[name][0] is not None:
                    graph.append(timer.replay(*graphs[name]))
            # the host drifts over seconds (one variant's loops ranged 11-18 us
            # within a case on the H200), so the variants' host loops alternate
            # in short blocks: a ratio of two variants sees the same host
            for b in range(timer.host_blocks):
                for name in nu.rotated(order, b):
                    samples[name][1].append(timer.host(fns[name], rotation))
        graph_na = {name: g[1] for name, g in graphs.items() if g[0] is None}
        graphs.clear()  # free the graphs' memory pools
        path = path_name(case, m, sample)
    stats = {}
    for name, (bench, host, graph) in samples.items():
        stats[name] = (nu.spread(bench), nu.spread(host), nu.spread(graph))
    base = BASELINES[case.module]
    peer = PEERS[case.module]

    def med(name, i):
        s = stats.get(name, (None, None, None))[i]
        return None if s is None else s[1]

    def gpu(name):
        return med(name, 2) if med(name, 2) is not None else med(name, 0)

    results = []
    for name, (bench, host, graph) in stats.items():
        ulp, frac = exactness[name]
        na = None if graph else graph_na.get(name, "not replayed")
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
                ms=bench[1],
                floor_ms=floor_ms,
                x_floor=bench[1] / floor_ms,
                speedup_vs_preport=_ratio(med(base, 0), bench[1]),
                bit_identical=frac == 0.0,
                max_ulp=ulp,
                path=path if name == "default" else PATHS.get(name, name),
                bytes=nbytes,
                mod=(
                    ""
                    if case.module == "FP32LayerNorm"
                    else case.label.split(" mod=")[1]
                ),
                baseline=base,
                exact_required=name not in (ATEN, CUTE),
                diff_frac=frac,
                x_base=_ratio(bench[1], med(base, 0)),
                ms_spread=bench,
                graph_ms=graph[1] if graph else None,
                graph_spread=graph,
                graph_na=na,
                graph_x_floor=_ratio(graph[1], floor_ms) if graph else None,
                graph_x_base=_ratio(graph[1], med(base, 2)) if graph else None,
                host_us=host[1],
                host_spread=host,
                host_x_floor=host[1] / 1e3 / floor_ms,
                host_x_base=_ratio(host[1], med(base, 1)),
                x_peer=_ratio(gpu(name), gpu(peer)) if name == "default" else None,
                host_x_peer=(
                    _ratio(host[1], med(peer, 1)) if name == "default" else None
                ),
            )
        )
    return results


def fused_layouts(tokens: int, dtype, full: bool) -> list:
    """(mod dtype, frames) of the fused cases: fp32 [B,1,D] only unless ``full``;
    per-frame [B,21,1,D] only where the tokens split into 21 frames."""
    if not full:
        return [(torch.float32, 0)]
    frames = (0, WAN_FRAMES) if tokens % WAN_FRAMES == 0 else (0,)
    mods = dict.fromkeys((torch.float32, dtype))
    return [(md, f) for md in mods for f in frames]


def default_cases(device, quick: bool, dtypes=None, shapes=None) -> list[Case]:
    cuda = device.type == "cuda"
    if shapes is None:
        if cuda:
            full = itertools.product(CUDA_TOKENS, CUDA_DIMS)
            shapes = list(CUDA_QUICK_SHAPES) if quick else list(full)
        else:
            shapes = list(CPU_QUICK_SHAPES if quick else CPU_SHAPES)
    if not dtypes:
        dtypes = (
            (torch.bfloat16, torch.float16) if cuda and not quick else (torch.bfloat16,)
        )
    cases = []
    for (tokens, dim), dtype in itertools.product(shapes, dtypes):
        for pdtype in dict.fromkeys((dtype, torch.float32, None)):
            cases.append(Case("FP32LayerNorm", tokens, dim, dtype, pdtype))
        # Wan: norm1 has no affine, the self-attention residual norm has fp32 affine
        for mod_dtype, frames in fused_layouts(tokens, dtype, cuda and not quick):
            cases.append(
                Case("LayerNormScaleShift", tokens, dim, dtype, None, mod_dtype, frames)
            )
            cases.append(
                Case("ScaleResidualLayerNormScaleShift", tokens, dim, dtype,
                     torch.float32, mod_dtype, frames)  # fmt: skip
            )
    return cases


def progress(items, desc):
    try:
        from tqdm import tqdm

        return tqdm(items, desc=desc, file=sys.stderr)
    except ImportError:  # tqdm is optional
        return items


################################################################################
# Tables and targets
################################################################################
def _gpu_ms(r: Result) -> float:
    return r.graph_ms if r.graph_ms is not None else r.ms


def _single_pass(r: Result) -> bool:
    return r.params in (r.dtype, "none")


# (label, limit, measure) from issue 11: measure(results) -> [(value, case)];
# H200 targets, graded on CUDA runs only; GPU time = graph replay (else bench)
def _ratio_to(variant_of, num, den, pick=lambda r: True):
    def measure(results):
        by_case = {}
        for r in results:
            by_case.setdefault(r.case, {})[r.variant] = r
        out = []
        for case, vs in by_case.items():
            d = vs.get("default")
            others = [vs[v] for v in variant_of(d) if v in vs] if d else []
            if d is None or not pick(d) or not others:
                continue
            vals = [_ratio(num(d), den(o)) for o in others]
            if None not in vals:
                out.append((max(vals), case))
        return out

    return measure


def _floor_ratio(pick):
    def measure(results):
        return [
            (_gpu_ms(r) / r.floor_ms, r.case)
            for r in results
            if r.variant == "default" and pick(r)
        ]

    return measure


def _fused(r):
    return r.module in FUSED_MODULES


def _ln(r):
    return r.module == "FP32LayerNorm"


TARGETS = (
    ("fused modules GPU time (graph) <= upstream CuTe x1.02, every Wan shape",
     1.02, "x", _ratio_to(lambda d: [CUTE], _gpu_ms, _gpu_ms, _fused)),
    ("FP32LayerNorm single pass, D >= 1536, >= 32760 tokens", 1.10, "x floor",
     _floor_ratio(lambda r: _ln(r) and _single_pass(r) and r.dim >= 1536
                  and r.tokens >= 32760)),
    ("FP32LayerNorm single pass, D = 1280, >= 32760 tokens", 1.25, "x floor",
     _floor_ratio(lambda r: _ln(r) and _single_pass(r) and r.dim == 1280
                  and r.tokens >= 32760)),
    ("FP32LayerNorm host time <= 1.5x ATen F.layer_norm", 1.5, "x",
     _ratio_to(lambda d: [ATEN], lambda r: r.host_us, lambda r: r.host_us, _ln)),
    ("fused modules host time <= upstream CuTe call", 1.0, "x",
     _ratio_to(lambda d: [CUTE], lambda r: r.host_us, lambda r: r.host_us,
               _fused)),
    ("FP32LayerNorm GPU time never above pre-port / upstream class", 1.0, "x",
     _ratio_to(lambda d: [PREPORT, UPCLASS], _gpu_ms, _gpu_ms, _ln)),
    ("FP32LayerNorm host time never above pre-port / upstream class", 1.0, "x",
     _ratio_to(lambda d: [PREPORT, UPCLASS], lambda r: r.host_us,
               lambda r: r.host_us, _ln)),
)  # fmt: skip


def target_rows(results: list[Result]) -> list[tuple]:
    """(label, limit, worst measured, met, case) per target; met is None where
    nothing was measured (a peer absent, shapes not run)."""
    rows = []
    for label, limit, unit, measure in TARGETS:
        hits = measure(results)
        if not hits:
            rows.append((label, f"{limit}{unit}", "not measured", None, ""))
            continue
        value, case = max(hits)
        rows.append((label, f"{limit}{unit}", f"{value:.4g}{unit}", value <= limit,
                     case))  # fmt: skip
    return rows


def markdown(results: list[Result], meta: dict) -> str:
    device_type = meta.get("device_type", "cuda")
    lines = [
        f"Measured on **{meta['device']}** ({device_type}), torch {meta['torch']}, "
        f"Triton {meta['triton']}, copy ceiling {meta['copy_GBps']:.0f} GB/s "
        "(read + write), by `bench_fp32_layernorm.py`"
        + (f", {meta['rounds']} interleaved rounds" if "rounds" in meta else "")
        + (f", {meta['threads']} CPU thread(s)" if meta.get("threads") else "")
        + ".",
        "",
    ]
    for name, state in meta.get("peers", {}).items():
        lines.append(f"Peer *{name}*: {state}.")
    if meta.get("peers"):
        lines.append("")
    if device_type != "cuda":
        lines += [f"Targets not graded: targets are for CUDA (this run: "
                  f"{device_type}).", ""]  # fmt: skip
    else:
        lines += [
            "| target | limit | measured (worst case) | met | case |",
            "|---|---|---|---|---|",
        ]
        for label, limit, value, met, case in target_rows(results):
            verdict = "n/a" if met is None else ("yes" if met else "NO")
            lines.append(f"| {label} | {limit} | {value} | {verdict} | {case} |")
        lines.append("")
    lines += [
        "Times in us: median [min-max] over rounds (host: over its loops, "
        "each after one untimed call); "
        "x floor / x base: ratio to the copy floor / to the baseline variant; "
        "x peer: default's GPU time over the peer's (upstream class or CuTe); "
        "differing: share of output elements not bit-identical to the "
        "reference.",
        "",
        "| case | variant | path | graph us | x floor | x base | bench us | "
        "x floor | x base | host us | host x base | x peer | host x peer | "
        "bit-identical | max ulp | differing |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        graph = nu.md_spread(r.graph_ms, r.graph_spread, 1e3)
        if r.graph_ms is None and r.graph_na:
            graph = f"n/a ({r.graph_na})"
        lines.append(
            f"| {r.case} | {r.variant} | {r.path} | {graph} | "
            f"{nu.fmt_opt(r.graph_x_floor, '.2f', 'x')} | {nu.fmt_opt(r.graph_x_base, '.2f', 'x')} | "
            f"{nu.md_spread(r.ms, r.ms_spread, 1e3)} | {r.x_floor:.2f}x | "
            f"{nu.fmt_opt(r.x_base, '.2f', 'x')} | {nu.md_spread(r.host_us, r.host_spread)} | "
            f"{nu.fmt_opt(r.host_x_base, '.2f', 'x')} | {nu.fmt_opt(r.x_peer, '.2f', 'x')} | "
            f"{nu.fmt_opt(r.host_x_peer, '.2f', 'x')} | "
            f"{'yes' if r.bit_identical else 'NO'} | {r.max_ulp} | "
            f"{r.diff_frac:.2%} |"
        )
    return "\n".join(lines) + "\n"


def plot(results: list[Result], bandwidth: float, path: str, title: str) -> None:
    rows = [dict(dataclasses.asdict(r), ms=_gpu_ms(r)) for r in results]
    nu.plot(rows, bandwidth, path, title)


################################################################################
# Command line
################################################################################
def parse_args(argv):
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Exit status: 0 if every variant that must be exact is bit-identical "
        "to the reference, 1 otherwise, 2 for a bad command line.",
    )
    parser.add_argument(
        "--device", default="auto", help="auto (default), cpu, cuda or cuda:N"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="fewer cases and samples: on CUDA the headline shapes (bf16, fp32 "
        "[B,1,D] modulation); on CPU the 257x1280 shape only; 2 rounds",
    )
    parser.add_argument(
        "--shapes",
        help="run exactly these shapes, TOKENSxDIM,... (e.g. 257x1280,100x64), "
        "on any device",
    )
    parser.add_argument(
        "--dtypes",
        help="input dtypes, comma-separated from bf16,fp16,fp32 (default: "
        "bf16,fp16 on full CUDA runs, else bf16)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        help="interleaved rounds per case (default 3, --quick 2)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU runs: torch threads (default 1; 0 keeps torch's default). On "
        "shared or small machines OpenMP teams wait whole scheduler ticks, which "
        "made rows of one code path differ by up to 5x",
    )
    parser.add_argument("--json", help="write all results and metadata here")
    parser.add_argument(
        "--plot", help="write a time-vs-bytes PNG here (needs matplotlib)"
    )
    parser.add_argument(
        "--markdown",
        help="write the tables as Markdown here (targets graded on CUDA only)",
    )
    parser.add_argument(
        "--from-json",
        help="re-render --markdown/--plot from a saved --json run (no timing)",
    )
    args = parser.parse_args(argv)
    if args.plot:
        reason = nu.require_matplotlib()
        if reason:
            parser.error(f"--plot needs matplotlib: {reason}")
    if args.threads < 0:
        parser.error(f"--threads: expected 0 or a positive integer, got {args.threads}")
    if args.rounds is not None and args.rounds < 1:
        parser.error(f"--rounds: expected a positive integer, got {args.rounds}")
    args.dtypes = nu.parse_dtypes(parser, args.dtypes)
    args.shapes = nu.parse_shapes(parser, args.shapes)
    if not args.from_json:
        args.device = nu.parse_device(parser, args.device)
    return args


def _load_saved(path: str) -> tuple:
    with open(path) as f:
        saved = json.load(f)
    fields = {f.name for f in dataclasses.fields(Result)}
    results = [
        Result(**{k: v for k, v in r.items() if k in fields}) for r in saved["results"]
    ]
    for r in results:  # runs saved before x_base existed
        if r.x_base is None and r.speedup_vs_preport:
            r.x_base = 1 / r.speedup_vs_preport
    return saved["meta"], results


def write_outputs(args, results, meta) -> None:
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"meta": meta, "results": [dataclasses.asdict(r) for r in results]},
                f,
                indent=1,
            )
            f.write("\n")
    if args.plot:
        title = (
            f"{meta['device']}, torch {meta['torch']}, copy ceiling "
            f"{meta['copy_GBps']:.0f} GB/s"
        )
        plot(results, meta["copy_GBps"] * 1e9, args.plot, title)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(markdown(results, meta))


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.from_json:
        meta, results = _load_saved(args.from_json)
        print(nu.format_table(results))
        write_outputs(args, results, meta)
        return 0
    threads = torch.get_num_threads()
    if args.device.type == "cpu" and args.threads:
        torch.set_num_threads(args.threads)
    try:
        return run(args)
    finally:  # in-process callers (tests) keep their thread count
        torch.set_num_threads(threads)


def run(args) -> int:
    """Time every case of ``args`` and write the requested outputs."""
    device = args.device
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    cases = default_cases(device, args.quick, args.dtypes, args.shapes)
    rounds = args.rounds or (2 if args.quick else 3)
    timer = nu.Timer(device, args.quick)
    cute, cute_reason = load_upstream_cute(device)
    torch.manual_seed(0)
    bandwidth = timer.copy_bandwidth()
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else (platform.processor() or platform.machine())
    )
    peers = {
        UPCLASS: "re-implemented in the benchmark (FP32LayerNorm cases)",
        ATEN: "F.layer_norm on x, parameters in x's dtype (FP32LayerNorm cases)",
        CUTE: "present" if cute else f"absent ({cute_reason})",
    }
    meta = {
        "device": name,
        "device_type": device.type,
        "torch": torch.__version__,
        "triton": triton_version(),
        "copy_GBps": bandwidth / 1e9,
        "rounds": rounds,
        "threads": torch.get_num_threads() if device.type == "cpu" else None,
        "quick": args.quick,
        "peers": peers,
        "peer_errors": [],
    }
    print(
        f"{name} ({device.type}), torch {torch.__version__}, copy ceiling "
        f"{bandwidth / 1e9:.0f} GB/s, {len(cases)} cases, {rounds} rounds"
        + (f", {meta['threads']} thread(s)" if meta["threads"] else ""),
        flush=True,
    )
    if cute is None:
        print(f"peer '{CUTE}' absent: {cute_reason}", flush=True)
    results = []
    for case in progress(cases, "cases"):
        results.extend(
            run_case(case, device, bandwidth, timer, rounds, cute, meta["peer_errors"])
        )
        if device.type == "cuda":
            torch.cuda.empty_cache()
    for line in meta["peer_errors"]:
        print(f"peer failed: {line}", file=sys.stderr)
    print(nu.format_table(results))
    write_outputs(args, results, meta)
    exact = all(r.bit_identical for r in results if r.exact_required)
    return 0 if exact else 1


if __name__ == "__main__":
    sys.exit(main())
