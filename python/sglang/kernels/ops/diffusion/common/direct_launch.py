# SPDX-License-Identifier: Apache-2.0
"""Launch a compiled Triton kernel without Triton's per-call argument binding.

Binding and specializing a kernel's arguments in ``kernel[grid](...)`` costs
tens of microseconds of host time per call for a kernel with ~45 arguments,
more than the GPU needs at mid sizes. ``DirectLauncher.launch`` goes through
Triton the first time it sees a specialization (which compiles and returns the
compiled kernel) and afterwards calls that kernel's launcher directly, as
Triton itself does after binding. Callers that can key the specialization
themselves keep the compiled kernel and bind it once in a ``BoundLaunch``.
"""

from typing import Optional

import triton


def launch_spec(t) -> tuple:
    """What Triton 3.x specializes a pointer argument on."""
    return (t.dtype, t.data_ptr() % 16 == 0)


def _hook_set(hook) -> bool:
    return hook is not None and bool(getattr(hook, "calls", True))


def launch_hooks_set() -> bool:
    """Whether a profiler installed launch hooks (Triton 3.6 keeps them in
    normally empty HookChains); hooked launches must go through Triton."""
    runtime = triton.knobs.runtime
    return _hook_set(runtime.launch_enter_hook) or _hook_set(runtime.launch_exit_hook)


def run_compiled(kernel, grid: tuple, device: int, args: tuple, tail: tuple) -> None:
    """Launch compiled ``kernel`` on the current stream of ``device``.

    ``grid`` has one to three dimensions; ``args`` are the runtime arguments in
    signature order, ``tail`` the constexpr values after them (Triton 3.6's
    launcher takes both).
    """
    driver = triton.runtime.driver.active
    grid = (*grid, 1, 1)[:3]
    kernel.run(
        *grid, driver.get_current_stream(device), kernel.function,
        kernel.packed_metadata, None, None, None, *args, *tail,
    )  # fmt: skip


class BoundLaunch:
    """One compiled kernel's launch with everything but its pointers bound.

    Triton 3.6's C launcher takes a pointer argument either as an object with
    ``data_ptr()``, which it then checks with a driver call
    (``cuPointerGetAttribute``) on every launch, or as a plain int, taken as
    is. A bound launch is called with ints and calls that C launcher directly,
    with the grid, the compiled function, its metadata and ``post`` (the
    arguments after the pointers, constexprs included) bound once.

    Invariants: it stands for launches that ``DirectLauncher`` keys to
    ``kernel`` (same grid, non-pointer arguments and constexprs, pointers of the
    same dtypes and alignments), so callers bind one per such key; nothing
    checks the ints, so they must be data pointers of live CUDA tensors on
    ``device``. ``of`` returns ``None`` for a kernel that needs scratch memory,
    which Triton's Python launcher allocates per launch (then ``run_compiled``
    serves). Launch hooks are the caller's to check (``launch_hooks_set``).
    """

    __slots__ = ("launch", "grid", "device", "stream", "head", "post")

    def __init__(self, launch, grid, device, stream, head, post) -> None:
        self.launch = launch
        self.grid = grid
        self.device = device
        self.stream = stream
        self.head = head
        self.post = post

    @classmethod
    def of(
        cls, kernel, grid: tuple, device: int, post: tuple
    ) -> Optional["BoundLaunch"]:
        run = kernel.run
        scratch = (
            getattr(run, "global_scratch_size", 1),
            getattr(run, "profile_scratch_size", 1),
        )
        launch = getattr(run, "launch", None)
        if any(scratch) or launch is None or not callable(launch):
            return None
        head = (
            kernel.function, run.launch_cooperative_grid, run.launch_pdl,
            None, None, kernel.packed_metadata, None, None, None,
        )  # fmt: skip
        stream = triton.runtime.driver.active.get_current_stream
        return cls(launch, (*grid, 1, 1)[:3], device, stream, head, tuple(post))

    def __call__(self, *pointers: int) -> None:
        """Launch on the current stream of ``device``."""
        self.launch(
            *self.grid, self.stream(self.device), *self.head, *pointers, *self.post
        )


class DirectLauncher:
    """Launches of one ``@triton.jit`` function, keyed by specialization.

    Invariant: the key holds at least everything Triton 3.x specializes on
    (the current device, each pointer's dtype and 16-byte alignment, every
    int's value, every constexpr; only the trailing float argument is left
    out, which Triton does not specialize on), so equal keys mean the same
    compiled kernel; a finer key only costs one more Triton-path launch. It
    cannot see Triton versions whose launcher or specialization rules differ:
    only the versions in ``VERIFIED`` launch directly, and launch hooks
    (profilers) and ``TRITON_INTERPRET=1`` always take Triton's path. Distinct
    keys are bounded by ``MAX_KEYS`` (then it starts over).
    """

    MAX_KEYS = 4096
    VERIFIED = ("3.6",)

    def __init__(self, fn, n_pointer_args: int, options: dict) -> None:
        self.fn = fn
        self.n_pointer_args = n_pointer_args
        self.options = options
        self._kernels: dict = {}
        self.enabled = getattr(triton, "__version__", "").startswith(
            self.VERIFIED
        ) and isinstance(fn, triton.runtime.JITFunction)

    def fast(self) -> bool:
        """Whether a compiled kernel may be launched directly right now."""
        return self.enabled and not launch_hooks_set()

    def tail(self, constexprs: dict, n_args: int) -> tuple:
        return tuple(constexprs[name] for name in self.fn.arg_names[n_args:])

    def launch(self, grid: tuple, args: tuple, constexprs: dict):
        """Launch; returns the compiled kernel (``None`` when Triton's path ran
        without handing one back)."""
        fn = self.fn
        if not self.fast():
            fn[grid](*args, **constexprs, **self.options)
            return None
        device = triton.runtime.driver.active.get_current_device()
        n_ptr = self.n_pointer_args
        key = (
            device,
            grid,
            tuple(map(launch_spec, args[:n_ptr])),
            args[n_ptr:-1],
            tuple(constexprs.items()),
        )
        kernel = self._kernels.get(key)
        if kernel is None:
            kernel = fn[grid](*args, **constexprs, **self.options)
            if len(self._kernels) >= self.MAX_KEYS:
                self._kernels.clear()
            self._kernels[key] = kernel
            return kernel
        run_compiled(kernel, grid, device, args, self.tail(constexprs, len(args)))
        return kernel
