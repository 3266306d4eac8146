# SPDX-License-Identifier: Apache-2.0
"""Seeded random walks over the lifecycle of FP32LayerNorm and the fused modules.

Each walk interleaves forwards (under ``no_grad``, under ``inference_mode`` and with
grad) with every way a parameter can change: in-place ``add_`` / ``mul_`` (also
under ``inference_mode``), ``copy_``, ``load_state_dict`` (copying and
``assign=True``), ``p.data = t`` after releasing the old storage so the allocator
reuses its address, reassigning the parameter, parameters made under
``inference_mode``, ``module.to(dtype)``, ``.to(device)`` round trips (CUDA),
``requires_grad_`` toggles, ``copy.deepcopy`` and ``torch.func.functional_call``.
Every forward is compared bit for bit with the uncached reference
``F.layer_norm(x.float(), shape, w.float(), b.float(), eps).to(x.dtype)`` (for
``LayerNormScaleShift`` / ``ScaleResidualLayerNormScaleShift``: the eager chain
built on that reference). A failure names the seed, the step and the last ops.

The quick walks run in CI; ``-m slow`` runs >= 10,000 steps per device and prints
the step count and how often each op ran.
"""

import collections
import copy
import random
import time

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from sglang.multimodal_gen.runtime.layers import layernorm as ln

from _shared import DEVICES, one_cpu_thread  # noqa: F401 (autouse fixture)

FLOAT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
HIDDEN = 64
QUICK_STEPS = 300
SLOW_STEPS_PER_WALK = 2000

# (kind, elementwise_affine, bias); the fused modules always have a bias if affine
CONFIGS = [
    ("norm", True, True),
    ("norm", True, False),
    ("norm", False, False),
    ("norm_scale_shift", True, True),
    ("norm_scale_shift", False, False),
    ("scale_residual", True, True),
    ("scale_residual", False, False),
]


def _config_id(config):
    kind, affine, bias = config
    return f"{kind}-{'no-affine' if not affine else 'affine' if bias else 'no-bias'}"


def ref_layer_norm(x, norm, weight=None, bias=None):
    """The uncached reference with ``norm``'s (or the given) parameters."""
    weight = norm.weight if weight is None else weight
    bias = norm.bias if bias is None else bias

    def fp32(p):
        return None if p is None else p.detach().float().to(x.device)

    return F.layer_norm(
        x.float(), tuple(norm.normalized_shape), fp32(weight), fp32(bias), norm.eps
    ).to(x.dtype)


def _expand_frames(t, seq_len):
    # [B, F, 1, D] per-frame modulation as the [B, L, D] it stands for
    if t.dim() != 4:
        return t
    return t.repeat_interleave(seq_len // t.shape[1], dim=1).squeeze(2)


def ref_norm_scale_shift(norm_fn, x, shift, scale):
    seq = x.shape[1]
    scale, shift = _expand_frames(scale, seq), _expand_frames(shift, seq)
    return (norm_fn(x) * (1 + scale) + shift).to(x.dtype)


def ref_scale_residual(norm_fn, residual, x, gate, shift, scale):
    seq = x.shape[1]
    if isinstance(gate, int):
        r = residual + x
    else:
        r = residual + x * _expand_frames(gate, seq)
    scale, shift = _expand_frames(scale, seq), _expand_frames(shift, seq)
    out = (norm_fn(r) * (1 + scale) + shift).to(x.dtype)
    return out, r.to(x.dtype)


def assert_same_bits(got, want, what):
    assert isinstance(got, torch.Tensor), what
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} != {want.dtype}"
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    got = got.detach()
    if not torch.equal(got, want):
        diff = (got.float() - want.float()).abs()
        raise AssertionError(
            f"{what}: {(got != want).sum().item()} of {got.numel()} elements "
            f"differ, max abs diff {diff.max().item()}"
        )


class LifecycleWalk:
    """One seeded random walk; ``run(steps)`` raises on the first wrong forward."""

    def __init__(self, config, device, param_dtype, seed):
        self.kind, self.affine, self.bias = config
        self.device = torch.device(device)
        self.seed = seed
        self.rng = random.Random(seed)
        self.gen = torch.Generator().manual_seed(seed)
        self.counts = collections.Counter()
        self.history = collections.deque(maxlen=12)
        self.step = 0
        self.subject = self._build(param_dtype)

    # ------------------------------------------------------------------ setup
    def _build(self, param_dtype):
        if self.kind == "norm":
            m = ln.FP32LayerNorm(
                HIDDEN,
                eps=1e-6,
                elementwise_affine=self.affine,
                bias=self.bias,
                dtype=param_dtype,
            )
        elif self.kind == "norm_scale_shift":
            m = ln.LayerNormScaleShift(
                HIDDEN, eps=1e-6, elementwise_affine=self.affine, dtype=param_dtype
            )
        else:
            m = ln.ScaleResidualLayerNormScaleShift(
                HIDDEN, eps=1e-6, elementwise_affine=self.affine, dtype=param_dtype
            )
        m = m.to(self.device)
        with torch.no_grad():
            for p in m.parameters():
                p.copy_(self.randn(p.shape) * 0.5 + 1.0)
        return m

    @property
    def norm(self):
        return self.subject if self.kind == "norm" else self.subject.norm

    def prefix(self):
        return "" if self.kind == "norm" else "norm."

    def params(self):
        return [
            (n, p)
            for n, p in (("weight", self.norm.weight), ("bias", self.norm.bias))
            if p is not None
        ]

    def randn(self, shape, dtype=torch.float32, device=None, scale=1.0, offset=0.0):
        t = torch.randn(tuple(shape), generator=self.gen) * scale + offset
        return t.to(device=self.device if device is None else device, dtype=dtype)

    def pick_param(self):
        return self.rng.choice(self.params())

    @staticmethod
    def write_ctx(p):
        # inference tensors may only be written under inference_mode
        return torch.inference_mode() if p.is_inference() else torch.no_grad()

    def any_inference_param(self):
        return any(p.is_inference() for _, p in self.params())

    # ---------------------------------------------------------------- forward
    def make_call(self, device=None):
        """Random inputs for one call: ``(args, reference_fn)``."""
        device = self.device if device is None else device
        dtype = self.rng.choice(FLOAT_DTYPES)
        if self.kind == "norm":
            shape = self.rng.choice(
                [(HIDDEN,), (0, HIDDEN), (3, HIDDEN), (2, 5, HIDDEN), (2, 2, 3, HIDDEN)]
            )
            x = self.randn(shape, dtype, device, scale=2.0, offset=0.25)
            if self.rng.random() < 0.2 and x.dim() >= 2 and x.shape[0] > 1:
                x = x[::2]  # a row-strided (non-contiguous) view
            return (x,), lambda: ref_layer_norm(x, self.norm)
        batch, frames, per = self.rng.choice([(1, 1, 4), (2, 2, 3), (2, 3, 2)])
        seq = frames * per
        x = self.randn((batch, seq, HIDDEN), dtype, device, scale=2.0, offset=0.25)
        mod_dtype = self.rng.choice([torch.float32, dtype])

        def mod(per_frame):
            shape = (batch, frames, 1, HIDDEN) if per_frame else (batch, 1, HIDDEN)
            return self.randn(shape, mod_dtype, device, scale=0.3)

        per_frame = frames > 1 and self.rng.random() < 0.3
        shift, scale = mod(per_frame), mod(per_frame and self.rng.random() < 0.5)

        def norm_fn(t):
            return ref_layer_norm(t, self.norm)

        if self.kind == "norm_scale_shift":
            return (x, shift, scale), lambda: ref_norm_scale_shift(
                norm_fn, x, shift, scale
            )
        residual = self.randn((batch, seq, HIDDEN), dtype, device, scale=2.0)
        gate = (
            1
            if self.rng.random() < 0.3
            else mod(frames > 1 and self.rng.random() < 0.3)
        )
        args = (residual, x, gate, shift, scale)
        return args, lambda: ref_scale_residual(
            norm_fn, residual, x, gate, shift, scale
        )

    def check_forward(self, mode, device=None):
        args, ref_fn = self.make_call(device)
        if mode == "grad" and self.kind == "norm" and not self.any_inference_param():
            if self.rng.random() < 0.5:
                args = (args[0].detach().requires_grad_(True),)
        ctx = {
            "no_grad": torch.no_grad,
            "inference": torch.inference_mode,
            "grad": torch.enable_grad,
        }[mode]
        with ctx():
            outs = [self.subject(*args)]
            if self.kind != "norm" and self.device.type == "cuda":
                # the fused kernel (where taken) and the eager chain
                outs.append(self.subject.forward_native(*args))
        with torch.no_grad():
            want = ref_fn()
        for i, got in enumerate(outs):
            if isinstance(want, tuple):
                assert isinstance(got, tuple) and len(got) == len(want)
                for j, (g, w) in enumerate(zip(got, want)):
                    assert_same_bits(g, w, f"{self.where()} output {i}.{j}")
            else:
                assert_same_bits(got, want, f"{self.where()} output {i}")

    def where(self):
        params = {
            n: (p.dtype, p.device.type, p.is_inference()) for n, p in self.params()
        }
        return (
            f"seed={self.seed} step={self.step} kind={self.kind} "
            f"affine={self.affine} bias={self.bias} params={params} "
            f"last ops={list(self.history)}"
        )

    # -------------------------------------------------------------------- ops
    def op_fwd_no_grad(self):
        self.check_forward("no_grad")

    def op_fwd_inference_mode(self):
        self.check_forward("inference")

    def op_fwd_grad(self):
        # autograd rejects inference tensors (the reference expression would too)
        self.check_forward("no_grad" if self.any_inference_param() else "grad")

    def op_fwd_other_device(self):
        # input on the other device than the parameters (standalone norm only)
        other = (
            torch.device("cpu") if self.device.type == "cuda" else torch.device("cuda")
        )
        self.check_forward(self.rng.choice(["no_grad", "inference"]), device=other)

    def op_add_(self):
        _, p = self.pick_param()
        with self.write_ctx(p):
            p.add_(self.randn(p.shape, p.dtype, p.device, scale=0.25))

    def op_mul_(self):
        _, p = self.pick_param()
        with self.write_ctx(p):
            p.mul_(self.rng.choice([-1.5, 0.5, 1.25, 2.0]))

    def op_add_under_inference_mode(self):
        _, p = self.pick_param()
        with torch.inference_mode():
            p.add_(self.rng.choice([-0.75, 0.125, 1.0]))

    def op_copy_(self):
        _, p = self.pick_param()
        with self.write_ctx(p):
            # from fp32 on the CPU: a converting, possibly cross-device copy
            p.copy_(self.randn(p.shape, torch.float32, "cpu", scale=0.5, offset=1.0))

    def _random_state(self):
        return {
            k: self.randn(v.shape, v.dtype, v.device, scale=0.5, offset=1.0)
            for k, v in self.subject.state_dict().items()
        }

    def op_load_state_dict(self):
        with self.module_ctx():
            self.subject.load_state_dict(self._random_state())

    def op_load_state_dict_assign(self):
        self.subject.load_state_dict(self._random_state(), assign=True)

    def op_data_release_and_refill(self):
        _, p = self.pick_param()
        old_ptr, shape, dtype = p.data_ptr(), p.shape, p.dtype
        with self.write_ctx(p):
            # drop the only strong reference to the old storage first, so the
            # allocator can hand its address to the replacement
            p.data = torch.empty(0, device=p.device, dtype=dtype)
            p.data = self.randn(shape, dtype, p.device, scale=0.5, offset=1.0)
        self.counts["(address reused)"] += p.data_ptr() == old_ptr

    def op_reassign_parameter(self):
        name, p = self.pick_param()
        new = self.randn(p.shape, p.dtype, p.device, scale=0.5, offset=1.0)
        setattr(
            self.norm, name, nn.Parameter(new, requires_grad=self.rng.random() < 0.5)
        )

    def op_parameters_made_under_inference_mode(self):
        name, p = self.pick_param()
        with torch.inference_mode():
            new = self.randn(p.shape, p.dtype, p.device, scale=0.5, offset=1.0)
            setattr(self.norm, name, nn.Parameter(new, requires_grad=False))

    def module_ctx(self):
        # see test_lifecycle_inference_params_swapped_outside_inference_mode
        if self.any_inference_param():
            return torch.inference_mode()
        return torch.no_grad()

    def op_module_to_dtype(self):
        with self.module_ctx():
            self.subject.to(self.rng.choice(FLOAT_DTYPES))

    def op_to_device_round_trip(self):
        with self.module_ctx():
            self.subject.to("cpu")
        if self.rng.random() < 0.5:
            self.device = torch.device("cpu")
            self.check_forward("no_grad")
            self.device = torch.device("cuda", torch.cuda.current_device())
        with self.module_ctx():
            self.subject.to(self.device)

    def op_requires_grad_toggle(self):
        _, p = self.pick_param()
        if not p.is_inference():  # an inference tensor cannot join autograd
            p.requires_grad_(not p.requires_grad)

    def op_deepcopy(self):
        original = self.subject
        self.subject = copy.deepcopy(original)
        if self.params() and self.rng.random() < 0.5:
            # the copy and the original evolve apart
            _, p = self.pick_param()
            with self.write_ctx(p):
                p.add_(0.5)
            self.subject, probe = original, self.subject
            self.check_forward("no_grad")
            self.subject = probe

    def op_functional_call(self):
        # swaps tensors into _parameters directly (no __setattr__), then back
        subs = {
            self.prefix()
            + name: self.randn(p.shape, p.dtype, p.device, scale=0.5, offset=1.0)
            for name, p in self.params()
            if self.rng.random() < 0.7
        }
        args, _ = self.make_call()
        with torch.no_grad():
            got = torch.func.functional_call(self.subject, subs, args)
        # the reference with the substituted tensors
        w = subs.get(self.prefix() + "weight", self.norm.weight)
        b = subs.get(self.prefix() + "bias", self.norm.bias)

        def norm_fn(t):
            return ref_layer_norm(t, self.norm, weight=w, bias=b)

        if self.kind == "norm":
            want = norm_fn(args[0])
            assert_same_bits(got, want, f"{self.where()} functional_call")
        elif self.kind == "norm_scale_shift":
            want = ref_norm_scale_shift(norm_fn, *args)
            assert_same_bits(got, want, f"{self.where()} functional_call")
        else:
            want = ref_scale_residual(norm_fn, *args)
            for g, w_ in zip(got, want):
                assert_same_bits(g, w_, f"{self.where()} functional_call")
        self.check_forward("no_grad")  # and the module's own parameters again

    def op_table(self):
        has_params = bool(self.params())
        cuda = self.device.type == "cuda"
        table = [
            ("fwd_no_grad", 6, True),
            ("fwd_inference_mode", 4, True),
            ("fwd_grad", 2, True),
            ("fwd_other_device", 1, cuda and self.kind == "norm"),
            ("add_", 2, has_params),
            ("mul_", 1, has_params),
            ("add_under_inference_mode", 1, has_params),
            ("copy_", 1, has_params),
            ("load_state_dict", 1, has_params),
            ("load_state_dict_assign", 0.5, has_params),
            ("data_release_and_refill", 2, has_params),
            ("reassign_parameter", 0.5, has_params),
            ("parameters_made_under_inference_mode", 0.3, has_params),
            ("module_to_dtype", 1, True),
            ("to_device_round_trip", 0.5, cuda),
            ("requires_grad_toggle", 1, has_params),
            ("deepcopy", 0.3, True),
            ("functional_call", 0.5, has_params),
        ]
        return [(name, weight) for name, weight, ok in table if ok]

    def run(self, steps):
        table = self.op_table()
        names = [n for n, _ in table]
        weights = [w for _, w in table]
        for self.step in range(steps):
            name = self.rng.choices(names, weights)[0]
            self.history.append(name)
            getattr(self, "op_" + name)()
            self.counts[name] += 1
        # end on a forward, whatever the last op was
        self.check_forward("no_grad")
        return self.counts


def _param_dtypes():
    return [pytest.param(d, id=str(d).replace("torch.", "p_")) for d in FLOAT_DTYPES]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("param_dtype", _param_dtypes())
@pytest.mark.parametrize("config", CONFIGS, ids=_config_id)
def test_fuzz_lifecycle_quick(device, param_dtype, config):
    seed = 1245 + CONFIGS.index(config) * 10 + FLOAT_DTYPES.index(param_dtype)
    walk = LifecycleWalk(config, device, param_dtype, seed)
    counts = walk.run(QUICK_STEPS)
    assert sum(n for k, n in counts.items() if not k.startswith("(")) == QUICK_STEPS
    assert counts["fwd_no_grad"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
def test_fuzz_lifecycle_slow(device):
    total = collections.Counter()
    start = time.perf_counter()
    walks = 0
    for seed_base in range(10_000):
        for config in CONFIGS:
            for param_dtype in FLOAT_DTYPES:
                seed = seed_base * 1000 + CONFIGS.index(config) * 10
                seed += FLOAT_DTYPES.index(param_dtype)
                walk = LifecycleWalk(config, device, param_dtype, seed)
                total.update(walk.run(SLOW_STEPS_PER_WALK))
                walks += 1
        steps = sum(n for k, n in total.items() if not k.startswith("("))
        if steps >= 10_000:
            break
    elapsed = time.perf_counter() - start
    print(
        f"\nfuzz[{device}]: {steps} steps in {walks} walks, {elapsed:.1f}s; "
        f"ops: {dict(sorted(total.items()))}"
    )
    assert steps >= 10_000
    assert total["(address reused)"] > 0, "no storage address was ever reused"


# -------------------------------------------------------------------------------
# Failures the walks found (since fixed), reduced to one regression case each.
# -------------------------------------------------------------------------------
def _norm_and_input(device, param_dtype=torch.bfloat16):
    m = ln.FP32LayerNorm(HIDDEN, eps=1e-6, device=device, dtype=param_dtype)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5 + 1.0)
    # fp32 input: the cached route on every device (no single-pass CUDA path)
    x = (torch.randn(3, HIDDEN, generator=gen) * 2 + 0.25).to(device)
    return m, x


@pytest.mark.parametrize("device", DEVICES)
def test_lifecycle_restride_within_the_same_storage(device):
    m, x = _norm_and_input(device)
    base = torch.randn(2 * HIDDEN, device=device).to(torch.bfloat16)
    with torch.no_grad():
        m.weight.data = base[:HIDDEN]
        assert_same_bits(m(x), ref_layer_norm(x, m), "contiguous view")
        m.weight.data = base[::2]  # same storage, data_ptr, shape and version
        assert m.weight.data_ptr() == base.data_ptr()
        assert_same_bits(m(x), ref_layer_norm(x, m), "strided view")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("how", ["module.to(dtype)", "p.data = t"])
def test_lifecycle_inference_params_swapped_outside_inference_mode(device, how):
    with torch.inference_mode():
        m, _ = _norm_and_input(device)
    x = (torch.randn(3, HIDDEN) * 2).to(device)
    if how == "module.to(dtype)":
        m.to(torch.float16)
    else:
        with torch.no_grad():
            m.weight.data = torch.randn(HIDDEN, device=device).to(torch.bfloat16)
    assert not m.weight.is_inference()
    with torch.no_grad():
        want = ref_layer_norm(x, m)  # the uncached reference is fine
        assert_same_bits(m(x), want, how)
