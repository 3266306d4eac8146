# SPDX-License-Identifier: Apache-2.0
"""Make SGLang's live weight updates visible to the fp32 caches.

Upstream's ``load_weights_into_model`` (``post_training/weights_updater.py``)
writes through ``param.data`` or a DTensor's ``_local_tensor``, which leaves the
parameter's version counter alone, so ``FP32LayerNorm``'s fp32 copies (keyed on
it) outlive ``update_weights_from_disk``, its rollback and
``update_weights_from_tensor``. The upstream-form fix (this tree's
``python/sglang/multimodal_gen/runtime/post_training/weights_updater.py``) bumps
the version of every parameter the function writes; this module does the same
from outside, as an SGLang AROUND hook on that function: the entries are passed
through unchanged, their names recorded, and the parameters behind them get
``torch.autograd.graph.increment_version`` when the original returns or raises.
Upstream's body runs as it is.

The hook names its target by dotted path: registering it imports nothing, and
SGLang imports the updater module only when it applies hooks (its worker
bootstrap does so before importing the GPU worker, which imports the updater
anyway). If that import fails, SGLang logs the failure, leaves the target as it
is and carries on; a process that cannot import the updater cannot run it
either. Before registering, the structure is checked on the module if it is
already imported, else on its source file (located without importing it).
"""

import ast
import importlib.util
import inspect
import sys
from typing import Optional

UPDATER_MODULE = "sglang.multimodal_gen.runtime.post_training.weights_updater"
WRITER = "load_weights_into_model"
TARGET = f"{UPDATER_MODULE}.{WRITER}"
WRITER_PARAMETERS = ("weights_iter", "model_params", "module_name")
# the paths that must reach the writer for the hook to cover them:
# update_weights_from_disk / _rollback / update_weights_from_tensor all load
# through _load_weights_into_module, which calls the writer
CALLERS = {
    "_load_weights_into_module": WRITER,
    "_apply_weights": "_load_weights_into_module",
    "_rollback": "_load_weights_into_module",
}
ALREADY_FIXED_MARK = "increment_version"


def _parameters_problem(names: tuple) -> str:
    return (
        f"{WRITER}'s parameters ({', '.join(names)}) differ from "
        f"({', '.join(WRITER_PARAMETERS)})"
    )


def source_problems(source: str) -> tuple:
    """``(problems, already_fixed)`` for the updater module's source text."""
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        return [f"cannot parse the updater's source: {exc}"], False
    functions = {}
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            functions.setdefault(node.name, node)
    writer = functions.get(WRITER)
    if writer is None or writer not in tree.body:
        return [f"{WRITER} is not a module-level function"], False
    problems = []
    names = tuple(a.arg for a in writer.args.posonlyargs + writer.args.args)
    if names != WRITER_PARAMETERS or writer.args.vararg or writer.args.kwonlyargs:
        problems.append(_parameters_problem(names))
    for caller, callee in CALLERS.items():
        node = functions.get(caller)
        called = node is not None and any(
            isinstance(n, ast.Call)
            and (
                (isinstance(n.func, ast.Name) and n.func.id == callee)
                or (isinstance(n.func, ast.Attribute) and n.func.attr == callee)
            )
            for n in ast.walk(node)
        )
        if not called:
            problems.append(f"{caller} does not call {callee}")
    already_fixed = ALREADY_FIXED_MARK in (ast.get_source_segment(source, writer) or "")
    return problems, already_fixed


def updater_source() -> str:
    """The updater module's source: from the live module if imported, else read
    from its file, located without importing the module itself."""
    module = sys.modules.get(UPDATER_MODULE)
    if module is not None:
        return inspect.getsource(module)
    spec = importlib.util.find_spec(UPDATER_MODULE)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        raise ImportError(f"no source file for {UPDATER_MODULE}")
    with open(spec.origin, encoding="utf-8") as f:
        return f.read()


def live_problems() -> list:
    """Checks on the imported module's function (if imported): it must be the
    plain function the source describes, with the expected parameters."""
    module = sys.modules.get(UPDATER_MODULE)
    if module is None:
        return []
    fn = getattr(module, WRITER, None)
    if not inspect.isfunction(fn):
        return [f"{WRITER} is not a function"]
    names = tuple(inspect.signature(fn).parameters)
    return [] if names == WRITER_PARAMETERS else [_parameters_problem(names)]


def plan_updater_hook() -> tuple:
    """``(hook or None, problems, already_fixed)``; never imports the updater."""
    try:
        source = updater_source()
    except Exception as exc:  # an install without the module, or no source
        return None, [f"cannot locate {UPDATER_MODULE}: {exc!r}"], False
    try:
        problems, already_fixed = source_problems(source)
        problems += live_problems()
    except Exception as exc:  # a check tripping on an odd module: no hook
        return None, [f"cannot check {UPDATER_MODULE}: {exc!r}"], False
    if problems or already_fixed:
        return None, problems, already_fixed
    return bump_written_versions, [], False


def bump_written_versions(
    original_fn, weights_iter, model_params, module_name: Optional[str] = None
):
    """AROUND hook on ``load_weights_into_model``: run it, then bump the version
    counter of every parameter it was handed an entry for (written, or being
    written when it raised). Only names are kept: the loaded tensors stream
    through as before."""
    names = []

    def tapped():
        for entry in weights_iter:
            try:
                names.append(entry[0])
            except (TypeError, IndexError, KeyError):
                pass  # upstream's own unpacking reports a malformed entry
            yield entry

    try:
        return original_fn(tapped(), model_params, module_name)
    finally:
        _bump(model_params, names)


def _bump(model_params, names) -> None:
    from torch.autograd.graph import increment_version

    seen = set()
    for name in names:
        try:
            param = model_params[name] if name in model_params else None
        except TypeError:  # an unhashable name
            continue
        if param is not None and id(param) not in seen:
            seen.add(id(param))
            # a no-op on inference tensors, which have no counter
            increment_version(param)


__all__ = [
    "TARGET",
    "UPDATER_MODULE",
    "bump_written_versions",
    "plan_updater_hook",
    "source_problems",
]
