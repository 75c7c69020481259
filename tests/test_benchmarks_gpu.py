"""benchmarks/gpu.py cannot rot: its --cpu smoke run (tiny net and images, every row but the compile variants)
finishes and prints the table, without packages the GPU machine lacks. No time is asserted."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vggnet.data.synthetic import write_jpeg

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu.py"


@pytest.mark.slow
def test_cpu_smoke_run_prints_every_row(tmp_path):
    # the GPU machine has neither mlxtend nor (maybe) tomli_w: make importing them fail here too
    blocked = tmp_path / "blocked"
    for name in ("mlxtend", "tomli_w"):
        (blocked / name).mkdir(parents=True)
        (blocked / name / "__init__.py").write_text(f"raise ImportError('{name} is not on the GPU machine')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(blocked), str(ROOT / "src")]), PYTHONWARNINGS="ignore")
    out = tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--cpu", "--json", str(out), "--dir", str(tmp_path / "jpegs")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    table = [line for line in proc.stdout.splitlines() if line.startswith("| (")]
    keys = [line.split("|")[1].strip() for line in table]
    assert keys == ["(a)", "(b)", "(c0)", "(c)", "(c0)", "(c)", "(d)", "(d)"], proc.stdout
    assert "--loader gpu" in proc.stdout and "--loader cpu" in proc.stdout and "Q = 55" in proc.stdout
    for head in ("hardware:", "software: torch", "training: config D", "augmentation (c):", "data: 48 JPEGs"):
        assert head in proc.stdout, head
    result = json.loads(out.read_text())
    assert all(r["ips"] > 0 and not r["note"] for r in result["rows"]), result["rows"]
    train_rows = [r for r in result["rows"] if r["key"] in ("(a)", "(b)", "(c)")]
    assert len({round(r["gflop"], 6) for r in train_rows}) == 1  # the same net, the same FLOPs per image
    assert len(list((tmp_path / "jpegs").rglob("*.jpg"))) == 48


def test_jpegs_without_any_source_package(tmp_path):
    for i in (0, 4):  # sources=(): no package ships a photo; textures synthesised with numpy
        write_jpeg(tmp_path / f"{i}.jpg", i, (50, 40), seed=0, sources=())
    sizes = [Image.open(tmp_path / f"{i}.jpg").size for i in (0, 4)]
    assert sizes == [(50, 40), (40, 50)]  # one in five is portrait
    assert np.asarray(Image.open(tmp_path / "0.jpg")).std() > 5


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    sys.modules["bench_gpu"] = bench  # dataclasses look their module up
    try:
        spec.loader.exec_module(bench)
    finally:
        del sys.modules["bench_gpu"]
    return bench


def test_preflight_reports_every_failure_in_one_table(monkeypatch):
    """A check that fails becomes a row saying why; the checks after it still run."""
    bench = _load_bench()

    def no_bf16(s):
        raise RuntimeError("no bf16 on this device")

    monkeypatch.setattr(bench, "_check_bf16", no_bf16)
    checks = bench.preflight(bench.cpu_setup(), backend="eager", gpu_tests=False)
    assert [c.name for c in checks] == ["device", "/dev/shm", "compile", "bf16", "JPEG decode"]
    assert [c.status for c in checks] == ["ok", "ok", "ok", "FAIL", "ok"], checks
    table = bench.preflight_table(checks)
    assert "| bf16" in table and "RuntimeError: no bf16 on this device" in table


@pytest.mark.slow
def test_preflight_alone_on_the_cpu(tmp_path):
    """`gpu.py --cpu --preflight`: the table, the GPU tests run (and skip themselves without CUDA), exit 0.
    The compile check uses the "eager" backend here: inductor's C++ compile takes about a minute on 2 cores."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), PYTHONWARNINGS="ignore")
    out = tmp_path / "preflight.json"
    command = [sys.executable, str(SCRIPT), "--cpu", "--preflight", "--compile-backend", "eager", "--json", str(out)]
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "| check" in proc.stdout and "| GPU tests" in proc.stdout
    checks = {c["name"]: c for c in json.loads(out.read_text())["preflight"]}
    assert checks["GPU tests"]["status"] == "skip" and "skipped" in checks["GPU tests"]["detail"]
    assert all(c["status"] == "ok" for name, c in checks.items() if name != "GPU tests"), checks
    assert "| (a)" not in proc.stdout  # the preflight alone: no rows
