# SPDX-License-Identifier: Apache-2.0
"""The benchmark's command line, run in-process on the CPU with tiny shapes."""

import json
import pathlib
import sys

import pytest
import torch

from sglang.multimodal_gen.benchmarks import bench_fp32_layernorm as bench

_ROOT = pathlib.Path(__file__).resolve().parents[1]
_TINY = ["--device", "cpu", "--shapes", "100x64", "--rounds", "1"]


def _usage_error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exc:
        bench.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1, err
    return errors[0]


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--device", "tpu"], "--device"),
        (["--device", "cuda:x"], "--device"),
        (["--dtypes", "bf16,int8"], "int8"),
        (["--shapes", "100by64"], "100by64"),
        (["--shapes", "0x64"], "0x64"),
        (["--shapes", "257x1280,"], "TOKENSxDIM"),
        (["--rounds", "0"], "--rounds"),
        (["--threads", "-1"], "--threads"),
    ],
)
def test_bad_values_give_one_line_errors(capsys, argv, words):
    assert words in _usage_error(capsys, argv)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_a_one_line_error(capsys):
    assert "CUDA is not available" in _usage_error(capsys, ["--device", "cuda"])


def _run(tmp_path, *extra) -> dict:
    out = tmp_path / "r.json"
    assert bench.main([*_TINY, "--json", str(out), *extra]) == 0
    return json.loads(out.read_text())


def test_shapes_run_the_shapes_given(tmp_path):
    saved = _run(tmp_path)
    rows = saved["results"]
    assert {(r["tokens"], r["dim"]) for r in rows} == {(100, 64)}
    assert {r["module"] for r in rows} == {"FP32LayerNorm", *bench.FUSED_MODULES}
    assert torch.get_num_threads() >= 1  # main restores the caller's count


def test_json_has_the_new_fields(tmp_path):
    saved = _run(tmp_path)
    meta, rows = saved["meta"], saved["results"]
    assert meta["device_type"] == "cpu" and meta["rounds"] == 1
    assert meta["peers"][bench.CUTE].startswith("absent")
    variants = {r["variant"] for r in rows}
    assert {bench.PREPORT, bench.UPCLASS, bench.ATEN, "cached", "default"} <= variants
    assert "chain" in variants
    for r in rows:
        assert r["graph_ms"] is None and r["graph_na"]  # no graphs on the CPU
        assert r["host_us"] > 0 and len(r["host_spread"]) == 3
        assert len(r["ms_spread"]) == 3 and r["x_base"] > 0
        assert 0.0 <= r["diff_frac"] <= 1.0 and r["max_ulp"] >= 0
        assert r["exact_required"] == (r["variant"] not in (bench.ATEN, bench.CUTE))
        if r["exact_required"]:
            assert r["bit_identical"] and r["diff_frac"] == 0.0
    defaults = [r for r in rows if r["variant"] == "default"]
    assert all(
        r["host_x_peer"] is not None
        for r in defaults
        if r["module"] == ("FP32LayerNorm")
    )


def test_quick_means_fewer_cases_on_cpu(tmp_path):
    out = tmp_path / "q.json"
    assert bench.main(["--device", "cpu", "--quick", "--json", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert saved["meta"]["quick"] and saved["meta"]["rounds"] == 2
    shapes = {(r["tokens"], r["dim"]) for r in saved["results"]}
    assert shapes == set(bench.CPU_QUICK_SHAPES)
    full = bench.default_cases(torch.device("cpu"), quick=False)
    quick = bench.default_cases(torch.device("cpu"), quick=True)
    assert 0 < len(quick) < len(full)


def test_markdown_on_cpu_grades_no_cuda_target(tmp_path):
    md = tmp_path / "r.md"
    _run(tmp_path, "--markdown", str(md))
    text = md.read_text()
    assert "Targets not graded: targets are for CUDA" in text
    assert "| target |" not in text and "| NO |" not in text.split("| case |")[0]


def test_saved_cuda_runs_still_render_and_grade(tmp_path):
    md = tmp_path / "r.md"
    saved = _ROOT / "docs/results/h200-torch2.11-fp16-quick.json"
    assert bench.main(["--from-json", str(saved), "--markdown", str(md)]) == 0
    text = md.read_text()
    assert "| target |" in text and "not graded" not in text
    # the peers this run did not have are reported as not measured, not failed
    assert "not measured" in text


def test_plot_dependency_is_checked_before_timing(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails

    def no_timing(*args, **kwargs):
        raise AssertionError("timed before checking --plot's dependency")

    monkeypatch.setattr(bench, "run_case", no_timing)
    monkeypatch.setattr(bench.nu.Timer, "copy_bandwidth", no_timing)
    err = _usage_error(capsys, [*_TINY, "--plot", str(tmp_path / "p.png")])
    assert "--plot needs matplotlib" in err


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "p.png"
    _run(tmp_path, "--plot", str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_full_cuda_case_list_covers_the_wan_targets():
    cases = bench.default_cases(torch.device("cuda"), quick=False)
    fused = [c for c in cases if c.module in bench.FUSED_MODULES]
    shapes = {(c.tokens, c.dim) for c in fused}
    assert shapes == {(t, d) for t in bench.CUDA_TOKENS for d in bench.CUDA_DIMS}
    for module in bench.FUSED_MODULES:
        kinds = {(c.mod_dtype, c.frames) for c in fused if c.module == module}
        assert {(torch.float32, 0), (torch.bfloat16, 0)} <= kinds
        assert (torch.float32, bench.WAN_FRAMES) in kinds
        assert (torch.bfloat16, bench.WAN_FRAMES) in kinds
    # per-frame only where the tokens split into 21 frames (32760, 75600)
    assert all(c.tokens % bench.WAN_FRAMES == 0 for c in fused if c.frames)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
def test_host_time_tool_needs_cuda_and_says_so(capsys):
    sys.path.insert(0, str(_ROOT / "scripts"))
    try:
        import bench_host_time
    finally:
        sys.path.pop(0)
    assert bench_host_time.main([]) == 2
    assert capsys.readouterr().err.strip() == "bench_host_time: needs a CUDA device"


def test_host_loops_leave_the_first_call_after_a_sync_untimed():
    """Each host loop makes one untimed call (the last input set) after its
    synchronize, then times ``host_calls`` calls over the sets in order."""
    timer = bench.nu.Timer(torch.device("cpu"), quick=False)
    rotation = bench.nu.Rotation(lambda: (object(),), 0, torch.device("cpu"))
    rotation.sets = [(i,) for i in range(3)]
    seen = []
    us = timer.host(seen.append, rotation)
    assert seen == [2] + [i % 3 for i in range(timer.host_calls)]
    assert us >= 0.0


@pytest.mark.parametrize(
    "set_bytes, l2_bytes, count",
    [
        (10**9, 50 << 20, 2),  # one set exceeds L2 many times over: still two
        (50 << 20, 50 << 20, 3),
        (40 << 20, 50 << 20, 4),
        (0, 50 << 20, 256),
        (1, 50 << 20, 256),
    ],
)
def test_cuda_rotation_keeps_at_least_two_sets(set_bytes, l2_bytes, count):
    """With one set, a small operand stays in L2 from call to call."""
    assert bench.nu.Rotation.cuda_count(set_bytes, l2_bytes) == count
