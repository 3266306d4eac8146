# SPDX-License-Identifier: Apache-2.0
"""Graft this project's FP32LayerNorm onto upstream SGLang's classes.

What changes after ``load_plugins(); apply_plugin_hooks()`` (and nothing else):

* ``FP32LayerNorm`` of ``sglang.multimodal_gen.runtime.layers.layernorm`` gets
  every attribute that this project's ``FP32LayerNorm`` defines in its class body
  except ``__init__``: the ones upstream's class has (``_cached_fp32_param``,
  ``forward_native``, ``forward_cuda`` and the inherited ``__setattr__``,
  ``_apply``, ``__getstate__``) through SGLang REPLACE hooks, the ones it lacks
  (``_FP32_CACHE_ATTRS``, ``_drop_fp32_cache``) as new class attributes. The class
  object stays the same, so every instance, every ``from ... import`` binding and
  the ``CustomOp`` op registry see the change. Upstream's ``__init__`` and platform
  paths (``forward_npu``, ``forward_xpu``, ...) stay; they call the grafted cache.
* ``LayerNormScaleShift.forward_cuda`` and
  ``ScaleResidualLayerNormScaleShift.forward_cuda`` become this project's fused
  CUDA paths (the Triton kernel where it is proven bit-identical to the eager
  chain, else the module's ``forward_native``, which stays upstream's). They are
  set on these two classes, so the RMSNorm variants keep upstream's kernels;
  every other platform path of the fused modules stays.
* The private copy's module global ``FP32LayerNorm`` is rebound to upstream's
  class: its fused paths and ``drop_fp32_layer_norm_caches`` test
  ``isinstance(norm, FP32LayerNorm)``, and the norms they now serve are upstream's.
* Instances that exist when the plugin loads drop their cached copies and re-bind
  the forward ``CustomOp`` chose at construction on their first call.

Functions keep their code and their module globals (the private copy loaded by
``_loader``); only the ``__class__`` cell behind zero-argument ``super()`` is
rebound to upstream's class, which makes each one the function that a ``def`` in
upstream's class body would have produced.

It also registers an AROUND hook on upstream's weight writer
``post_training.weights_updater.load_weights_into_model`` (see ``_updater``) so
that live weight updates move the parameters' version counters, which the fp32
caches key on.

Upstream's structure is checked before anything is registered or set: the
installed sglang must be in ``SUPPORTED_SGLANG``, and the layernorm classes must
fit; otherwise the plugin logs one warning and changes nothing. If only the
updater does not fit, the norm graft is applied and one warning says that the
updater is not hooked.
"""

import gc
import importlib
import inspect
import logging
import re
import threading
import types
from dataclasses import dataclass, field
from typing import Any, Optional

logger = logging.getLogger("sgl_mmgen_fp32ln")

# the sglang releases this plugin was checked against: [first, end); 0.5.22 is
# the first with the diffusion plugin system, and 0.5.22 and 0.5.23 have the same
# plugin, hook-registry and weight-updater modules
SUPPORTED_SGLANG = ((0, 5, 22), (0, 5, 24))
UPSTREAM_MODULE = "sglang.multimodal_gen.runtime.layers.layernorm"
NORM_CLASS = "FP32LayerNorm"
# upstream fused modules whose forward_cuda becomes ours; both must be LayerNorm ones
FUSED_CLASSES = ("LayerNormScaleShift", "ScaleResidualLayerNormScaleShift")
# methods upstream's FP32LayerNorm must define itself: the cache and the two paths
# its dispatch and its platform methods reach
REQUIRED_OWN_METHODS = ("_cached_fp32_param", "forward_native", "forward_cuda")

# class-body entries that are bookkeeping, not behaviour; ``__init__`` stays
# upstream's (it carries upstream's platform-specific dispatch choices) and
# ``name`` is the op name ``CustomOp.register`` gave both classes
_NOT_GRAFTED = frozenset(
    {
        "__module__",
        "__qualname__",
        "__doc__",
        "__init__",
        "__annotations__",
        "__firstlineno__",
        "__static_attributes__",
        "__dict__",
        "__weakref__",
        "name",
    }
)

_LOCK = threading.Lock()


@dataclass
class GraftPlan:
    """What the plugin installs; built only from a structure that passed the checks.

    ``replaced`` maps dotted SGLang hook targets to the replacement functions;
    ``added`` holds the FP32LayerNorm class attributes that upstream lacks;
    ``source`` is this project's FP32LayerNorm they come from (the private copy's
    module name ``FP32LayerNorm`` is rebound to upstream's class on registration).
    """

    upstream: types.ModuleType
    ours: types.ModuleType
    source: type
    replaced: dict = field(default_factory=dict)
    added: dict = field(default_factory=dict)
    # AROUND hooks: dotted target -> hook (the weight writer, see _updater)
    wrapped: dict = field(default_factory=dict)


# set once the hooks are registered in this process (registration is one-way)
_PLAN: Optional[GraftPlan] = None


def installed_plan() -> Optional[GraftPlan]:
    """The plan registered in this process, or ``None``."""
    return _PLAN


def structure_problems(upstream: types.ModuleType) -> list:
    """Why upstream's layernorm module does not fit the graft (empty when it does).

    Expected: ``FP32LayerNorm`` is a ``CustomOp`` and an ``nn.LayerNorm`` that
    defines ``_cached_fp32_param``, ``forward_native`` and ``forward_cuda`` itself,
    and ``LayerNormScaleShift`` / ``ScaleResidualLayerNormScaleShift`` are
    ``CustomOp``s with ``norm_type == "layer"`` and a ``forward_cuda``.
    """
    import torch.nn as nn

    from sglang.multimodal_gen.runtime.layers.custom_op import CustomOp

    norm = getattr(upstream, NORM_CLASS, None)
    if not isinstance(norm, type):
        return [f"{NORM_CLASS} is missing"]
    problems = []
    if not issubclass(norm, nn.LayerNorm):
        problems.append(f"{NORM_CLASS} is not an nn.LayerNorm")
    if not issubclass(norm, CustomOp):
        problems.append(f"{NORM_CLASS} is not a CustomOp")
    for name in REQUIRED_OWN_METHODS:
        if not inspect.isfunction(vars(norm).get(name)):
            problems.append(f"{NORM_CLASS} does not define {name}")
    for cls_name in FUSED_CLASSES:
        cls = getattr(upstream, cls_name, None)
        if not (isinstance(cls, type) and issubclass(cls, CustomOp)):
            problems.append(f"{cls_name} is missing or not a CustomOp")
        elif getattr(cls, "norm_type", None) != "layer":
            problems.append(f"{cls_name}.norm_type is not 'layer'")
        elif not inspect.isfunction(getattr(cls, "forward_cuda", None)):
            problems.append(f"{cls_name} has no forward_cuda")
    return problems


def plan_graft(upstream: types.ModuleType, ours: types.ModuleType):
    """Build the graft of ``ours`` onto ``upstream``: ``(plan, problems)``.

    A name that upstream's class has (defined or inherited) is replaced and must
    be a function with the same parameters as ours; a name it lacks is added.
    """
    up_norm = getattr(upstream, NORM_CLASS)
    plan = GraftPlan(upstream=upstream, ours=ours, source=ours.FP32LayerNorm)
    problems = []
    for name, value in vars(plan.source).items():
        if name in _NOT_GRAFTED:
            continue
        value = bind_class_cell(value, up_norm)
        if not hasattr(up_norm, name):
            plan.added[name] = value
            continue
        problem = _signature_mismatch(getattr(up_norm, name), value)
        if problem:
            problems.append(f"{NORM_CLASS}.{name}: {problem}")
        else:
            plan.replaced[f"{UPSTREAM_MODULE}.{NORM_CLASS}.{name}"] = value
    for cls_name in FUSED_CLASSES:
        up_cls = getattr(upstream, cls_name)
        fn = bind_class_cell(getattr(ours, cls_name).forward_cuda, up_cls)
        problem = _signature_mismatch(up_cls.forward_cuda, fn)
        if problem:
            problems.append(f"{cls_name}.forward_cuda: {problem}")
        else:
            plan.replaced[f"{UPSTREAM_MODULE}.{cls_name}.forward_cuda"] = fn
    return plan, problems


def _signature_mismatch(theirs: Any, ours: Any) -> Optional[str]:
    if not callable(ours) or not callable(theirs):
        return "upstream already has this attribute and it is not a method"
    try:
        want = _parameters(ours)
        have = _parameters(theirs)
    except (TypeError, ValueError):
        return None  # a builtin without a signature: nothing to compare
    if want != have:
        return (
            f"upstream's parameters ({', '.join(n for n, _ in have)}) differ from "
            f"ours ({', '.join(n for n, _ in want)})"
        )
    return None


def _parameters(fn) -> list:
    fn = getattr(fn, "__func__", fn)
    return [(p.name, p.kind) for p in inspect.signature(fn).parameters.values()]


def bind_class_cell(fn: Any, owner: type) -> Any:
    """``fn`` with its ``__class__`` cell (zero-argument ``super()``) set to ``owner``.

    Code, globals, defaults and attributes are ``fn``'s; functions that do not use
    ``super()`` and non-functions are returned unchanged.
    """
    if isinstance(fn, (staticmethod, classmethod)):
        return type(fn)(bind_class_cell(fn.__func__, owner))
    if not inspect.isfunction(fn) or "__class__" not in fn.__code__.co_freevars:
        return fn
    cells = tuple(
        types.CellType(owner) if var == "__class__" else cell
        for var, cell in zip(fn.__code__.co_freevars, fn.__closure__)
    )
    bound = types.FunctionType(
        fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__, cells
    )
    bound.__kwdefaults__ = fn.__kwdefaults__
    bound.__doc__ = fn.__doc__
    bound.__module__ = fn.__module__
    bound.__qualname__ = f"{owner.__qualname__}.{fn.__name__}"
    bound.__dict__.update(fn.__dict__)
    return bound


class _Rebind:
    """Stands in for the ``_forward_method`` of an instance built before the graft.

    ``CustomOp`` binds ``_forward_method`` once, at construction, to the function
    the class had then. The first call looks the method up again by name (by then
    the hooks are applied: SGLang applies them right after loading plugins), puts
    the fresh bound method in place and delegates, so later calls cost nothing.
    """

    def __init__(self, owner, name: str) -> None:
        self.owner = owner
        self.name = name

    def __call__(self, *args, **kwargs):
        method = getattr(self.owner, self.name)
        self.owner.__dict__["_forward_method"] = method
        return method(*args, **kwargs)


def _with_subclasses(classes) -> tuple:
    found, todo = [], list(classes)
    while todo:
        cls = todo.pop()
        if cls not in found:
            found.append(cls)
            todo.extend(cls.__subclasses__())
    return tuple(found)


def _defer_rebind(classes: tuple, cache_attrs) -> int:
    """Prepare instances of ``classes`` that already exist; returns how many.

    Their ``_forward_method`` is swapped for a ``_Rebind`` and their cached fp32
    copies (upstream's entry format) are dropped. Instances are found as the
    objects whose type refers them to these classes (a heap type's instances
    report it to the collector), a C-speed scan with no attribute access.
    """
    classes = _with_subclasses(classes)
    seen = set()
    count = 0
    for obj in gc.get_referrers(*classes):
        if type(obj) not in classes or id(obj) in seen:
            continue
        seen.add(id(obj))
        state = obj.__dict__
        for attr in cache_attrs:
            state.pop(attr, None)
        bound = state.get("_forward_method")
        if isinstance(bound, types.MethodType) and bound.__self__ is obj:
            state["_forward_method"] = _Rebind(obj, bound.__func__.__name__)
            count += 1
    return count


_RELEASE = re.compile(r"(\d+)\.(\d+)\.(\d+)")


def _release(version: str) -> Optional[tuple]:
    """``"0.5.23.post1"`` -> ``(0, 5, 23)``; ``None`` if it does not start so."""
    match = _RELEASE.match(version)
    return tuple(map(int, match.groups())) if match else None


def version_problem(version: Optional[str]) -> Optional[str]:
    """Why ``version`` of sglang is not supported (``None`` when it is)."""
    first, end = SUPPORTED_SGLANG
    wanted = f">={'.'.join(map(str, first))},<{'.'.join(map(str, end))}"
    release = _release(version) if isinstance(version, str) else None
    if release is None or not first <= release < end:
        return f"sglang {version} is outside the supported range {wanted}"
    # pre-releases of the first supported release predate what was checked
    if release == first and any(t in version for t in ("a", "b", "rc", "dev")):
        return f"sglang {version} is outside the supported range {wanted}"
    return None


def installed_sglang_version() -> Optional[str]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sglang")
    except PackageNotFoundError:
        return None


def _prepare() -> Optional[GraftPlan]:
    """Import, check and plan; ``None`` (after one warning) if anything is off."""
    problem = version_problem(installed_sglang_version())
    if problem:
        return _skip(problem)
    try:
        upstream = importlib.import_module(UPSTREAM_MODULE)
    except Exception as exc:  # an SGLang without this module, or a broken install
        return _skip(f"cannot import {UPSTREAM_MODULE}: {exc!r}")
    problems = structure_problems(upstream)
    if problems:
        return _skip("; ".join(problems))
    from sgl_mmgen_fp32ln._loader import load_layernorm

    try:
        ours = load_layernorm()
    except Exception as exc:
        return _skip(f"cannot load this project's layernorm module: {exc!r}")
    try:
        plan, problems = plan_graft(upstream, ours)
    except Exception as exc:  # this tree's module lacks a class the plan reads
        return _skip(f"cannot plan the graft: {exc!r}")
    if problems:
        return _skip("; ".join(problems))
    from sgl_mmgen_fp32ln import _updater

    hook, problems, already_fixed = _updater.plan_updater_hook()
    if hook is not None:
        plan.wrapped[_updater.TARGET] = hook
    elif problems:
        logger.warning(
            "sgl_mmgen_fp32ln: weight updater not hooked (%s): after a live weight "
            "update call drop_fp32_layer_norm_caches(model): %s",
            _updater.TARGET,
            "; ".join(problems),
        )
    elif already_fixed:
        logger.info(
            "sgl_mmgen_fp32ln: %s already bumps parameter versions; not hooked",
            _updater.TARGET,
        )
    return plan


def _skip(reason: str) -> None:
    logger.warning(
        "sgl_mmgen_fp32ln: not applied, SGLang's FP32LayerNorm is left as it is: %s",
        reason,
    )
    return None


def register_hooks() -> None:
    """Register the REPLACE hooks (once per process); see the module docstring.

    Runs in SGLang's ``load_plugins()``. It imports upstream's layernorm module
    itself, because nothing may be registered before the structure is checked
    (SGLang's bootstrap initializes the platform before plugin callbacks, which
    it allows to import runtime modules).
    """
    global _PLAN
    from sglang.multimodal_gen.runtime.platforms.plugins import HookType, plugin_hook

    with _LOCK:
        if _PLAN is not None:
            return
        plan = _prepare()
        if plan is None:
            return
        up_norm = getattr(plan.upstream, NORM_CLASS)
        for name, value in plan.added.items():
            setattr(up_norm, name, value)
        # the private copy's fused paths accept the norm class they now serve
        plan.ours.FP32LayerNorm = up_norm
        classes = (up_norm, *(getattr(plan.upstream, c) for c in FUSED_CLASSES))
        cache_attrs = tuple(getattr(up_norm, "_FP32_CACHE_ATTRS", {}).values())
        rebinds = _defer_rebind(classes, cache_attrs)
        for target, fn in plan.replaced.items():
            plugin_hook(target, HookType.REPLACE)(fn)
        for target, fn in plan.wrapped.items():
            plugin_hook(target, HookType.AROUND)(fn)
        _PLAN = plan
    logger.info(
        "sgl_mmgen_fp32ln: registered %d REPLACE hooks and %d AROUND hook(s) "
        "(weight updater), added %s to %s "
        "(%d existing instances will rebind their forward)",
        len(plan.replaced),
        len(plan.wrapped),
        ", ".join(sorted(plan.added)),
        NORM_CLASS,
        rebinds,
    )


__all__: list = [
    "SUPPORTED_SGLANG",
    "GraftPlan",
    "bind_class_cell",
    "installed_plan",
    "plan_graft",
    "register_hooks",
    "structure_problems",
    "version_problem",
]
