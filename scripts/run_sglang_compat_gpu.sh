#!/bin/bash
# Run the SGLang compatibility harness (test/sglang_compat) on a GPU machine that
# has torch and Python 3.12 but no network and no sglang, so that its CUDA cases
# (the plugin's fused kernel path inside the real sglang 0.5.23) run there.
#
#   bash scripts/run_sglang_compat_gpu.sh WHEELDIR [pytest args]
#
# WHEELDIR (carried to the machine) holds:
#   sg_trim.zip  sglang 0.5.23's `sglang/` package tree, unzipped from its wheel
#                (its files on the diffusion runtime's import chain are pure Python;
#                a cp311 wheel cannot be pip-installed under Python 3.12)
#   *.whl        cp312 / py3 wheels of the compiled modules that chain imports
#                (orjson, pybase64, msgspec, pydantic-core, pyzmq, pydantic, starlette,
#                ipython, traitlets, sniffio, annotated-types, typing-inspection) and
#                this project's wheel, built from the tree being tested:
#                pip wheel --no-deps --no-build-isolation -w WHEELDIR .
# Beside them it writes a dist-info for sglang (the plugin reads its version) and a
# stub `sgl_kernel` (upstream's layernorm imports rmsnorm / fused_add_rmsnorm from
# it whenever CUDA is present; the harness never calls them). test_export.py is
# left out: it needs git. The weight-updater cases skip where cache_dit is absent.
set -euo pipefail
if [ $# -lt 1 ] || [ ! -f "$1/sg_trim.zip" ]; then
    echo "usage: $0 WHEELDIR [pytest args]  (WHEELDIR holds sg_trim.zip and the wheels)" >&2
    exit 2
fi
if ! python3 -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))'; then
    echo "$0: the carried wheels are cp312; run it under Python 3.12" >&2
    exit 2
fi
repo=$(cd "$(dirname "$0")/.." && pwd)
wheels=$(cd "$1" && pwd)
shift
root=$(mktemp -d /tmp/sglang-compat-gpu.XXXXXX)
python3 -m zipfile -e "$wheels/sg_trim.zip" "$root/sg"
python3 -m pip install -q --disable-pip-version-check --no-index --no-deps \
    --target "$root/deps" "$wheels"/*.whl
mkdir -p "$root/sg/sglang-0.5.23.dist-info"
printf 'Metadata-Version: 2.1\nName: sglang\nVersion: 0.5.23\n' \
    >"$root/sg/sglang-0.5.23.dist-info/METADATA"
mkdir -p "$root/stub/sgl_kernel"
cat >"$root/stub/sgl_kernel/__init__.py" <<'PY'
"""Import-only stand-in for sgl_kernel (the harness never calls these)."""


def rmsnorm(*args, **kwargs):
    raise NotImplementedError("sgl_kernel stub")


def fused_add_rmsnorm(*args, **kwargs):
    raise NotImplementedError("sgl_kernel stub")
PY
cd "$repo/test/sglang_compat"
unset SGLANG_PLUGINS SGLANG_FP32LN_IMPL SGLANG_COMPAT_APPLIED
SGLANG_COMPAT_VERSION=0.5.23 PYTHONPATH="$root/sg:$root/deps:$root/stub" \
    python3 -m pytest --ignore=test_export.py "$@"
