# SPDX-License-Identifier: Apache-2.0
"""Timing, ulp and plotting helpers of ``bench_fp32_layernorm``.

Nothing here touches the layernorm module: the benchmark's adapter section does.
Three numbers per variant, taken in every round (rounds interleave variants):

* ``graph``: CUDA-graph replay of ``n`` captured calls, timed with events, / n;
* ``host``: a plain loop of ``n`` calls without synchronizing inside, / n
  (``perf_counter`` around the loop; synchronized before and after, with one
  untimed call between the synchronize and the loop), run ``host_blocks``
  times per round with the variants' loops alternating;
* ``bench``: ``triton.testing.do_bench`` median on CUDA, a ``perf_counter``
  median of single calls on CPU.
"""

import math
import re
import statistics
import time
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

DTYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}
DTYPE_ALIASES = {"bfloat16": "bf16", "float16": "fp16", "half": "fp16",
                 "float32": "fp32", "float": "fp32"}  # fmt: skip


def ordered_bits(t: torch.Tensor) -> torch.Tensor:
    """Map floats to integers whose difference counts ulps (sign-magnitude order)."""
    int_dtype = {2: torch.int16, 4: torch.int32}[t.element_size()]
    i = t.contiguous().view(int_dtype).to(torch.int64)
    low = -(1 << (8 * t.element_size() - 1))
    return torch.where(i >= 0, i, low - i)


def ulp_stats(outs: Sequence[torch.Tensor], refs: Sequence[torch.Tensor]) -> tuple:
    """(max ulp, fraction of elements that differ) of ``outs`` against ``refs``.

    Outputs in another dtype are compared after rounding to the reference's.
    """
    worst, differ, total = 0, 0, 0
    for o, r in zip(outs, refs):
        if o.shape != r.shape:
            raise ValueError(f"shape {tuple(o.shape)} != reference {tuple(r.shape)}")
        o = o.to(r.dtype)
        total += r.numel()
        if r.numel() == 0:
            continue
        # NaN == NaN counts as equal, as torch.equal on bit patterns would
        ne = (o != r) & ~(o.isnan() & r.isnan())
        differ += int(ne.sum())
        worst = max(worst, int((ordered_bits(o) - ordered_bits(r)).abs().max()))
    return worst, (differ / total if total else 0.0)


def spread(samples: Sequence[float]) -> Optional[list]:
    """[min, median, max] of the per-round samples (None without samples)."""
    if not samples:
        return None
    return [min(samples), statistics.median(samples), max(samples)]


def rotated(items: Sequence, k: int) -> list:
    """``items`` starting at index ``k % len(items)``, wrapping around: the
    order in which round (or block) ``k`` runs the variants, so that no variant
    always runs first."""
    k %= len(items)
    return list(items[k:]) + list(items[:k])


class Rotation:
    """Input sets that the timed calls take in turn (one set on the CPU).

    On CUDA, enough sets to total three times the L2 cache, and never fewer
    than two: with one set every call reads the tensors the call before it
    read, and an operand far smaller than the set (a per-frame modulation)
    is then still in L2 however large the set is. On an H200 that hid 16% of
    a per-frame LayerNormScaleShift at 32760x5120 (190.8 us with one set,
    228.2 with two; docs/kernel-notes.md, session 16).
    """

    def __init__(self, make: Callable[[], tuple], set_bytes: int, device):
        count = 1
        if device.type == "cuda":
            l2 = torch.cuda.get_device_properties(device).L2_cache_size
            count = self.cuda_count(set_bytes, l2)
        self.sets = [make() for _ in range(count)]
        self._i = 0

    @staticmethod
    def cuda_count(set_bytes: int, l2_bytes: int) -> int:
        """Sets to keep on CUDA: past three times L2 in all, 2 to 256."""
        return min(256, max(2, math.ceil(3 * l2_bytes / max(set_bytes, 1))))

    def next(self) -> tuple:
        self._i = (self._i + 1) % len(self.sets)
        return self.sets[self._i]


class Timer:
    """Per-device timing settings; ``quick`` takes fewer samples."""

    def __init__(self, device: torch.device, quick: bool):
        self.device = device
        self.cuda = device.type == "cuda"
        self.quick = quick
        # bench: do_bench warm-up / repetition ms per round (CUDA), calls (CPU)
        # a full CUDA run (288 cases, 2-5 variants, 3 rounds) stays near 5 minutes
        self.warmup_ms, self.rep_ms = (5, 15) if quick else (5, 25)
        # CPU: the default run stays well inside a minute on two shared cores
        self.cpu_calls = 1 if quick else 2
        # host: per round, host_blocks loops of host_calls calls per variant
        self.host_calls = (5 if quick else 10) if self.cuda else self.cpu_calls
        self.host_blocks = (4 if quick else 5) if self.cuda else 1

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def bench(self, fn: Callable, rotation: Rotation) -> float:
        """Median ms of one call (do_bench on CUDA)."""
        if self.cuda:
            from triton.testing import do_bench

            return do_bench(
                lambda: fn(*rotation.next()),
                warmup=self.warmup_ms,
                rep=self.rep_ms,
                return_mode="median",
            )
        samples = []
        for _ in range(self.cpu_calls):
            args = rotation.next()
            t0 = time.perf_counter()
            fn(*args)
            samples.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(samples)

    def host(self, fn: Callable, rotation: Rotation) -> float:
        """Host microseconds per call of a loop that never synchronizes inside.

        The first call is left untimed. It follows a synchronize and, in the
        benchmark, another variant's loop, and it costs more the more Python
        it runs (on the H200 host, 257x1280, loops alternating: ATen's call
        +2.5 us, this tree's and upstream's FP32LayerNorm +9 us over the calls
        after it; +1 to +4 us with one variant's loops back to back): a cost
        that a plain loop of one variant pays once, not once per
        ``host_calls``.
        """
        n = self.host_calls
        sets = rotation.sets
        self.sync()
        fn(*sets[-1])
        t0 = time.perf_counter()
        for i in range(n):
            fn(*sets[i % len(sets)])
        elapsed = time.perf_counter() - t0
        self.sync()
        return elapsed / n * 1e6

    def capture(self, fn: Callable, rotation: Rotation):
        """(graph, calls) of ``fn`` over the rotation's sets, or (None, reason).

        Each captured call takes the next input set (sets larger than L2 in all).
        Memory freed inside the capture is reused within it (seen on an H200:
        ten 75600x5120 pre-port calls reserve what one does), so a graph holds
        about one call's temporaries.
        """
        if not self.cuda:
            return None, "no CUDA graphs on the CPU"
        sets = rotation.sets
        n = max(len(sets), 10 if self.quick else 20)
        try:
            stream = torch.cuda.Stream(self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):
                for i in range(3):  # warm-up: proofs, caches, compiles
                    fn(*sets[i % len(sets)])
            torch.cuda.current_stream(self.device).wait_stream(stream)
            torch.cuda.synchronize(self.device)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                for i in range(n):
                    fn(*sets[i % len(sets)])
            graph.replay()
            torch.cuda.synchronize(self.device)
        except Exception as e:  # any capture failure is reported, not raised
            try:
                torch.cuda.synchronize(self.device)
            except Exception:  # an invalidated capture may fail once more here
                pass
            return None, f"capture failed: {type(e).__name__}: {e}".splitlines()[0]
        return graph, n

    def replay(self, graph, n: int) -> float:
        """Milliseconds per captured call of one replay."""
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / n

    def copy_bandwidth(self) -> float:
        """Bytes per second of a large device copy, counting bytes read + written."""
        nbytes = (1 << 30) if self.cuda else (64 << 20)
        src = torch.randn(nbytes // 4, device=self.device)
        dst = torch.empty_like(src)
        rot = Rotation(lambda: (), 0, torch.device("cpu"))
        samples = [self.bench(lambda: dst.copy_(src), rot) for _ in range(3)]
        return 2 * nbytes / (min(samples) / 1e3)


def require_matplotlib() -> Optional[str]:
    """None if matplotlib imports, else a one-line reason."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as e:
        return f"{e}; install it with pip install '.[test]' (or '.[bench]')"
    return None


def _short(case: str) -> str:
    # "ScaleResidualLayerNormScaleShift 32760x5120 bf16 params=fp32" -> "SRN 3..."
    for long, short in (
        ("ScaleResidualLayerNormScaleShift", "SRN"),
        ("LayerNormScaleShift", "NSS"),
        ("FP32LayerNorm", "LN"),
        ("params=", "w="),
        ("no-affine", "w=none"),
    ):
        case = case.replace(long, short)
    return case


def plot(rows: list, bandwidth: float, path: str, title: str) -> None:
    """Time vs floor bytes: marker per variant, colour per module, case labels.

    ``rows``: dicts with case, module, variant, bytes and ms (graph time where
    measured, else the bench median). Labels go on the ``default`` points and
    are dropped where they would overlap one already placed.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 6.5))
    modules = sorted({r["module"] for r in rows})
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    colours = {m: f"C{i}" for i, m in enumerate(modules)}
    marks = "ovsx^D<>p*h"
    for vi, variant in enumerate(variants):
        for module in modules:
            pts = [r for r in rows if r["variant"] == variant and r["module"] == module]
            if pts:
                ax.scatter(
                    [r["bytes"] for r in pts],
                    [r["ms"] for r in pts],
                    marker=marks[vi % len(marks)],
                    color=colours[module],
                    label=f"{module}: {variant}",
                    alpha=0.75,
                    s=28,
                )
    xs = sorted({r["bytes"] for r in rows})
    if xs:
        ax.plot(xs, [b / bandwidth * 1e3 for b in xs], "k--", label="floor (copy bw)")
    ys = [r["ms"] for r in rows] + [b / bandwidth * 1e3 for b in xs]
    if xs and max(xs) / max(min(xs), 1) > 10:
        ax.set_xscale("log")
    if ys and max(ys) / max(min(ys), 1e-9) > 10:
        ax.set_yscale("log")
    ax.set_xlabel("bytes moved at the floor (inputs read once + outputs written once)")
    ax.set_ylabel("time per call, ms (graph replay where measured)")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7)
    fig.tight_layout()
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    placed = []
    for i, r in enumerate(x for x in rows if x["variant"] == "default"):
        text = ax.annotate(
            _short(r["case"]),
            (r["bytes"], r["ms"]),
            xytext=(4, 6 if i % 2 else -9),
            textcoords="offset points",
            fontsize=5.5,
            color=colours[r["module"]],
        )
        box = text.get_window_extent(renderer)
        if any(box.overlaps(b) for b in placed):
            text.remove()
        else:
            placed.append(box)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)


def fmt_opt(v, fmt=".4g", suffix="") -> str:
    return "n/a" if v is None else f"{v:{fmt}}{suffix}"


def pct_spread(s) -> str:
    return "n/a" if not s or not s[1] else f"{(s[2] - s[0]) / s[1] * 100:.0f}%"


def format_table(results: list) -> str:
    """The text table of Result rows (times in us)."""
    header = (
        f"{'case':<68} {'variant':<21} {'path':<14} {'graph us':>9} {'xflr':>6} "
        f"{'xbase':>6} {'bench us':>9} {'xflr':>6} {'xbase':>6} {'sprd':>5} "
        f"{'host us':>8} {'sprd':>5} {'xpeer':>6} {'exact':>5} {'ulp':>5} "
        f"{'diff':>6}"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        graph_us = None if r.graph_ms is None else r.graph_ms * 1e3
        lines.append(
            f"{r.case:<68} {r.variant:<21} {r.path:<14} {fmt_opt(graph_us, '.1f'):>9} "
            f"{fmt_opt(r.graph_x_floor, '.2f'):>6} {fmt_opt(r.graph_x_base, '.2f'):>6} "
            f"{r.ms * 1e3:>9.1f} {r.x_floor:>6.2f} {fmt_opt(r.x_base, '.2f'):>6} "
            f"{pct_spread(r.ms_spread):>5} {fmt_opt(r.host_us, '.1f'):>8} "
            f"{pct_spread(r.host_spread):>5} {fmt_opt(r.x_peer, '.2f'):>6} "
            f"{'yes' if r.bit_identical else 'NO':>5} {r.max_ulp:>5} "
            f"{r.diff_frac * 100:>5.3g}%"
        )
    return "\n".join(lines)


def md_spread(v, s, scale=1.0) -> str:
    if v is None:
        return "n/a"
    if not s:
        return f"{v * scale:.1f}"
    return f"{v * scale:.1f} [{s[0] * scale:.1f}-{s[2] * scale:.1f}]"


def parse_device(parser, value: str) -> torch.device:
    if value == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(value)
    except (RuntimeError, ValueError):
        parser.error(f"--device: expected auto, cpu, cuda or cuda:N, got {value!r}")
    if device.type not in ("cpu", "cuda"):
        parser.error(f"--device: expected auto, cpu, cuda or cuda:N, got {value!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            parser.error(f"--device {value}: CUDA is not available here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            parser.error(
                f"--device {value}: only {torch.cuda.device_count()} CUDA device(s)"
            )
    return device


def parse_dtypes(
    parser, value: Optional[str], flag: str = "--dtypes"
) -> Optional[list]:
    if value is None:
        return None
    by_name = {name: dtype for dtype, name in DTYPE_NAMES.items()}
    dtypes = []
    for name in value.split(","):
        key = DTYPE_ALIASES.get(name.strip().lower(), name.strip().lower())
        if key not in by_name:
            parser.error(
                f"{flag}: unknown dtype {name!r} (choose from {', '.join(by_name)})"
            )
        dtypes.append(by_name[key])
    return list(dict.fromkeys(dtypes))


def parse_shapes(parser, value: Optional[str]) -> Optional[list]:
    if value is None:
        return None
    shapes = []
    for item in value.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", item)
        if not match or 0 in (int(match[1]), int(match[2])):
            parser.error(
                f"--shapes: expected TOKENSxDIM[,TOKENSxDIM...] with positive "
                f"integers, got {item!r}"
            )
        shapes.append((int(match[1]), int(match[2])))
    return list(dict.fromkeys(shapes))


class UpstreamFP32LayerNorm(torch.nn.LayerNorm):
    """Upstream 0.5.23's ``FP32LayerNorm``: ``_cached_fp32_param`` + forward_native,
    sharing ``src``'s parameters."""

    def __init__(self, src: torch.nn.LayerNorm):
        super().__init__(src.normalized_shape, eps=src.eps, elementwise_affine=False)
        self.weight, self.bias = src.weight, src.bias

    def _cached_fp32_param(self, attr, param, device):
        if param is None:
            return None
        if torch.is_grad_enabled():
            return param.float().to(device)
        key = (param.data_ptr(), param._version, param.device, device, param.dtype)
        cached = self.__dict__.get(attr)
        if cached is not None and cached[0] == key:
            return cached[1]
        fp32 = param.float().to(device)
        self.__dict__[attr] = (key, fp32)
        return fp32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self._cached_fp32_param("_fp32_weight", self.weight, x.device)
        b = self._cached_fp32_param("_fp32_bias", self.bias, x.device)
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).to(
            x.dtype
        )
