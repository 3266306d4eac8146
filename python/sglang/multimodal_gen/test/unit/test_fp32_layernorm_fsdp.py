# SPDX-License-Identifier: Apache-2.0
"""FP32LayerNorm under FSDP2 (``fully_shard``) on two ranks: no stale outputs.

FSDP2 with ``reshard_after_forward=True`` frees each unsharded parameter's storage
after forward (``untyped_storage().resize_(0)``) and refills the same StorageImpl
before the next one (``resize_(n)``, usually at the same address), copying the
all-gathered data in under ``torch.autograd._unsafe_preserve_version_counter``: the
storage, ``data_ptr`` and ``_version`` all stay equal while the contents change.
FP32LayerNorm drops its fp32 copies when FSDP2 swaps the parameter in, because
its ``__setattr__`` override sends FSDP2's ``unsafe_setattr_param`` down the
``setattr`` path.

Each rank runs a small Wan-like stack (FP32LayerNorm on fp32 input, the fused
modules) sharded over both ranks, with bf16 parameters, fp32 parameters, and fp32
master parameters computed in bf16 (``MixedPrecisionPolicy``). Between no-grad and
``inference_mode`` forwards the sharded parameters are updated in place (DTensor
``add_`` and an SGD step). Every output must equal, bit for bit, the unsharded
model in the same process with the same weights and updates and the uncached
reference LayerNorm. A control class without the ``__setattr__`` invalidation
(the seed's behaviour: FSDP2 then writes ``module._parameters`` directly) runs the
same scenario. A forward pre-hook counts the parameters found refilled in place
(same storage, ``data_ptr`` and ``_version`` as at the previous forward; after an
update, with new contents). The control must go stale at least once over both
ranks, and never more often than parameters were refilled in place, which proves
the scenario exercises the bug; ours must never go stale. Fp32 parameters are used as they are (no cache), so the control
cannot go stale in that variant.

Runs with gloo on CPU (CI), with gloo on one GPU shared by both ranks (``gpu``:
the CUDA kernels under FSDP2's parameter swaps, where NCCL would need a GPU per
rank), and with NCCL on two GPUs (``gpu``/``multi_gpu``). The ranks are
subprocesses running this file as a script.
"""

import json
import os
import subprocess
import sys
import traceback
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from sglang.multimodal_gen.runtime.layers import layernorm as ln

WORLD = 2
DIM, LAYERS, BATCH, SEQ = 64, 2, 2, 8
STEPS = 16
# (FP32LayerNorm param dtype, other param dtype, FSDP2 MixedPrecisionPolicy)
VARIANTS = {
    "bf16": (torch.bfloat16, torch.bfloat16, False),
    "fp32-norms": (torch.float32, torch.bfloat16, False),
    "fp32-master-bf16-compute": (torch.float32, torch.float32, True),
}
HAS_TWO_GPUS = torch.cuda.is_available() and torch.cuda.device_count() >= 2


# ---------------------------------------------------------------------------
# the model (a Wan-like stack) and its reference twin
# ---------------------------------------------------------------------------
class WanLikeBlock(nn.Module):
    def __init__(self, dim, norm_dtype, dtype):
        super().__init__()
        self.scale_shift_table = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)
        self.norm1 = ln.FP32LayerNorm(dim, eps=1e-6, dtype=norm_dtype)
        self.attn1 = nn.Linear(dim, dim, dtype=dtype)
        self.self_attn_residual_norm = ln.ScaleResidualLayerNormScaleShift(
            dim, eps=1e-6, elementwise_affine=True, dtype=torch.float32
        )
        self.attn2 = nn.Linear(dim, dim, dtype=dtype)
        self.cross_attn_residual_norm = ln.ScaleResidualLayerNormScaleShift(
            dim, eps=1e-6, elementwise_affine=True, dtype=norm_dtype
        )
        self.ffn = nn.Linear(dim, dim, dtype=dtype)

    def forward(self, x, temb):
        orig_dtype = x.dtype
        e = (self.scale_shift_table + temb.float()).chunk(6, dim=1)
        shift, scale, gate, c_shift, c_scale, c_gate = e
        h = (self.norm1(x.float()) * (1 + scale) + shift).to(orig_dtype)
        attn = self.attn1(h)
        null = torch.zeros((1,), device=x.device)
        h, x = self.self_attn_residual_norm(x, attn, gate, null, null)
        h, x = h.to(orig_dtype), x.to(orig_dtype)
        attn = self.attn2(h)
        h, x = self.cross_attn_residual_norm(x, attn, 1, c_shift, c_scale)
        return (x.float() + self.ffn(h).float() * c_gate).to(orig_dtype)


class WanLikeStack(nn.Module):
    def __init__(self, norm_dtype, dtype):
        super().__init__()
        self.blocks = nn.ModuleList(
            WanLikeBlock(DIM, norm_dtype, dtype) for _ in range(LAYERS)
        )
        self.norm_out = ln.FP32LayerNorm(DIM, eps=1e-6, dtype=norm_dtype)

    def forward(self, x, temb):
        for block in self.blocks:
            x = block(x, temb)
        return self.norm_out(x.float())


class RefLayerNorm(nn.LayerNorm):
    """The uncached reference (not an FP32LayerNorm: fused modules go eager)."""

    def forward(self, x):
        def fp32(p):
            return None if p is None else p.detach().float().to(x.device)

        return F.layer_norm(
            x.float(),
            self.normalized_shape,
            fp32(self.weight),
            fp32(self.bias),
            self.eps,
        ).to(x.dtype)


class StaleSeedLayerNorm(ln.FP32LayerNorm):
    """Control: no ``__setattr__`` invalidation, so FSDP2's ``unsafe_setattr_param``
    writes ``module._parameters`` directly, as it did for the seed's class."""

    __setattr__ = nn.Module.__setattr__


def _swap_norms(model, make):
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, ln.FP32LayerNorm):
                new = make(child)
                if new is not child:
                    setattr(module, name, new)


def _to_reference(child):
    ref = RefLayerNorm(
        child.normalized_shape,
        eps=child.eps,
        elementwise_affine=child.elementwise_affine,
        bias=child.bias is not None,
        device="meta",
    )
    ref.weight, ref.bias = child.weight, child.bias
    return ref


def _to_control(child):
    child.__class__ = StaleSeedLayerNorm  # adds no state: a plain class swap
    return child


def _build(variant, device, norm):
    torch.manual_seed(1245)
    norm_dtype, dtype, _ = VARIANTS[variant]
    model = WanLikeStack(norm_dtype, dtype)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in model.named_parameters():
            t = torch.randn(p.shape, generator=gen)
            p.copy_(t * 0.5 + 1.0 if "norm" in name else t * 0.2)
            # an inference server's weights (FSDP2 also needs this to mix the
            # fp32 tables and norms with bf16 weights in one parameter group)
            p.requires_grad_(False)
    if norm == "control":
        _swap_norms(model, _to_control)
    elif norm == "reference":
        _swap_norms(model, _to_reference)
    return model.to(device)


def _inputs(step, device):
    gen = torch.Generator().manual_seed(100 + step)
    x = torch.randn(BATCH, SEQ, DIM, generator=gen) * 2 + 0.25
    temb = torch.randn(BATCH, 6, DIM, generator=gen) * 0.3
    return x.to(device, torch.bfloat16), temb.to(device)


def _local_chunk(full, rank, world):
    # FSDP2 shards dim 0 as torch.chunk does (trailing ranks may get nothing)
    chunks = full.chunk(world, dim=0)
    if rank < len(chunks):
        return chunks[rank]
    return full.new_empty((0, *full.shape[1:]))


# ---------------------------------------------------------------------------
# one rank
# ---------------------------------------------------------------------------
def _run_variant(variant, norm, mesh, device, rank, world):
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    from torch.distributed.tensor import DTensor

    model = _build(variant, device, norm)
    master = _build(variant, device, "reference")  # unsharded, same weights
    compute = master
    mp = {}
    if VARIANTS[variant][2]:
        mp["mp_policy"] = MixedPrecisionPolicy(
            param_dtype=torch.bfloat16, cast_forward_inputs=False
        )
        compute = _build(variant, device, "reference").to(torch.bfloat16)
    for block in model.blocks:
        fully_shard(block, mesh=mesh, reshard_after_forward=True, **mp)
    fully_shard(model, mesh=mesh, reshard_after_forward=True, **mp)
    assert all(isinstance(p, DTensor) for p in model.parameters())

    # what each FP32LayerNorm saw at its last forward: storage, data_ptr, version
    # refills: [after an update, any]
    seen, refills = {}, [0, 0]
    updated = set()

    def record(module, args):
        for p in (module.weight, module.bias):
            key = (p.untyped_storage()._cdata, p.data_ptr(), p._version)
            name = id(module), p is module.weight
            if seen.get(name) == key:
                refills[1] += 1  # same storage, address and version
                refills[0] += name in updated  # ... and new contents
            seen[name] = key
            updated.discard(name)

    norms = [m for m in model.modules() if isinstance(m, ln.FP32LayerNorm)]
    handles = [m.register_forward_pre_hook(record) for m in norms]
    # per-parameter updates (no foreach): the same elementwise op on both sides
    opt = torch.optim.SGD(model.parameters(), lr=0.5, foreach=False)
    ref_opt = torch.optim.SGD(master.parameters(), lr=0.5, foreach=False)
    forwards = stale = 0
    first_bad = None
    for step in range(STEPS):
        if compute is not master:
            compute.load_state_dict(master.state_dict())  # fp32 -> bf16, RNE
        for repeat in range(2):  # the second forward refills unchanged data
            x, temb = _inputs(step * 2 + repeat, device)
            ctx = torch.inference_mode if (step + repeat) % 2 else torch.no_grad
            with ctx():
                out = model(x, temb)
            with torch.no_grad():
                want = compute(x, temb)
            forwards += 1
            if not torch.equal(out, want):
                stale += 1
                if first_bad is None:
                    first_bad = f"step {step} repeat {repeat}"
        # an in-place update of the sharded parameters, mirrored on `master`
        gen = torch.Generator().manual_seed(1000 + step)
        deltas = {
            n: torch.randn(p.shape, generator=gen) * 0.05
            for n, p in master.named_parameters()
        }
        sharded = dict(model.named_parameters())
        with torch.no_grad():
            for n, p in master.named_parameters():
                delta = deltas[n].to(device, p.dtype)
                sp = sharded[n]
                local = _local_chunk(delta, rank, world)
                d = DTensor.from_local(
                    local, mesh, sp.placements, shape=sp.shape, stride=sp.stride()
                )
                if step % 2 == 0:
                    sp.add_(d)
                    p.add_(delta)
                else:
                    sp.grad, p.grad = d, delta
        if step % 2 == 1:
            opt.step()
            ref_opt.step()
            opt.zero_grad(set_to_none=True)
            ref_opt.zero_grad(set_to_none=True)
        updated.update((id(m), is_w) for m in norms for is_w in (True, False))
    for h in handles:
        h.remove()
    return {
        "forwards": forwards,
        "stale": stale,
        "in_place_refills_after_update": refills[0],
        "in_place_refills": refills[1],
        "first_stale": first_bad,
    }


def worker(rank, world, backend, device_type, store_path, out_path):
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    torch.set_num_threads(1)
    result = {"rank": rank}
    try:
        if device_type == "cuda":
            # one GPU per rank where there are enough (NCCL needs that); gloo
            # ranks may share one
            device = torch.device("cuda", rank % torch.cuda.device_count())
            torch.cuda.set_device(device)
        else:
            device = torch.device("cpu")
        dist.init_process_group(
            backend,
            store=dist.FileStore(store_path, world),
            rank=rank,
            world_size=world,
            timeout=timedelta(seconds=120),
        )
        mesh = init_device_mesh(device_type, (world,))
        for variant in VARIANTS:
            for norm in ("ours", "control"):
                key = f"{variant}/{norm}"
                result[key] = _run_variant(variant, norm, mesh, device, rank, world)
        dist.barrier()
        dist.destroy_process_group()
    except BaseException:
        result["error"] = traceback.format_exc()
    with open(out_path, "w") as f:
        json.dump(result, f)


# ---------------------------------------------------------------------------
# the tests: two ranks as subprocesses
# ---------------------------------------------------------------------------
def _launch(tmp_path, backend, device_type):
    env = dict(os.environ)
    # never enable NVLink multicast (SHARP) in the ranks
    env.setdefault("NCCL_NVLS_ENABLE", "0")
    env.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")
    python_dir = str(Path(ln.__file__).parents[4])
    env["PYTHONPATH"] = os.pathsep.join(
        [python_dir] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    )
    store = tmp_path / "store"
    procs, outs = [], []
    for rank in range(WORLD):
        out = tmp_path / f"rank{rank}.json"
        cmd = [sys.executable, __file__, "--worker", str(rank), str(WORLD), backend]
        cmd += [device_type, str(store), str(out)]
        procs.append(
            subprocess.Popen(
                cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
        )
        outs.append(out)
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=240)[0].decode(errors="replace"))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("FSDP2 ranks timed out:\n" + "\n".join(logs))
    results = []
    for rank, (p, out) in enumerate(zip(procs, outs)):
        assert p.returncode == 0 and out.exists(), f"rank {rank}:\n{logs[rank]}"
        res = json.loads(out.read_text())
        assert "error" not in res, f"rank {rank}:\n{res['error']}\n{logs[rank]}"
        results.append(res)
    return results


def _summary(r):
    return (
        f"{r['stale']}/{r['forwards']} (params refilled in place "
        f"{r['in_place_refills']}, {r['in_place_refills_after_update']} of them "
        "after an update)"
    )


def _check(results, device_type):
    lines = []
    control_refills = control_stale = 0
    for res in results:
        for variant in VARIANTS:
            ours, ctl = res[f"{variant}/ours"], res[f"{variant}/control"]
            lines.append(
                f"rank {res['rank']} {variant}: ours stale {_summary(ours)}; "
                f"control stale {_summary(ctl)}"
            )
            control_refills += ctl["in_place_refills_after_update"]
            control_stale += ctl["stale"]
    print(f"\nFSDP2 {device_type}:\n" + "\n".join(lines))
    for res in results:
        for variant in VARIANTS:
            ours = res[f"{variant}/ours"]
            assert ours["forwards"] == 2 * STEPS
            assert ours["stale"] == 0, (res["rank"], variant, ours, lines)
            ctl = res[f"{variant}/control"]
            # a stale forward has at least one parameter refilled in place (a
            # stale copy then lasts until the parameter's address changes)
            assert ctl["stale"] <= ctl["in_place_refills"], (res["rank"], ctl)
    # not vacuous: FSDP2 did refill parameter storage in place after updates,
    # and without the __setattr__ invalidation that serves stale outputs
    assert control_refills > 0, lines
    assert control_stale > 0, lines


def _skip_without_gloo():
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")


def test_fsdp2_two_ranks_gloo_cpu(tmp_path):
    _skip_without_gloo()
    _check(_launch(tmp_path, "gloo", "cpu"), "cpu/gloo")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fsdp2_two_ranks_gloo_one_cuda(tmp_path):
    _skip_without_gloo()
    _check(_launch(tmp_path, "gloo", "cuda"), "cuda/gloo")


@pytest.mark.gpu
@pytest.mark.multi_gpu
@pytest.mark.skipif(not HAS_TWO_GPUS, reason="needs two CUDA devices")
def test_fsdp2_two_ranks_nccl_cuda(tmp_path):
    _check(_launch(tmp_path, "nccl", "cuda"), "cuda/nccl")


if __name__ == "__main__" and len(sys.argv) == 8 and sys.argv[1] == "--worker":
    _, _, rank_, world_, backend_, device_type_, store_, out_ = sys.argv
    worker(int(rank_), int(world_), backend_, device_type_, store_, out_)
