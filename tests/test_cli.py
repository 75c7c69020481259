"""The `vgg` command line."""

import json
import subprocess
import sys

from vggnet.cli import main


def test_params_json(capsys):
    assert main(["params", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    by = {r["arch"]: r for r in rows}
    assert by["C"]["params"] == 133_638_952
    assert by["D"]["params"] == 138_357_544
    assert abs(by["D"]["gflops"] - 30.94) < 0.01
    assert {"A", "A-LRN", "B", "C", "D", "E", "D-BN"} <= set(by)
    assert by["E"]["weight_layers"] == 19


def test_params_table_via_console_entry_point():
    out = subprocess.run([sys.executable, "-m", "vggnet", "params"], capture_output=True, text=True, check=True)
    rows = [
        [c.strip() for c in line.strip("|").split("|")] for line in out.stdout.splitlines() if line.startswith("| D ")
    ]
    assert rows and rows[0][:5] == ["D", "vgg16", "16", "138,357,544", "138M"]


# ---- failures: one line on stderr, a non-zero exit code, no traceback (--debug shows it) -----------------------

import os  # noqa: E402
import pickle  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

SRC = str(Path(__file__).parents[1] / "src")


def _fails(capsys, argv, pattern, code=2):
    assert main(argv) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    import re

    assert re.search(pattern, err), err
    return err


@pytest.mark.parametrize(
    "argv, pattern",
    [
        (["--epochs", "0"], "--epochs must be at least 1"),
        (["--epochs", "-1"], "--epochs must be at least 1"),
        (["--keep-checkpoints", "0"], "--keep-checkpoints must be at least 1"),
        (["--arch", "Z"], "--arch: unknown VGG model 'Z'"),
        (["--scale", "a,b"], "--scale takes S or Smin,Smax"),
        (["--data", "/no/such/folder"], "neither an embedded data set .* nor an existing folder"),
    ],
)
def test_bad_train_options_are_one_line_and_leave_no_run(capsys, tmp_path, monkeypatch, argv, pattern):
    monkeypatch.chdir(tmp_path)
    _fails(capsys, ["train", *argv], pattern)
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())


def test_toml_syntax_error_names_the_file(capsys, tmp_path):
    recipe = tmp_path / "bad.toml"
    recipe.write_text("epochs = = 3\n")
    _fails(capsys, ["train", "--recipe", str(recipe)], r"bad\.toml is not valid TOML")


def test_debug_shows_the_traceback(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="--epochs"):
        main(["train", "--epochs", "0", "--debug"])


def test_malicious_pickle_via_resume_is_refused_in_one_line(capsys, tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    with open(tmp_path / "run" / "checkpoints" / "ckpt-000000001.pt", "wb") as f:
        pickle.dump(Payload(), f)
    assert main(["train", "--resume", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "unreadable" in err and "no run to resume" in err, err
    assert not (tmp_path / "pwned").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_cuda_without_a_gpu(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _fails(capsys, ["train", "--device", "cuda"], "--device cuda: no CUDA GPU")


def test_help_does_not_import_torch():
    code = (
        "import sys\nfrom vggnet.cli import main\n"
        "for argv in (['--help'], ['train', '--help']):\n"
        "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    env = dict(os.environ, PYTHONPATH=SRC)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert "--keep-checkpoints" in out.stdout and "COMMAND" in out.stdout


def test_broken_pipe_is_silent():
    """`vgg ... | head`: the reader leaves early; no BrokenPipeError traceback."""
    env = dict(os.environ, PYTHONPATH=SRC)
    proc = subprocess.Popen(
        [sys.executable, "-m", "vggnet", "params"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    proc.stdout.close()  # before the table is printed: every write fails
    err = proc.stderr.read().decode()
    assert proc.wait() == 141 and "Traceback" not in err and "BrokenPipe" not in err, err


def test_every_subcommand_is_known_to_the_lazy_parser():
    """`vgg X` builds only X's options; a command missing from COMMANDS would get none and reject its flags."""
    import argparse

    from vggnet.cli import COMMANDS, build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == set(COMMANDS)
