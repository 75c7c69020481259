"""`make`'s venv handling: a `.venv` link in each clone, and one install into the shared venv at a time."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


@pytest.mark.skipif(not (shutil.which("make") and shutil.which("flock")), reason="needs make and flock")
def test_two_clones_install_one_at_a_time_and_get_a_venv_link(tmp_path):
    # a stand-in venv whose python logs when an install starts and ends (nothing is installed)
    venv = tmp_path / "cache" / "venv-test"
    (venv / "bin").mkdir(parents=True)
    log = tmp_path / "log"
    python = venv / "bin" / "python"
    python.write_text(f"#!/bin/sh\necho start >> {log}\nsleep 0.5\necho end >> {log}\n")
    python.chmod(0o755)
    (venv / ".installed").touch()
    clones = []
    for name in ("one", "two"):
        clone = tmp_path / name
        clone.mkdir()
        shutil.copy(ROOT / "Makefile", clone)
        shutil.copy(ROOT / "pyproject.toml", clone)
        clones.append(clone)
    env = {k: v for k, v in os.environ.items() if k not in ("VENV", "MAKEFLAGS")}
    procs = [
        subprocess.Popen(["make", "-s", "-C", str(c), "venv", f"VENV={venv}", f"CACHE={tmp_path / 'cache'}"], env=env)
        for c in clones
    ]
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    assert log.read_text().split() == ["start", "end", "start", "end"]  # never two at once
    for clone in clones:
        assert (clone / ".venv").is_symlink() and (clone / ".venv").resolve() == venv.resolve()
        assert (clone / ".venv" / "bin" / "python").exists()
