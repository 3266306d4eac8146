# SPDX-License-Identifier: Apache-2.0
"""The FP32LayerNorm suite on upstream SGLang's class after the plugin applied.

Everything passes here, including what ``test_suite_upstream.py`` records as
upstream's own failures (stale cache after storage reuse, inference-mode
parameters, fullgraph compile, copies carrying the cache, input validation).
"""

from _harness import UPSTREAM_IMPL, load_suite

globals().update(load_suite("fp32ln_suite_applied", UPSTREAM_IMPL))
