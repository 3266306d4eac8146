# SPDX-License-Identifier: Apache-2.0
"""scripts/run_sglang_compat_gpu.sh refuses what it cannot use, in one line."""

import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "run_sglang_compat_gpu.sh"


def run(*args, cwd=None):
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, cwd=cwd
    )


def test_script_parses():
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0


@pytest.mark.parametrize("make_dir", [False, True])
def test_missing_wheel_dir_or_sglang_zip_is_a_usage_error(tmp_path, make_dir):
    target = tmp_path / "wheels"
    if make_dir:
        target.mkdir()  # present, but without sg_trim.zip
    done = run(str(target))
    assert done.returncode == 2
    assert "usage:" in done.stderr and "sg_trim.zip" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_no_arguments_is_a_usage_error():
    done = run()
    assert done.returncode == 2 and "usage:" in done.stderr
