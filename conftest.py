# SPDX-License-Identifier: Apache-2.0
"""Repo-wide pytest options.

``--require-cuda`` is for GPU CI: it fails the run when CUDA is missing or when any
``gpu``-marked test was skipped, so a broken driver cannot pass as green.
"""

import pytest


def pytest_addoption(parser):
    parser.addoption(
        "--require-cuda",
        action="store_true",
        help="fail if CUDA is unavailable or any gpu-marked test is skipped",
    )


def pytest_configure(config):
    config._skipped_gpu_tests = []
    _CONFIG[:] = [config]
    is_worker = hasattr(config, "workerinput")  # a pytest-xdist worker
    if config.getoption("--require-cuda") and not is_worker:
        import torch

        if not torch.cuda.is_available():
            raise pytest.UsageError("--require-cuda given but CUDA is not available")


def pytest_runtest_logreport(report):
    # runs in the controlling process also under pytest-xdist; an xfailed test
    # is reported as skipped (with ``wasxfail``) but it ran, so it counts as run
    if not report.skipped or hasattr(report, "wasxfail"):
        return
    if "gpu" not in report.keywords:
        return
    if "multi_gpu" in report.keywords and _gpu_count() < 2:
        return  # a one-GPU runner cannot run these; the two-GPU runner does
    _CONFIG[0]._skipped_gpu_tests.append(report.nodeid)


_CONFIG: list = []


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def pytest_sessionfinish(session, exitstatus):
    config = session.config
    skipped = getattr(config, "_skipped_gpu_tests", [])
    if config.getoption("--require-cuda") and skipped:
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(
                f"--require-cuda: {len(skipped)} gpu test(s) were skipped", red=True
            )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
