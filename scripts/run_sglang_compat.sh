#!/usr/bin/env bash
# The SGLang compatibility harness, as CI runs it (.ci/run calls it once per
# supported release).
#
#   [SGLANG_COMPAT_VERSION=0.5.22] bash scripts/run_sglang_compat.sh [PYTEST_ARGS...]
#
# 1. Creates the venv with the real sglang==$SGLANG_COMPAT_VERSION (default
#    0.5.23; scripts/sglang_compat_env.sh) unless one built by the current
#    version of that script for that release is there already. Location:
#    $SGLANG_COMPAT_VENV, default .ci/compat-venv-<version> (git-ignored); one
#    venv per release.
# 2. Installs this project's plugin wheel into it (always, so that the private
#    copy of layernorm.py it carries is the tree's current file), built from a
#    scratch copy so the source tree gets no build/ or *.egg-info.
# 3. Runs pytest on test/sglang_compat with that directory's pytest.ini; this
#    tree's python/ is never put on sys.path (its `sglang` would shadow the real
#    one). Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
# absolute: the tests run from test/sglang_compat
version=${SGLANG_COMPAT_VERSION:-0.5.23}
venv=$(realpath -m "${SGLANG_COMPAT_VENV:-.ci/compat-venv-$version}")
start=$(date +%s)
say() { printf '[sglang-compat %ss] %s\n' "$(($(date +%s) - start))" "$1"; }

want="$(sha256sum scripts/sglang_compat_env.sh | cut -d' ' -f1) $version"
have=$(cat "$venv/.sglang-compat-stamp" 2>/dev/null || true)
if [ "$want" != "$have" ] || ! "$venv/bin/python" -c 'import sglang' 2>/dev/null; then
    say "creating $venv (sglang $version, CPU torch, light deps)"
    SGLANG_COMPAT_VERSION=$version bash scripts/sglang_compat_env.sh "$venv"
fi

say "installing the plugin wheel"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
cp -r pyproject.toml README.md plugin python "$scratch/"
"$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps \
    --no-build-isolation --force-reinstall "$scratch"

say "pytest test/sglang_compat (sglang $version)"
export SGLANG_COMPAT_VERSION=$version
unset PYTHONPATH SGLANG_PLUGINS SGLANG_FP32LN_IMPL SGLANG_COMPAT_APPLIED
cd "$repo/test/sglang_compat"
"$venv/bin/python" -m pytest "$@"
say "done"
