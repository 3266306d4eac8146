#!/usr/bin/env bash
# Create a virtual environment that holds the real sglang==0.5.23, CPU only.
#
#   bash scripts/sglang_compat_env.sh VENV_DIR
#
# The full sglang package pulls GPU-only dependencies (and pins torch==2.14.1,
# whose PyPI build is CUDA). Its multimodal_gen layernorm and plugin import chain
# needs only the light modules pinned below, so sglang and each of them go in with
# --no-deps after the CPU torch. Every version is pinned: the set was checked by
# importing sglang.multimodal_gen.runtime.layers.layernorm and
# sglang.multimodal_gen.runtime.platforms.plugins with each module blocked in
# turn (each one is needed; annotated-types, attrs and charset-normalizer are
# what pydantic, aiohttp and requests need at run time).
#
# VENV_DIR is recreated from scratch. Writes VENV_DIR/.sglang-compat-stamp (the
# hash of this script), which scripts/run_sglang_compat.sh compares to decide
# whether to rebuild. Needs python3.11 (the sglang wheel is cp311) and PyPI.
set -euo pipefail

venv=${1:?usage: $0 VENV_DIR}
python=${PYTHON:-python3}

SGLANG_PIN="sglang==0.5.23"
TORCH_PIN="torch==2.13.0"
LIGHT_PINS=(
    aiohappyeyeballs==2.7.1
    aiohttp==3.14.5
    aiosignal==1.4.0
    annotated-types==0.8.0
    anyio==4.16.0
    attrs==26.1.0
    certifi==2026.10.19.post1
    charset-normalizer==3.5.3
    frozenlist==1.8.0
    idna==3.20
    ipython==9.18.1
    msgspec==0.22.0
    multidict==7.2.1
    numpy==2.4.6
    orjson==3.13.0
    packaging==26.4
    pillow==13.0.0
    propcache==0.5.4
    psutil==7.2.2
    pybase64==1.5.1
    pydantic==2.14.4
    pydantic_core==2.50.5
    pygments==2.21.0
    pyzmq==27.3.0
    requests==2.34.2
    sniffio==1.3.1
    starlette==1.10.0
    tqdm==4.70.1
    traitlets==5.16.1
    triton==3.6.0
    typing-inspection==0.4.5
    urllib3==2.8.0
    yarl==1.25.1
)
TEST_PINS=(pytest==9.2.0 iniconfig==2.3.1 pluggy==1.7.0)

rm -rf "$venv"
"$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
# the CPU build first, so that nothing below can pull a CUDA one
"${pip[@]}" "$TORCH_PIN"
"${pip[@]}" --no-deps "$SGLANG_PIN" "${LIGHT_PINS[@]}" "${TEST_PINS[@]}"
"$venv/bin/python" - <<'PY'
import sglang.multimodal_gen.runtime.layers.layernorm as layernorm
import sglang.multimodal_gen.runtime.platforms.plugins  # noqa: F401
from importlib.metadata import version

assert version("sglang") == "0.5.23", version("sglang")
print(f"sglang {version('sglang')} + torch {version('torch')}: {layernorm.__file__}")
PY
sha256sum "$0" | cut -d' ' -f1 >"$venv/.sglang-compat-stamp"
