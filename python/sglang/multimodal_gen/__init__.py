"""SGLang diffusion runtime (subset: the normalization layers and what they need)."""
