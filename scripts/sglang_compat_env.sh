#!/usr/bin/env bash
# Create a virtual environment that holds the real sglang, CPU only.
#
#   SGLANG_COMPAT_VERSION=0.5.22 bash scripts/sglang_compat_env.sh VENV_DIR
#
# SGLANG_COMPAT_VERSION (default 0.5.23) picks the release: one of
# SUPPORTED_VERSIONS below, the releases the plugin supports (0.5.20 and older
# have no plugin system).
#
# The full sglang package pulls GPU-only dependencies (and pins torch==2.14.1,
# whose PyPI build is CUDA). Its multimodal_gen layernorm and plugin import chain
# needs only the light modules pinned below, so sglang and each of them go in with
# --no-deps after the CPU torch. Every version is pinned: the set was checked by
# importing sglang.multimodal_gen.runtime.layers.layernorm and
# sglang.multimodal_gen.runtime.platforms.plugins with each module blocked in
# turn (each one is needed; annotated-types, attrs and charset-normalizer are
# what pydantic, aiohttp and requests need at run time). UPDATER_PINS are what
# the weight updater (post_training/weights_updater.py) and the Wan DiT module
# add: cache-dit, diffusers, transformers and what they import, found the same
# way (cloudpickle: 0.5.22 only, harmless on 0.5.23).
#
# torchvision: PyPI's Linux wheels are CUDA builds whose C extension cannot load
# beside the CPU torch (its import then fails on "torchvision::nms does not
# exist"), and the CPU wheels live on download.pytorch.org. SGLang (srt configs)
# and diffusers import torchvision modules at import time but the harness never
# calls them, so the venv gets an import-only stub package (no dist-info, so
# transformers and diffusers report torchvision as missing); using any of its
# names raises.
#
# VENV_DIR is recreated from scratch. Writes VENV_DIR/.sglang-compat-stamp (the
# hash of this script and the version), which scripts/run_sglang_compat.sh compares to decide
# whether to rebuild. Needs python3.11 (the sglang wheel is cp311) and PyPI.
set -euo pipefail

venv=${1:?usage: $0 VENV_DIR}
python=${PYTHON:-python3}

SUPPORTED_VERSIONS=(0.5.22 0.5.23)
version=${SGLANG_COMPAT_VERSION:-0.5.23}
case " ${SUPPORTED_VERSIONS[*]} " in
*" $version "*) ;;
*)
    echo "SGLANG_COMPAT_VERSION=$version: not one of ${SUPPORTED_VERSIONS[*]}" >&2
    exit 2
    ;;
esac
SGLANG_PIN="sglang==$version"
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
UPDATER_PINS=(
    addict==2.4.0
    apache-tvm-ffi==0.1.11
    cache-dit==1.5.1
    cloudpickle==3.1.3
    compressed-tensors==0.18.0
    diffusers==0.37.0
    dill==0.4.1
    distro==1.9.0
    einops==0.8.2
    filelock==4.3.1
    fsspec==2026.9.0
    gguf==0.19.0
    h11==0.16.0
    httpcore==1.0.9
    httpx==0.28.1
    huggingface_hub==1.33.0
    imageio==2.36.0
    importlib_metadata==10.2.0
    loguru==0.7.3
    openai==2.8.0
    partial-json-parser==0.2.1.1.post7
    python-dateutil==2.9.0.post0
    pyyaml==6.0.1
    regex==2026.11.19
    safetensors==0.8.0
    sentencepiece==0.2.1
    six==1.17.0
    tokenizers==0.23.2
    transformers==5.19.0
    zipp==4.1.2
)
TEST_PINS=(pytest==9.2.0 iniconfig==2.3.1 pluggy==1.7.0)
# the plugin wheel is built in this venv without build isolation: its SPDX
# license field needs setuptools >= 77 (Python 3.11's venv brings 65)
BUILD_PINS=(setuptools==84.2.1)

rm -rf "$venv"
"$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
# the CPU build first, so that nothing below can pull a CUDA one
"${pip[@]}" "$TORCH_PIN"
"${pip[@]}" --no-deps "$SGLANG_PIN" "${LIGHT_PINS[@]}" "${UPDATER_PINS[@]}" \
    "${TEST_PINS[@]}" "${BUILD_PINS[@]}"
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
mkdir "$site/torchvision"
cat >"$site/torchvision/__init__.py" <<'PY'
"""Import-only stand-in for torchvision, written by scripts/sglang_compat_env.sh.

PyPI's torchvision wheels are CUDA builds whose C extension cannot load beside
the CPU torch; SGLang and diffusers import torchvision modules at import time
but the harness never calls them. Every ``torchvision.*`` module imports, and
every name in it is a class that raises when instantiated.
"""

import importlib.abc
import importlib.machinery
import sys


class _UnavailableMeta(type):
    # class attributes (enum members such as InterpolationMode.BILINEAR) that
    # modules read at import time
    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return cls


class _Unavailable(metaclass=_UnavailableMeta):
    def __init__(self, *args, **kwargs):
        raise RuntimeError("torchvision is an import-only stub in this venv")


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    return _Unavailable


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.startswith(__name__ + "."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        module.__path__ = []
        module.__getattr__ = __getattr__


__path__ = []
__version__ = "0.0.0+stub"
sys.meta_path.append(_StubFinder())
PY
SGLANG_COMPAT_VERSION=$version "$venv/bin/python" - <<'PY'
import os
from importlib.metadata import version

import sglang.multimodal_gen.runtime.layers.layernorm as layernorm
import sglang.multimodal_gen.runtime.models.dits.wanvideo  # noqa: F401
import sglang.multimodal_gen.runtime.platforms.plugins  # noqa: F401
import sglang.multimodal_gen.runtime.post_training.weights_updater  # noqa: F401

want = os.environ["SGLANG_COMPAT_VERSION"]
assert version("sglang") == want, (version("sglang"), want)
print(f"sglang {version('sglang')} + torch {version('torch')}: {layernorm.__file__}")
PY
echo "$(sha256sum "$0" | cut -d' ' -f1) $version" >"$venv/.sglang-compat-stamp"
