# SPDX-License-Identifier: Apache-2.0
"""The FP32LayerNorm suite on this project's layernorm.py inside the real SGLang.

The module under test is the plugin wheel's copy of the tree's file, imported
under the private name ``sgl_mmgen_fp32ln._subtree.layernorm`` against the
installed sglang (its ``CustomOp`` and ``get_bool_env_var``). Every test passes.
"""

from _harness import SUBTREE_IMPL, load_suite

globals().update(load_suite("fp32ln_suite_subtree", SUBTREE_IMPL))
