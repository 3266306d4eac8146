# SPDX-License-Identifier: Apache-2.0
"""Single-pass CUDA paths of FP32LayerNorm and the fused modulation kernel.

GPU cases sweep shapes, layouts and dtypes and require bit-identity with the
uncached fp32 reference (and, for the fused modules, with their eager chain).
They also assert the fast path was really taken, so a silent fallback cannot
pass. CPU cases check that the CPU stays on the cached route and the env switch.
"""

import textwrap

import pytest
import torch
import torch.nn.functional as F

from sglang.kernels.ops.diffusion import (
    FP32_LAYERNORM_REFERENCE_ENV,
    fp32_layernorm_path,
    fused_layernorm_path,
)
from sglang.kernels.ops.diffusion.norm import fp32_layernorm_bitexact as kb
from sglang.kernels.ops.diffusion.norm import fp32_layernorm_select as sel
from sglang.multimodal_gen.runtime.layers import layernorm as ln

from _shared import run_python

HAS_CUDA = torch.cuda.is_available()
needs_triton = pytest.mark.skipif(kb.triton is None, reason="needs Triton")
if kb.triton is not None:
    from sglang.kernels.ops.diffusion.common import direct_launch


@pytest.fixture
def triton_at_any_size(monkeypatch):
    """Route even small test inputs to the Triton kernels (normally size-gated)."""
    monkeypatch.setattr(sel, "_TRITON_MIN_ELEMENTS", 0)


# the variants the plans take (kb._tuning); the interpreter test covers the rest
KERNEL_VARIANTS = ("rows", "rows-keep", "block-keep", "block-keep-prefetch")
# taken only by the fused modules (with per-frame modulation at D = 5120, and
# on an H100 LayerNormScaleShift at D = 1536: kb._H100_CARDS)
FUSED_VARIANTS = KERNEL_VARIANTS + ("block-keep-warm-cap", "block")


def _force_variant(name, monkeypatch):
    monkeypatch.setattr(kb, "_TUNING_OVERRIDE", kb._variant(name))
    monkeypatch.setattr(kb, "_PLANS", {})
    monkeypatch.setattr(sel, "_RUNNERS", {})
    return name


@pytest.fixture(params=KERNEL_VARIANTS)
def norm_kernel(request, monkeypatch):
    """Every kernel variant at every shape (the plans pick one by shape): four
    warps per row or a warp per row, each loading the row's tiles and
    operands in the output pass or holding them from the first (KEEP,
    PREFETCH)."""
    return _force_variant(request.param, monkeypatch)


@pytest.fixture(params=FUSED_VARIANTS)
def fused_kernel(request, monkeypatch):
    """``norm_kernel``'s variants, and those that prefetch the modulation into
    L1 (WARM_L1) and cap the registers (CAP)."""
    return _force_variant(request.param, monkeypatch)


SWEEP_DIMS = (8, 64, 100, 320, 1000, 1280, 1536, 3072, 4096, 5120, 8192, 12288)
PARAMS = ("same", "fp32", "none", "weight-only")


def reference(x, shape, w, b, eps):
    def fp32(p):
        return None if p is None else p.float().to(x.device)

    return F.layer_norm(x.float(), shape, fp32(w), fp32(b), eps).to(x.dtype)


def make_norm(dim, dtype, params, device="cuda", seed=0):
    pdtype = torch.float32 if params == "fp32" else dtype
    m = ln.FP32LayerNorm(
        dim,
        eps=1e-6,
        elementwise_affine=params != "none",
        bias=params != "weight-only",
        device=device,
        dtype=pdtype,
    )
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.7 + 1.0)
    return m


def layouts(rows, dim, dtype, device, gen):
    """Inputs of one logical shape in several memory layouts."""
    base = (torch.randn(rows + 1, dim, generator=gen) * 3 + 0.5).to(device, dtype)
    flat = torch.empty(rows * dim + 3, device=device, dtype=dtype)
    flat[1 : rows * dim + 1] = base[:rows].flatten()
    wide = torch.empty(rows, 2 * dim, device=device, dtype=dtype)
    wide[:, :dim] = base[:rows]
    return {
        "contiguous": base[:rows],
        "3d": base[:rows].reshape(1, rows, dim),
        "offset-by-one": flat[1 : rows * dim + 1].view(rows, dim),
        "row-strided": wide[:, :dim],
        "transposed": base[:rows].t().contiguous().t(),
        "empty": base[:0],
    }


def cuda_sweep(test):
    """Every D of the sweep, parameter kind and reduced dtype, on CUDA."""
    marks = (
        pytest.mark.parametrize("dim", SWEEP_DIMS),
        pytest.mark.parametrize("params", PARAMS),
        pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16]),
        pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device"),
        pytest.mark.gpu,
    )
    for mark in marks:
        test = mark(test)
    return test


@cuda_sweep
def test_fp32_layer_norm_cuda_sweep_is_bit_identical(
    dim, params, dtype, norm_kernel, monkeypatch
):
    """The Triton kernel wherever it applies, in each of its variants."""
    monkeypatch.setattr(sel, "_TRITON_MIN_ELEMENTS", 0)
    _sweep(dim, params, dtype, "kernel")


@cuda_sweep
def test_fp32_layer_norm_cuda_sweep_off_the_kernel_is_bit_identical(
    dim, params, dtype, monkeypatch
):
    """Size-gated off the kernel: ATen's reduced kernel or the cached path."""
    monkeypatch.setattr(sel, "_TRITON_MIN_ELEMENTS", 1 << 62)
    _sweep(dim, params, dtype, "aten")


def _sweep(dim, params, dtype, route):
    m = make_norm(dim, dtype, params)
    gen = torch.Generator().manual_seed(dim)
    taken = set()
    for name, x in layouts(131, dim, dtype, "cuda", gen).items():
        with torch.no_grad():
            y = m(x)
        ref = reference(x, (dim,), m.weight, m.bias, m.eps)
        assert y.dtype == dtype and y.shape == x.shape
        assert torch.equal(y, ref), f"{name}: {(y != ref).sum().item()} differ"
        taken.add(fp32_layernorm_path(x, (dim,), m.weight, m.bias))
    pdtype = m.weight.dtype if m.weight is not None else dtype
    kernel = (
        route == "kernel" and kb.triton is not None and kb._kernel_shape_ok(131, dim)
    )
    if kernel:
        assert "triton" in taken
    elif pdtype == dtype:
        assert "aten_reduced" in taken
    else:
        assert taken == {"cached"}


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@needs_triton
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.usefixtures("triton_at_any_size")
def test_triton_path_is_proven_and_used(dtype, monkeypatch):
    m = make_norm(5120, dtype, "fp32")
    x = torch.randn(4, 77, 5120, device="cuda").to(dtype)
    calls = []
    real = kb._Plan.__call__
    monkeypatch.setattr(
        kb._Plan, "__call__", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    with torch.no_grad():
        y = m(x)
    assert calls, "the Triton kernel was not launched"
    assert torch.equal(y, reference(x, (5120,), m.weight, m.bias, m.eps))
    # a fast path never needs the fp32 copies
    assert "_weight_fp32_cache" not in vars(m)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@needs_triton
def test_triton_kernel_stats_match_aten():
    gen = torch.Generator(device="cuda").manual_seed(0)
    for dim in (64, 320, 1280, 5120, 8192):
        x = torch.randn(513, dim, generator=gen, device="cuda") * 4 - 1
        w = torch.randn(dim, generator=gen, device="cuda")
        y, (mean, rstd) = kb._launch_fp32_norm(x, w, None, 1e-5, store_stats=True)
        ref, ref_mean, ref_rstd = torch.native_layer_norm(x, (dim,), w, None, 1e-5)
        assert torch.equal(mean, ref_mean.flatten())
        assert torch.equal(rstd, ref_rstd.flatten())
        assert torch.equal(y, ref)


def _modulation(layout, batch, seq, dim, dtype, gen):
    def rnd(*shape):
        return (torch.randn(*shape, generator=gen) * 0.3).to("cuda", dtype)

    if layout == "scalar":
        return rnd(1)
    if layout == "[D]":
        return rnd(dim)
    if layout == "[B,D]":
        return rnd(batch, dim)
    if layout == "[1,1,D]":
        return rnd(1, 1, dim)
    if layout == "[B,1,D]":
        return rnd(batch, 1, dim)
    if layout == "[B,L,D]":
        return rnd(batch, seq, dim)
    if layout == "[B,F,1,D]":
        return rnd(batch, 4, 1, dim)
    if layout == "chunk":  # Wan: a [B, 1, D] slice of a [B, 6, D] table
        return rnd(batch, 6, dim).chunk(6, dim=1)[2]
    raise AssertionError(layout)


MOD_LAYOUTS = ("scalar", "[D]", "[B,D]", "[1,1,D]", "[B,1,D]", "[B,L,D]",
               "[B,F,1,D]", "chunk")  # fmt: skip


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@needs_triton
@pytest.mark.parametrize("x_dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("mod_dtype", [torch.float32, "same"])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.usefixtures("triton_at_any_size", "fused_kernel")
def test_fused_norm_scale_shift_equals_chain(x_dtype, mod_dtype, affine):
    mdtype = x_dtype if mod_dtype == "same" else mod_dtype
    dim, batch, seq = 1280, 2, 64
    gen = torch.Generator().manual_seed(dim)
    m = ln.LayerNormScaleShift(dim, eps=1e-6, elementwise_affine=affine).cuda()
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5 + 1)
    x = (torch.randn(batch, seq, dim, generator=gen) * 2).to("cuda", x_dtype)
    # layouts are runtime strides (per-frame ones also set PER_FRAME)
    for layout in MOD_LAYOUTS:
        shift = _modulation(layout, batch, seq, dim, mdtype, gen)
        scale = _modulation(layout, batch, seq, dim, mdtype, gen)
        with torch.no_grad():
            assert ln._fused_norm_modulate(m, x, shift, scale) is not None
            fused = m(x, shift, scale)
            chain = m.forward_native(x, shift, scale)
        assert fused.dtype == x_dtype
        assert torch.equal(fused, chain), (layout, (fused != chain).sum().item())


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@needs_triton
@pytest.mark.parametrize("gate_layout", ("int", "[B,1,D]", "[B,F,1,D]", "chunk"))
@pytest.mark.parametrize("x_dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("mod_dtype", [torch.float32, "same"])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.usefixtures("triton_at_any_size", "fused_kernel")
def test_fused_scale_residual_equals_chain(gate_layout, x_dtype, mod_dtype, affine):
    mdtype = x_dtype if mod_dtype == "same" else mod_dtype
    dim, batch, seq = 1536, 2, 96
    gen = torch.Generator().manual_seed(7)
    m = ln.ScaleResidualLayerNormScaleShift(
        dim, eps=1e-6, elementwise_affine=affine
    ).cuda()
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5 + 1)
    residual = (torch.randn(batch, seq, dim, generator=gen) * 2).to("cuda", x_dtype)
    x = torch.randn(batch, seq, dim, generator=gen).to("cuda", x_dtype)
    if gate_layout == "int":
        gate = 1
    else:
        gate = _modulation(gate_layout, batch, seq, dim, mdtype, gen)
    shift = _modulation("[B,1,D]", batch, seq, dim, mdtype, gen)
    scale = _modulation("[B,F,1,D]", batch, seq, dim, mdtype, gen)
    with torch.no_grad():
        fused = m(residual, x, gate, shift, scale)
        chain = m.forward_native(residual, x, gate, shift, scale)
    for got, want in zip(fused, chain):
        assert got.dtype == x_dtype
        assert torch.equal(got, want), (got != want).sum().item()


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@needs_triton
def test_fused_modules_match_the_uncached_reference_at_wan_shape():
    dim, seq = 5120, 1560
    gen = torch.Generator().manual_seed(3)
    m = ln.ScaleResidualLayerNormScaleShift(dim, eps=1e-6, elementwise_affine=True)
    m = m.cuda()
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    e = torch.randn(1, 6, dim, generator=gen).cuda()
    shift, scale, gate = e.chunk(6, dim=1)[:3]
    residual = torch.randn(1, seq, dim, generator=gen).cuda().bfloat16()
    x = torch.randn(1, seq, dim, generator=gen).cuda().bfloat16()
    with torch.no_grad():
        out, res_out = m(residual, x, gate, shift, scale)
    r = residual + x * gate
    normed = reference(r, (dim,), m.norm.weight, m.norm.bias, m.norm.eps)
    want = (normed * (1 + scale) + shift).bfloat16()
    assert torch.equal(res_out, r.bfloat16())
    assert torch.equal(out, want)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@needs_triton
@pytest.mark.parametrize("rows, dim", [(257, 1280), (16384, 1280), (4096, 5120)])
def test_first_use_proof_runs_the_variant_the_call_takes(rows, dim, monkeypatch):
    """The proof checks, on its own small input, the same kernel and knobs as
    the call's plan; a configuration that differs only in its variant is
    proven again."""
    monkeypatch.setattr(sel, "_PROOFS", sel.ProofRegistry())
    monkeypatch.setattr(sel, "_RUNNERS", {})
    monkeypatch.setattr(kb, "_PLANS", {})
    proved = []
    real = sel._launch_fp32_norm

    def spy(*args, tuning=None, **kwargs):
        proved.append(tuning)
        return real(*args, tuning=tuning, **kwargs)

    monkeypatch.setattr(sel, "_launch_fp32_norm", spy)
    m = make_norm(dim, torch.bfloat16, "fp32")
    x = torch.randn(rows, dim, device="cuda").bfloat16()
    lss = ln.LayerNormScaleShift(dim).cuda()
    mod = torch.randn(1, 1, dim, device="cuda")
    with torch.no_grad():
        y = m(x)
        out = lss(x[None], mod, mod)
    assert torch.equal(y, reference(x, (dim,), m.weight, m.bias, m.eps))
    assert torch.equal(out, lss.forward_native(x[None], mod, mod))
    want = [plan.tuning for plan in kb._PLANS.values()]
    assert len(want) == 2 and proved == want


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@needs_triton
def test_small_inputs_take_the_kernel_in_one_launch():
    # a prepared launch costs less host time than the ATen routes at every size,
    # so 257-token calls are one kernel, not the cached path's three or the
    # eager chain's six
    m = make_norm(1280, torch.bfloat16, "fp32")
    small = torch.randn(257, 1280, device="cuda").bfloat16()
    assert fp32_layernorm_path(small, (1280,), m.weight, m.bias) == "triton"
    with torch.no_grad():
        assert torch.equal(m(small), reference(small, (1280,), m.weight, m.bias, m.eps))
    lss = ln.LayerNormScaleShift(1280).cuda()
    srn = ln.ScaleResidualLayerNormScaleShift(1280, elementwise_affine=True).cuda()
    mod = torch.randn(1, 1, 1280, device="cuda")
    x = small[None]
    with torch.no_grad():
        out = ln._fused_norm_modulate(lss, x, mod, mod)
        assert out is not None
        assert torch.equal(out, lss.forward_native(x, mod, mod))
        pair = ln._fused_residual_norm_modulate(srn, x, x, mod, mod, mod)
        assert pair is not None
        want = srn.forward_native(x, x, mod, mod, mod)
        assert all(torch.equal(a, b) for a, b in zip(pair, want))


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_norms_over_different_shapes_of_one_input_do_not_share_a_path(
    dtype, monkeypatch
):
    """Without affine parameters nothing but ``normalized_shape`` tells a norm
    over the last dim from one over the last two; both stay exact."""
    monkeypatch.setattr(sel, "_RUNNERS", {})
    x = (torch.randn(4, 257, 1280, device="cuda") * 3).to(dtype)
    for shape in ((1280,), (257, 1280), (1280,)):
        m = ln.FP32LayerNorm(shape, eps=1e-6, elementwise_affine=False).cuda()
        with torch.no_grad():
            assert torch.equal(m(x), reference(x, shape, None, None, 1e-6)), shape


def test_single_pass_input_check_runs_once_per_configuration(monkeypatch):
    """``check`` vets each operand configuration once; a stored decision is
    only reused for operands with the same key (so the check would pass)."""
    monkeypatch.setattr(sel, "_RUNNERS", {})
    seen = []

    def check(x, shape):
        ln.FP32LayerNorm._check_input(x, shape)
        seen.append((tuple(x.shape), shape))

    x = torch.randn(3, 64)
    for _ in range(3):
        assert (
            sel.try_fp32_layernorm_single_pass(x, (64,), None, None, 1e-6, check)
            is None
        )
    assert seen == [((3, 64), (64,))]
    # the stored decision is keyed by _runner_key
    assert list(sel._RUNNERS) == [sel._runner_key((1e-6, (64,)), x, None, None)]
    with pytest.raises(ValueError, match="does not end with normalized_shape"):
        sel.try_fp32_layernorm_single_pass(x, (32,), None, None, 1e-6, check)
    with pytest.raises(TypeError, match="floating-point"):
        sel.try_fp32_layernorm_single_pass(x.int(), (64,), None, None, 1e-6, check)
    with pytest.raises(TypeError, match="expects a torch.Tensor"):
        sel.try_fp32_layernorm_single_pass([1.0], (1,), None, None, 1e-6, check)


def test_cpu_stays_on_the_cached_route():
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        for params in PARAMS:
            m = make_norm(64, dtype, params, device="cpu")
            x = torch.randn(3, 64).to(dtype)
            assert fp32_layernorm_path(x, (64,), m.weight, m.bias) == "cached"
            with torch.no_grad():
                assert torch.equal(m(x), reference(x, (64,), m.weight, m.bias, m.eps))
            if m.weight is not None and m.weight.dtype != torch.float32:
                assert "_weight_fp32_cache" in vars(m)


def test_cpu_fused_modules_take_the_native_chain():
    m = ln.ScaleResidualLayerNormScaleShift(64, elementwise_affine=True)
    x = torch.randn(1, 8, 64).bfloat16()
    norm = m.norm
    path = fused_layernorm_path(x, norm.weight, norm.bias, x, x, residual=x, gate=x)
    assert path == "native"
    with torch.no_grad():
        assert ln._fused_residual_norm_modulate(m, x, x, x, x, x) is None


def test_reference_switch_bypasses_cache_and_fast_paths(monkeypatch):
    monkeypatch.setattr(sel, "_FORCE_REFERENCE", True)
    m = make_norm(64, torch.bfloat16, "same", device="cpu")
    x = torch.randn(5, 64).bfloat16()
    assert fp32_layernorm_path(x, (64,), m.weight, m.bias) == "reference"
    with torch.no_grad():
        assert torch.equal(m(x), reference(x, (64,), m.weight, m.bias, m.eps))
    assert "_weight_fp32_cache" not in vars(m)


@pytest.mark.parametrize("value,expected", [("1", "reference"), ("0", "cached")])
def test_reference_switch_is_read_from_the_environment(value, expected):
    code = textwrap.dedent(
        """
        import torch
        from sglang.kernels.ops.diffusion import fp32_layernorm_path
        from sglang.multimodal_gen.runtime.layers import layernorm as ln
        m = ln.FP32LayerNorm(8)
        x = torch.randn(2, 8)
        print(fp32_layernorm_path(x, (8,), m.weight, m.bias))
        """
    )
    out = run_python(code, env={FP32_LAYERNORM_REFERENCE_ENV: value})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == expected


def test_proof_registry_rejects_a_mismatching_fast_path():
    registry = sel.ProofRegistry()
    cpu = torch.device("cpu")

    def make_inputs():
        return (torch.arange(4.0),)

    def wrong(x):
        return x + 1

    with pytest.warns(RuntimeWarning, match="not bit-identical"):
        assert registry.proven(("k",), cpu, wrong, torch.clone, make_inputs) is False
    # the verdict is remembered: no second check, no second warning
    assert registry.proven(("k",), cpu, wrong, torch.clone, make_inputs) is False
    assert registry.proven(("ok",), cpu, torch.clone, torch.clone, make_inputs) is True


def _triton_binder():
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime import jit

    kernel = kb._fp32_norm_kernel
    backend = make_backend(GPUTarget("cuda", 90, 64))
    return jit.create_function_from_signature(kernel.signature, kernel.params, backend)


@needs_triton
def test_kernel_launcher_key_covers_triton_specialization():
    """Equal launcher keys must mean equal Triton specializations (runs on CPU).

    Ints and constexprs enter the key by value; each pointer by ``launch_spec``.
    Triton specializes each argument on its own value, so each pointer position is
    varied alone over dtypes and offsets that straddle 16-byte alignment.
    """
    binder = _triton_binder()
    kernel = kb._fp32_norm_kernel
    n_ptr = kb._N_POINTER_ARGS
    assert kernel.arg_names[n_ptr] == "stride_x" and "eps" in kernel.arg_names
    n_ints = kernel.arg_names.index("eps") - n_ptr
    constexprs = {name: 0 for name in kernel.arg_names[n_ptr + n_ints + 1 :]}
    base = torch.zeros(64)
    tensors = [
        base.to(dtype)[offset:]
        for dtype in (torch.float32, torch.bfloat16, torch.float16)
        for offset in range(9)
    ]
    default = [base] * n_ptr + [16] * n_ints + [1e-6]
    for pos in range(n_ptr):
        by_key: dict = {}
        for value in tensors:
            args = list(default)
            args[pos] = value
            _, spec, _ = binder(
                *args, **constexprs, num_warps=4, enable_fp_fusion=False
            )
            key = direct_launch.launch_spec(value)
            assert by_key.setdefault(key, spec[pos]) == spec[pos], (pos, value)
        assert len(by_key) == 6  # 3 dtypes x aligned or not
    # the float eps, left out of the key, is not specialized on
    for eps in (1e-6, 1.0, 16.0):
        args = default[:-1] + [eps]
        _, spec, _ = binder(*args, **constexprs, num_warps=4, enable_fp_fusion=False)
        assert spec[n_ptr + n_ints] == ("fp32", None), spec[n_ptr + n_ints]


@needs_triton
def test_bound_launch_passes_triton_launchers_argument_order(monkeypatch):
    """BoundLaunch calls Triton 3.6's C launcher as its Python wrapper does:
    grid, stream, function, cooperative, PDL, no scratch, packed metadata, no
    launch metadata or hooks, then the kernel's arguments (pointers as ints)."""
    calls = []

    class Run:
        global_scratch_size = profile_scratch_size = 0
        launch_cooperative_grid, launch_pdl = False, True

        def launch(self, *args):
            calls.append(args)

    class Kernel:
        run, function, packed_metadata = Run(), 1234, (4, 1, 0)

    streams = []

    class Driver:
        def get_current_stream(self, device):
            streams.append(device)
            return 99

    monkeypatch.setattr(direct_launch.triton.runtime.driver, "_active", Driver())
    bound = direct_launch.BoundLaunch.of(Kernel(), (7,), 3, (5, 1e-6, True))
    bound(11, 12)
    assert calls == [
        (7, 1, 1, 99, 1234, False, True, None, None, (4, 1, 0), None, None, None)
        + (11, 12, 5, 1e-6, True)
    ]
    assert streams == [3]
    Run.global_scratch_size = 64  # Triton's Python launcher allocates it
    assert direct_launch.BoundLaunch.of(Kernel(), (7,), 3, ()) is None


@needs_triton
@pytest.mark.parametrize("fused", [False, True])
def test_plan_binds_after_its_first_launch_and_yields_to_hooks(fused, monkeypatch):
    """A plan's first launch goes through its DirectLauncher with tensors;
    later ones through the BoundLaunch with data pointers in the same slots and
    the plan's constants after them; while hooks are set, through Triton again,
    keeping the compiled kernel (fakes stand in for Triton, so this runs on CPU).
    Fused: every operand and output in its own slot, statistics included."""
    launches, c_calls = [], []

    class Run:
        global_scratch_size = profile_scratch_size = 0
        launch_cooperative_grid = launch_pdl = False

        def launch(self, *args):
            c_calls.append(args)

    class Kernel:
        run, function, packed_metadata = Run(), 7, (1, 1, 0)

    compiled = Kernel()

    class Launcher:
        hooked = False

        def fast(self):
            return not self.hooked

        def launch(self, grid, args, constexprs):
            launches.append(args)
            return None if self.hooked else compiled

    class Driver:
        def get_current_stream(self, device):
            return 0

    monkeypatch.setattr(direct_launch.triton.runtime.driver, "_active", Driver())
    dim = 64
    x, w, b = torch.randn(5, dim), torch.randn(dim), torch.randn(dim)
    if fused:
        ops = [
            torch.randn(5, dim),
            torch.randn(dim),
            torch.randn(dim),
            torch.randn(dim),
        ]
        plan = kb._Plan(x, w, b, 1e-6, *ops, store_stats=True)
    else:
        ops = [None] * 4
        plan = kb._Plan(x, w, b, 1e-6)
    residual, gate, scale, shift = ops
    plan.launcher = launcher = Launcher()
    first = plan(x, w, b, 1e-6, *ops)
    assert len(launches) == 1 and plan.kernel is compiled and plan.bound is not None
    if fused:
        (y, res_out), (stats, rstd) = first
        want = (x, residual, gate, w, b, scale, shift, y, res_out, stats, rstd)
    else:
        want = (x, x, x, w, b, x, x, first, first, first, first)
    assert all(a is t for a, t in zip(launches[0], want))
    second = plan(x, w, b, 1e-6, *ops)
    assert len(launches) == 1 and len(c_calls) == 1
    args = c_calls[0][13:]  # after grid, stream, function and metadata
    n_ptr = kb._N_POINTER_ARGS
    if fused:
        (y, res_out), (stats, rstd) = second
        want = (x, residual, gate, w, b, scale, shift, y, res_out, stats, rstd)
    else:
        y = second  # the output allocated by that call
        want = (x, x, x, w, b, x, x, y, y, y, y)
    assert args[: n_ptr - 1] == tuple(t.data_ptr() for t in want)
    assert args[n_ptr - 1] == plan.coef.data_ptr()
    assert args[n_ptr:] == (*plan.ints, 1e-6, *plan.tail)
    assert y.shape == x.shape and y.dtype == x.dtype
    launcher.hooked = True
    plan(x, w, b, 1e-6, *ops)
    assert len(launches) == 2 and len(c_calls) == 1
    assert plan.kernel is compiled


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@needs_triton
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_direct_launches_match_the_reference(dtype, monkeypatch):
    """Repeat launches (direct) equal first launches (Triton's) and the reference,
    across alignments and strides that change the kernel's specialization."""
    launcher = direct_launch.DirectLauncher(
        kb._fp32_norm_kernel, kb._N_POINTER_ARGS, kb._KERNEL_OPTIONS
    )
    monkeypatch.setattr(kb, "_LAUNCHER", launcher)
    monkeypatch.setattr(kb, "_PLANS", {})
    assert launcher.enabled
    gen = torch.Generator().manual_seed(5)
    dim = 1280
    w = torch.randn(dim, generator=gen).cuda()
    b = torch.randn(dim, generator=gen).cuda()
    flat = (torch.randn(40 * dim + 8, generator=gen) * 2).to("cuda", dtype)
    for offset in (0, 1, 4, 8, 0, 1):  # elements; 1 and 4 break 16-byte alignment
        for rows in (1, 16, 33):
            x = flat[offset : offset + rows * dim].view(rows, dim)
            want = reference(x, (dim,), w, b, 1e-6)
            for _ in range(2):
                y = kb._launch_fp32_norm(x, w, b, 1e-6)
                assert torch.equal(y, want), (offset, rows)
                # the prepared launch, keyed on the same alignments
                y = kb.fp32_layernorm_bitexact(x, w, b, 1e-6)
                assert torch.equal(y, want), (offset, rows)
    assert len(launcher._kernels) >= 2
    assert all(plan.kernel is not None for plan in kb._PLANS.values())
    # repeat calls of a plan went through its bound launch
    assert all(plan.bound is not None for plan in kb._PLANS.values())


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@needs_triton
def test_launch_hooks_see_every_launch_of_a_plan(monkeypatch):
    """A profiler's launch hook sees bound plans' launches too (they go back
    to Triton's path while a hook is set), and the output stays exact."""
    import triton

    monkeypatch.setattr(kb, "_PLANS", {})
    gen = torch.Generator().manual_seed(6)
    dim = 1536
    x = torch.randn(64, dim, generator=gen).to("cuda", torch.bfloat16)
    w = torch.randn(dim, generator=gen).cuda()
    b = torch.randn(dim, generator=gen).cuda()
    want = reference(x, (dim,), w, b, 1e-6)
    for _ in range(2):
        assert torch.equal(kb.fp32_layernorm_bitexact(x, w, b, 1e-6), want)
    (plan,) = kb._PLANS.values()
    assert plan.bound is not None
    seen = []
    hooks = triton.knobs.runtime.launch_enter_hook
    hooks.add(seen.append)
    try:
        for _ in range(3):
            assert torch.equal(kb.fp32_layernorm_bitexact(x, w, b, 1e-6), want)
    finally:
        hooks.remove(seen.append)
    torch.cuda.synchronize()
    assert len(seen) == 3
    assert torch.equal(kb.fp32_layernorm_bitexact(x, w, b, 1e-6), want)
