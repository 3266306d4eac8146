# SPDX-License-Identifier: Apache-2.0
"""Compile the norm kernels for a GPU target offline and print their resources.

No GPU is needed: Triton compiles for the target (default sm_90, Hopper) and
its bundled ``cuobjdump`` reads registers, stack (spills and call frames) and
shared memory from the cubin. Registers per thread bound the rows in flight per
SM (65536 registers / (128 threads x regs)), which is what limited the kernel's
bandwidth before the lane merges moved to warp shuffles (see
docs/kernel-notes.md). The arguments are those a launch on Wan's operands
gets (bf16 activations, fp32 weight and bias, ``--mod-dtype`` modulation):
the plans' own code builds them, on meta tensors, and Triton's launch-time
specialization is replayed (1 as a constant, multiples of 16 divisible).

    PYTHONPATH=python python scripts/inspect_norm_kernel.py [--dims 1536,5120]
        [--fused] [--mod-dtype fp32|bf16] [--frames F] [--keep] [--prefetch]
        [--warm] [--cap] [--rows N] [--arch 90] [--dump DIR]

``--rows N`` compiles ``_fp32_norm_rows_kernel`` (one warp, N rows per
program) instead of the 4-warp ``_fp32_norm_kernel``. Besides registers, it
prints the SASS instruction count and the barriers (``BAR.SYNC``) per kernel:
the warp-per-row kernel should have none.
"""

import argparse
import os
import re
import subprocess

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime.jit import mangle_type, type_canonicalisation_dict

from sglang.kernels.ops.diffusion.norm import fp32_layernorm_bitexact as kb

_MOD_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def launch_arguments(dim, fused, tuning, rows=0, mod_dtype=torch.float32, frames=0):
    """The launcher (its kernel and compile options), the pointer dtypes, ints
    and constexprs, as ``_Plan`` builds
    them for a launch on Wan's operands: bf16 ``x`` of ``[1, 32760, dim]``,
    fp32 weight and bias, and (``fused``) a bf16 residual with ``[B, 1, D]``
    (or, ``frames``, per-frame ``[B, frames, 1, D]``) gate, scale and shift of
    ``mod_dtype``. The plan is made on meta tensors,
    so the rounding codes, strides and frame sizes are the ones a real launch
    of that configuration gets, from the same code."""
    meta = torch.device("meta")
    x = torch.empty(1, 32760, dim, dtype=torch.bfloat16, device=meta)
    weight = torch.empty(dim, dtype=torch.float32, device=meta)
    bias = torch.empty_like(weight)
    residual = gate = scale = shift = res_out = None
    if fused:
        residual = res_out = torch.empty_like(x)
        shape = (1, frames, 1, dim) if frames else (1, 1, dim)
        gate, scale, shift = (
            torch.empty(shape, dtype=mod_dtype, device=meta) for _ in range(3)
        )
    tuning = {**tuning, "ROWS": rows} if rows else tuning
    plan = kb._Plan(x, weight, bias, 1e-6, residual, gate, scale, shift, tuning=tuning)
    slots = kb._pointer_slots(
        x, residual, gate, weight, bias, scale, shift, torch.empty_like(x), res_out,
        None, None,
    )  # fmt: skip
    pointers = [t.dtype for t in (*slots, plan.coef)]
    return plan.launcher, pointers, plan.ints, plan.constexprs


def compile_kernel(dim, fused, tuning, arch, rows=0, mod_dtype=torch.float32,
                   frames=0):  # fmt: skip
    """Compile the kernel a launch of ``launch_arguments``' configuration takes,
    for ``arch``. Integer arguments are specialized as Triton specializes them
    at a launch: an int is typed by Triton's ``mangle_type``; a 1 becomes a constant
    and a multiple of 16 is marked divisible, unless the kernel opts the
    argument out (``do_not_specialize``); every pointer is 16-byte aligned."""
    launcher, pointers, ints, constexprs = launch_arguments(
        dim, fused, tuning, rows, mod_dtype, frames
    )
    names = launcher.fn.arg_names
    signature, constants, aligned = {}, dict(constexprs), []
    for name, dtype in zip(names, pointers):
        signature[name] = "*" + type_canonicalisation_dict[str(dtype).split(".")[1]]
        aligned.append(name)
    params = launcher.fn.params[len(pointers) :]
    for name, value, param in zip(names[len(pointers) :], ints, params):
        specialize = not param.do_not_specialize
        if value == 1 and specialize:
            signature[name] = "constexpr"
            constants[name] = 1
        else:
            signature[name] = mangle_type(value)  # Triton's own i32 / i64 / u64
            if value % 16 == 0 and specialize:
                aligned.append(name)
    signature[names[len(pointers) + len(ints)]] = "fp32"  # eps
    for name in constexprs:
        signature[name] = "constexpr"
    attrs = {(names.index(name),): [["tt.divisibility", 16]] for name in aligned}
    source = ASTSource(launcher.fn, signature, constants, attrs)
    target = GPUTarget("cuda", arch, 32)
    return triton.compile(source, target=target, options=launcher.options)


def resources(compiled, path: str) -> str:
    with open(path, "wb") as f:
        f.write(compiled.asm["cubin"])
    tool = os.path.join(
        os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump"
    )
    usage = subprocess.run(
        [tool, "-res-usage", path], capture_output=True, text=True, check=True
    ).stdout
    match = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+)", usage)
    sass = subprocess.run(
        [tool, "-sass", path], capture_output=True, text=True, check=True
    ).stdout
    count = len(re.findall(r"^\s+/\*[0-9a-f]+\*/", sass, re.M))
    return "registers {} stack {} B shared {} B".format(*match.groups()) + (
        f" sass {count} instructions, {sass.count('BAR.SYNC')} barriers"
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", default="1536,3072,5120,8192")
    parser.add_argument("--fused", action="store_true", help="residual + modulation")
    parser.add_argument(
        "--mod-dtype", choices=sorted(_MOD_DTYPES), default="fp32",
        help="dtype of the fused modules' gate, scale and shift",
    )  # fmt: skip
    parser.add_argument("--keep", action="store_true", help="KEEP=True")
    parser.add_argument("--prefetch", action="store_true", help="PREFETCH=True")
    parser.add_argument("--warm", action="store_true", help="WARM_L1=True")
    parser.add_argument("--cap", action="store_true", help="the register cap")
    parser.add_argument(
        "--frames", type=int, default=0, help="per-frame modulation, F frames"
    )
    parser.add_argument(
        "--rows", type=int, default=0, help="the warp-per-row kernel, N rows"
    )
    parser.add_argument("--arch", type=int, default=90, help="SM version (90: H100)")
    parser.add_argument("--dump", help="write ttgir/ptx per dim into this folder")
    args = parser.parse_args(argv)
    knobs = ("keep", "prefetch", "warm", "cap")
    tuning = kb._variant(
        ("rows" if args.rows else "block")
        + "".join(f"-{k}" for k in knobs if getattr(args, k))
    )
    out = args.dump or "/tmp"
    os.makedirs(out, exist_ok=True)
    for dim in map(int, args.dims.split(",")):
        compiled = compile_kernel(
            dim, args.fused, tuning, args.arch, args.rows,
            _MOD_DTYPES[args.mod_dtype], args.frames,
        )  # fmt: skip
        stem = os.path.join(out, f"fp32_norm_d{dim}")
        if args.dump:
            for kind in ("ttgir", "ptx"):
                with open(f"{stem}.{kind}", "w") as f:
                    f.write(compiled.asm[kind])
        kind = str({**tuning, "ROWS": args.rows} if args.rows else tuning)
        print(f"D={dim} {kind}: {resources(compiled, stem + '.cubin')}")


if __name__ == "__main__":
    main()
