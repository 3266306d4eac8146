# SPDX-License-Identifier: Apache-2.0
"""Where the host time of one norm call goes (CUDA only; a tool, not a test).

Times each layer of an ``FP32LayerNorm`` call and of a ``LayerNormScaleShift``
call, from the module call down to the bound launch, next to ATen's
``F.layer_norm``: each as the best and the median of ``--repeats`` warm loops
of ``--calls`` calls that never synchronize inside (one input set, so only the
code path varies). Then the benchmark's own host measurement
(``Timer.host``: ``host_calls`` calls over rotating input sets, after one
untimed call) repeated, and single calls timed by their position in loops
that start right after a synchronize (one variant's loops back to back; the
benchmark's alternate between variants, which costs the first call more), to
tell a slow path from a noisy measurement.

    PYTHONPATH=python python scripts/bench_host_time.py [--tokens 257 --dim 1280]
"""

import argparse
import gc
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from sglang.kernels.ops.diffusion.norm import fp32_layernorm_bitexact as kb
from sglang.kernels.ops.diffusion.norm import fp32_layernorm_select as sel
from sglang.multimodal_gen.benchmarks import bench_fp32_layernorm as bench
from sglang.multimodal_gen.benchmarks import bench_utils_norm as nu


def loop_us(fn, calls: int, repeats: int) -> tuple:
    """(best, median) microseconds per call over ``repeats`` loops."""
    for _ in range(50):
        fn()
    torch.cuda.synchronize()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter() - t0) / calls * 1e6)
        torch.cuda.synchronize()
    return min(samples), statistics.median(samples)


def report(name: str, fn, args) -> float:
    best, med = loop_us(fn, args.calls, args.repeats)
    print(f"  {name:<44} best {best:6.2f} us   median {med:6.2f} us")
    return best


def layers_fp32_layernorm(args, param_dtype) -> None:
    dim, eps = args.dim, 1e-6
    case = bench.Case("FP32LayerNorm", args.tokens, dim, torch.bfloat16, param_dtype)
    m = bench.build_module(case, "cuda")
    (x,) = bench.make_inputs(case, "cuda")()
    w, b = m.weight, m.bias
    aw, ab = w.detach().to(x.dtype), b.detach().to(x.dtype)
    shape = tuple(m.normalized_shape)
    print(f"FP32LayerNorm {args.tokens}x{dim} bf16, params {param_dtype}")
    with torch.inference_mode():
        m(x)
        plan = kb.plan_for(x.view(-1, dim), w, b, eps)
        report(
            "ATen F.layer_norm (params in x's dtype)",
            lambda: F.layer_norm(x, shape, aw, ab, eps),
            args,
        )
        report("module call m(x)", lambda: m(x), args)
        report("m.forward_cuda(x)", lambda: m.forward_cuda(x), args)
        report(
            "select.try_fp32_layernorm_single_pass",
            lambda: sel.try_fp32_layernorm_single_pass(x, shape, w, b, eps),
            args,
        )
        report("select._runner_key", lambda: sel._runner_key(eps, x, w, b), args)
        report("plan(x, w, b, eps)", lambda: plan(x, w, b, eps), args)
        report("torch.empty_like(x)", lambda: torch.empty_like(x), args)
        y = torch.empty_like(x)
        bound = getattr(plan, "bound", None)
        if bound is not None:
            ptrs = (x, x, x, w, b, x, x, y, y, y, y)
            ints = tuple(t.data_ptr() for t in ptrs)
            report("bound launch (pointers as ints)", lambda: bound(*ints), args)
            report(
                "bound launch + data_ptr()s",
                lambda: bound(*map(kb._data_ptr, ptrs)),
                args,
            )
            report("launcher.fast()", plan.launcher.fast, args)
        if plan.kernel is not None:
            targs = (
                x,
                x,
                x,
                w,
                b,
                x,
                x,
                y,
                y,
                y,
                y,
                plan.coef,
                *plan.ints,
                eps,
            )
            report(
                "run_compiled (tensors, Triton's launcher)",
                lambda: kb.run_compiled(
                    plan.kernel, plan.grid, plan.device, targs, plan.tail
                ),
                args,
            )


def layers_fused(args) -> None:
    dim = args.dim
    case = bench.Case(
        "LayerNormScaleShift", args.tokens, dim, torch.bfloat16, torch.float32
    )
    m = bench.build_module(case, "cuda")
    x, shift, scale = bench.make_inputs(case, "cuda")()
    print(f"LayerNormScaleShift {args.tokens}x{dim} bf16, fp32 params and modulation")
    with torch.inference_mode():
        m(x, shift, scale)
        report("module call m(x, shift, scale)", lambda: m(x, shift, scale), args)
        n = m.norm
        report(
            "select.try_fused_layernorm_scale_shift",
            lambda: sel.try_fused_layernorm_scale_shift(
                x, n.weight, n.bias, n.eps, scale, shift
            ),
            args,
        )


def benchmark_style(args) -> None:
    """The benchmark's Timer.host, repeated, and the slowest calls of one loop."""
    case = bench.Case(
        "FP32LayerNorm", args.tokens, args.dim, torch.bfloat16, torch.float32
    )
    m = bench.build_module(case, "cuda")
    make = bench.make_inputs(case, "cuda")
    sample = make()
    set_bytes = sum(t.numel() * t.element_size() for t in sample)
    rotation = nu.Rotation(make, set_bytes, torch.device("cuda"))
    timer = nu.Timer(torch.device("cuda"), quick=False)
    fns = bench.variants(case, m, None)
    print(
        f"benchmark-style host us ({timer.host_calls} calls over {len(rotation.sets)} sets), 8 repeats"
    )
    with torch.inference_mode():
        for name in (bench.ATEN, "default", bench.UPCLASS):
            fn = fns[name]
            fn(*rotation.sets[0])
            vals = [timer.host(fn, rotation) for _ in range(8)]
            print(f"  {name:<24} " + " ".join(f"{v:6.1f}" for v in vals))
            gc.disable()
            vals = [timer.host(fn, rotation) for _ in range(8)]
            gc.enable()
            print(f"  {name + ' (gc off)':<24} " + " ".join(f"{v:6.1f}" for v in vals))
            sets = rotation.sets
            first, rest = [], []
            for _ in range(40):
                torch.cuda.synchronize()
                for i in range(timer.host_calls):
                    t0 = time.perf_counter()
                    fn(*sets[i % len(sets)])
                    (rest if i else first).append((time.perf_counter() - t0) * 1e6)
            torch.cuda.synchronize()
            print(
                f"  {name + ' per call':<24} first after a sync "
                f"{statistics.median(first):6.1f}  later {statistics.median(rest):6.1f}"
            )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=257)
    p.add_argument("--dim", type=int, default=1280)
    p.add_argument("--calls", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument(
        "--unbound",
        action="store_true",
        help="plans launch through Triton's Python launcher (the pre-BoundLaunch path)",
    )
    args = p.parse_args(argv)
    if args.unbound:
        kb.BoundLaunch.of = classmethod(lambda cls, *a: None)
    if not torch.cuda.is_available():
        print("bench_host_time: needs a CUDA device", file=sys.stderr)
        return 2
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
    layers_fp32_layernorm(args, torch.float32)
    layers_fp32_layernorm(args, torch.bfloat16)
    layers_fused(args)
    benchmark_style(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
