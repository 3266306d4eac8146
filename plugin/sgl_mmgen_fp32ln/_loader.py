# SPDX-License-Identifier: Apache-2.0
"""Import this project's ``layernorm.py`` and kernels against the installed SGLang.

The wheel maps two directories of the source tree to private packages
(pyproject's ``package-dir``): ``python/sglang/multimodal_gen/runtime/layers/``
to ``sgl_mmgen_fp32ln._subtree`` and ``python/sglang/kernels/`` to
``sgl_mmgen_fp32ln._kernels``. They are build-time copies of the tree's files
(an editable install runs the files themselves); nothing here re-implements them.

The kernel files are files that this project's upstream PR adds beside
upstream's, so they run under the names that PR gives them: each one is loaded
from the private copy under its ``sglang.kernels...`` module name, but only
where the installed SGLang has no module of that name (``find_spec``); an
existing upstream module is never replaced. Names that the PR adds to existing
upstream modules (``numerics.py``'s primitives, the facade's ``_EXPORTS`` and
``_SPECS`` entries) are added to upstream's modules only where upstream lacks
them. ``layernorm.py`` itself would shadow upstream's module of that name, so it
stays the private ``sgl_mmgen_fp32ln._subtree.layernorm``.
"""

import importlib
import importlib.util
import sys
import threading
from pathlib import Path
from types import ModuleType

SUBTREE_MODULE = "sgl_mmgen_fp32ln._subtree.layernorm"
KERNELS_PACKAGE = "sgl_mmgen_fp32ln._kernels"
FACADE = "sglang.kernels.ops.diffusion"
NUMERICS = "sglang.kernels.numerics"
# the kernel modules our PR adds under upstream's norm package, in import order
NEW_KERNEL_MODULES = (
    "sglang.kernels.ops.diffusion.common.direct_launch",
    "sglang.kernels.ops.diffusion.norm.fp32_layernorm_triton",
    "sglang.kernels.ops.diffusion.norm.fp32_layernorm_bitexact",
    "sglang.kernels.ops.diffusion.norm.fp32_layernorm_select",
)

_LOCK = threading.Lock()


def _kernels_dir() -> Path:
    spec = importlib.util.find_spec(KERNELS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"{KERNELS_PACKAGE} is not installed")
    return Path(list(spec.submodule_search_locations)[0])


def _exec_file(name: str, path: Path, register: bool) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    if register:
        sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        if register:
            sys.modules.pop(name, None)
        raise
    return module


def _private_path(root: Path, module: str) -> Path:
    # sglang.kernels.a.b -> <root>/a/b.py
    return root.joinpath(*module.split(".")[2:]).with_suffix(".py")


def install_kernels() -> list:
    """Make this project's kernels importable through upstream's facade.

    Returns the facade names it added (empty when upstream already has them
    all). Invariants: no existing module is replaced; upstream's ``_EXPORTS``
    entries, numerics names and registered specs are left as they are, ours
    are only added beside them; calling it again adds nothing.
    """
    root = _kernels_dir()
    facade = importlib.import_module(FACADE)
    try:
        numerics = importlib.import_module(NUMERICS)
    except ImportError:  # no Triton: our kernel module then disables itself
        numerics = None
    if numerics is not None:
        ours = _exec_file(f"{KERNELS_PACKAGE}.numerics", root / "numerics.py", False)
        for name in ours.__all__:
            if not hasattr(numerics, name):
                setattr(numerics, name, getattr(ours, name))
    for name in NEW_KERNEL_MODULES:
        if name in sys.modules or importlib.util.find_spec(name) is not None:
            continue
        module = _exec_file(name, _private_path(root, name), True)
        parent, _, leaf = name.rpartition(".")
        setattr(sys.modules[parent], leaf, module)
    # our facade's tables, with targets spelled absolutely for upstream's lookup;
    # executing it registers our specs in upstream's registry
    ours = _exec_file(
        f"{KERNELS_PACKAGE}.facade", _private_path(root, FACADE + ".__init__"), False
    )
    added = []
    for name, owner in ours._EXPORTS.items():
        if name in facade._EXPORTS or hasattr(facade, name):
            continue
        target = owner if owner.startswith("sglang.") else f"{FACADE}.{owner}"
        facade._EXPORTS[name] = target
        added.append(name)
    return added


def load_layernorm() -> ModuleType:
    """Return the private copy of this project's layernorm module, importing it once.

    Installs the kernels first (``install_kernels``). Invariant:
    ``CustomOp.op_registry`` is the same dict, holding the same entries, after
    the call as before. The copy's ``@CustomOp.register`` decorators reuse
    upstream's op names ("rms_norm", "layer_norm", "fp32_layer_norm"), which
    upstream's own import asserts are unique; they run against a throwaway dict.
    The import must therefore go through this function, never a plain import.
    """
    with _LOCK:
        module = sys.modules.get(SUBTREE_MODULE)
        if module is not None:
            return module
        from sglang.multimodal_gen.runtime.layers.custom_op import CustomOp

        install_kernels()
        registry = CustomOp.op_registry
        CustomOp.op_registry = {}
        try:
            return importlib.import_module(SUBTREE_MODULE)
        finally:
            CustomOp.op_registry = registry
