# SPDX-License-Identifier: Apache-2.0
# Adapted from vLLM's model_executor/layers/layernorm.py via upstream SGLang; the fp32
# parameter cache of FP32LayerNorm is ported from FastVideo PR #1245.
"""Custom normalization layers.

Runs with torch alone. The kernels (bit-exact fp32 LayerNorm, alone and fused with
the adaLN chain) live behind ``sglang.kernels.ops.diffusion``; with Triton absent
their predicates say no and everything takes PyTorch paths.
Unlike upstream, no native path is wrapped in ``torch.compile``: the native paths
are the eager references the CUDA kernels are checked against bit for bit (users
may still compile whole models; FP32LayerNorm stays exact there too).
"""

from typing import Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.multiprocessing.reductions import StorageWeakRef

from sglang.kernels.ops.diffusion import (
    force_reference,
    fp32_layernorm_opaque,
    gated_residual,
    is_capturing,
    layernorm_scale_shift_opaque,
    norm_scale_shift_chain,
    scale_residual_layernorm_scale_shift_opaque,
    scale_residual_norm_scale_shift_chain,
    try_fp32_layernorm_single_pass,
    try_fused_layernorm_scale_shift,
)
from sglang.multimodal_gen.runtime.layers.custom_op import CustomOp


# Copied and adapted from sglang
@CustomOp.register("rms_norm")
class RMSNorm(CustomOp):
    """Root mean square normalization: ``w * x / sqrt(mean(x**2) + eps)``.

    Computed in fp32 and returned in the input dtype. See
    https://arxiv.org/abs/1910.07467.
    """

    def __init__(
        self,
        hidden_size: int,
        eps: float = 1e-6,
        dtype: torch.dtype = torch.float32,
        var_hidden_size: Optional[int] = None,
        cast_x_before_out_mul: bool = False,
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps
        self.hidden_size = hidden_size
        self.cast_x_before_out_mul = cast_x_before_out_mul
        self.variance_size_override = (
            None if var_hidden_size == hidden_size else var_hidden_size
        )

    def forward_native(
        self,
        x: torch.Tensor,
        residual: Optional[torch.Tensor] = None,
    ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        if not x.is_contiguous():
            x = x.contiguous()
        orig_dtype = x.dtype
        x = x.to(torch.float32)
        if residual is not None:
            x = x + residual.to(torch.float32)
            residual = x.to(orig_dtype)

        hidden_size = x.shape[-1]
        if hidden_size != self.hidden_size:
            raise ValueError(
                f"Expected hidden_size to be {self.hidden_size}, but found: "
                f"{hidden_size}"
            )
        x_var = x
        if self.variance_size_override is not None:
            if hidden_size < self.variance_size_override:
                raise ValueError(
                    "Expected hidden_size to be at least "
                    f"{self.variance_size_override}, but found: {hidden_size}"
                )
            x_var = x[..., : self.variance_size_override]

        variance = x_var.pow(2).mean(dim=-1, keepdim=True)
        x = x * torch.rsqrt(variance + self.variance_epsilon)
        if self.cast_x_before_out_mul:
            x = self.weight * x.to(orig_dtype)
        else:
            x = (x * self.weight).to(orig_dtype)
        return x if residual is None else (x, residual)

    def forward_cuda(
        self,
        x: torch.Tensor,
        residual: Optional[torch.Tensor] = None,
    ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        # sgl_kernel's fused RMSNorm is not a dependency of this tree
        return self.forward_native(x, residual)

    def extra_repr(self) -> str:
        return f"hidden_size={self.hidden_size}, eps={self.variance_epsilon}"


# Copied and adapted from sglang
@CustomOp.register("layer_norm")
class LayerNorm(CustomOp):
    """LayerNorm over the last dimension, computed in the input dtype."""

    def __init__(
        self,
        hidden_size: int,
        eps=1e-5,
        bias: bool = True,
        elementwise_affine=True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        self.eps = eps
        self.hidden_size = hidden_size
        factory_kwargs = {"device": device, "dtype": dtype}
        if elementwise_affine:
            self.weight = nn.Parameter(torch.ones(hidden_size, **factory_kwargs))
            self.bias = (
                nn.Parameter(torch.zeros(hidden_size, **factory_kwargs))
                if bias
                else None
            )
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward_native(
        self,
        x: torch.Tensor,
        residual: Optional[torch.Tensor] = None,
    ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        input_dtype = x.dtype
        mean = x.mean(-1, keepdim=True)
        variance = (x - mean).pow(2).mean(-1, keepdim=True)
        x = (x - mean) * torch.rsqrt(variance + self.eps)
        if self.weight is not None:
            x = self.weight * x
        if self.bias is not None:
            x = x + self.bias
        return x.to(input_dtype)

    def forward_cuda(
        self,
        x: torch.Tensor,
        residual: Optional[torch.Tensor] = None,
    ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        return self.forward_native(x, residual)

    def extra_repr(self) -> str:
        return f"hidden_size={self.hidden_size}, eps={self.eps}"


class ScaleResidual(nn.Module):
    """Gated residual connection: ``residual + x * gate``."""

    def __init__(self, prefix: str = ""):
        super().__init__()

    def forward(
        self, residual: torch.Tensor, x: torch.Tensor, gate: torch.Tensor
    ) -> torch.Tensor:
        return gated_residual(residual, x, gate)


# adapted from Diffusers: https://github.com/huggingface/diffusers/blob/main/src/diffusers/models/normalization.py
# NOTE(will): Needed to match behavior of diffusers and wan2.1 even while using
# FSDP's MixedPrecisionPolicy
@CustomOp.register("fp32_layer_norm")
class FP32LayerNorm(CustomOp, nn.LayerNorm):
    """LayerNorm computed in fp32 and returned in the input dtype.

    Every path returns exactly
    ``F.layer_norm(x.float(), shape, w.float(), b.float(), eps).to(x.dtype)``.
    During inference (grad off) the fp32 parameter copies are cached on the module
    (see ``_cached_fp32_param``); on CUDA, bf16/fp16 inputs take a single pass
    that needs no copies (see ``fp32_layer_norm_path``).
    """

    _FP32_CACHE_ATTRS = {"weight": "_weight_fp32_cache", "bias": "_bias_fp32_cache"}

    def __init__(
        self,
        normalized_shape,
        eps=1e-5,
        elementwise_affine=True,
        bias=True,
        device=None,
        dtype=None,
    ):
        nn.LayerNorm.__init__(
            self,
            normalized_shape=normalized_shape,
            eps=eps,
            elementwise_affine=elementwise_affine,
            bias=bias,
            device=device,
            dtype=dtype,
        )
        self._forward_method = self.dispatch_forward()

    def _affine_params(self) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """``(self.weight, self.bias)``, read without ``nn.Module.__getattr__``.

        A registered parameter lives in ``self._parameters``, where
        ``nn.Module.__getattr__`` finds it after normal lookup failed; that costs
        about 0.6 us per read, a tenth of a call's host time. Reading the dict
        returns the same object. ``register_parameter`` refuses a name that
        normal lookup already finds, so the two agree unless a class attribute
        of that name is added after registration. A name that is not registered
        (parametrized, or re-set as a plain tensor attribute, as FSDP1 does)
        takes normal lookup.
        """
        params = self._parameters
        weight = params["weight"] if "weight" in params else self.weight
        bias = params["bias"] if "bias" in params else self.bias
        return weight, bias

    @staticmethod
    def _check_input(x: torch.Tensor, normalized_shape: Tuple[int, ...]) -> None:
        """Reject inputs the reference would reject late or answer wrongly."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(
                f"FP32LayerNorm expects a torch.Tensor, got {type(x).__name__}"
            )
        if not x.is_floating_point():
            raise TypeError(
                f"FP32LayerNorm expects a floating-point input, got dtype {x.dtype}"
            )
        shape = tuple(normalized_shape)
        if x.dim() < len(shape) or tuple(x.shape[x.dim() - len(shape) :]) != shape:
            raise ValueError(
                f"FP32LayerNorm input of shape {tuple(x.shape)} does not end with "
                f"normalized_shape {shape}"
            )

    @staticmethod
    def _cache_key(param: torch.Tensor, device: torch.device) -> Optional[tuple]:
        """Identity of ``param``'s current contents as far as torch can tell.

        ``(storage id, data_ptr, _version, param.device, device, dtype, shape, stride)``.
        The storage id is the address of the StorageImpl; the cache entry also holds a
        weak reference to that storage, which keeps the StorageImpl's address from
        being reused while the entry lives, so equal ids mean the same storage.

        Returns ``None`` for tensors without a version counter: inference tensors,
        whose in-place writes under ``torch.inference_mode()`` no key can see, and
        parameters that were created under inference mode and later re-pointed
        outside it (``module.to``, ``p.data = t``), which keep a counter-less impl.
        """
        if param.is_inference():
            return None
        try:
            version = param._version
        except RuntimeError:  # "Inference tensors do not track version counter"
            return None
        return (
            param.untyped_storage()._cdata,
            param.data_ptr(),
            version,
            param.device,
            device,
            param.dtype,
            param.shape,
            param.stride(),
        )

    @staticmethod
    def _canonical_device(device) -> torch.device:
        # "cuda" and "cuda:0" name the same device but compare unequal
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            return torch.device("cuda", torch.cuda.current_device())
        return device

    def _cached_fp32_param(
        self, attr: str, param: Optional[torch.Tensor], device: torch.device
    ) -> Optional[torch.Tensor]:
        """Return ``param`` as fp32 on ``device``, reusing a copy cached in ``attr``.

        Guarantees: the returned tensor always holds ``param.float().to(device)``
        for every change torch can see. The entry in ``self.__dict__[attr]`` is
        ``(key, StorageWeakRef, fp32 copy)`` with the key of ``_cache_key``;
        it is rebuilt when the storage is freed or replaced (``p.data = t``,
        ``module.to``), when ``param._version`` moves (in-place ops, ``copy_``,
        ``load_state_dict``), when the parameter is reassigned on the module
        (``setattr``, which is how FSDP2 swaps sharded and unsharded parameters),
        or when the target device or the dtype change. The weak reference never
        keeps a freed parameter's memory alive.

        It bypasses the cache: with grad enabled (plain autograd path), while
        compiling, during CUDA graph capture (the graph then records the cast, so
        replays read the live parameter), for inference tensors, and under the
        reference env switch. fp32 parameters on ``device`` are returned as is.

        It cannot see writes that bypass the version counter: through ``.data`` of
        a view or of the parameter (``p.data.add_(1)``), from raw pointers or
        other processes, or storage refilled in place under
        ``torch.autograd._unsafe_preserve_version_counter`` without a parameter
        reassignment. Such writers must call ``drop_fp32_layer_norm_caches``.
        """
        if param is None:
            return None
        if param.dtype == torch.float32 and param.device == device:
            # what param.float().to(device) returns in every mode, grad included
            return param
        device = self._canonical_device(device)
        if (
            torch.is_grad_enabled()
            or force_reference()
            or torch.compiler.is_compiling()
            or is_capturing(device)
        ):
            return param.float().to(device=device)
        if param.dtype == torch.float32 and param.device == device:
            return param
        key = self._cache_key(param, device)
        if key is None:
            return param.float().to(device=device)
        entry = self.__dict__.get(attr)
        if entry is not None and entry[0] == key and not entry[1].expired():
            return entry[2]
        fp32 = param.detach().to(device=device, dtype=torch.float32, copy=True)
        self.__dict__[attr] = (key, StorageWeakRef(param.untyped_storage()), fp32)
        return fp32

    def _drop_fp32_cache(self) -> None:
        """Forget the cached fp32 copies (they are rebuilt on the next forward)."""
        for attr in self._FP32_CACHE_ATTRS.values():
            self.__dict__.pop(attr, None)

    def __setattr__(self, name, value) -> None:
        super().__setattr__(name, value)
        attr = self._FP32_CACHE_ATTRS.get(name)
        if attr is not None:
            self.__dict__.pop(attr, None)

    def _apply(self, fn, recurse=True):
        # .to() / .cuda() / .half(): free copies of parameters that just moved
        self._drop_fp32_cache()
        return super()._apply(fn, recurse)

    def __getstate__(self):
        # copies (deepcopy, pickle, torch.save) start cold, sharing nothing;
        # nn.Module's own state drops compile wrappers and is already a copy
        state = super().__getstate__()
        for attr in self._FP32_CACHE_ATTRS.values():
            state.pop(attr, None)
        return state

    def forward_native(self, inputs: torch.Tensor) -> torch.Tensor:
        self._check_input(inputs, self.normalized_shape)
        if torch.compiler.is_compiling() and not torch.is_grad_enabled():
            # opaque to inductor, so compiled output equals eager bit for bit
            return fp32_layernorm_opaque(
                inputs, list(self.normalized_shape), self.weight, self.bias, self.eps
            )
        device = inputs.device
        weight, bias = self._affine_params()
        weight = self._cached_fp32_param("_weight_fp32_cache", weight, device)
        bias = self._cached_fp32_param("_bias_fp32_cache", bias, device)
        return F.layer_norm(
            inputs.float(), self.normalized_shape, weight, bias, self.eps
        ).to(inputs.dtype)

    def forward_cuda(self, inputs: torch.Tensor) -> torch.Tensor:
        if not (
            torch.is_grad_enabled()
            or torch.compiler.is_compiling()
            or force_reference()
        ):
            # the input check runs once per operand configuration
            weight, bias = self._affine_params()
            out = try_fp32_layernorm_single_pass(
                inputs,
                self.normalized_shape,
                weight,
                bias,
                self.eps,
                check=self._check_input,
            )
            if out is not None:
                return out
        return self.forward_native(inputs)


def drop_fp32_layer_norm_caches(module: nn.Module) -> int:
    """Drop the fp32 parameter caches of every FP32LayerNorm in ``module``.

    For weight writers that bypass the version counter, such as a bare
    ``param.data.copy_(w)`` (what ``load_weights_into_model`` did before it
    bumped the versions it writes): call it after the write. Returns how many
    norms were reset.
    """
    count = 0
    for sub in module.modules():
        if isinstance(sub, FP32LayerNorm):
            sub._drop_fp32_cache()
            count += 1
    return count


################################################################################
# The LayerNorm adaLN modules: the fused kernel on CUDA where proven, else the
# eager chain (both from sglang.kernels.ops.diffusion, which proves one against
# the other)
################################################################################
def _fused_norm_of(module: nn.Module, x: torch.Tensor) -> Optional[nn.Module]:
    # the kernel replays FP32LayerNorm over the last dim; RMSNorm keeps its path
    norm = module.norm
    if isinstance(norm, FP32LayerNorm) and tuple(norm.normalized_shape) == (
        x.shape[-1],
    ):
        return norm
    return None


def _fused_norm_modulate(module: nn.Module, x, shift, scale):
    """``module``'s modulated norm by the fused kernel or, compiling, the opaque
    op; ``None`` sends the caller to its own path."""
    norm = _fused_norm_of(module, x)
    if norm is None or torch.is_grad_enabled():
        return None
    w, b = norm._affine_params()
    if torch.compiler.is_compiling():
        return layernorm_scale_shift_opaque(x, w, b, norm.eps, scale, shift)
    return try_fused_layernorm_scale_shift(x, w, b, norm.eps, scale, shift)


def _fused_residual_norm_modulate(module: nn.Module, residual, x, gate, shift, scale):
    """As ``_fused_norm_modulate``, with the gated residual first."""
    norm = _fused_norm_of(module, x)
    if norm is None or torch.is_grad_enabled():
        return None
    if isinstance(gate, int) and not isinstance(gate, bool) and gate == 1:
        gate = None
    elif not isinstance(gate, torch.Tensor):
        return None  # the chain raises for it
    (w, b), eps = norm._affine_params(), norm.eps
    if torch.compiler.is_compiling():
        return scale_residual_layernorm_scale_shift_opaque(
            residual, x, gate, w, b, eps, scale, shift
        )
    return try_fused_layernorm_scale_shift(
        x, w, b, eps, scale, shift, residual=residual, gate=gate
    )


class _ScaleResidualNormScaleShift(CustomOp):
    """``residual + gate * x`` -> LayerNorm or RMSNorm -> ``* (1 + scale) + shift``.

    Returns ``(modulated, residual_output)``, both in ``x.dtype`` (the contract of
    upstream's fused CUDA kernel). The norm computes in fp32.
    """

    norm_type: str

    def __init__(
        self,
        hidden_size: int,
        eps: float = 1e-6,
        elementwise_affine: bool = False,
        dtype: torch.dtype = torch.float32,
        prefix: str = "",
    ):
        super().__init__()
        self.eps = eps
        self.dtype = dtype
        self.norm = _make_norm(
            self.norm_type, hidden_size, eps, elementwise_affine, dtype
        )

    def forward_native(
        self,
        residual: torch.Tensor,
        x: torch.Tensor,
        gate: Union[torch.Tensor, int],
        shift: torch.Tensor,
        scale: torch.Tensor,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        if torch.compiler.is_compiling():
            out = _fused_residual_norm_modulate(self, residual, x, gate, shift, scale)
            if out is not None:
                return out
        return scale_residual_norm_scale_shift_chain(
            self.norm, residual, x, gate, shift, scale
        )

    def forward_cuda(
        self,
        residual: torch.Tensor,
        x: torch.Tensor,
        gate: Union[torch.Tensor, int],
        shift: torch.Tensor,
        scale: torch.Tensor,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        out = _fused_residual_norm_modulate(self, residual, x, gate, shift, scale)
        if out is not None:
            return out
        # the eager chain itself, not forward_native: a subclass (or upstream's
        # class, under the plugin) may compile forward_native, and compiled
        # modulation need not round like eager
        return scale_residual_norm_scale_shift_chain(
            self.norm, residual, x, gate, shift, scale
        )


class ScaleResidualLayerNormScaleShift(_ScaleResidualNormScaleShift):
    norm_type = "layer"


class ScaleResidualRMSNormScaleShift(_ScaleResidualNormScaleShift):
    norm_type = "rms"


class _NormScaleShift(CustomOp):
    """LayerNorm or RMSNorm -> ``* (1 + scale) + shift``, returned in ``x.dtype``."""

    norm_type: str

    def __init__(
        self,
        hidden_size: int,
        eps: float = 1e-6,
        elementwise_affine: bool = False,
        dtype: torch.dtype = torch.float32,
        prefix: str = "",
    ):
        super().__init__()
        self.eps = eps
        self.norm = _make_norm(
            self.norm_type, hidden_size, eps, elementwise_affine, dtype
        )

    def forward_native(
        self, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor
    ) -> torch.Tensor:
        if torch.compiler.is_compiling():
            out = _fused_norm_modulate(self, x, shift, scale)
            if out is not None:
                return out
        return norm_scale_shift_chain(self.norm, x, shift, scale)

    def forward_cuda(
        self, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor
    ) -> torch.Tensor:
        out = _fused_norm_modulate(self, x, shift, scale)
        if out is not None:
            return out
        return norm_scale_shift_chain(self.norm, x, shift, scale)


class LayerNormScaleShift(_NormScaleShift):
    norm_type = "layer"


class RMSNormScaleShift(_NormScaleShift):
    norm_type = "rms"


def _make_norm(
    norm_type: str,
    hidden_size: int,
    eps: float,
    elementwise_affine: bool,
    dtype: torch.dtype,
) -> nn.Module:
    if norm_type == "rms":
        return RMSNorm(hidden_size, eps=eps, dtype=dtype)
    if norm_type == "layer":
        return FP32LayerNorm(
            hidden_size, elementwise_affine=elementwise_affine, eps=eps, dtype=dtype
        )
    raise NotImplementedError(f"Norm type {norm_type} not implemented")
