"""Faults: every interrupted run restarts with the same command and ends bit-identical to a straight run.

Kills before the first checkpoint, Ctrl-C / SIGTERM in the middle of a step or of validation, a truncated
newest checkpoint, a changed config on resume, a NaN before any checkpoint, a failing start, torchrun.
"""

import importlib
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from _tiny_runs import epoch_rows, options, same, small, weights
from PIL import Image

from vggnet.config import SAFE_ON_RESUME
from vggnet.training import Interrupted, NonFiniteLoss, latest_checkpoint, load_checkpoint, train

loop_mod = importlib.import_module("vggnet.training.loop")  # where the training step calls F and validate runs
task_mod = importlib.import_module("vggnet.training.task")  # where a run builds its net and calls validate

SRC = str(Path(__file__).parents[1] / "src")


epochs_logged = epoch_rows


@pytest.fixture(scope="module")
def straight(folder, tmp_path_factory):
    """The uninterrupted run every interrupted one is compared with (2 epochs of 4 steps, dropout 0.5)."""
    return train(small(folder, tmp_path_factory.mktemp("straight") / "run", accum_steps=2))


class _Signal:
    """A stand-in for torch.nn.functional in train.py that sends ``sig`` to this process on its ``at``-th
    cross-entropy call: in the middle of an optimizer step (accum_steps=2: two forwards a step)."""

    def __init__(self, sig, at):
        self.sig, self.at, self.calls = sig, at, 0

    def __getattr__(self, name):
        return getattr(torch.nn.functional, name)

    def cross_entropy(self, *a, **kw):
        self.calls += 1
        if self.calls == self.at:
            os.kill(os.getpid(), self.sig)
        return torch.nn.functional.cross_entropy(*a, **kw)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_mid_step_then_resume_is_bit_identical(folder, tmp_path, straight, monkeypatch, sig):
    cfg = small(folder, tmp_path / "run", accum_steps=2)
    monkeypatch.setattr(loop_mod, "F", _Signal(sig, at=5))  # the first micro-batch of step 3
    with pytest.raises(Interrupted, match="continue with `vgg train --resume") as e:
        train(cfg)
    assert e.value.signum == sig
    monkeypatch.undo()
    ckpt = load_checkpoint(latest_checkpoint(Path(cfg.out)))
    assert (ckpt["epoch"], ckpt["step_in_epoch"]) == (0, 3)  # the step under way was finished, then saved
    train({}, resume=cfg.out)
    assert same(weights(straight), weights(cfg.out))
    assert [r["train_loss"] for r in epochs_logged(cfg.out)] == pytest.approx(
        [r["train_loss"] for r in epochs_logged(straight)], rel=1e-6
    )


def test_signal_during_validation_then_resume(folder, tmp_path, straight, monkeypatch):
    cfg = small(folder, tmp_path / "run", accum_steps=2)
    real = task_mod.validate

    def interrupted_validate(*a, **kw):
        os.kill(os.getpid(), signal.SIGINT)
        return real(*a, **kw)

    monkeypatch.setattr(task_mod, "validate", interrupted_validate)
    with pytest.raises(Interrupted):
        train(cfg)
    monkeypatch.undo()
    ckpt = load_checkpoint(latest_checkpoint(Path(cfg.out)))
    assert (ckpt["epoch"], ckpt["step_in_epoch"]) == (0, 4)
    train({}, resume=cfg.out)
    assert same(weights(straight), weights(cfg.out))
    ours, theirs = epochs_logged(cfg.out), epochs_logged(straight)
    assert [r["val_top1_err"] for r in ours] == [r["val_top1_err"] for r in theirs]
    assert ours[0]["train_loss"] == pytest.approx(theirs[0]["train_loss"], rel=1e-6)  # not 0.0


def test_no_checkpoint_yet_restarts_from_step_0(folder, tmp_path, straight):
    """A run killed before its first checkpoint (config.toml and a few metrics, no checkpoint) continues with
    `--resume` and with its original command alike, from step 0, to the straight run's weights."""
    for how in ("resume", "same command"):
        cfg = small(folder, tmp_path / how.replace(" ", "_"), accum_steps=2)
        train(small(folder, cfg.out, accum_steps=2, max_steps=2, checkpoint_every=0))  # leaves a checkpoint ...
        for ckpt in (Path(cfg.out) / "checkpoints").glob("ckpt-*.pt"):
            ckpt.unlink()  # ... which a kill would not have left
        (Path(cfg.out) / "checkpoints" / ".ckpt-000000002.pt.x1y2.tmp").write_bytes(b"half a checkpoint")
        if how == "resume":
            train({"max_steps": 0}, resume=cfg.out)
        else:
            train(cfg)
        assert same(weights(straight), weights(cfg.out))
        assert not list(Path(cfg.out).rglob("*.tmp"))
        assert len(epochs_logged(cfg.out)) == 2


def test_truncated_newest_checkpoint_falls_back(folder, tmp_path, straight):
    cfg = small(folder, tmp_path / "run", accum_steps=2, checkpoint_every=1, keep_checkpoints=3)
    train(small(folder, cfg.out, accum_steps=2, checkpoint_every=1, keep_checkpoints=3, max_steps=3))
    newest = latest_checkpoint(Path(cfg.out))
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # a full disk, a killed copy
    train({"max_steps": 0}, resume=cfg.out)
    assert same(weights(straight), weights(cfg.out))
    assert (newest.parent / (newest.name + ".unreadable")).is_file()


def test_changed_config_on_resume_is_refused_by_name(folder, tmp_path):
    run = train(small(folder, tmp_path / "run", epochs=1))
    with pytest.raises(ValueError, match=r"arch \('A' -> 'B'\).*Safe to change on resume: .*epochs"):
        train({"arch": "B"}, resume=run)
    with pytest.raises(ValueError, match=r"seed \(0 -> 1\), width"):  # every differing key is named
        train(small(folder, run, epochs=1, width=0.125, seed=1))
    toml = run / "config.toml"
    text = toml.read_text()
    toml.write_text(text.replace('arch = "A"', 'arch = "B"'))
    with pytest.raises(ValueError, match=r"config.toml \(edited since the checkpoint\) changes arch"):
        train({}, resume=run)
    toml.write_text(text.replace("epochs = 1", "epochs = 2"))  # a safe key, edited by hand, is taken
    train({}, resume=run)
    assert [r["epoch"] for r in epochs_logged(run)] == [1, 2]
    assert {"epochs", "max_steps", "lr", "device", "workers"} <= SAFE_ON_RESUME and "arch" not in SAFE_ON_RESUME


def test_nan_before_any_checkpoint_names_no_missing_checkpoint(folder, tmp_path):
    cfg = small(folder, tmp_path / "run", lr=1e30, init="paper")
    with pytest.raises(NonFiniteLoss, match=r"no checkpoint had been written yet.*--resume .* --lr 1e\+29") as e:
        train(cfg)
    assert "None" not in str(e.value)
    run = train({"lr": 0.01, "epochs": 1}, resume=cfg.out)  # the suggested command works: step 0, lower lr
    assert len(epochs_logged(run)) == 1


def test_failing_start_leaves_no_run_folder(folder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError):
        train(dict(options(folder, "", data=str(tmp_path / "missing"))))
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())
    with pytest.raises(ValueError, match="one class"):
        one = tmp_path / "one"
        (one / "only").mkdir(parents=True)
        for i in range(12):
            Image.new("RGB", (40, 40), (i * 10, 0, 0)).save(one / "only" / f"{i}.png")
        train(dict(options(one, tmp_path / "out")))
    assert not (tmp_path / "out").exists()


def _cli(out, folder, *extra):
    args = [
        "--data",
        str(folder),
        "--out",
        str(out),
        "--arch",
        "A",
        "--width",
        "0.0625",
        "--fc-width",
        "16",
        "--crop-size",
        "32",
        "--scale",
        "32,40",
        "--val-fraction",
        "0.2",
        "--batch-size",
        "8",
        "--epochs",
        "2",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--log-every",
        "1",
        "--no-tensorboard",
        "--stats-images",
        "16",
        "--init",
        "kaiming",
        "--dropout",
        "0.5",
        "--lr",
        "0.01",
        "--accum-steps",
        "2",
        *extra,
    ]
    return [sys.executable, "-m", "vggnet", "train", *args]


def _env():
    # the same number of threads as in here: the same float sums, so weights compare bit for bit
    return dict(
        os.environ,
        PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
        OMP_NUM_THREADS=str(torch.get_num_threads()),
    )


@pytest.mark.slow
def test_kill_at_a_random_moment_then_the_same_command(folder, tmp_path, straight):
    """SIGKILL at a random moment of the first epoch (before the first checkpoint, which is at its end), then
    the original command again: it starts over in the same folder and ends at the straight run's weights."""
    out = tmp_path / "run"
    cmd = _cli(out, folder)
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # the moment is drawn from a seeded generator, so a failure repeats; VGG_KILL_SEED=N explores other moments
    seed = int(os.environ.get("VGG_KILL_SEED", "0"))
    rng = random.Random(seed)
    k, delay = rng.randrange(4), rng.uniform(0, 0.05)  # after the k-th step of epoch 1 (0: before the first)
    for line in proc.stdout:
        if (k == 0 and line.startswith("run ")) or f"epoch 1 step {k}/4" in line:
            break
    time.sleep(delay)
    proc.kill()
    proc.wait()
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert same(weights(straight), weights(out)), f"killed {delay:.3f}s after step {k} (VGG_KILL_SEED={seed})"


@pytest.mark.slow
def test_torchrun_sigterm_saves_and_resumes(folder, tmp_path):
    """torchrun with 2 gloo processes, SIGTERM as Slurm's pre-emption sends it: both processes stop at the same
    step, a checkpoint is saved, no traceback; the same command then finishes the run, equal (up to float
    summation order) to one process on the whole batch."""
    out = tmp_path / "two"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "vggnet",
        *_cli(out, folder, "--workers", "1", "--dropout", "0")[3:],
    ]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "step 2/4" in line:
            proc.send_signal(signal.SIGTERM)
            break
    lines += proc.stdout.readlines()
    proc.wait(timeout=120)
    text = "".join(lines)
    ckpt = latest_checkpoint(out)
    assert ckpt is not None, text
    assert "Traceback" not in text.split("SIGTERM: stopped")[0], text  # torchrun may report its own signal after
    assert "SIGTERM: stopped at step" in text
    assert "DataLoader worker" not in text
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    one = train(small(folder, tmp_path / "one", accum_steps=2, dropout=0.0))
    a, b = weights(one), weights(out)
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5


@pytest.mark.slow
def test_full_disk_is_one_line_and_the_same_command_continues(folder, tmp_path, straight, monkeypatch, capsys):
    import errno

    from vggnet.cli import main

    argv = _cli(tmp_path / "run", folder)[3:]
    real, calls = os.replace, []

    def full(src, dst):  # the disk fills up at the second checkpoint write (epoch 2's end)
        if str(dst).endswith(".pt"):
            calls.append(dst)
            if len(calls) == 2:
                raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return real(src, dst)

    monkeypatch.setattr(os, "replace", full)
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "No space left on device" in err and "free some space" in err, err
    monkeypatch.undo()
    assert not list((tmp_path / "run").rglob("*.tmp"))
    assert main(argv) == 0  # the same command: resumes from epoch 1's checkpoint
    assert same(weights(straight), weights(tmp_path / "run"))


def test_nan_on_the_command_line_is_one_line(folder, tmp_path, capsys):
    from vggnet.cli import main

    argv = _cli(tmp_path / "run", folder, "--lr", "1e30", "--init", "paper", "--epochs", "1")[3:]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "non-finite loss" in err and f"vgg train --resume {tmp_path / 'run'} --lr 1e+29" in err


# ---- data ---------------------------------------------------------------------------------------------------


def test_symlink_loops_and_links_into_other_classes_are_skipped(tmp_path, caplog):
    from vggnet.data import scan_folder

    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(3):
            Image.new("RGB", (8, 8)).save(tmp_path / c / f"{i}.png")
    (tmp_path / "a" / "loop").symlink_to(tmp_path / "a")
    (tmp_path / "a" / "up").symlink_to(tmp_path)
    (tmp_path / "a" / "other").symlink_to(tmp_path / "b")
    (tmp_path / "a" / "again.png").symlink_to(tmp_path / "a" / "0.png")
    samples, classes = scan_folder(tmp_path)
    assert classes == ["a", "b"]
    assert [label for _, label in samples] == [0, 0, 0, 1, 1, 1]
    assert "symbolic link loop" in caplog.text and "another class folder" in caplog.text


def test_a_bad_file_is_reported_once_not_every_epoch(tmp_path, caplog):
    from vggnet.data import ImageDataset

    (tmp_path / "bad.png").write_bytes(b"not an image")
    ds = ImageDataset([(str(tmp_path / "bad.png"), 0)], transform=None)
    for _epoch in range(3):
        assert ds[0][0] is None
    assert caplog.text.count("skipping bad image") == 1


# ---- the CUDA code path, on the CPU -------------------------------------------------------------------------


@pytest.mark.slow
def test_cuda_defaults_run_on_the_cpu(folder, tmp_path, monkeypatch):
    """What CUDA runs by default (torch.compile with inductor, bf16 autocast, channels-last, fused SGD), run on
    the CPU so that CI without a GPU catches its breakage: training steps, validation, checkpoint, weights."""
    pytest.importorskip("torch._inductor")
    monkeypatch.setenv("VGGNET_CUDA_PATH_ON_CPU", "1")
    torch._dynamo.reset()
    dtypes = []
    real = task_mod.create_model

    def recording(*a, **kw):
        model = real(*a, **kw)
        model.register_forward_hook(lambda m, i, out: dtypes.append(out.dtype))
        return model

    monkeypatch.setattr(task_mod, "create_model", recording)
    run = train(small(folder, tmp_path / "run", epochs=1, dropout=0.0))  # 4 steps, validation, checkpoint
    ckpt = load_checkpoint(latest_checkpoint(run))
    assert ckpt["model"]["features.0.weight"].is_contiguous(memory_format=torch.channels_last)
    assert torch.bfloat16 in dtypes  # the logits of the autocast forward
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1
    rows = epochs_logged(run)
    assert [r["epoch"] for r in rows] == [1] and math.isfinite(rows[0]["train_loss"])
    import vggnet

    assert vggnet.load_run(run).model(torch.zeros(1, 3, 32, 32)).isfinite().all()


def test_bad_files_of_a_run_are_reported_once(folder, tmp_path, capsys, caplog):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(folder, data)
    (data / "class0" / "broken.png").write_bytes(b"\x89PNG truncated")
    run = train(small(data, tmp_path / "run", epochs=3, val_fraction=0.25))
    out = capsys.readouterr().out
    assert out.count("unreadable image") == 1 and "broken.png" in out
    assert caplog.text.count("skipping bad image") <= 1  # the statistics pass may name it once
    assert (run / "bad_files.txt").read_text().strip().endswith("broken.png")
