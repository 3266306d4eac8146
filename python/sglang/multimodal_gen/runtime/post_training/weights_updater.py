# SPDX-License-Identifier: Apache-2.0
"""The functions of upstream's ``weights_updater.py`` that this tree changes.

An API-compatible subset of
``sglang/multimodal_gen/runtime/post_training/weights_updater.py`` (SGLang
0.5.22 and 0.5.23 ship the same file): same names, same signatures. An export
splices each function below into upstream's file in place of the one of the same
name and changes nothing else there, so every function is self-contained (any
import it adds is local) and uses only names upstream's module already defines
(``DTensor``, ``distribute_tensor``, ``logger``). The module-level imports here
are scaffolding that lets this file import with torch alone; they are not
exported.

The change: ``load_weights_into_model`` writes through ``param.data`` (and a
DTensor's ``_local_tensor``), which leaves the parameter's version counter where
it was, so caches keyed on it (``FP32LayerNorm``'s fp32 copies, upstream's and
this tree's) kept serving the old weights after ``update_weights_from_disk``,
its rollback and ``update_weights_from_tensor``. It now bumps the version of
every parameter it wrote; see docs/sglang-plugin.md for why this form.
"""

from __future__ import annotations

import logging

from torch.distributed.tensor import DTensor, distribute_tensor

# upstream: init_logger(__name__); scaffolding only, never exported
logger = logging.getLogger(__name__)


def load_weights_into_model(
    weights_iter, model_params: dict, module_name: str | None = None
) -> None:
    """Copy weights into model_params in-place; entries are (name, weight) or
    (name, weight, shard_id), shard_id routing fused parts via weight_loader."""
    from torch.autograd.graph import increment_version

    for entry in weights_iter:
        name, loaded_weight, *rest = entry
        shard_id = rest[0] if rest else None
        if name not in model_params:
            logger.warning("Skipping weight update: parameter %r not found", name)
            continue
        param = model_params[name]
        weight_loader = getattr(param, "weight_loader", None)
        if callable(weight_loader):
            if shard_id is not None:
                weight_loader(param, loaded_weight.to(param.dtype), shard_id)
            else:
                weight_loader(param, loaded_weight.to(param.dtype))
        else:
            dtensor_param = param if isinstance(param, DTensor) else None
            if dtensor_param is None and isinstance(
                getattr(param, "data", None), DTensor
            ):
                dtensor_param = param.data

            if dtensor_param is not None:
                distributed_weight = distribute_tensor(
                    loaded_weight.to(param.dtype),
                    dtensor_param.device_mesh,
                    dtensor_param.placements,
                )
                dtensor_param._local_tensor.copy_(distributed_weight._local_tensor)
            else:
                if param.shape != loaded_weight.shape:
                    module_prefix = f"{module_name}." if module_name else ""
                    raise ValueError(
                        f"Shape mismatch for {module_prefix}{name}: "
                        f"model={param.shape}, loaded={loaded_weight.shape}"
                    )
                param.data.copy_(loaded_weight.to(param.dtype))
        # Every branch above writes around the parameter's version counter
        # (param.data, a DTensor's local shard, loaders that write .data), so
        # caches keyed on it (FP32LayerNorm's fp32 copies) would keep the old
        # weights. Bumping it is what autograd documents for writes it cannot
        # see; a no-op on inference tensors, which have no counter and which
        # no cache keys on.
        increment_version(param)
