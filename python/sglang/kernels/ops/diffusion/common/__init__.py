# SPDX-License-Identifier: Apache-2.0
"""Shared infrastructure for the diffusion kernels, no kernels of its own.

- ``direct_launch``: launch a compiled Triton kernel without Triton's per-call
  argument binding
"""
