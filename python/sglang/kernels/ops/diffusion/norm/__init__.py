# SPDX-License-Identifier: Apache-2.0
"""Normalization kernels and their fused epilogues.

Pick one through the selection matrix in ``sglang/kernels/ops/diffusion/README.md``:
the norms differ by numerical contract, not by speed alone.
"""
