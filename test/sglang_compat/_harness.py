# SPDX-License-Identifier: Apache-2.0
"""Helpers shared by the compatibility harness's test modules.

The harness runs inside a venv holding the real ``sglang`` (see
``scripts/run_sglang_compat.sh``). This tree's ``python/`` is never put on
``sys.path``: its partial ``sglang`` package would shadow the real one. Test files
of the tree are loaded by path instead, under harness-private module names.
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]
HARNESS = Path(__file__).resolve().parent
SUITE = REPO / "python/sglang/multimodal_gen/test/unit/test_fp32_layernorm.py"
TREE_LAYERNORM = REPO / "python/sglang/multimodal_gen/runtime/layers/layernorm.py"

UPSTREAM_IMPL = "sglang.multimodal_gen.runtime.layers.layernorm"
SUBTREE_IMPL = "sgl_mmgen_fp32ln._subtree.layernorm"
ENTRY_POINT = "sgl_mmgen_fp32ln"
DIST = "sglang-mmgen-fp32-layernorm"
IMPL_ENV = "SGLANG_FP32LN_IMPL"
# set in the child process that runs applied/ (the plugin is applied there)
APPLIED_ENV = "SGLANG_COMPAT_APPLIED"

# Upstream's weight updater imports cache_dit. CI's harness venvs install it;
# the GPU image the harness also runs on (sglang's wheel unzipped, no
# cache_dit) does not, and there the updater cases skip. Under CI=true a
# missing cache_dit stays an import error, so CI cannot skip them silently.
UPDATER_SKIP_REASON = "upstream's weight updater imports cache_dit, absent here"


def updater_deps_missing() -> bool:
    """Whether the updater cases should skip (no cache_dit, not in CI)."""
    missing = importlib.util.find_spec("cache_dit") is None
    return missing and os.environ.get("CI") != "true"


def load_suite(module_name: str, impl: str) -> dict:
    """Execute the tree's FP32LayerNorm suite against ``impl``; return its names.

    The suite picks its class from ``$SGLANG_FP32LN_IMPL`` at import time; the
    variable is restored afterwards so that several copies can coexist.
    """
    if impl == SUBTREE_IMPL:
        from sgl_mmgen_fp32ln._loader import load_layernorm

        load_layernorm()  # never a plain import: see _loader
    spec = importlib.util.spec_from_file_location(module_name, SUITE)
    module = importlib.util.module_from_spec(spec)
    saved = os.environ.get(IMPL_ENV)
    os.environ[IMPL_ENV] = impl
    try:
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    finally:
        if saved is None:
            os.environ.pop(IMPL_ENV, None)
        else:
            os.environ[IMPL_ENV] = saved
    assert module.FP32LayerNorm.__module__ == impl, module.FP32LayerNorm.__module__
    return public_names(module)


def public_names(module: ModuleType) -> dict:
    return {k: v for k, v in vars(module).items() if not k.startswith("__")}


def run_python(code: str, env: dict | None = None, timeout: float = 240):
    """Run ``code`` in a fresh interpreter of this venv (plugin state is global)."""
    full_env = {**os.environ, **(env or {})}
    for key, value in (env or {}).items():
        if value is None:
            full_env.pop(key, None)
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        cwd=HARNESS,
    )


def stale_rounds_after_same_address_swap(make_norm, dtype, rounds: int = 8) -> int:
    """How many of ``rounds`` forwards of ``make_norm(hidden, dtype)`` (an
    FP32LayerNorm) were stale when its weight's storage was replaced by a new
    storage at the very same address.

    Deterministic, unlike waiting for the allocator to reuse an address: the
    weight is a ``torch.frombuffer`` view of one long-lived ``bytearray``; each
    round drops the old storage, writes new values into the buffer and wraps it
    in a new storage. The parameter's version counter does not move (``.data``
    assignment keeps it), so only the storage identity tells the copies apart.
    """
    import torch
    import torch.nn.functional as F

    hidden = 96
    torch.manual_seed(0)
    m = make_norm(hidden, dtype)
    x = torch.randn(3, hidden).to(dtype)
    buf = bytearray(hidden * torch.finfo(dtype).bits // 8)
    stale = 0
    with torch.no_grad():
        for i in range(rounds):
            m.weight.data = torch.empty(0, dtype=dtype)
            torch.frombuffer(buf, dtype=dtype).fill_(float(i) - 3.5)
            m.weight.data = torch.frombuffer(buf, dtype=dtype)
            y = m(x)
            ref = F.layer_norm(
                x.float(), (hidden,), m.weight.float(), m.bias.float(), m.eps
            ).to(dtype)
            stale += not torch.equal(y, ref)
    return stale
