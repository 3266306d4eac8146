"""Minimal ``sglang`` package root for the ``multimodal_gen`` subtree.

The real SGLang wheel owns this package; this tree only mirrors the paths under
``sglang/multimodal_gen`` that the FP32LayerNorm port touches, and is used from the
source tree (``PYTHONPATH=python``), never installed.
"""
