# SPDX-License-Identifier: Apache-2.0
"""The FP32LayerNorm suite on upstream SGLang's own, unpatched FP32LayerNorm.

A living comparison: ``conftest.UPSTREAM_XFAILS`` marks what upstream fails as
strict xfails with the reason, so this module turns red both when upstream
starts failing something new and when it fixes something listed.
"""

from _harness import UPSTREAM_IMPL, load_suite

globals().update(load_suite("fp32ln_suite_upstream", UPSTREAM_IMPL))
