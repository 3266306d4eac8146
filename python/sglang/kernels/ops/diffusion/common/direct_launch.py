# SPDX-License-Identifier: Apache-2.0
"""Launch a compiled Triton kernel without Triton's per-call argument binding.

Binding and specializing a kernel's arguments in ``kernel[grid](...)`` costs
tens of microseconds of host time per call for a kernel with ~45 arguments,
more than the GPU needs at mid sizes. ``DirectLauncher.launch`` goes through
Triton the first time it sees a specialization (which compiles and returns the
compiled kernel) and afterwards calls that kernel's launcher directly, as
Triton itself does after binding. Callers that can key the specialization
themselves keep the compiled kernel and call ``run_compiled``.
"""

import triton


def launch_spec(t) -> tuple:
    """What Triton 3.x specializes a pointer argument on."""
    return (t.dtype, t.data_ptr() % 16 == 0)


def launch_hooks_set() -> bool:
    """Whether a profiler installed launch hooks (Triton 3.6 keeps them in
    normally empty HookChains); hooked launches must go through Triton."""
    runtime = triton.knobs.runtime
    hooks = (runtime.launch_enter_hook, runtime.launch_exit_hook)
    return any(h is not None and getattr(h, "calls", True) for h in hooks)


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
