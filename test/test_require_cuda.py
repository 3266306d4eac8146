# SPDX-License-Identifier: Apache-2.0
"""The root conftest's ``--require-cuda`` bookkeeping: which reports count as skipped."""

import importlib.util
import pathlib
from types import SimpleNamespace

import pytest

_ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def root_conftest(monkeypatch):
    spec = importlib.util.spec_from_file_location(
        "_root_conftest", _ROOT / "conftest.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = SimpleNamespace(_skipped_gpu_tests=[])
    module._CONFIG[:] = [config]
    monkeypatch.setattr(module, "_gpu_count", lambda: 1)
    return module, config


def _report(nodeid, keywords, skipped=True, **extra):
    return SimpleNamespace(
        nodeid=nodeid, keywords=dict.fromkeys(keywords, 1), skipped=skipped, **extra
    )


@pytest.mark.parametrize(
    "report, counted",
    [
        (_report("gpu-skip", ["gpu"]), True),
        (_report("gpu-pass", ["gpu"], skipped=False), False),
        (_report("cpu-skip", []), False),
        (_report("gpu-xfail", ["gpu"], wasxfail="documented limitation"), False),
        (_report("two-gpu-skip-on-one-gpu", ["gpu", "multi_gpu"]), False),
    ],
)
def test_require_cuda_counts_only_real_gpu_skips(root_conftest, report, counted):
    module, config = root_conftest
    module.pytest_runtest_logreport(report)
    assert config._skipped_gpu_tests == ([report.nodeid] if counted else [])
