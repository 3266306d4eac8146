# SPDX-License-Identifier: Apache-2.0
"""Compile the norm kernels for a GPU target offline and print their resources.

No GPU is needed: Triton compiles for the target (default sm_90, Hopper) and
its bundled ``cuobjdump`` reads registers, stack (spills and call frames) and
shared memory from the cubin. Registers per thread bound the rows in flight per
SM (65536 registers / (128 threads x regs)), which is what limited the kernel's
bandwidth before the lane merges moved to warp shuffles (see
docs/kernel-notes.md). Integer arguments are specialized as at a real launch
(strides divisible by 16, frame sizes of 1).

    PYTHONPATH=python python scripts/inspect_norm_kernel.py [--dims 1536,5120]
        [--fused] [--keep] [--prefetch] [--rows N] [--arch 90] [--dump DIR]

``--rows N`` compiles ``_fp32_norm_rows_kernel`` (one warp, N rows per
program) instead of the 4-warp ``_fp32_norm_kernel``. Besides registers, it
prints the SASS instruction count and the barriers (``BAR.SYNC``) per kernel:
the warp-per-row kernel should have none.
"""

import argparse
import os
import re
import subprocess

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from sglang.kernels.ops.diffusion.norm import fp32_layernorm_bitexact as kb

_POINTERS = ("X", "RES", "GATE", "W", "B", "SCALE", "SHIFT", "Y", "RES_OUT")
_FP32_POINTERS = ("MEAN", "RSTD", "COEF")


def compile_kernel(dim: int, fused: bool, tuning: dict, arch: int, rows: int = 0):
    kernel = kb._fp32_norm_rows_kernel if rows else kb._fp32_norm_kernel
    tuning = {**tuning, "ROWS": rows} if rows else tuning
    constexprs = dict(
        N=dim, ITERS=triton.cdiv(dim // 4, 128), HAS_RESIDUAL=fused,
        HAS_GATE=fused, HAS_W=True, HAS_B=True, HAS_MOD=fused, STORE_STATS=False,
        G1_RND=0, R_RND=1, S_RND=0, M1_RND=0, M_RND=0, **kb._ATEN_REPLAY, **tuning,
    )  # fmt: skip
    ints = {"stride_x": dim, "stride_y": dim, "L": 32760, "M": 32768}
    if fused:
        ints.update(stride_res=dim, stride_res_out=dim, g_sb=dim, sc_sb=dim, sh_sb=dim)
    frames = ("g_frame", "sc_frame", "sh_frame", "g_sd", "sc_sd", "sh_sd")
    signature, aligned = {}, []
    for name in kernel.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in _POINTERS:
            modulation = name in ("GATE", "SCALE", "SHIFT", "W", "B")
            signature[name] = "*fp32" if modulation else "*bf16"
            aligned.append(name)
        elif name in _FP32_POINTERS:
            signature[name] = "*fp32"
            aligned.append(name)
        elif name == "eps":
            signature[name] = "fp32"
        elif name in frames:  # value 1: Triton makes it a constant
            signature[name] = "constexpr"
            constexprs[name] = 1
        else:
            signature[name] = "i32"
            if ints.get(name, 0) % 16 == 0:
                aligned.append(name)
    attrs = {
        (kernel.arg_names.index(name),): [["tt.divisibility", 16]] for name in aligned
    }
    source = ASTSource(kernel, signature, constexprs, attrs)
    options = {"num_warps": 1 if rows else 4, "enable_fp_fusion": False}
    return triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options)


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
    parser.add_argument("--keep", action="store_true", help="KEEP=True")
    parser.add_argument("--prefetch", action="store_true", help="PREFETCH=True")
    parser.add_argument(
        "--rows", type=int, default=0, help="the warp-per-row kernel, N rows"
    )
    parser.add_argument("--arch", type=int, default=90, help="SM version (90: H100)")
    parser.add_argument("--dump", help="write ttgir/ptx per dim into this folder")
    args = parser.parse_args(argv)
    tuning = kb._variant("block" + "-keep" * args.keep + "-prefetch" * args.prefetch)
    out = args.dump or "/tmp"
    os.makedirs(out, exist_ok=True)
    for dim in map(int, args.dims.split(",")):
        compiled = compile_kernel(dim, args.fused, tuning, args.arch, args.rows)
        stem = os.path.join(out, f"fp32_norm_d{dim}")
        if args.dump:
            for kind in ("ttgir", "ptx"):
                with open(f"{stem}.{kind}", "w") as f:
                    f.write(compiled.asm[kind])
        kind = str({**tuning, "ROWS": args.rows} if args.rows else tuning)
        print(f"D={dim} {kind}: {resources(compiled, stem + '.cubin')}")


if __name__ == "__main__":
    main()
