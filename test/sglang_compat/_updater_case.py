# SPDX-License-Identifier: Apache-2.0
"""Serve -> SGLang's real weight updater -> serve, on a small model of norms.

The model holds a standalone ``FP32LayerNorm`` with bf16 parameters (fed fp32
activations, so its fp32 copies are cached) and the two fused LayerNorm modules
(``LayerNormScaleShift``, ``ScaleResidualLayerNormScaleShift``), whose inner
``FP32LayerNorm`` is run too, all of one layernorm module (upstream's, or this
tree's private copy). After the update its output must equal, bit for bit, a
fresh model of the same classes loaded with the new weights.
"""

import os
import tempfile
from pathlib import Path

import torch
import torch.nn as nn

DIM = 64
UPDATER = "sglang.multimodal_gen.runtime.post_training.weights_updater"


class NormModel(nn.Module):
    def __init__(self, ln):
        super().__init__()
        self.norm1 = ln.FP32LayerNorm(DIM, eps=1e-6, dtype=torch.bfloat16)
        self.mod_norm = ln.LayerNormScaleShift(
            DIM, eps=1e-6, elementwise_affine=True, dtype=torch.bfloat16
        )
        self.res_norm = ln.ScaleResidualLayerNormScaleShift(
            DIM, eps=1e-6, elementwise_affine=True, dtype=torch.bfloat16
        )

    def forward(self, x):
        h = self.norm1(x.float())
        h = self.mod_norm.norm(h.float()) + self.res_norm.norm(x.float())
        return h.to(x.dtype)


def weights(seed: int) -> dict:
    """fp32 CPU tensors, as the safetensors iterator hands them to the updater."""
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.randn(DIM, generator=gen) * 0.5 + 1.0 for n in PARAM_NAMES}


PARAM_NAMES = [
    f"{m}.{p}"
    for m in ("norm1", "mod_norm.norm", "res_norm.norm")
    for p in ("weight", "bias")
]


def build(ln, seed: int) -> NormModel:
    model = NormModel(ln)
    params = dict(model.named_parameters())
    assert set(params) == set(PARAM_NAMES), sorted(params)
    with torch.no_grad():
        for name, w in weights(seed).items():
            params[name].copy_(w)
    return model


def serve(model, seeds=(1, 2)) -> list:
    outs = []
    for seed in seeds:
        gen = torch.Generator().manual_seed(seed)
        x = (torch.randn(2, 8, DIM, generator=gen) * 2 + 0.25).to(torch.bfloat16)
        with torch.inference_mode():
            outs.append(model(x))
    return outs


def cached(model) -> bool:
    """The standalone norm holds an fp32 copy (so the check is not vacuous)."""
    return any(k.endswith("fp32_cache") for k in vars(model.norm1))


def same(a: list, b: list) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def update_in_place(ln, updater) -> tuple:
    """Serve with weights 0, load weights 7 through ``_load_weights_into_module``
    (which runs ``load_weights_into_model`` under inference_mode), serve again.
    Returns ``(served, fresh)`` outputs after the update."""
    model = build(ln, seed=0)
    serve(model)
    assert cached(model)
    updater._load_weights_into_module(model, iter(weights(7).items()))
    return serve(model), serve(build(ln, seed=7))


class FakePipeline:
    """What ``WeightsUpdater`` reads of a pipeline: modules, get_module,
    model_path (a local directory with one subdirectory of safetensors per
    module)."""

    def __init__(self, modules: dict, model_path: str):
        self.modules = modules
        self.model_path = model_path

    def get_module(self, name):
        return self.modules.get(name)


def write_checkpoint(root: Path, module_weights: dict) -> str:
    from safetensors.torch import save_file

    for module, tensors in module_weights.items():
        (root / module).mkdir(parents=True, exist_ok=True)
        save_file(
            {k: v.contiguous() for k, v in tensors.items()},
            os.fspath(root / module / "model.safetensors"),
        )
    return os.fspath(root)


def update_from_disk(ln, updater) -> dict:
    """``WeightsUpdater.update_weights_from_disk`` on a fake pipeline: a good
    update (weights 0 -> 7), then one whose second module fails, so the first is
    rolled back (7 -> 3 -> 7). Outputs after each step, and fresh references."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = build(ln, seed=0)
        other = build(ln, seed=0)
        pipe = FakePipeline(
            {"transformer": model, "transformer_2": other},
            write_checkpoint(
                tmp / "v0", {"transformer": weights(0), "transformer_2": weights(0)}
            ),
        )
        wu = updater.WeightsUpdater(pipe)
        serve(model)
        assert cached(model)
        ok, msg = wu.update_weights_from_disk(
            write_checkpoint(tmp / "v7", {"transformer": weights(7)}),
            target_modules=["transformer"],
        )
        assert ok, msg
        after_update = serve(model)
        bad = weights(5)
        bad["norm1.weight"] = torch.ones(DIM + 1)  # shape mismatch: fails
        # the cache now holds weights 7; the failed update writes 3 into
        # "transformer" first, then rolls it back to 7
        ok, msg = wu.update_weights_from_disk(
            write_checkpoint(
                tmp / "v3", {"transformer": weights(3), "transformer_2": bad}
            ),
            target_modules=["transformer", "transformer_2"],
        )
        assert not ok and "rolled back" in msg, msg
        after_rollback = serve(model)
        # the served copy must also follow a rollback to other weights: poison
        # the cache with 3 (served), then roll back to 7 by a failing update
        updater._load_weights_into_module(model, iter(weights(3).items()))
        served_3 = serve(model)
        ok, msg = wu.update_weights_from_disk(
            os.fspath(tmp / "v3"), target_modules=["transformer", "transformer_2"]
        )
        assert not ok, msg
        after_second_rollback = serve(model)
    return {
        "after_update": (after_update, serve(build(ln, seed=7))),
        "after_rollback": (after_rollback, serve(build(ln, seed=7))),
        "served_3": (served_3, serve(build(ln, seed=3))),
        "after_second_rollback": (after_second_rollback, serve(build(ln, seed=7))),
    }


def dtensor_versions(ln, updater) -> tuple:
    """The DTensor branch on a 1-rank gloo mesh: (version before, after) of a
    norm weight that is a DTensor, and whether its shard holds the new values."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
        dist.init_process_group("gloo", rank=0, world_size=1)
    mesh = init_device_mesh("cpu", (1,))
    model = build(ln, seed=0)
    model.norm1.weight = nn.Parameter(
        distribute_tensor(model.norm1.weight.detach(), mesh, [Shard(0)])
    )
    param = model.norm1.weight
    before = param._version
    updater._load_weights_into_module(model, iter(weights(7).items()))
    new = weights(7)["norm1.weight"].to(torch.bfloat16)
    return before, param._version, torch.equal(param.to_local(), new)
