# SPDX-License-Identifier: Apache-2.0
"""Import this project's ``layernorm.py`` against whatever ``sglang`` is installed.

The wheel maps ``python/sglang/multimodal_gen/runtime/layers/`` of the source tree
to the private package ``sgl_mmgen_fp32ln._subtree`` (pyproject's ``package-dir``),
so the module below is a build-time copy of the one source file, and an editable
install runs the tree's file itself. Its absolute imports (``CustomOp``,
``get_bool_env_var``) resolve to the installed SGLang.
"""

import importlib
import sys
import threading
from types import ModuleType

SUBTREE_MODULE = "sgl_mmgen_fp32ln._subtree.layernorm"

_LOCK = threading.Lock()


def load_layernorm() -> ModuleType:
    """Return the private copy of this project's layernorm module, importing it once.

    Invariant: ``CustomOp.op_registry`` is the same dict, holding the same entries,
    after the call as before. The copy's ``@CustomOp.register`` decorators reuse
    upstream's op names ("rms_norm", "layer_norm", "fp32_layer_norm"), which
    upstream's own import asserts are unique; they run against a throwaway dict.
    The import must therefore go through this function, never a plain import.
    """
    with _LOCK:
        module = sys.modules.get(SUBTREE_MODULE)
        if module is not None:
            return module
        from sglang.multimodal_gen.runtime.layers.custom_op import CustomOp

        registry = CustomOp.op_registry
        CustomOp.op_registry = {}
        try:
            return importlib.import_module(SUBTREE_MODULE)
        finally:
            CustomOp.op_registry = registry
